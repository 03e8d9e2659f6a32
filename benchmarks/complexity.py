"""Complexity table: parameters, GMACs and GFLOPs of LightMedSeg presets and of the baselines at named inputs.

FLOPs are counted by ``nnunetv2_lightmedseg.flops.count_flops`` (PyTorch's ``FlopCounterMode``, 2 FLOPs per
multiply-add, element-wise work not counted) on one real forward pass on the CPU, batch 1. GMACs = GFLOPs / 2,
reported beside GFLOPs because papers mix the two. Parameters are the sum of ``numel`` over all parameters,
training-only deep-supervision heads included.

Baselines are built exactly as training and prediction build them: from a small nnU-Net plans dict for the setting
(written like nnU-Net's ExperimentPlanner writes 3d_fullres plans), through each trainer's own
``build_network_architecture``; the fixed-input transformers first round the plan's patch with the trainer's own
``adapt_plans`` (UNETR: multiples of 16, SwinUNETR: 32, Primus: 8), and the row states the patch measured.

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
import json
from dataclasses import asdict, dataclass, replace
from functools import partial
from pathlib import Path
from typing import Any, Callable, Optional

import torch
from torch import nn

from common import cell, generated_line
from nnunetv2_lightmedseg.architectures import PRESETS, LightMedSeg
from nnunetv2_lightmedseg.flops import CONVENTION, FLOP_COUNTER, count_flops
from nnunetv2_lightmedseg.provenance import provenance

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

@dataclass(frozen=True)
class Built:
    """What a builder returns when its model is measured at another input than the setting's (a rounded patch),
    or with strides or a note to show; a builder may also return the bare ``nn.Module``."""

    model: nn.Module
    patch_size: Optional[Stride3D] = None
    strides: Optional[tuple[Stride3D, ...]] = None
    note: str = ""


ModelBuilder = Callable[[InputSetting], "nn.Module | Built"]


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


# ---------------------------------------------------------------------------------------------------------------------
# Baselines, built by their nnU-Net trainers from a plan of the setting
# ---------------------------------------------------------------------------------------------------------------------
#: nnU-Net 3d_fullres topology per setting: patch, batch, strides (pool_op_kernel_sizes), conv kernel sizes.
#: iso128: a BraTS-like plan (1 mm isotropic, patch 128^3, batch 2), topology from nnU-Net's own
#: get_pool_and_conv_props as its ExperimentPlanner calls it (min feature map 4, no pooling limit).
#: acdc: the plan nnU-Net 2.8.1 makes for ACDC (Dataset027) 3d_fullres, as in
#: benchmarks/plans/Dataset027_ACDC_nnUNetPlans.json.
NNUNET_TOPOLOGY: dict[str, dict[str, Any]] = {
    "acdc": {"patch_size": [10, 256, 224], "batch_size": 7,
             "strides": [[1, 1, 1], [1, 2, 2], [1, 2, 2], [2, 2, 2], [1, 2, 2], [1, 2, 2]],
             "kernel_sizes": [[1, 3, 3], [1, 3, 3], [3, 3, 3], [3, 3, 3], [3, 3, 3], [3, 3, 3]]},
}


def _nnunet_topology(setting: InputSetting) -> dict[str, Any]:
    if setting.name in NNUNET_TOPOLOGY:
        return NNUNET_TOPOLOGY[setting.name]
    if setting.name == "iso128":
        from nnunetv2.experiment_planning.experiment_planners.network_topology import get_pool_and_conv_props
        _, strides, kernels, patch, _ = get_pool_and_conv_props([1.0, 1.0, 1.0], setting.patch_size, 4, 999999)
        assert list(patch) == list(setting.patch_size), (patch, setting.patch_size)
        return {"patch_size": [int(p) for p in patch], "batch_size": 2, "strides": strides, "kernel_sizes": kernels}
    raise NotApplicable(f"no nnU-Net plan is defined for setting {setting.name!r} (see NNUNET_TOPOLOGY)")


def nnunet_plans(setting: InputSetting) -> dict[str, Any]:
    """A minimal nnU-Net plans dict for ``setting``: one 3d_fullres configuration whose ``architecture`` entry is
    written as nnU-Net's ExperimentPlanner (``get_plans_for_configuration``) writes it, with its defaults: base 32
    features doubling per stage up to 320, 2 convolutions per stage in encoder and decoder, instance norm,
    LeakyReLU, convolution bias."""
    try:
        from dynamic_network_architectures.architectures.unet import PlainConvUNet
        from dynamic_network_architectures.building_blocks.helper import (
            convert_dim_to_conv_op,
            get_matching_instancenorm,
        )
    except ImportError as error:
        raise NotApplicable(f"needs nnU-Net's dynamic-network-architectures: {error}") from error
    topology = _nnunet_topology(setting)
    num_stages = len(topology["strides"])
    conv_op = convert_dim_to_conv_op(3)
    norm = get_matching_instancenorm(conv_op)
    architecture = {
        "network_class_name": f"{PlainConvUNet.__module__}.{PlainConvUNet.__name__}",
        "arch_kwargs": {
            "n_stages": num_stages,
            "features_per_stage": [min(320, 32 * 2 ** i) for i in range(num_stages)],
            "conv_op": f"{conv_op.__module__}.{conv_op.__name__}",
            "kernel_sizes": [list(k) for k in topology["kernel_sizes"]],
            "strides": [list(s) for s in topology["strides"]],
            "n_conv_per_stage": [2] * num_stages,
            "n_conv_per_stage_decoder": [2] * (num_stages - 1),
            "conv_bias": True,
            "norm_op": f"{norm.__module__}.{norm.__name__}",
            "norm_op_kwargs": {"eps": 1e-5, "affine": True},
            "dropout_op": None, "dropout_op_kwargs": None,
            "nonlin": "torch.nn.LeakyReLU", "nonlin_kwargs": {"inplace": True},
        },
        "_kw_requires_import": ["conv_op", "norm_op", "dropout_op", "nonlin"],
    }
    configuration = {"data_identifier": "nnUNetPlans_3d_fullres", "preprocessor_name": "DefaultPreprocessor",
                     "batch_size": topology["batch_size"], "patch_size": list(topology["patch_size"]),
                     "architecture": architecture}
    return {"dataset_name": f"complexity_{setting.name}", "plans_name": "nnUNetPlans",
            "configurations": {"3d_fullres": configuration}}


#: token / downsampling grid of the transformers, shown in the Strides column
TRANSFORMER_STRIDES: dict[str, tuple[Stride3D, ...]] = {
    "nnUNetTrainerUNETR": ((16, 16, 16),),
    "nnUNetTrainerSwinUNETR": ((2, 2, 2),) * 5,
    "nnUNetTrainerPrimusV3S": ((8, 8, 8),),
}


def trainer_builder(trainer_name: str, setting: InputSetting) -> Built:
    """The network ``trainer_name`` trains and predicts with for the setting's nnU-Net plan (deep supervision off,
    as the predictor builds it), at the patch its trainer writes into the plans."""
    try:
        from nnunetv2.training.nnUNetTrainer.nnUNetTrainer import nnUNetTrainer
        from nnunetv2.utilities.plans_handling.plans_handler import PlansManager

        import nnunetv2_lightmedseg.trainers as trainers
    except ImportError as error:
        raise NotApplicable(f"needs nnU-Net: {error}") from error
    trainer = nnUNetTrainer if trainer_name == "nnUNetTrainer" else getattr(trainers, trainer_name)
    plans = nnunet_plans(setting)
    planned = list(plans["configurations"]["3d_fullres"]["patch_size"])
    change = trainer.adapt_plans(plans, "3d_fullres") if hasattr(trainer, "adapt_plans") else None
    plans_manager = PlansManager(plans)
    configuration = plans_manager.get_configuration("3d_fullres")
    try:
        model = trainer.build_network_architecture(plans_manager, configuration, setting.in_channels,
                                                   setting.num_classes, enable_deep_supervision=False)
    except ImportError as error:  # MONAI is an optional extra
        raise NotApplicable(str(error)) from error
    patch = tuple(int(p) for p in configuration.patch_size)
    if trainer_name in TRANSFORMER_STRIDES:
        strides = TRANSFORMER_STRIDES[trainer_name]
        note = (f"{trainer_name}.build_network_architecture; patch {planned} rounded to {list(patch)} by the trainer"
                if change else f"{trainer_name}.build_network_architecture at the planned patch {planned}")
        note += "; strides column: token / patch-embedding grid"
    else:
        strides = tuple(tuple(int(v) for v in s) for s in configuration.pool_op_kernel_sizes)
        note = (f"{trainer_name}.build_network_architecture on the setting's nnU-Net 3d_fullres plan "
                f"(features {configuration.network_arch_init_kwargs['features_per_stage']})")
    return Built(model, patch_size=patch, strides=strides, note=note)


BASELINES: dict[str, str] = {
    "nnU-Net default (PlainConvUNet)": "nnUNetTrainer",
    "UNETR (MONAI)": "nnUNetTrainerUNETR",
    "SwinUNETR (MONAI, feature 48)": "nnUNetTrainerSwinUNETR",
    "Primus V3-S (nnU-Net)": "nnUNetTrainerPrimusV3S",
}
for _name, _trainer in BASELINES.items():
    register_model(_name, partial(trainer_builder, _trainer))


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
    flops = count_flops(model, torch.randn(setting.input_shape))
    return {"params": params, "params_m": round(params / 1e6, 4), "macs": flops // 2,
            "gmacs": round(flops / 2e9, 4), "flops": flops, "gflops": round(flops / 1e9, 4)}


def _row_head(name: str, setting: InputSetting) -> dict[str, Any]:
    return {"model": name, "setting": setting.name, "input_shape": list(setting.input_shape),
            "strides": [list(s) for s in setting.strides]}


def build(builder: ModelBuilder, setting: InputSetting) -> tuple[nn.Module, InputSetting, str]:
    """The builder's model, the setting it is measured at (its own patch and strides where the builder returns a
    :class:`Built` with them) and its note. Raises :class:`NotApplicable` as the builder does."""
    built = builder(setting)
    if not isinstance(built, Built):
        built = Built(built)
    measured = replace(setting, patch_size=tuple(built.patch_size or setting.patch_size),
                       strides=tuple(built.strides or setting.strides))
    return built.model, measured, built.note


def complexity_row(name: str, builder: ModelBuilder, setting: InputSetting) -> dict[str, Any]:
    """One measured row of the table: the model ``name`` built by ``builder`` for ``setting``."""
    empty = {"params": None, "params_m": None, "macs": None, "gmacs": None, "flops": None, "gflops": None}
    try:
        model, measured, note = build(builder, setting)
    except NotApplicable as reason:
        return {**_row_head(name, setting), **empty, "source": "n/a", "note": str(reason)}
    torch.manual_seed(0)
    return {**_row_head(name, measured), **measure(model, measured), "source": "measured", "note": note}


def metadata() -> dict[str, Any]:
    """Where the table was made (``provenance``), how FLOPs were counted, and the settings."""
    return {**provenance("cpu"), "flop_counter": f"{FLOP_COUNTER}, on the CPU, batch 1", "convention": CONVENTION,
            "settings": [{**asdict(s), "input_shape": list(s.input_shape)} for s in SETTINGS]}


def to_markdown(table: dict[str, Any]) -> str:
    """The Markdown table for a ``complexity.json`` document."""
    meta = table["metadata"]
    lines = [
        "# Model complexity",
        "",
        generated_line(meta, f"FLOPs counted by {meta['flop_counter']}; {meta['convention']}."),
        "",
        "| Model | Setting | Input (B x C x D x H x W) | Strides | Params (M) | GMACs | GFLOPs | Source | Note |",
        "|---|---|---|---|---:|---:|---:|---|---|",
    ]
    for row in table["rows"]:
        shape = " x ".join(map(str, row["input_shape"])) if row["input_shape"] else "not stated"
        strides = " ".join("(" + ",".join(map(str, s)) + ")" for s in row["strides"]) if row["strides"] else ""
        lines.append(f"| {row['model']} | {row['setting']} | {shape} | {strides} | {cell(row['params_m'], '.3f')} | "
                     f"{cell(row['gmacs'], '.2f')} | {cell(row['gflops'], '.2f')} | {row['source']} | "
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
            print(f"{row['model']:<28} {setting.name:<8} params {cell(row['params_m'], '.3f'):>8} M  "
                  f"GMACs {cell(row['gmacs'], '.2f'):>8}  GFLOPs {cell(row['gflops'], '.2f'):>8}  {row['note']}",
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
