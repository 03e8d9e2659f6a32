"""What the benchmark scripts share: the results folder, Markdown cells and the first line of a generated table.

The scripts import it as ``import common`` (run as ``python benchmarks/X.py``, Python puts this folder on
``sys.path``). Where a result was measured comes from the package: ``nnunetv2_lightmedseg.provenance``.
"""
from __future__ import annotations

from pathlib import Path
from typing import Any

RESULTS = Path(__file__).resolve().parent / "results"


def cell(value: Any, spec: str) -> str:
    """A table cell: ``value`` formatted by ``spec``, empty for None (not measured, not applicable)."""
    return "" if value is None else format(value, spec)


def generated_line(meta: dict[str, Any], details: str = "") -> str:
    """The sentence under a generated table's title: when, where, by which command, with which versions."""
    return (f"Generated {meta['date']} on {meta['device']} by `{meta['command']}` (torch {meta['torch']}, nnunetv2 "
            f"{meta['nnunetv2']}). {details + ' ' if details else ''}Do not edit: regenerate with the command above.")
