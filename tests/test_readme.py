"""The README's commands are the ones CI and users run: keep them in sync with .ci/run."""
from __future__ import annotations

import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
TEST_COMMAND = 'bash scripts/bootstrap.sh && .venv/bin/python -m pytest -q -m "not slow" -n auto --dist loadfile'
DEMO_COMMAND = "bash scripts/bootstrap.sh && .venv/bin/lightmedseg demo"


def test_ci_runs_exactly_the_readme_test_command():
    readme_lines = [line.strip() for line in (ROOT / "README.md").read_text().splitlines()]
    ci_lines = [line.strip() for line in (ROOT / ".ci" / "run").read_text().splitlines()]
    assert TEST_COMMAND in readme_lines
    assert TEST_COMMAND in ci_lines


def test_readme_starts_with_the_two_commands():
    text = (ROOT / "README.md").read_text()
    first_block = text.split("```bash", 1)[1].split("```", 1)[0]
    assert DEMO_COMMAND in first_block and TEST_COMMAND in first_block


def test_benchmark_sections_are_generated_from_the_committed_results():
    """No number typed by hand: the README's benchmark sections are what benchmarks/readme_tables.py renders."""
    proc = subprocess.run([sys.executable, str(ROOT / "benchmarks" / "readme_tables.py"), "--check"],
                          capture_output=True, text=True)
    assert proc.returncode == 0, proc.stderr
