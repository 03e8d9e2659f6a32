"""Render the README's generated parts from the committed results in ``benchmarks/results/``.

Each part lies between ``<!-- NAME -->`` and ``<!-- /NAME -->`` in README.md and is replaced as a whole by what the
function of that name in ``SECTIONS`` returns: tables and the sentences that carry measured numbers (where and when,
the numbers themselves), so that the README holds no number that is not in a results file. What the tables mean is
prose in README.md, around the markers. ``--check`` exits non-zero when README.md is stale.

Usage::

    python benchmarks/readme_tables.py [--check]
"""
from __future__ import annotations

import argparse
import json
import re
import statistics
import sys
from pathlib import Path
from typing import Any, Callable, Optional

import nnunetv2_lightmedseg.trainers as trainers
from common import RESULTS, cell
from nnunetv2_lightmedseg.architectures import get_preset
from nnunetv2_lightmedseg.trainers.budgets import base_trainer_name

README = Path(__file__).resolve().parents[1] / "README.md"
LIGHTMEDSEG, REFERENCE = "LightMedSeg-paper", "nnU-Net default (PlainConvUNet)"

#: The speed targets of the project (issue "Speed and memory on GPU"): (row key, label, setting, mode, bound).
#: A speed-up must be at least the bound; a memory ratio at most.
GPU_TARGETS = [
    ("forward_ms_speedup", "patch forward, batch 1", ">=", 10.0),
    ("train_step_ms_speedup", "training step, nnU-Net's batch", ">=", 8.0),
    ("train_peak_ratio", "training peak memory, share of nnU-Net default's", "<=", 0.25),
    ("case_s_speedup", "whole case through nnUNetPredictor", ">=", 5.0),
    ("case_s_mirror_speedup", "whole case through nnUNetPredictor, mirrored", ">=", 5.0),
]
#: The GPU speed issue's targets, each model as nnU-Net's commands run it by default (``speed.py --modes as-shipped``).
AS_SHIPPED_TARGETS = [
    ("forward_ms_speedup", "patch forward, batch 1", ">=", 10.0),
    ("train_step_ms_speedup", "training step, nnU-Net's batch", ">=", 5.0),
    ("train_peak_ratio", "training peak memory, share of nnU-Net default's", "<=", 0.25),
]
CPU_TARGETS = [("case_s_speedup", "CPU whole ACDC case", ">=", 10.0),
               ("case_s_mirror_speedup", "CPU whole ACDC case, mirrored", ">=", 10.0)]


def load(name: str) -> Optional[dict[str, Any]]:
    path = RESULTS / name
    return json.loads(path.read_text()) if path.is_file() else None


def source(meta: dict[str, Any], file: str) -> str:
    """Device, date, versions and a link to the results file."""
    device = meta.get("device", f"CPU: {meta.get('cpu')}")
    return (f"{device}, {meta['date'][:10]}, torch {meta['torch']}, nnunetv2 {meta['nnunetv2']}; "
            f"[`{file}`](benchmarks/results/{file}), command in the file")


def speed_rows_table(rows: list[dict[str, Any]], gpu: bool) -> list[str]:
    head = ("| Model | Setting | Mode | Fwd b1 (ms) | x | " +
            ("Achieved (GB/s) | Train step (ms) | x | Train peak (GiB) | " if gpu else "") +
            "Case (s) | x | Case, mirrored (s) | x | Note |")
    lines = [head, "|---|---|---|" + "---:|" * (head.count("|") - 5) + "---|"]
    for r in rows:
        cells = [r["model"], f"{r['setting']} (b{r['train_batch']})", r["mode"], cell(r.get("forward_ms"), ".2f"),
                 cell(r.get("forward_ms_speedup"), ".2f")]
        if gpu:
            cells += [cell(r.get("achieved_gbps"), ".0f"), cell(r.get("train_step_ms"), ".1f"),
                      cell(r.get("train_step_ms_speedup"), ".2f"), cell(r.get("train_peak_gib"), ".2f")]
        cells += [cell(r.get("case_s"), ".3f"), cell(r.get("case_s_speedup"), ".2f"),
                  cell(r.get("case_s_mirror"), ".3f"), cell(r.get("case_s_mirror_speedup"), ".2f"), r.get("note", "")]
        lines.append("| " + " | ".join(cells) + " |")
    return lines


def target_line(label: str, setting: str, mode: str, op: str, bound: float, value: float, digits: int = 2) -> str:
    """One row of a targets table: the bound, the measured value and whether (or by how much not) it is met."""
    met = value >= bound if op == ">=" else value <= bound
    miss = "yes" if met else (f"no, {bound / value:.1f}x below the target" if op == ">=" else
                              f"no, {value / bound:.1f}x above the bound")
    return f"| {label} | {setting} | {mode} | {op} {bound:g} | {value:.{digits}f} | {miss} |"


TARGETS_HEADER = ("| Target | Setting | Mode | Required | Measured | Met |", "|---|---|---|---:|---:|---|")


def target_lines(rows: list[dict[str, Any]], targets: list[tuple[str, str, str, float]],
                 shipped: bool = False) -> list[str]:
    """One line per target and LightMedSeg row; with ``shipped``, prediction targets also as each model predicts
    by default: LightMedSeg replaying CUDA graphs (its ``graphs`` rows) against nnU-Net default eager."""
    lines = list(TARGETS_HEADER)
    for key, label, op, bound in targets:
        for r in rows:
            if r["model"] == LIGHTMEDSEG and r.get(key) is not None:
                lines.append(target_line(label, r["setting"], r["mode"], op, bound, r[key]))
        if shipped and key.endswith("_speedup") and not key.startswith("train"):
            time_key = key[:-len("_speedup")]
            for r in rows:
                reference = [q for q in rows if q["model"] == REFERENCE and q["mode"] == "eager"
                             and q["setting"] == r["setting"] and q.get(time_key)]
                if r["model"] == LIGHTMEDSEG and r["mode"] == "graphs" and r.get(time_key) and reference:
                    lines.append(target_line(label, r["setting"], "as shipped: graphs vs nnU-Net eager", op, bound,
                                             round(reference[0][time_key] / r[time_key], 2)))
    return lines


def demo_result() -> str:
    demo = load("demo_cpu.json")
    if demo is None:
        return "No demo result committed yet: run `lightmedseg demo` and copy its summary.json to demo_cpu.json.\n"
    meta, seconds = demo["metadata"], demo["seconds"]
    dice = ", ".join(f"{name.split(' (')[0]} {value:.3f}" for name, value in demo["dice"].items())
    return (f"{meta['date'][:10]}, {meta['cpu_count']} CPUs of {meta['cpu']}, {meta['cpu_capability']}, "
            f"torch {meta['torch']}, nnunetv2 {meta['nnunetv2']}, `{demo['trainer']}`: "
            f"**mean foreground Dice {demo['mean_foreground_dice']:.3f}** on the {demo['test_cases']} held-out cases "
            f"({dice}), {demo['parameters'] / 1e6:.2f}M parameters, {demo['gflops']:.2f} GFLOPs at the "
            f"{' x '.join(map(str, demo['patch_size']))} patch, **{seconds['total']:.0f} s** in all, of which training "
            f"{seconds['train']:.0f} s, planning and preprocessing {seconds['plan_and_preprocess']:.0f} s, prediction "
            f"{seconds['predict']:.0f} s; the machine's 5-minute load average at the end {meta['load_average'][1]:.1f} "
            f"([`benchmarks/results/demo_cpu.json`](benchmarks/results/demo_cpu.json)).\n")


def multi_gpu_result() -> str:
    table = load("multi_gpu_acdc.json")
    if table is None:
        return "Not yet run on a machine of several GPUs: `benchmarks/multi_gpu.py` measures it.\n"
    meta, runs = table["metadata"], {run["gpus"]: run for run in table["runs"]}
    one, many = runs[1], runs[max(runs)]
    prediction = table["prediction"]
    return (f"Measured {meta['date'][:10]} on {meta['device']} (torch {meta['torch']}, nnunetv2 {meta['nnunetv2']}), "
            f"`{meta['trainer']}` on {meta['dataset']} fold {meta['fold']} "
            f"({'side by side on other GPUs of the host' if meta['side_by_side'] else 'one after the other'}): "
            f"median epoch {many['median_epoch_seconds']:.1f} s on {many['gpus']} GPUs against "
            f"{one['median_epoch_seconds']:.1f} s on one, a speed-up of **{table['speedup']:.2f}x**; nnU-Net's "
            f"validation mean Dice {many['validation_mean_dice_nnunet']:.3f} ({many['gpus']} GPUs) and "
            f"{one['validation_mean_dice_nnunet']:.3f} (one); `nnUNetv2_predict` with the {many['gpus']}-GPU model on "
            f"{len(prediction['cases'])} validation cases, mean Dice {prediction['mean_dice']:.3f} "
            f"([`benchmarks/results/multi_gpu_acdc.json`](benchmarks/results/multi_gpu_acdc.json), "
            f"`python benchmarks/multi_gpu.py`).\n")


def complexity_table() -> str:
    table = load("complexity.json")
    if table is None:
        return "No complexity results yet: run `python benchmarks/complexity.py`.\n"
    lines = [f"Measured on {source(table['metadata'], 'complexity.json')}.", "",
             "| Model | Setting | Input (B x C x D x H x W) | Params (M) | GFLOPs |", "|---|---|---|---:|---:|"]
    for r in table["rows"]:
        shape = " x ".join(map(str, r["input_shape"])) if r["input_shape"] else "not stated"
        lines.append(f"| {r['model']} | {r['setting']} | {shape} | {cell(r['params_m'], '.3f')} | "
                     f"{cell(r['gflops'], '.2f')} |")
    return "\n".join(lines) + "\n"


def speed_gpu_table() -> str:
    table = load("speed_nvidia-h200.json")
    if table is None:
        return "No GPU speed results yet: run `python benchmarks/speed.py` on a GPU.\n"
    meta = table["metadata"]
    lines = [f"Measured on {source(meta, 'speed_nvidia-h200.json')}; {meta['precision']}; copy bandwidth "
             f"{meta['copy_bandwidth_gbps']:.0f} GB/s.", ""]
    lines += speed_rows_table(table["rows"], gpu=True)
    lines += ["", "Against the targets:", ""] + target_lines(table["rows"], GPU_TARGETS, shipped=True)
    return "\n".join(lines) + "\n"


def speed_gpu_as_shipped_table() -> str:
    table = load("speed_nvidia-h200_as-shipped.json")
    if table is None:
        return "No as-shipped GPU speed results yet: run `python benchmarks/speed.py --modes as-shipped` on a GPU.\n"
    meta, rows = table["metadata"], table["rows"]
    bandwidth = meta["copy_bandwidth_gbps"]
    lines = [f"Measured on {source(meta, 'speed_nvidia-h200_as-shipped.json')}; {meta['precision']}; copy "
             f"bandwidth {bandwidth:.0f} GB/s.", ""]
    lines += speed_rows_table(rows, gpu=True)
    shipped = [r for r in rows if r["mode"] == "as-shipped"]
    lines += ["", "Against the targets, as shipped:", ""] + target_lines(shipped, AS_SHIPPED_TARGETS)
    for r in shipped:
        if r["model"] == LIGHTMEDSEG and r["setting"] == "iso128" and r.get("achieved_gbps"):
            lines.append(target_line("forward's share of the copy bandwidth", "iso128", "as-shipped", ">=", 0.25,
                                     r["achieved_gbps"] / bandwidth, digits=3))
    return "\n".join(lines) + "\n"


#: The epoch-time issue's target: LightMedSeg's epoch, as it ships, against nnU-Net default's.
EPOCH_TARGET = ("epoch wall time, nnU-Net default's over LightMedSeg's", ">=", 4.0)


def epoch_time_table() -> str:
    table = load("epoch_time_nvidia-h200.json")
    if table is None:
        return "No epoch-time results yet: run `python benchmarks/epoch_time.py` on a GPU.\n"
    meta, runs = table["metadata"], table["runs"]
    reference = next((r for r in runs if base_trainer_name(r["trainer"]) == "nnUNetTrainer"), None)
    lines = [f"Measured on {source(meta, 'epoch_time_nvidia-h200.json')}; {meta['cpus']} CPUs; {meta['summary']} "
             f"(of {meta['epochs']}); each trainer alone on the card, one after the other.", "",
             # nnU-Net's data-loader processes (nnUNet_n_proc_DA) augment only where the Augmentation column says
             # so; with the augmentation on the device they load and crop
             "| Trainer | Augmentation | Data-loader processes | Compiled | Epoch (s) | Training iterations (s) | "
             "Iterations / s | x (epoch) |", "|---|---|---:|---|---:|---:|---:|---:|"]
    ratios = {r["trainer"]: reference["median_epoch_seconds"] / r["median_epoch_seconds"]
              for r in runs if reference and r["median_epoch_seconds"]}
    for r in runs:
        lines.append(f"| {r['trainer']} | {r['augmentation']} | {r['augmentation_workers']} | {r['compiled']} | "
                     f"{cell(r['median_epoch_seconds'], '.1f')} | {cell(r['median_train_seconds'], '.1f')} | "
                     f"{cell(r['train_iterations_per_second'], '.1f')} | {cell(ratios.get(r['trainer']), '.2f')} |")
    if reference:
        label, op, bound = EPOCH_TARGET
        lines += ["", "Against the target:", "", *TARGETS_HEADER]
        for r in runs:
            if r is not reference and r["trainer"] in ratios:
                lines.append(target_line(label, r["trainer"], "nnUNetv2_train's defaults", op, bound,
                                         ratios[r["trainer"]]))
    return "\n".join(lines) + "\n"


def speed_gpu_baselines_table() -> str:
    table = load("speed_nvidia-h200_baselines.json")
    if table is None:
        return "No GPU speed results of the baselines yet.\n"
    lines = [f"Measured on {source(table['metadata'], 'speed_nvidia-h200_baselines.json')}.", ""]
    return "\n".join(lines + speed_rows_table(table["rows"], gpu=True)) + "\n"


def speed_cpu_table() -> str:
    table = load("speed_cpu-2cores.json")
    if table is None:
        return "No CPU speed results yet: run `python benchmarks/speed.py --tag cpu-2cores` on 2 cores.\n"
    lines = [f"Measured on {source(table['metadata'], 'speed_cpu-2cores.json')}; float32.", ""]
    lines += speed_rows_table(table["rows"], gpu=False)
    lines += ["", "Against the target:", ""]
    lines += target_lines([r for r in table["rows"] if r["setting"] == "acdc"], CPU_TARGETS)
    return "\n".join(lines) + "\n"


def speed_onnx_table() -> str:
    table = load("speed_onnx_cpu.json")
    if table is None:
        return "No ONNX Runtime results yet: run `python benchmarks/onnx_speed.py`.\n"
    meta = table["metadata"]
    lines = [f"Measured on {source(meta, 'speed_onnx_cpu.json')}; {meta['threads']} threads, case {meta['case']}, "
             f"{meta['tiles']} tiles; max abs logit difference {meta['max_abs_logit_difference']:.1e}.", "",
             "| Backend | Sliding window (s) | Mirrored (s) | Whole case, file to file (s) |", "|---|---:|---:|---:|"]
    lines += [f"| {r['backend']} | {r['sliding_window_s']:.2f} | {r['sliding_window_tta_s']:.2f} | "
              f"{r['whole_case_s']:.2f} |" for r in table["rows"]]
    return "\n".join(lines) + "\n"


def accuracy_tables() -> str:
    """One part per ``accuracy_NAME.json``: a heading, the table ``accuracy.py`` wrote beside it, its budget."""
    files = sorted(RESULTS.glob("accuracy_*.json"))
    if not files:
        return ("No accuracy results are committed yet: `benchmarks/accuracy.py` (see its `--help`) trains and "
                "scores them; `benchmarks/device/acdc_session.sh` is the run planned for one GPU.\n")
    parts = []
    for file in files:
        table, name = json.loads(file.read_text()), file.stem.removeprefix("accuracy_")
        meta = table["metadata"]
        budget = meta["budget"]
        body = (RESULTS / f"accuracy_{name}.md").read_text().split("\n", 1)[1]  # below accuracy.py's title
        parts.append(f"#### `{name}`: {meta['dataset']}, {budget['epochs']} epochs x {budget['iterations_per_epoch']} "
                     f"iterations\n\n{body.strip()}")
        if meta.get("smoke_test"):
            tested = sorted({case for row in table["rows"] for case in row.get("cases", [])})
            if tested:
                parts.append(f"Test folder (held out from every fold): {', '.join(tested)}.")
            continue
        parts.append(f"Budget {budget['epochs']} x {budget['iterations_per_epoch']} = "
                     f"{budget['epochs'] * budget['iterations_per_epoch']:,} iterations per training; "
                     f"{meta['jobs_per_gpu']} training{'s' if meta['jobs_per_gpu'] != 1 else ''} of this table "
                     f"at once on each GPU."
                     + (f" Note: {meta['params_recounted']}." if "params_recounted" in meta else ""))
    return "\n\n".join(parts) + "\n"


def recipe_of(row: dict[str, Any], any_network: bool = False) -> Optional[str]:
    """The training recipe of a LightMedSeg row: ``nnUNetTrainerLightMedSeg`` or a variant of it that changes how it
    trains (a recipe, the batch, deep supervision, where augmentation runs), adds to the paper network what it leaves
    switched off (an extension, ``refine_head``) or sets another preset (its widths), at any length. The recipe's
    name, followed by the variant's where the variant is not a recipe (``adamw + batch2x``, ``adamw + refinedHead``,
    ``adamw + fine``); None for every other row (other networks, and, unless ``any_network``, the ablations, which
    take a component away). Rows written before accuracy.py recorded recipes (no ``recipe`` key) were trained with the
    only recipe there was, nnU-Net's SGD."""
    base = base_trainer_name(row["trainer"])
    cls = getattr(trainers, base, None)
    if cls is None or not issubclass(cls, trainers.nnUNetTrainerLightMedSeg):
        return None
    paper = get_preset("paper")
    extends_paper = all(value is True and getattr(paper, option) is False
                        for option, value in cls.network_options.items())
    if not any_network and not extends_paper:
        return None
    recipe = row["recipe"]["name"] if "recipe" in row else "nnUNetSGD"
    variant = base.removeprefix("nnUNetTrainerLightMedSeg").removeprefix("_")
    return recipe if variant in ("", recipe) else f"{recipe} + {variant}"


def accuracy_results() -> dict[str, dict[str, Any]]:
    """Every committed ``accuracy_NAME.json`` by NAME."""
    return {file.stem.removeprefix("accuracy_"): json.loads(file.read_text())
            for file in sorted(RESULTS.glob("accuracy_*.json"))}


def recipe_sweep_table() -> str:
    return recipe_sweep(accuracy_results())


def recipe_sweep(tables: dict[str, dict[str, Any]]) -> str:
    """One row per recipe and set of trainings: the network's parameters, LightMedSeg's validation Dice per class,
    mean over the folds, and nnU-Net default's on the same folds of the same table (the same run), where a table has
    it; where it has not (on every fold), nnU-Net default's mean over every training of it at the same dataset, budget
    and folds, the table's own included, and how many trainings each fold has (a weaker comparison: run-to-run spread
    included); beside them nnU-Net's training and validation loss of the last epoch (mean over the folds, where the
    table recorded them), which says whether a recipe fits the training patches better without validating better.
    Trainings that two tables share (the same nnU-Net training logs) are one row naming both."""
    def losses(runs: list[dict[str, Any]]) -> Optional[str]:
        values = [[r.get(f"{loss}_last_epoch") for r in runs] for loss in ("train_loss", "val_loss")]
        if not runs or None in values[0] + values[1]:
            return None
        return " / ".join(f"{sum(v) / len(v):.3f}" for v in values)

    def setting(meta: dict[str, Any]) -> tuple:
        return meta["dataset"], meta["budget"]["epochs"], meta["budget"]["iterations_per_epoch"]

    # nnU-Net default's Dice per (setting, fold), one value per training (a training two tables share counts once
    # where the tables recorded its logs)
    default_runs: dict[tuple, dict[tuple, float]] = {}
    entries: dict[tuple, dict[str, Any]] = {}
    for name, table in tables.items():
        meta = table["metadata"]
        if meta.get("smoke_test"):
            continue
        rows = [r for r in table["rows"] if r["kind"] == "cross-validation" and r["train_fraction"] == 1.0]
        defaults = [r for r in rows if base_trainer_name(r["trainer"]) == "nnUNetTrainer"]
        for r in defaults:
            training = tuple(sorted(r.get("training_logs", []))) or (name, r["trainer"])
            default_runs.setdefault((*setting(meta), r["fold"]), {})[training] = r["mean_dice"]
        groups: dict[tuple[str, str], list[dict[str, Any]]] = {}
        for row in rows:
            recipe = recipe_of(row)
            if recipe is not None:
                groups.setdefault((recipe, row["trainer"]), []).append(row)
        for (recipe, trainer), runs in groups.items():
            folds = sorted(r["fold"] for r in runs)
            logs = tuple(sorted(log for r in runs for log in r.get("training_logs", [])))
            entry = entries.setdefault((recipe, logs or (name, trainer)), {
                "recipe": recipe, "tables": [], "meta": meta, "folds": folds, "reference": None,
                "params": runs[0]["params"] / 1e6,
                "losses": losses(runs), "reference_losses": None,
                "mean": sum(r["mean_dice"] for r in runs) / len(runs),
                "per_class": ", ".join(f"{c} {sum(r[c]['dice'] for r in runs) / len(runs):.3f}"
                                       for c in table["classes"])})
            entry["tables"].append(name)
            reference = [r for r in defaults if r["fold"] in folds]
            if entry["reference"] is None and len(reference) == len(folds):
                entry["reference"] = sum(r["mean_dice"] for r in reference) / len(reference)
                entry["reference_losses"] = losses(reference)

    def every_training(e: dict[str, Any]) -> str:
        per_fold = [default_runs.get((*setting(e["meta"]), fold), {}) for fold in e["folds"]]
        if e["reference"] is not None or not all(per_fold):
            return ""
        mean = sum(sum(r.values()) / len(r) for r in per_fold) / len(per_fold)
        counts = "+".join(str(len(r)) for r in per_fold)
        return f"{mean:.3f} ({counts} training{'s' if counts != '1' else ''}): {e['mean'] - mean:+.3f}"

    lines = ["| Recipe | Params (M) | Table | Dataset | Budget (epochs x iterations) | Folds | Dice per class | "
             "Mean Dice | nnU-Net default, same run and folds | Difference | nnU-Net default, every training of the "
             "same budget and folds (trainings per fold): difference | Loss, last epoch: training / validation | "
             "nnU-Net default's |",
             "|---|---:|---|---|---|---|---|---:|---:|---:|---|---:|---:|"]
    for e in entries.values():
        meta, budget, ref = e["meta"], e["meta"]["budget"], e["reference"]
        lines.append(f"| {e['recipe']} | {e['params']:.3f} | {', '.join(f'`{t}`' for t in e['tables'])} | "
                     f"{meta['dataset']} | {budget['epochs']} x {budget['iterations_per_epoch']} | "
                     f"{','.join(map(str, e['folds']))} | {e['per_class']} | {e['mean']:.3f} | {cell(ref, '.3f')} | "
                     f"{cell(None if ref is None else e['mean'] - ref, '+.3f')} | {every_training(e)} | "
                     f"{e['losses'] or ''} | {e['reference_losses'] or ''} |")
    return "\n".join(lines) + "\n"


def recipe_gap_table() -> str:
    return recipe_gap(accuracy_results()) or "No committed table scores both networks case by case yet.\n"


def error_difference(cases: list[dict[str, Any]], reference: dict[str, dict[str, Any]], name: str,
                     kind: str) -> Optional[float]:
    """Mean over ``cases`` of one class's error fraction minus the reference's on the same case (None where no case
    has both: an empty reference volume has no fraction)."""
    pairs = [(c[name][kind], reference[c["case"]][name][kind]) for c in cases]
    differences = [a - b for a, b in pairs if a is not None and b is not None]
    return sum(differences) / len(differences) if differences else None


def recipe_gap(tables: dict[str, dict[str, Any]], worst: int = 5) -> str:
    """Where LightMedSeg's gap to nnU-Net default lies, case by case: for every table that scored a LightMedSeg
    row (any recipe, preset, ablation or extension) and nnU-Net default on the same folds with per-case Dice
    (``case_dice``), the difference per class, how many validation cases are worse, the median per-case difference
    of the mean Dice, the cases with the largest shortfall and, where the table counted them (``case_errors``), the
    difference in false positive and false negative voxels per class (mean over the cases, as fractions of the
    reference volume): whether LightMedSeg loses its Dice by over- or by under-segmenting."""
    lines = []
    for name, table in tables.items():
        rows = [r for r in table["rows"] if r["kind"] == "cross-validation" and r["train_fraction"] == 1.0
                and "case_dice" in r]
        classes = table["classes"]
        reference = {c["case"]: c for r in rows if base_trainer_name(r["trainer"]) == "nnUNetTrainer"
                     for c in r["case_dice"]}
        reference_errors = {c["case"]: c for r in rows if base_trainer_name(r["trainer"]) == "nnUNetTrainer"
                            for c in r.get("case_errors", [])}
        for trainer in sorted({r["trainer"] for r in rows if recipe_of(r, any_network=True) is not None}):
            runs = [r for r in rows if r["trainer"] == trainer]
            cases = [c for r in runs for c in r["case_dice"]]
            if not cases or any(c["case"] not in reference for c in cases):
                continue
            delta = {c["case"]: {n: c[n] - reference[c["case"]][n] for n in classes} for c in cases}
            mean_delta = {case: sum(d.values()) / len(classes) for case, d in delta.items()}
            ordered = sorted(mean_delta, key=mean_delta.get)
            per_class = ", ".join(f"{n} {sum(d[n] for d in delta.values()) / len(delta):+.3f}" for n in classes)
            shortfall = sum(-v for v in mean_delta.values() if v < 0)
            carried = sum(-mean_delta[c] for c in ordered[:worst] if mean_delta[c] < 0)
            errors = [c for r in runs for c in r.get("case_errors", [])]
            error_delta = ""
            if errors and all(c["case"] in reference_errors for c in errors):
                error_delta = ", ".join(
                    f"{n} " + " / ".join(cell(error_difference(errors, reference_errors, n, kind), "+.3f")
                                         for kind in ("false_positive", "false_negative")) for n in classes)
            label = recipe_of(runs[0], any_network=True)
            lines.append(
                f"| `{name}` | {trainer} ({label}) | {','.join(str(r['fold']) for r in runs)} | "
                f"{len(cases)} | {per_class} | {sum(mean_delta.values()) / len(mean_delta):+.3f} | "
                f"{sum(v < 0 for v in mean_delta.values())} of {len(cases)} | "
                f"{statistics.median(mean_delta.values()):+.3f} | "
                f"{cell(carried / shortfall if shortfall else None, '.0%')} | "
                + ", ".join(f"{c.split('.')[0]} {mean_delta[c]:+.3f}" for c in ordered[:worst]) + f" | {error_delta} |")
    if not lines:
        return ""
    return "\n".join([
        f"| Table | LightMedSeg (recipe) | Folds | Validation cases | Difference per class | Mean difference | "
        f"Cases worse | Median per-case difference | Share of the shortfall in the {worst} worst cases | "
        f"{worst} worst cases (difference of the mean Dice) | Difference in false positives / false negatives per "
        f"class (share of the reference volume) |", "|---|---|---|---:|---|---:|---:|---:|---:|---|---|",
        *lines]) + "\n"


def accuracy_run_to_run() -> str:
    return (run_to_run(accuracy_results()) or "No training is repeated in the committed tables yet.") + "\n"


def run_to_run(tables: dict[str, dict[str, Any]]) -> str:
    """One sentence on the trainings of one trainer, fold and budget that the committed tables hold more than once
    (each training once, known by its nnU-Net log names): the spread a single fold's difference must beat."""
    scores: dict[tuple, dict[tuple, tuple[float, str]]] = {}
    for name, table in tables.items():
        meta = table["metadata"]
        if meta.get("smoke_test"):
            continue
        for row in table["rows"]:
            if row["kind"] == "cross-validation" and row["train_fraction"] == 1.0 and row.get("training_logs"):
                key = (meta["dataset"], meta["budget"]["epochs"], meta["budget"]["iterations_per_epoch"],
                       row["trainer"], row["fold"])
                scores.setdefault(key, {}).setdefault(tuple(row["training_logs"]), (row["mean_dice"], name))
    repeated = []
    for (_, _, _, trainer, fold), runs in scores.items():
        if len(runs) > 1:
            dice = [d for d, _ in runs.values()]
            repeated.append(f"{trainer} fold {fold}: {', '.join(f'{d:.3f} (`{n}`)' for d, n in runs.values())}, "
                            f"a spread of {max(dice) - min(dice):.3f}")
    if not repeated:
        return ""
    return ("**Run to run**: the same trainer, fold and budget, trained again in another run, scored mean Dice "
            + "; ".join(repeated) + ".")


def stability_table() -> str:
    files = sorted(RESULTS.glob("stability_*.json"))
    if not files:
        return "No stability results yet: run `python benchmarks/stability.py` on a GPU.\n"
    lines = ["| Autocast | Recipe | Device | Date | Iterations (batch x patch) | Non-finite losses | "
             "Non-finite gradients applied | fp16 steps skipped by the scaler | Final grad scale | Weights finite | "
             "s / iteration | File |",
             "|---|---|---|---|---|---:|---:|---:|---:|---|---:|---|"]
    for file in files:
        table = json.loads(file.read_text())
        for run in table["runs"]:
            shape = f"{run['batch_size']} x {' x '.join(map(str, run['patch_size']))}"
            # runs before the recipe was recorded trained with nnU-Net's SGD (LightMedSeg's default before 0.2)
            recipe = run.get("recipe") or "nnUNetSGD"
            lines.append(f"| {run['dtype']} | {recipe} | {table['metadata']['device']} | "
                         f"{table['metadata']['date'][:10]} | {run['iterations']} ({shape}) | "
                         f"{run['nonfinite_loss']} | {run['nonfinite_grad_applied']} | "
                         f"{cell(run['fp16_overflow_steps_skipped_by_scaler'], 'd')} | "
                         f"{cell(run['final_grad_scale'], '.0f')} | {run['weights_finite_at_end']} | "
                         f"{run['seconds_per_iteration']:.3f} | [{file.name}](benchmarks/results/{file.name}) |")
    return "\n".join(lines) + "\n"


#: README marker name -> the function that renders what stands between its markers, in README order.
SECTIONS: dict[str, Callable[[], str]] = {
    "multi-gpu-result": multi_gpu_result, "demo-result": demo_result, "complexity-table": complexity_table,
    "speed-gpu-table": speed_gpu_table, "speed-gpu-baselines-table": speed_gpu_baselines_table,
    "speed-gpu-as-shipped-table": speed_gpu_as_shipped_table, "epoch-time-table": epoch_time_table,
    "speed-cpu-table": speed_cpu_table, "speed-onnx-table": speed_onnx_table, "accuracy-tables": accuracy_tables,
    "accuracy-run-to-run": accuracy_run_to_run, "recipe-sweep-table": recipe_sweep_table,
    "recipe-gap-table": recipe_gap_table,
    "stability-table": stability_table,
}


def render(text: str) -> str:
    for name, section in SECTIONS.items():
        pattern = re.compile(rf"(<!-- {name} -->\n).*?(<!-- /{name} -->)", re.S)
        if not pattern.search(text):
            raise SystemExit(f"README.md has no <!-- {name} --> ... <!-- /{name} --> markers")
        text = pattern.sub(lambda m: m.group(1) + section() + m.group(2), text)
    return text


def main(argv: Optional[list[str]] = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--check", action="store_true", help="only check that README.md is up to date")
    args = parser.parse_args(argv)
    current = README.read_text()
    rendered = render(current)
    if args.check:
        if rendered != current:
            print("README.md is stale: run python benchmarks/readme_tables.py", file=sys.stderr)
            return 1
        return 0
    README.write_text(rendered)
    return 0


if __name__ == "__main__":
    sys.exit(main())
