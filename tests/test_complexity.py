"""benchmarks/complexity.py: a row's numbers are consistent, and the committed table covers every preset."""
from __future__ import annotations

import json

import pytest
import torch

import complexity
from common import RESULTS
from nnunetv2_lightmedseg.architectures import PRESETS

METADATA_KEYS = {"date", "python", "torch", "nnunetv2", "platform", "cpu", "command", "settings"}
pytestmark = pytest.mark.usefixtures("one_thread")


def test_row_numbers_are_consistent() -> None:
    torch.manual_seed(0)
    setting = complexity.InputSetting("small", in_channels=2, num_classes=3, patch_size=(16, 16, 32),
                                      strides=((2, 2, 2), (2, 2, 2), (2, 2, 2), (1, 1, 1)))
    builder = complexity.MODELS["LightMedSeg-tiny"]
    row = complexity.complexity_row("LightMedSeg-tiny", builder, setting)
    assert row["source"] == "measured"
    assert row["input_shape"] == [1, 2, 16, 16, 32]
    assert row["params"] == sum(p.numel() for p in builder(setting).parameters())
    assert row["flops"] > 0 and row["flops"] == 2 * row["macs"]
    assert row["gflops"] == pytest.approx(2 * row["gmacs"], abs=2e-4)  # both rounded to 4 decimals
    assert row["gflops"] == pytest.approx(row["flops"] / 1e9, abs=1e-4)
    assert row["params_m"] == pytest.approx(row["params"] / 1e6, abs=1e-4)


def test_not_applicable_builder_gives_an_empty_row() -> None:
    def refuses(setting: object) -> torch.nn.Module:
        raise complexity.NotApplicable("needs a patch divisible by 32")
    row = complexity.complexity_row("refuser", refuses, complexity.SETTINGS[0])
    assert row["params"] is None and row["gflops"] is None
    assert row["source"] == "n/a" and row["note"] == "needs a patch divisible by 32"


def test_committed_table_covers_every_preset() -> None:
    table = json.loads((RESULTS / "complexity.json").read_text())
    assert METADATA_KEYS <= set(table["metadata"])
    assert "complexity.py" in table["metadata"]["command"]
    settings = {s.name for s in complexity.SETTINGS}
    measured = {(r["model"], r["setting"]) for r in table["rows"] if r["source"] == "measured"}
    assert {(f"LightMedSeg-{p}", s) for p in PRESETS for s in settings} <= measured
    for row in table["rows"]:
        if row["source"] == "measured":
            assert row["flops"] == 2 * row["macs"] and row["params"] > 0
    reported = [r for r in table["rows"] if r["source"] == "reported"]
    assert [(r["params_m"], r["gflops"]) for r in reported] == [(0.48, 14.64)]
    markdown = (RESULTS / "complexity.md").read_text()
    assert all(f"LightMedSeg-{p}" in markdown for p in PRESETS) and "(reported)" in markdown
