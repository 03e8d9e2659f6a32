"""Complexity table: parameters, GMACs and GFLOPs of LightMedSeg presets (and, later, baselines) at named inputs.

FLOPs are counted by ``torch.utils.flop_counter.FlopCounterMode`` on one real forward pass (``torch.no_grad``,
CPU): it counts convolutions (transposed ones included), matmuls and attention at 2 FLOPs per multiply-add and
ignores element-wise work (norms, activations, softmax, resizing). GMACs = GFLOPs / 2, reported beside GFLOPs
because papers mix the two. Parameters are the sum of ``numel`` over all parameters, training-only
deep-supervision heads included.

Usage::

    python benchmarks/complexity.py [--out benchmarks/results]

writes ``complexity.json`` (metadata + rows) and ``complexity.md`` (a table generated from the JSON).

Adding a model: write a builder ``(setting: InputSetting) -> nn.Module`` and add it to ``MODELS`` with
:func:`register_model` (for example from a baselines module imported below the registry). A builder that
cannot take a setting (say, a patch size it does not support) raises :class:`NotApplicable` with the reason;
the row is then written with empty numbers and that reason.
"""
from __future__ import annotations

import argparse
import datetime
import json
import platform
import shlex
import sys
from dataclasses import asdict, dataclass
from functools import partial
from importlib.metadata import PackageNotFoundError, version
from pathlib import Path
from typing import Any, Callable, Optional

import torch
from torch import nn
from torch.utils.flop_counter import FlopCounterMode

from nnunetv2_lightmedseg.architectures import PRESETS, LightMedSeg

Stride3D = tuple[int, int, int]


@dataclass(frozen=True)
class InputSetting:
    """One input a model is measured at: batch x channels x (D, H, W), the plan's per-stage strides, outputs."""

    name: str
    in_channels: int
    num_classes: int
    patch_size: Stride3D
    strides: tuple[Stride3D, ...]
    batch_size: int = 1

    @property
    def input_shape(self) -> tuple[int, ...]:
        return (self.batch_size, self.in_channels, *self.patch_size)


#: The named inputs of the table.
SETTINGS: list[InputSetting] = [
    InputSetting("iso128", in_channels=4, num_classes=4, patch_size=(128, 128, 128), strides=((2, 2, 2),) * 4),
    InputSetting("acdc", in_channels=1, num_classes=4, patch_size=(10, 256, 224),
                 strides=((1, 2, 2), (1, 2, 2), (2, 2, 2), (1, 2, 2))),
]

ModelBuilder = Callable[[InputSetting], nn.Module]


class NotApplicable(Exception):
    """Raised by a builder for a setting its model cannot take; the message is written as the row's note."""


def lightmedseg_builder(preset: str, setting: InputSetting) -> nn.Module:
    """LightMedSeg ``preset`` for ``setting`` (inference form: deep supervision off)."""
    return LightMedSeg.from_preset(preset, setting.in_channels, setting.num_classes, strides=setting.strides)


#: Extension point: model name -> builder. Baselines (nnU-Net default, UNETR, SwinUNETR, Primus) go here.
MODELS: dict[str, ModelBuilder] = {f"LightMedSeg-{name}": partial(lightmedseg_builder, name) for name in PRESETS}


def register_model(name: str, builder: ModelBuilder) -> None:
    """Add a row builder to the table (refuses to silently replace another one)."""
    if name in MODELS and MODELS[name] is not builder:
        raise ValueError(f"A model named {name!r} is already registered")
    MODELS[name] = builder


#: Numbers stated in papers, shown as such (not measured here).
REFERENCE_ROWS: list[dict[str, Any]] = [
    {
        "model": "LightMedSeg paper (reported)", "setting": "iso128", "input_shape": None, "strides": None,
        "params": 480_000, "params_m": 0.48, "macs": None, "gmacs": None, "flops": None, "gflops": 14.64,
        "source": "reported",
        "note": "the paper's claim (arXiv 2603.07228), not measured: 0.48M parameters, 14.64 GFLOPs; the paper "
                "states neither input size nor FLOP convention (the spec reads it as 1x4x128^3, FLOPs = 2 x MACs)",
    },
]


def measure(model: nn.Module, setting: InputSetting) -> dict[str, Any]:
    """Parameters, multiply-adds and FLOPs of one forward pass of ``model`` at ``setting`` on the CPU."""
    model = model.eval()
    params = sum(p.numel() for p in model.parameters())
    x = torch.randn(setting.input_shape)
    with torch.no_grad(), FlopCounterMode(display=False) as counter:
        model(x)
    flops = int(counter.get_total_flops())
    return {"params": params, "params_m": round(params / 1e6, 4), "macs": flops // 2,
            "gmacs": round(flops / 2e9, 4), "flops": flops, "gflops": round(flops / 1e9, 4)}


def complexity_row(name: str, builder: ModelBuilder, setting: InputSetting) -> dict[str, Any]:
    """One measured row of the table: the model ``name`` built by ``builder`` for ``setting``."""
    row: dict[str, Any] = {"model": name, "setting": setting.name, "input_shape": list(setting.input_shape),
                           "strides": [list(s) for s in setting.strides]}
    empty = {"params": None, "params_m": None, "macs": None, "gmacs": None, "flops": None, "gflops": None}
    try:
        model = builder(setting)
    except NotApplicable as reason:
        return {**row, **empty, "source": "n/a", "note": str(reason)}
    torch.manual_seed(0)
    return {**row, **measure(model, setting), "source": "measured", "note": ""}


def cpu_name() -> str:
    """The CPU's model name (from /proc/cpuinfo on Linux), else what ``platform`` knows."""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def metadata() -> dict[str, Any]:
    """Date (UTC, ISO 8601), versions, platform and the exact command that made the table."""
    try:
        nnunetv2_version: Optional[str] = version("nnunetv2")
    except PackageNotFoundError:  # the table is still useful without nnU-Net installed
        nnunetv2_version = None
    return {
        "date": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
        "python": platform.python_version(), "torch": torch.__version__, "nnunetv2": nnunetv2_version,
        "platform": platform.platform(), "cpu": cpu_name(), "torch_threads": torch.get_num_threads(),
        "command": shlex.join(getattr(sys, "orig_argv", [sys.executable, *sys.argv])),
        "flop_counter": "torch.utils.flop_counter.FlopCounterMode, one forward pass under torch.no_grad on CPU",
        "convention": "FLOPs = 2 x MACs (multiply-adds of convolutions and matmuls); GMACs = GFLOPs / 2",
        "settings": [{**asdict(s), "input_shape": list(s.input_shape)} for s in SETTINGS],
    }


def _cell(value: Any, fmt: str) -> str:
    return "" if value is None else format(value, fmt)


def to_markdown(table: dict[str, Any]) -> str:
    """The Markdown table for a ``complexity.json`` document."""
    meta = table["metadata"]
    lines = [
        "# Model complexity",
        "",
        f"Generated {meta['date']} by `{meta['command']}` with torch {meta['torch']}, nnunetv2 {meta['nnunetv2']}, "
        f"Python {meta['python']} on {meta['platform']} ({meta['cpu']}). FLOPs counted by {meta['flop_counter']}; "
        f"{meta['convention']}. Do not edit: regenerate with the command above.",
        "",
        "| Model | Setting | Input (B x C x D x H x W) | Strides | Params (M) | GMACs | GFLOPs | Source | Note |",
        "|---|---|---|---|---:|---:|---:|---|---|",
    ]
    for row in table["rows"]:
        shape = " x ".join(map(str, row["input_shape"])) if row["input_shape"] else "not stated"
        strides = " ".join("(" + ",".join(map(str, s)) + ")" for s in row["strides"]) if row["strides"] else ""
        lines.append(f"| {row['model']} | {row['setting']} | {shape} | {strides} | {_cell(row['params_m'], '.3f')} | "
                     f"{_cell(row['gmacs'], '.2f')} | {_cell(row['gflops'], '.2f')} | {row['source']} | "
                     f"{row['note']} |")
    return "\n".join(lines) + "\n"


def build_table(models: Optional[dict[str, ModelBuilder]] = None,
                settings: Optional[list[InputSetting]] = None) -> dict[str, Any]:
    """Measure every model at every setting; reference rows go first within their setting."""
    models = MODELS if models is None else models
    settings = SETTINGS if settings is None else settings
    rows: list[dict[str, Any]] = []
    for setting in settings:
        rows += [dict(r) for r in REFERENCE_ROWS if r["setting"] == setting.name]
        for name, builder in models.items():
            row = complexity_row(name, builder, setting)
            print(f"{row['model']:<28} {setting.name:<8} params {_cell(row['params_m'], '.3f'):>8} M  "
                  f"GMACs {_cell(row['gmacs'], '.2f'):>8}  GFLOPs {_cell(row['gflops'], '.2f'):>8}  {row['note']}",
                  flush=True)
            rows.append(row)
    return {"metadata": metadata(), "rows": rows}


def main(argv: Optional[list[str]] = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", type=Path, default=Path(__file__).resolve().parent / "results",
                        help="folder for complexity.json and complexity.md (default: benchmarks/results)")
    args = parser.parse_args(argv)
    table = build_table()
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "complexity.json").write_text(json.dumps(table, indent=2) + "\n")
    markdown = to_markdown(table)
    (args.out / "complexity.md").write_text(markdown)
    print(f"\nwrote {args.out / 'complexity.json'} and {args.out / 'complexity.md'}")


if __name__ == "__main__":
    main()
