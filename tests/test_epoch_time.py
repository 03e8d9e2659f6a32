"""benchmarks/epoch_time.py's summary of the epochs it timed (the script itself runs trainings: see its docstring)."""
from __future__ import annotations

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "benchmarks"))
import epoch_time  # noqa: E402


def test_summary_leaves_out_the_first_epoch() -> None:
    run = {"trainer": "nnUNetTrainerLightMedSeg", "iterations_per_epoch": 250,
           "epoch_seconds": [90.0, 30.0, 32.0, 31.0], "train_seconds": [80.0, 25.0, 26.0, 24.0]}
    summary = epoch_time.summarise(run)
    assert summary["median_epoch_seconds"] == 31.0 and summary["median_train_seconds"] == 25.0
    assert summary["train_iterations_per_second"] == 10.0
    one = epoch_time.summarise({**run, "epoch_seconds": [90.0], "train_seconds": [80.0]})
    assert one["median_epoch_seconds"] == 90.0
