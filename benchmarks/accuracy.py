"""Accuracy benchmark: trainers through nnU-Net's pipeline on one dataset, same plans, folds and epoch budget.

Steps, each skipped when its output exists (so a stopped run resumes where it stopped):
1. ``nnUNetv2_plan_and_preprocess`` of the raw dataset (its ``splits_final.json`` is copied by the planner);
2. for ``--train-fractions`` below 1, extra folds appended to ``splits_final.json``: the same validation cases,
   training on that fraction of the fold's training patients (patients kept whole, e.g. both ACDC frames);
3. training of every (trainer, fold) job through nnU-Net's own ``run_training`` code path (what
   ``nnUNetv2_train`` runs), as the trainer named by the budget (``nnUNetTrainerLightMedSeg`` at 20 epochs trains
   ``nnUNetTrainerLightMedSeg_20epochs``, see ``nnunetv2_lightmedseg.trainers.budgets``), so that any trainer (an
   ablation switch, a baseline) trains under one budget and its results folder says which; results of a budget go
   to their own ``nnUNet_results`` root. Jobs run one per GPU in parallel (``--gpus``, ``--jobs-per-gpu``), resume
   from ``checkpoint_latest.pth``, and end with nnU-Net's validation of the fold;
4. metrics: per-class Dice and HD95 (mm, at the dataset's spacing) with MONAI on every fold's validation
   predictions (nnU-Net's cross-validation), and, with ``--test``, on the test folder
   predicted by ``nnUNetv2_predict`` with the ensemble of the trained folds;
5. JSON (device, budget, versions, command, per-fold and summary rows) and a Markdown table.

Usage::

    python benchmarks/accuracy.py --raw ../shared/data/Dataset027_ACDC --work /scratch/acc \\
        --trainers nnUNetTrainerLightMedSeg nnUNetTrainer --folds 0 1 2 3 4 --epochs 50 --gpus 1 \\
        --name acdc [--train-fractions 0.25 0.5] [--test FOLDER_WITH_imagesTs_AND_labelsTs]
"""
from __future__ import annotations

import argparse
import importlib.util
import json
import multiprocessing
import os
import random
import re
import subprocess
import sys
import threading
import time
from pathlib import Path
from queue import Empty, Queue
from typing import Any, Optional, Sequence

import numpy as np

from common import generated_line
from nnunetv2_lightmedseg.provenance import provenance


def dataset_id(raw: Path) -> int:
    match = re.match(r"Dataset(\d{3})_", raw.name)
    if not match:
        raise SystemExit(f"{raw} is not an nnU-Net raw dataset folder (DatasetXXX_Name)")
    return int(match.group(1))


class Workspace:
    """nnU-Net's folders for one dataset and one budget, and the environment for its commands."""

    def __init__(self, raw: Path, work: Path, epochs: int, iterations: Optional[int]) -> None:
        import nnunetv2_lightmedseg
        self.raw, self.id, self.name = raw, dataset_id(raw), raw.name
        budget = f"{epochs}ep" + (f"x{iterations}it" if iterations else "")
        self.preprocessed = work / "preprocessed"
        self.results = work / f"results_{budget}"
        self.budget = {"epochs": epochs, "iterations_per_epoch": iterations or 250, "label": budget}
        self.env = {**os.environ, "nnUNet_raw": str(raw.parent), "nnUNet_preprocessed": str(self.preprocessed),
                    "nnUNet_results": str(self.results),
                    "nnUNet_extTrainer": nnunetv2_lightmedseg.ext_trainer_value()}
        os.environ.update({k: self.env[k] for k in ("nnUNet_raw", "nnUNet_preprocessed", "nnUNet_results",
                                                    "nnUNet_extTrainer")})

    @property
    def plans_file(self) -> Path:
        return self.preprocessed / self.name / "nnUNetPlans.json"

    @property
    def splits_file(self) -> Path:
        return self.preprocessed / self.name / "splits_final.json"

    def model_folder(self, trainer: str) -> Path:
        return self.results / self.name / f"{trainer}__nnUNetPlans__3d_fullres"

    def run(self, *argv: str, log: Optional[Path] = None, extra_env: Optional[dict] = None) -> None:
        print("$", " ".join(argv), flush=True)
        env = {**self.env, **(extra_env or {})}
        if log is None:
            subprocess.run(argv, env=env, check=True)
        else:
            with open(log, "a") as handle:
                subprocess.run(argv, env=env, check=True, stdout=handle, stderr=subprocess.STDOUT)


def plan_and_preprocess(ws: Workspace, processes: int) -> None:
    data_folder = ws.preprocessed / ws.name / "nnUNetPlans_3d_fullres"
    if ws.plans_file.is_file() and data_folder.is_dir():
        return
    ws.run("nnUNetv2_plan_and_preprocess", "-d", str(ws.id), "-c", "3d_fullres", "-np", str(processes))
    if not ws.splits_file.is_file() and (ws.raw / "splits_final.json").is_file():
        ws.splits_file.write_text((ws.raw / "splits_final.json").read_text())


def patient_of(case: str) -> str:
    """ACDC keeps two frames per patient (patientNNN_frameMM): a subset must keep both or neither."""
    return re.sub(r"_frame\d+$", "", case)


def ensure_splits(ws: Workspace) -> list[dict]:
    """The dataset's splits_final.json; where there is none, nnU-Net's default 5-fold split, made as its trainer
    makes it (``nnUNetTrainer.do_split``), so that fraction folds can be appended before any training."""
    if not ws.splits_file.is_file():
        from nnunetv2.training.dataloading.nnunet_dataset import infer_dataset_class
        from nnunetv2.utilities.crossval_split import generate_crossval_split
        folder = str(ws.preprocessed / ws.name / "nnUNetPlans_3d_fullres")
        identifiers = sorted(infer_dataset_class(folder).get_identifiers(folder))
        ws.splits_file.write_text(json.dumps(generate_crossval_split(identifiers, seed=12345, n_splits=5), indent=2))
    return json.loads(ws.splits_file.read_text())


def add_fraction_folds(ws: Workspace, folds: list[int], fractions: list[float], seed: int = 0
                       ) -> dict[tuple[int, float], int]:
    """Append (fold, fraction) splits to splits_final.json (idempotent); return the fold numbers of the fractions
    asked for (fraction 1: the fold itself)."""
    splits = ensure_splits(ws)
    numbers: dict[tuple[int, float], int] = {}
    for fold in folds:
        if 1.0 in fractions:
            numbers[(fold, 1.0)] = fold
        patients = sorted({patient_of(c) for c in splits[fold]["train"]})
        for fraction in sorted(f for f in fractions if f < 1):
            subset = set(random.Random(seed + fold).sample(patients, max(1, round(fraction * len(patients)))))
            split = {"train": [c for c in splits[fold]["train"] if patient_of(c) in subset],
                     "val": splits[fold]["val"]}
            if split in splits[5:]:
                numbers[(fold, fraction)] = splits.index(split, 5)
            else:
                splits.append(split)
                numbers[(fold, fraction)] = len(splits) - 1
    ws.splits_file.write_text(json.dumps(splits, indent=2))
    return numbers


def budget_trainers(trainers: list[str], epochs: int, iterations: Optional[int]) -> list[str]:
    """The trainer class names that train ``epochs`` x ``iterations``: each name of ``trainers``, suffixed with the
    budget unless it already says it (e.g. ``nnUNetTrainerLightMedSeg`` -> ``nnUNetTrainerLightMedSeg_20epochs``)."""
    from nnunetv2_lightmedseg.trainers import budget_trainer_name
    try:
        return [budget_trainer_name(t, epochs, iterations) for t in trainers]
    except ValueError as error:
        raise SystemExit(str(error)) from None


def train_one(dataset: str, trainer_name: str, fold: int, epochs: int, iterations: int) -> None:
    """nnU-Net's run_training for one GPU (nnunetv2/run/run_training.py)."""
    import torch
    from nnunetv2.run.run_training import get_trainer_from_args, maybe_load_checkpoint

    import nnunetv2_lightmedseg
    nnunetv2_lightmedseg.enable()
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    trainer = get_trainer_from_args(dataset, "3d_fullres", fold, trainer_name, device=device)
    if (trainer.num_epochs, trainer.num_iterations_per_epoch) != (epochs, iterations):
        raise SystemExit(f"{trainer_name} trains {trainer.num_epochs} epochs x {trainer.num_iterations_per_epoch} "
                         f"iterations, not the {epochs} x {iterations} of this run")
    maybe_load_checkpoint(trainer, True, False, None)  # resumes from final, latest or best when present
    if device.type == "cuda":
        torch.backends.cudnn.deterministic = False
        torch.backends.cudnn.benchmark = True
    trainer.run_training()
    trainer.perform_actual_validation(False)


#: written into each fold trained by this script: the command that trained it, for tables scored elsewhere
TRAINED_BY = "trained_by.json"


def job_done(ws: Workspace, trainer: str, fold: int) -> bool:
    folder = ws.model_folder(trainer) / f"fold_{fold}"
    return (folder / "checkpoint_final.pth").is_file() and (folder / "validation" / "summary.json").is_file()


def latest_epoch(ws: Workspace, trainer: str, fold: int) -> str:
    logs = sorted((ws.model_folder(trainer) / f"fold_{fold}").glob("training_log_*.txt"))
    if not logs:
        return "starting"
    epochs = re.findall(r"Epoch (\d+)\s*$", logs[-1].read_text(), re.M)
    return f"epoch {epochs[-1]}" if epochs else "starting"


def train_all(ws: Workspace, jobs: list[tuple[str, int]], gpus: int, jobs_per_gpu: int, logs: Path) -> None:
    """Run the (trainer, fold) jobs, ``jobs_per_gpu`` at a time on each of ``gpus`` GPUs; print progress."""
    queue: Queue = Queue()
    for job in jobs:
        if not job_done(ws, *job):
            queue.put(job)
    running: dict[tuple[str, int], float] = {}
    failures: list[str] = []

    command = provenance()["command"]

    def worker(gpu: int) -> None:
        while True:
            try:
                trainer, fold = queue.get_nowait()
            except Empty:
                return
            running[(trainer, fold)] = time.time()
            try:
                ws.run(sys.executable, __file__, "_train", "--dataset", str(ws.id), "--trainer", trainer,
                       "--fold", str(fold), "--epochs", str(ws.budget["epochs"]),
                       "--iterations", str(ws.budget["iterations_per_epoch"]),
                       log=logs / f"{trainer}_fold{fold}.log",
                       extra_env={"CUDA_VISIBLE_DEVICES": str(gpu)} if gpus else None)
                (ws.model_folder(trainer) / f"fold_{fold}" / TRAINED_BY).write_text(json.dumps(
                    {"command": command, "finished": time.strftime("%Y-%m-%dT%H:%M:%S%z")}) + "\n")
            except subprocess.CalledProcessError as error:
                failures.append(f"{trainer} fold {fold}: exit {error.returncode}, see {logs}")
            finally:
                running.pop((trainer, fold), None)

    threads = [threading.Thread(target=worker, args=(g % max(gpus, 1),), daemon=True)
               for g in range(max(gpus, 1) * jobs_per_gpu)]
    for thread in threads:
        thread.start()
    while any(t.is_alive() for t in threads):
        time.sleep(30)
        status = ", ".join(f"{t} f{f}: {latest_epoch(ws, t, f)} ({time.time() - s:.0f} s)"
                           for (t, f), s in list(running.items()))
        print(f"[{time.strftime('%H:%M:%S')}] {queue.qsize()} waiting; running: {status}", flush=True)
    if failures:
        raise SystemExit("training failed:\n" + "\n".join(failures))


#: the voxel errors :func:`score_case` counts per class, as fractions of the reference volume
ERRORS = ("false_positive", "false_negative")


def score_case(pred_file: Path, labels: Path, labels_or_regions: dict[str, Any]) -> dict[str, Any]:
    """Per-class (or per-region) Dice and HD95 (mm, at the label file's spacing) of one case, with MONAI, and the
    false positive and false negative voxels as fractions of the reference's volume (None where the reference is
    empty): which of the two a Dice lost, over- or under-segmentation."""
    import SimpleITK as sitk
    ref_image = sitk.ReadImage(str(labels / pred_file.name))
    ref = sitk.GetArrayFromImage(ref_image)
    pred = sitk.GetArrayFromImage(sitk.ReadImage(str(pred_file)))
    return {"case": pred_file.name, **score_arrays(pred, ref, ref_image.GetSpacing()[::-1], labels_or_regions)}


def score_arrays(pred: np.ndarray, ref: np.ndarray, spacing: Sequence[float], labels_or_regions: dict[str, Any],
                 hd95: bool = True) -> dict[str, Any]:
    """:func:`score_case` on label arrays of one grid (spacing in mm, in the arrays' axis order); ``hd95=False``
    leaves HD95 out (NaN), the slow part."""
    import torch
    from monai.metrics import compute_dice, compute_hausdorff_distance
    row: dict[str, Any] = {}
    for name, value in labels_or_regions.items():
        members = value if isinstance(value, list) else [value]
        p = torch.from_numpy(np.isin(pred, members))[None, None]
        r = torch.from_numpy(np.isin(ref, members))[None, None]
        dice = compute_dice(p, r, include_background=True, ignore_empty=False).item()
        distance = float("nan")
        if hd95 and p.any() and r.any():
            distance = compute_hausdorff_distance(p, r, include_background=True, percentile=95,
                                                  spacing=list(spacing)).item()
        volume = int(r.sum())
        row[name] = {"dice": dice, "hd95": distance,
                     "false_positive_fraction": int((p & ~r).sum()) / volume if volume else None,
                     "false_negative_fraction": int((r & ~p).sum()) / volume if volume else None}
    return row


def _one_thread() -> None:
    import torch
    torch.set_num_threads(1)


def foreground_labels(dataset_json: dict) -> dict[str, Any]:
    """The scored classes of a dataset.json: name -> label value, or list of values for a region."""
    return {name: value for name, value in dataset_json["labels"].items() if name not in ("background", "ignore")}


def scoring_pool(processes: int) -> multiprocessing.pool.Pool:
    """Workers for :func:`score_folder`. Start one pool for all folders: each spawned worker imports torch and MONAI
    (seconds of CPU apiece; a pool of 64 per fold kept a 64-core machine busy for minutes on ten folds). One torch
    thread per worker: with torch's default (all cores) in each, a pool of N workers asks for N^2 threads."""
    return multiprocessing.get_context("spawn").Pool(max(1, processes), initializer=_one_thread)


def score_folder(predictions: Path, labels: Path, dataset_json: dict,
                 pool: multiprocessing.pool.Pool) -> list[dict[str, Any]]:
    """:func:`score_case` for every prediction in the folder (labels, or regions for region-based datasets)."""
    labels_or_regions = foreground_labels(dataset_json)
    files = sorted(predictions.glob("*" + dataset_json["file_ending"]))
    return pool.starmap(score_case, [(f, labels, labels_or_regions) for f in files])


def summarise(cases: list[dict[str, Any]], classes: list[str]) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for name in classes:
        dice = [c[name]["dice"] for c in cases]
        hd95 = [c[name]["hd95"] for c in cases if np.isfinite(c[name]["hd95"])]
        out[name] = {"dice": float(np.mean(dice)), "hd95": float(np.mean(hd95)) if hd95 else None,
                     "hd95_undefined_cases": len(cases) - len(hd95)}
    out["mean_dice"] = float(np.mean([out[n]["dice"] for n in classes]))
    return out


def logged_per_epoch(folder: Path, name: str) -> list[float]:
    """The values nnU-Net's training logs of a fold print once per epoch under ``name`` ("Epoch time: X s",
    "train_loss X", "val_loss X"), in order over its logs (one per start when a run was resumed): read from text,
    so that a fold copied back without its checkpoint still has them."""
    values = []
    for log in sorted(folder.glob("training_log_*.txt")):
        values += [float(v) for v in re.findall(rf"{re.escape(name)}:? (-?[\d.]+)", log.read_text())]
    return values


def epoch_times(folder: Path) -> list[float]:
    """Seconds of each epoch of a fold, as nnU-Net logs them."""
    return logged_per_epoch(folder, "Epoch time")


def trainer_class(trainer_name: str) -> Optional[type]:
    """The class nnU-Net trains for ``trainer_name`` (its own lookup), or None for a trainer absent here."""
    from nnunetv2.utilities.find_objects import recursive_find_trainer_class_by_name

    import nnunetv2_lightmedseg
    nnunetv2_lightmedseg.enable()
    try:
        return recursive_find_trainer_class_by_name(trainer_name)
    except RuntimeError:
        return None


def training_recipe(cls: Optional[type]) -> Optional[dict[str, Any]]:
    """The LightMedSeg training recipe a trainer class names (``recipes.RECIPES``), or None for other trainers."""
    import dataclasses

    from nnunetv2_lightmedseg.trainers.recipes import get_recipe
    name = getattr(cls, "recipe", None)
    return None if name is None else {"name": name, **dataclasses.asdict(get_recipe(name))}


def network_complexity(ws: Workspace, trainer_name: str) -> dict[str, Any]:
    """Parameters and GFLOPs of one forward pass (batch 1) of the network ``trainer_name`` trains, at the patch in
    its results folder's plans (the patch it trained at), counted as in the complexity table. Parameters come from
    the module, not the checkpoint: nnU-Net's decoder holds its encoder, so a state dict counts the encoder twice."""
    from nnunetv2.utilities.plans_handling.plans_handler import PlansManager

    from complexity import InputSetting, measure
    cls = trainer_class(trainer_name)
    if cls is None:
        return {"params": None, "gflops": None}
    folder = ws.model_folder(trainer_name)
    plans_manager = PlansManager(str(folder / "plans.json"))
    configuration = plans_manager.get_configuration("3d_fullres")
    dataset_json = json.loads((folder / "dataset.json").read_text())
    channels = len(dataset_json["channel_names"])
    outputs = plans_manager.get_label_manager(dataset_json).num_segmentation_heads
    network = cls.build_network_architecture(plans_manager, configuration, channels, outputs,
                                             enable_deep_supervision=False)
    setting = InputSetting(ws.name, channels, outputs, tuple(configuration.patch_size), strides=())
    return measure(network, setting)


def evaluate(ws: Workspace, trainers: list[str], fold_numbers: dict[tuple[int, float], int],
             test_images: Optional[Path], test_labels: Optional[Path], processes: int) -> list[dict[str, Any]]:
    """Rows: one per (trainer, fold, fraction) with MONAI metrics of its validation, and one per trainer for
    the ensemble of its full-data folds on the test folder."""
    dataset_json = json.loads((ws.raw / "dataset.json").read_text())
    classes = list(foreground_labels(dataset_json))
    labels = ws.raw / "labelsTr"  # nnU-Net's gt_segmentations are copies of these
    import torch
    rows = []
    with scoring_pool(processes) as pool:
        for trainer in trainers:
            complexity = network_complexity(ws, trainer)
            params, gflops = complexity["params"], complexity["gflops"]
            recipe = training_recipe(trainer_class(trainer))
            for (fold, fraction), number in sorted(fold_numbers.items()):
                folder = ws.model_folder(trainer) / f"fold_{number}"
                cases = score_folder(folder / "validation", labels, dataset_json, pool)
                times = epoch_times(folder)
                rows.append({"trainer": trainer, "kind": "cross-validation", "fold": fold, "fold_number": number,
                             "train_fraction": fraction, "params": params, "gflops": gflops, "recipe": recipe,
                             "seconds_per_epoch": float(np.median(times)) if times else None,
                             # how well the network fits its training patches at the end, beside how it validates
                             **{f"{loss}_last_epoch": (logged_per_epoch(folder, loss) or [None])[-1]
                                for loss in ("train_loss", "val_loss")},
                             # names a training (nnU-Net's log names carry its start time): the same training
                             # scored in two tables counts once in readme_tables' run-to-run comparison
                             "training_logs": sorted(log.name for log in folder.glob("training_log_*.txt")),
                             "num_cases": len(cases), **summarise(cases, classes),
                             # for readme_tables' comparison case by case (where a gap between two trainers lies)
                             "case_dice": [{"case": c["case"], **{n: c[n]["dice"] for n in classes}} for c in cases],
                             "case_errors": [{"case": c["case"], **{n: {e: c[n][f"{e}_fraction"] for e in ERRORS}
                                                                    for n in classes}} for c in cases]})
            full_folds = sorted(number for (fold, fraction), number in fold_numbers.items() if fraction == 1.0)
            if test_images is not None and test_labels is not None:
                out = ws.results / ws.name / "test_predictions" / trainer
                if not (out / "done").is_file():
                    ws.run("nnUNetv2_predict", "-i", str(test_images), "-o", str(out), "-d", str(ws.id),
                           "-c", "3d_fullres", "-tr", trainer, "-f", *map(str, full_folds), "-npp", str(processes),
                           "-nps", str(processes), "-device", "cuda" if torch.cuda.is_available() else "cpu")
                    (out / "done").touch()
                cases = score_folder(out, test_labels, dataset_json, pool)
                rows.append({"trainer": trainer, "kind": "test ensemble", "folds": full_folds, "params": params,
                             "num_cases": len(cases), "cases": [c["case"] for c in cases], **summarise(cases, classes)})
    return rows


def training_record(ws: Workspace, trainers: list[str], folds: list[int]) -> dict[str, Any]:
    """The GPU and torch version that trained the folds, from nnU-Net's ``debug.json`` of each, and the commands
    that trained them where this script did (its ``trained_by.json``); stops when the folds disagree or were
    trained under another budget than the workspace's."""
    seen, commands = set(), set()
    for trainer in trainers:
        for fold in folds:
            folder = ws.model_folder(trainer) / f"fold_{fold}"
            if (folder / TRAINED_BY).is_file():
                commands.add(json.loads((folder / TRAINED_BY).read_text())["command"])
            debug = json.loads((folder / "debug.json").read_text())
            budget = (int(debug["num_epochs"]), int(debug["num_iterations_per_epoch"]))
            if budget != (ws.budget["epochs"], ws.budget["iterations_per_epoch"]):
                raise SystemExit(f"{trainer} fold {fold} trained {budget[0]} epochs x {budget[1]} iterations, "
                                 f"not the {ws.budget['label']} asked for")
            seen.add((debug.get("gpu_name", debug["device"]), debug["torch_version"]))
    if len(seen) != 1:
        raise SystemExit(f"the folds were trained on different devices or torch versions: {sorted(seen)}")
    gpu, torch_version = seen.pop()
    return {"gpu": gpu, "torch": torch_version, "commands": sorted(commands)}


def to_markdown(table: dict[str, Any]) -> str:
    meta, classes = table["metadata"], table["classes"]
    lines = [f"# Accuracy: {meta['dataset']} ({meta['budget']['epochs']} epochs x "
             f"{meta['budget']['iterations_per_epoch']} iterations)", "",
             generated_line(meta, "Dice and HD95 (mm) per class by MONAI on nnU-Net's validation predictions of each "
                                  "fold; mean +- standard deviation over folds.")
             + (" **A smoke test of the pipeline (train, validate, ensemble, score) at a token budget: not an "
                "accuracy claim.**" if meta.get("smoke_test") else "")
             + (f" Trained on {meta['device']} (each fold's debug.json)"
               + (" by " + " and ".join(f"`{c}`" for c in meta["trained_by"]) if meta.get("trained_by") else "")
               + f", copied back and scored on {meta['scored_on']} (`--score-only`)." if "scored_on" in meta else ""),
             ""]
    header = "| Trainer | Params (M) | GFLOPs | Train fraction | Folds | " + " | ".join(
        f"{c} Dice | {c} HD95" for c in classes) + " | Mean Dice | s / epoch |"
    lines += [header, "|" + "---|" * (header.count("|") - 1)]
    groups: dict[tuple[str, float], list[dict]] = {}
    for row in table["rows"]:
        if row["kind"] == "cross-validation":
            groups.setdefault((row["trainer"], row["train_fraction"]), []).append(row)

    def cell(values: list[Optional[float]], fmt: str) -> str:
        values = [v for v in values if v is not None]
        if not values:
            return ""
        return format(np.mean(values), fmt) + (f" +- {format(np.std(values), fmt)}" if len(values) > 1 else "")

    for (trainer, fraction), rows in groups.items():
        cells = " | ".join(f"{cell([r[c]['dice'] for r in rows], '.3f')} | {cell([r[c]['hd95'] for r in rows], '.1f')}"
                           for c in classes)
        gflops = rows[0].get("gflops")
        lines.append(f"| {trainer} | {rows[0]['params'] / 1e6:.3f} | {'' if gflops is None else f'{gflops:.1f}'} | "
                     f"{fraction:g} | "
                     f"{','.join(str(r['fold']) for r in rows)} | {cells} | "
                     f"{cell([r['mean_dice'] for r in rows], '.3f')} | "
                     f"{cell([r['seconds_per_epoch'] for r in rows], '.1f')} |")
    tests = [r for r in table["rows"] if r["kind"] == "test ensemble"]
    if tests:
        lines += ["", "Test set, ensemble of folds:", "", "| Trainer | Folds | " +
                  " | ".join(f"{c} Dice | {c} HD95" for c in classes) + " | Mean Dice |",
                  "|" + "---|" * (3 + 2 * len(classes))]
        for r in tests:
            lines.append(f"| {r['trainer']} | {','.join(map(str, r['folds']))} | " + " | ".join(
                f"{r[c]['dice']:.3f} | {'' if r[c]['hd95'] is None else format(r[c]['hd95'], '.1f')}"
                for c in classes) + f" | {r['mean_dice']:.3f} |")
    return "\n".join(lines) + "\n"


def main(argv: Optional[list[str]] = None) -> None:
    argv = sys.argv[1:] if argv is None else argv
    if argv and argv[0] == "_train":  # one job, in its own process (one GPU)
        parser = argparse.ArgumentParser()
        for flag in ("--dataset", "--trainer"):
            parser.add_argument(flag, required=True)
        for flag in ("--fold", "--epochs", "--iterations"):
            parser.add_argument(flag, type=int, required=True)
        a = parser.parse_args(argv[1:])
        train_one(a.dataset, a.trainer, a.fold, a.epochs, a.iterations)
        return
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--raw", type=Path, required=True, help="raw dataset folder (DatasetXXX_Name)")
    parser.add_argument("--work", type=Path, required=True, help="folder for preprocessed data and results")
    parser.add_argument("--trainers", nargs="+", required=True, help="nnU-Net trainer class names")
    parser.add_argument("--folds", nargs="+", type=int, default=[0, 1, 2, 3, 4])
    parser.add_argument("--epochs", type=int, required=True, help="epoch budget, the same for every trainer")
    parser.add_argument("--iterations", type=int, default=None,
                        help="training iterations per epoch (default nnU-Net's 250; smaller only for smoke tests)")
    parser.add_argument("--train-fractions", nargs="+", type=float, default=[1.0],
                        help="fractions of each fold's training patients (data-efficiency runs)")
    parser.add_argument("--gpus", type=int, default=None, help="GPUs to spread jobs over (default: all visible)")
    parser.add_argument("--jobs-per-gpu", type=int, default=1)
    parser.add_argument("--processes", type=int, default=4, help="CPU processes for preprocessing and export")
    parser.add_argument("--test", type=Path, help="a labelled test folder with imagesTs/ and labelsTs/ (nnU-Net's raw "
                        "layout, e.g. the raw dataset folder itself), predicted with the ensemble of the folds")
    parser.add_argument("--name", required=True, help="results file name: benchmarks/results/accuracy_<name>.json")
    parser.add_argument("--out", type=Path, default=Path(__file__).resolve().parent / "results")
    parser.add_argument("--plan-only", action="store_true", help="stop after planning and preprocessing")
    parser.add_argument("--smoke-test", action="store_true",
                        help="the run checks the pipeline, not accuracy: tables say so, plots.py leaves it out")
    parser.add_argument("--score-only", action="store_true",
                        help="score folds trained elsewhere and copied into --work (each fold's training log, "
                        "debug.json and validation/ suffice): no planning, no training")
    args = parser.parse_args(argv)
    if args.score_only and args.test:
        parser.error("--score-only scores the folds' validation only (no --test)")
    if importlib.util.find_spec("monai") is None:
        # checked before planning (found, not imported: only the scoring workers import it): a run without it
        # trained every fold and then failed in the scoring pool
        parser.error("the scoring needs MONAI (pip install monai): install it before training")

    import torch
    gpus = torch.cuda.device_count() if args.gpus is None else args.gpus
    ws = Workspace(args.raw.resolve(), args.work.resolve(), args.epochs, args.iterations)
    trainers = budget_trainers(args.trainers, ws.budget["epochs"], ws.budget["iterations_per_epoch"])
    if args.score_only:
        if any(f < 1 for f in args.train_fractions) and not ws.splits_file.is_file():
            parser.error(f"--score-only --train-fractions: the fraction folds are numbered in the run's splits file; "
                         f"copy its preprocessed/{ws.name}/splits_final.json to {ws.splits_file}")
        fold_numbers = (add_fraction_folds(ws, args.folds, args.train_fractions) if ws.splits_file.is_file()
                        else {(fold, 1.0): fold for fold in args.folds})
        missing = [str(ws.model_folder(t) / f"fold_{n}" / "validation") for t in trainers
                   for n in sorted(set(fold_numbers.values()))
                   if not (ws.model_folder(t) / f"fold_{n}" / "validation").is_dir()]
        if missing:
            parser.error(f"--score-only: no validation predictions in {', '.join(missing)}. Copy the trained folds "
                         f"there; --epochs and --iterations name the budget folder ({ws.results.name})")
    else:
        plan_and_preprocess(ws, args.processes)
        if args.plan_only:
            return
        fold_numbers = add_fraction_folds(ws, args.folds, args.train_fractions)
        logs = args.work / "logs"
        logs.mkdir(parents=True, exist_ok=True)
        jobs = [(t, n) for t in trainers for n in sorted(set(fold_numbers.values()))]
        train_all(ws, jobs, gpus, args.jobs_per_gpu, logs)
    test_images, test_labels = (args.test / "imagesTs", args.test / "labelsTs") if args.test else (None, None)
    if args.test and not (test_images.is_dir() and test_labels.is_dir()):
        parser.error(f"--test {args.test} needs the subfolders imagesTs/ and labelsTs/")
    rows = evaluate(ws, trainers, fold_numbers, test_images, test_labels, args.processes)
    meta = provenance()
    meta.update({"dataset": ws.name, "budget": ws.budget, "gpus": gpus,
                 "jobs_per_gpu": args.jobs_per_gpu, "folds": args.folds, "train_fractions": args.train_fractions,
                 "smoke_test": args.smoke_test})
    if args.score_only:
        trained = training_record(ws, trainers, sorted(fold_numbers.values()))
        meta.update({"scored_on": f"{meta['device']}, torch {meta['torch']}", "torch": trained["torch"],
                     "trained_by": trained["commands"],
                     "device": f"{gpus} x {trained['gpu']}" if gpus else trained["gpu"]})
    dataset_json = json.loads((ws.raw / "dataset.json").read_text())
    table = {"metadata": meta, "classes": list(foreground_labels(dataset_json)),
             "fold_numbers": {f"{f}@{p:g}": n for (f, p), n in fold_numbers.items()}, "rows": rows}
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / f"accuracy_{args.name}.json").write_text(json.dumps(table, indent=2) + "\n")
    markdown = to_markdown(table)
    (args.out / f"accuracy_{args.name}.md").write_text(markdown)
    print(markdown)


if __name__ == "__main__":
    main()
