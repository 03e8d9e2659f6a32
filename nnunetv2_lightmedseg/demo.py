"""``lightmedseg demo``: the whole nnU-Net workflow with LightMedSeg on a small synthetic 3D dataset.

Generate the dataset (``nnunetv2_lightmedseg.synthetic``), plan and preprocess it, train fold 0, predict the
held-out cases and score them with nnU-Net's own evaluation; print a table and write it as JSON. Each phase calls
the Python function behind the nnU-Net command its header names.

The training length is the trainer's name: the demo trains ``nnUNetTrainerLightMedSeg_<E>epochs_<I>iters``
(``nnunetv2_lightmedseg.trainers.budget_trainer_name``), so its results folder says how long it trained, and
``nnUNetv2_predict -tr`` or ``nnUNetv2_train ... --c`` with that name see the same length.

On the CPU torch gets half the CPUs this process may use (one on a 2-core machine) and nnU-Net's augmentation
workers the rest: training and augmentation overlap, and one torch thread stays fast when other programs load
the machine, where two torch threads on two busy cores slow down many times (benchmarks/SPEED_NOTES.md).
"""
from __future__ import annotations

import json
import os
import random
import shutil
import time
from pathlib import Path
from typing import Optional

import nnunetv2_lightmedseg

NNUNET_FOLDERS = ("nnUNet_raw", "nnUNet_preprocessed", "nnUNet_results")
DATASET_ID = 990
DATASET_NAME = "LightMedSegDemo"
TRAINER = "nnUNetTrainerLightMedSeg"
CONFIGURATION = "3d_fullres"
#: The README's promise ("The demo") is about these defaults on a 2-core CPU; the measured time and Dice are in
#: benchmarks/results/demo_cpu.json. Few long epochs: nnU-Net validates and draws its progress plot after each one
#: (benchmarks/SPEED_NOTES.md, "The demo on 2 cores").
DEFAULTS = dict(cases=20, test_cases=8, size=32, epochs=8, iterations=100, seed=0)


def _phase(number: int, title: str, total: int = 5) -> None:
    print(f"\n{'=' * 100}\n[{number}/{total}] {title}\n{'=' * 100}", flush=True)


def _torch_device(requested: str):
    import torch
    if requested == "auto":
        requested = "cuda" if torch.cuda.is_available() else "cpu"
    if requested == "cuda" and not torch.cuda.is_available():
        raise SystemExit("lightmedseg demo: --device cuda was asked for, but torch sees no CUDA device")
    return torch.device(requested)


def _set_environment(output: Path) -> None:
    """Point nnU-Net at folders inside ``output`` and size it to this machine, before nnU-Net reads anything."""
    from joblib import cpu_count
    for name in NNUNET_FOLDERS:
        folder = output / name
        folder.mkdir(parents=True, exist_ok=True)
        os.environ[name] = str(folder)
    nnunetv2_lightmedseg.enable()
    os.environ.setdefault("nnUNet_def_n_proc", str(min(cpu_count(), 8)))
    # torch.compile costs a minute or more of compilation for a few minutes of training: off unless asked for
    os.environ.setdefault("nnUNet_compile", "f")
    os.environ.setdefault("MPLBACKEND", "Agg")  # nnU-Net's progress plot needs no display


def _set_threads(device, threads: int) -> None:
    """Torch threads and augmentation workers (see the module docstring); ``threads`` 0 chooses."""
    import torch
    from joblib import cpu_count  # counts a container's CPU quota, which os.cpu_count() does not
    if device.type == "cpu":
        threads = threads or max(1, cpu_count() // 2)
        os.environ.setdefault("nnUNet_n_proc_DA", str(max(1, min(cpu_count() - threads, 4))))
    else:
        torch.backends.cudnn.benchmark = True
    if threads:
        torch.set_num_threads(threads)


def _print_time_left(trainer) -> None:
    """After each of nnU-Net's epochs, print how many are done and about how long training has left (nnU-Net's
    trainer has no progress callback: its ``on_epoch_end`` is wrapped on this instance)."""
    on_epoch_end, started = trainer.on_epoch_end, time.perf_counter()

    def on_epoch_end_with_time_left() -> None:
        on_epoch_end()
        done, total = trainer.current_epoch, trainer.num_epochs  # on_epoch_end counted this epoch
        left = (time.perf_counter() - started) / done * (total - done)
        print(f"lightmedseg demo: epoch {done}/{total} done, about {left / 60:.1f} min of training left", flush=True)

    trainer.on_epoch_end = on_epoch_end_with_time_left


def format_table(summary: dict) -> str:
    rows = [f"LightMedSeg demo: {summary['dataset']}, {summary['configuration']}, fold {summary['fold']}, "
            f"trainer {summary['trainer']}, device {summary['device']}",
            f"  held-out test cases     {summary['test_cases']} (trained on {summary['training_cases']} of "
            f"{summary['cases']} cases; {summary['epochs']} epochs x {summary['iterations_per_epoch']} iterations)",
            "  Dice on held-out cases"]
    rows += [f"    {name:<22}{dice:.4f}" for name, dice in summary["dice"].items()]
    rows += [f"    {'mean foreground':<22}{summary['mean_foreground_dice']:.4f}",
             f"  parameters              {summary['parameters']:,} ({summary['parameters'] / 1e6:.2f} M)",
             f"  GFLOPs                  {summary['gflops']:.3f} at patch {summary['patch_size']} (batch 1)",
             "  wall time (s)"]
    rows += [f"    {name:<22}{seconds:8.1f}" for name, seconds in summary["seconds"].items()]
    return "\n".join(rows)


def run_demo(output: str | Path = "lightmedseg_demo", epochs: int = DEFAULTS["epochs"],
             iterations: int = DEFAULTS["iterations"], cases: int = DEFAULTS["cases"],
             test_cases: int = DEFAULTS["test_cases"], size: int = DEFAULTS["size"], device: str = "auto",
             seed: int = DEFAULTS["seed"], trainer: str = TRAINER, validation: bool = False, threads: int = 0,
             command: Optional[str] = None) -> dict:
    """Run the demo (see the module docstring); returns the summary that it also prints and writes as JSON."""
    started = time.perf_counter()
    seconds: dict[str, float] = {}
    output = Path(output).absolute()
    output.mkdir(parents=True, exist_ok=True)
    torch_device = _torch_device(device)
    _set_environment(output)
    from nnunetv2_lightmedseg.trainers.budgets import budget_trainer_name
    try:
        trainer_name = budget_trainer_name(trainer, epochs, iterations)
    except ValueError as error:  # a --trainer whose name says another length
        raise SystemExit(f"lightmedseg demo: {error}") from None
    dataset_name = f"Dataset{DATASET_ID:03d}_{DATASET_NAME}"
    raw = output / "nnUNet_raw" / dataset_name
    predictions = output / "predictions"
    # a re-run starts clean: remove what an earlier run of the demo wrote (only inside the output folder)
    for folder in (raw, output / "nnUNet_preprocessed" / dataset_name, output / "nnUNet_results" / dataset_name,
                   predictions):
        if folder.exists():
            shutil.rmtree(folder)

    _phase(1, f"Generating a synthetic 3D dataset: {cases} training + {test_cases} held-out cases of {size}^3 "
              f"voxels (seed {seed}) in {raw}")
    t = time.perf_counter()
    from nnunetv2_lightmedseg.synthetic import make_dataset
    make_dataset(output / "nnUNet_raw", dataset_id=DATASET_ID, name=DATASET_NAME, num_train=cases,
                 num_test=test_cases, shape=(size, size, size), seed=seed)
    seconds["dataset"] = time.perf_counter() - t

    _phase(2, f"nnU-Net planning and preprocessing (nnUNetv2_plan_and_preprocess -d {DATASET_ID} -c {CONFIGURATION})")
    t = time.perf_counter()
    n_proc = int(os.environ["nnUNet_def_n_proc"])
    saved_n_proc_da = os.environ.pop("nnUNet_n_proc_DA", None)  # 0 there crashes the planner (set_num_threads(0))
    from nnunetv2.experiment_planning.plan_and_preprocess_api import extract_fingerprints, plan_experiments, preprocess
    extract_fingerprints([DATASET_ID], num_processes=n_proc, check_dataset_integrity=True)
    plans_identifier = plan_experiments([DATASET_ID])
    preprocess([DATASET_ID], plans_identifier, configurations=(CONFIGURATION,), num_processes=(n_proc,))
    if saved_n_proc_da is not None:
        os.environ["nnUNet_n_proc_DA"] = saved_n_proc_da
    seconds["plan_and_preprocess"] = time.perf_counter() - t

    _phase(3, f"Training {trainer_name} on fold 0 (device {torch_device.type}; nnUNetv2_train {DATASET_ID} "
              f"{CONFIGURATION} 0 -tr {trainer_name})")
    t = time.perf_counter()
    import numpy as np
    import torch
    from nnunetv2.run.run_training import get_trainer_from_args
    _set_threads(torch_device, threads)
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)
    nnunet_trainer = get_trainer_from_args(str(DATASET_ID), CONFIGURATION, 0, trainer_name, plans_identifier,
                                           device=torch_device)
    _print_time_left(nnunet_trainer)
    nnunet_trainer.run_training()
    if validation:
        nnunet_trainer.perform_actual_validation(False)
    seconds["train"] = time.perf_counter() - t

    from nnunetv2.utilities.label_handling.label_handling import determine_num_input_channels

    from nnunetv2_lightmedseg.flops import count_flops
    from nnunetv2_lightmedseg.trainers.common import unwrap
    network = unwrap(nnunet_trainer.network).eval()
    nnunet_trainer.set_deep_supervision_enabled(False)
    patch_size = [int(p) for p in nnunet_trainer.configuration_manager.patch_size]
    num_input_channels = determine_num_input_channels(nnunet_trainer.plans_manager,
                                                      nnunet_trainer.configuration_manager, nnunet_trainer.dataset_json)
    parameters = sum(p.numel() for p in network.parameters())
    gflops = count_flops(network, torch.zeros((1, num_input_channels, *patch_size), device=torch_device)) / 1e9
    training = {"training_cases": len(nnunet_trainer.do_split()[0]),
                "batch_size": int(nnunet_trainer.configuration_manager.batch_size),
                "val_iterations_per_epoch": nnunet_trainer.num_val_iterations_per_epoch}
    model_folder = Path(nnunet_trainer.output_folder_base)
    del nnunet_trainer, network

    _phase(4, f"Predicting the {test_cases} held-out cases with nnU-Net's predictor (nnUNetv2_predict -d {DATASET_ID} "
              f"-c {CONFIGURATION} -f 0 -tr {trainer_name})")
    t = time.perf_counter()
    from nnunetv2.inference.predict_from_raw_data import nnUNetPredictor
    predictor = nnUNetPredictor(tile_step_size=0.5, use_gaussian=True, use_mirroring=True, device=torch_device,
                                allow_tqdm=False)
    predictor.initialize_from_trained_model_folder(str(model_folder), use_folds=(0,),
                                                   checkpoint_name="checkpoint_final.pth")
    predictor.predict_from_files(str(raw / "imagesTs"), str(predictions), save_probabilities=False, overwrite=True,
                                 num_processes_preprocessing=n_proc, num_processes_segmentation_export=n_proc)
    seconds["predict"] = time.perf_counter() - t

    _phase(5, "Scoring the predictions against the held-out labels with nnU-Net's evaluation "
              "(nnUNetv2_evaluate_folder)")
    t = time.perf_counter()
    from nnunetv2.evaluation.evaluate_predictions import compute_metrics_on_folder2
    metrics_file = predictions / "summary.json"
    compute_metrics_on_folder2(str(raw / "labelsTs"), str(predictions), str(model_folder / "dataset.json"),
                               str(model_folder / "plans.json"), str(metrics_file), num_processes=n_proc)
    metrics = json.loads(metrics_file.read_text())
    seconds["evaluate"] = time.perf_counter() - t
    seconds["total"] = time.perf_counter() - started

    from nnunetv2_lightmedseg.provenance import provenance
    labels = json.loads((raw / "dataset.json").read_text())["labels"]
    label_names = {str(value): name for name, value in labels.items()}
    summary = {
        "metadata": provenance(torch_device, command),
        "dataset": dataset_name, "configuration": CONFIGURATION, "fold": 0, "trainer": trainer_name,
        "device": torch_device.type, "cases": cases, "test_cases": test_cases, "image_size": [size] * 3,
        "seed": seed, "epochs": epochs, "iterations_per_epoch": iterations, **training, "patch_size": patch_size,
        "nnUNet_n_proc_DA": os.environ.get("nnUNet_n_proc_DA"),
        "dice": {f"{label_names[key]} ({key})": float(scores["Dice"]) for key, scores in metrics["mean"].items()},
        "mean_foreground_dice": float(metrics["foreground_mean"]["Dice"]),
        "parameters": parameters, "gflops": gflops,
        "seconds": {name: round(value, 1) for name, value in seconds.items()},
    }
    (output / "summary.json").write_text(json.dumps(summary, indent=2) + "\n")
    print("\n" + format_table(summary))
    print(f"\nSummary written to {output / 'summary.json'}; per-case metrics in {metrics_file}", flush=True)
    return summary
