"""Wall time of nnU-Net training epochs: nnU-Net's default trainer and LightMedSeg's, each as it ships, each alone.

Each trainer runs nnU-Net's ``run_training`` (set up as ``accuracy.train_one`` does, the epoch budget set on the
trainer) in a process of its own, one trainer after the other, so that each has the card and the CPUs to itself:
``--epochs`` epochs of nnU-Net's 250 training and 50 validation iterations, with nnU-Net's default number of
augmentation workers for the machine (``get_allowed_n_proc_DA``; ``--workers`` sets ``nnUNet_n_proc_DA``
instead) and nnU-Net's own choices otherwise (torch.compile on CUDA unless ``nnUNet_compile`` says no, cuDNN
benchmark). Recorded per epoch: nnU-Net's epoch time (its logger's timestamps, what its log prints as "Epoch
time") and the training part of it (its training iterations, from ``on_train_epoch_start`` to
``on_train_epoch_end``); summarised as medians over the epochs after the first (worker start, cuDNN autotuning,
compilation). Which augmentation pipeline a trainer ran (nnU-Net's CPU workers, or batched on the device by
``DeviceAugmentation``) is read from the trainer.

Usage (plans and preprocesses the raw dataset into ``--work`` if not done yet, as ``accuracy.py`` does)::

    python benchmarks/epoch_time.py --raw /opt/data/Dataset027_ACDC --work /opt/acc \\
        [--trainers nnUNetTrainer nnUNetTrainerLightMedSeg] [--epochs 4] [--iterations 250] [--tag NAME]

writes ``benchmarks/results/epoch_time_<tag>.json``; the tag defaults to the device ("cpu" or the GPU's name).
``--iterations 2 --epochs 2`` on a tiny generated dataset checks the script on a CPU.
"""
from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import subprocess
import sys
import time
from importlib.metadata import version
from pathlib import Path
from typing import Any, Optional

sys.path.insert(0, str(Path(__file__).resolve().parent))
from accuracy import Workspace, dataset_id, plan_and_preprocess  # noqa: E402
from complexity import metadata  # noqa: E402

TRAINERS = ["nnUNetTrainer", "nnUNetTrainerLightMedSeg"]
#: nnU-Net's iterations per epoch (training, validation)
NNUNET_ITERATIONS = (250, 50)


def time_epochs(dataset: str, trainer_name: str, fold: int, epochs: int, iterations: int) -> dict[str, Any]:
    """In this process: ``epochs`` epochs of nnU-Net's run_training for ``trainer_name``, timed."""
    import torch
    from nnunetv2.run.run_training import get_trainer_from_args
    from nnunetv2.utilities.default_n_proc_DA import get_allowed_n_proc_DA
    from torch._dynamo import OptimizedModule

    import nnunetv2_lightmedseg
    nnunetv2_lightmedseg.enable()
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    trainer = get_trainer_from_args(dataset, "3d_fullres", fold, trainer_name, device=device)
    trainer.num_epochs = epochs
    trainer.num_iterations_per_epoch = iterations
    trainer.num_val_iterations_per_epoch = max(1, round(iterations * NNUNET_ITERATIONS[1] / NNUNET_ITERATIONS[0]))
    if device.type == "cuda":  # as nnU-Net's run_training sets them
        torch.backends.cudnn.deterministic = False
        torch.backends.cudnn.benchmark = True

    train_seconds: list[float] = []
    start_train, end_train = trainer.on_train_epoch_start, trainer.on_train_epoch_end

    def on_train_epoch_start() -> None:
        trainer._epoch_time_started = time.perf_counter()
        start_train()

    def on_train_epoch_end(outputs) -> None:
        # each training step has copied its loss to the host, so the device has finished the epoch's steps here
        train_seconds.append(time.perf_counter() - trainer._epoch_time_started)
        end_train(outputs)

    trainer.on_train_epoch_start, trainer.on_train_epoch_end = on_train_epoch_start, on_train_epoch_end
    trainer.run_training()
    starts, ends = (trainer.logger.get_value(key, None) for key in ("epoch_start_timestamps", "epoch_end_timestamps"))
    augmentation = getattr(trainer, "device_augmentation", None)
    return {
        "trainer": trainer_name, "device": torch.cuda.get_device_name(device) if device.type == "cuda" else "CPU",
        "batch_size": trainer.batch_size, "patch_size": [int(i) for i in trainer.configuration_manager.patch_size],
        "iterations_per_epoch": trainer.num_iterations_per_epoch,
        "val_iterations_per_epoch": trainer.num_val_iterations_per_epoch,
        "augmentation_workers": get_allowed_n_proc_DA(),
        "augmentation": f"nnU-Net's pipeline batched on {trainer.device}" if augmentation is not None
        else "nnU-Net's pipeline in its data loader processes",
        "compiled": isinstance(trainer.network, OptimizedModule),
        "epoch_seconds": [round(e - s, 3) for s, e in zip(starts, ends)],
        "train_seconds": [round(t, 3) for t in train_seconds],
    }


def summarise(run: dict[str, Any]) -> dict[str, Any]:
    """Medians over the epochs after the first (all epochs if there is only one), and training iterations per s."""
    def median(values: list[float]) -> Optional[float]:
        kept = values[1:] or values
        return round(statistics.median(kept), 3) if kept else None
    train = median(run["train_seconds"])
    return {**run, "median_epoch_seconds": median(run["epoch_seconds"]), "median_train_seconds": train,
            "train_iterations_per_second": round(run["iterations_per_epoch"] / train, 2) if train else None}


def device_tag() -> str:
    import torch

    from speed import device_tag as tag
    return tag(torch.device("cuda" if torch.cuda.is_available() else "cpu"))


def main(argv: Optional[list[str]] = None) -> None:
    argv = sys.argv[1:] if argv is None else argv
    if argv and argv[0] == "_time":  # one trainer, in its own process
        parser = argparse.ArgumentParser()
        for flag in ("--dataset", "--trainer", "--out"):
            parser.add_argument(flag, required=True)
        for flag in ("--fold", "--epochs", "--iterations"):
            parser.add_argument(flag, type=int, required=True)
        a = parser.parse_args(argv[1:])
        Path(a.out).write_text(json.dumps(time_epochs(a.dataset, a.trainer, a.fold, a.epochs, a.iterations)))
        return
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--raw", type=Path, required=True, help="raw dataset folder (DatasetXXX_Name)")
    parser.add_argument("--work", type=Path, required=True, help="folder for preprocessed data and results")
    parser.add_argument("--trainers", nargs="+", default=TRAINERS, help="nnU-Net trainer class names")
    parser.add_argument("--fold", type=int, default=0)
    parser.add_argument("--epochs", type=int, default=4, help="epochs per trainer (the first is not summarised)")
    parser.add_argument("--iterations", type=int, default=NNUNET_ITERATIONS[0],
                        help="training iterations per epoch (nnU-Net's 250; validation scaled with it)")
    parser.add_argument("--workers", type=int, default=None,
                        help="augmentation workers (nnUNet_n_proc_DA; default: nnU-Net's for the machine)")
    parser.add_argument("--processes", type=int, default=4, help="CPU processes for planning and preprocessing")
    parser.add_argument("--out", type=Path, default=Path(__file__).resolve().parent / "results")
    parser.add_argument("--tag", help="file name tag (default: the device)")
    args = parser.parse_args(argv)

    ws = Workspace(args.raw.resolve(), args.work.resolve(), args.epochs, args.iterations)
    ws.results = args.work.resolve() / "results_epoch_time"
    ws.env["nnUNet_results"] = os.environ["nnUNet_results"] = str(ws.results)
    plan_and_preprocess(ws, args.processes)
    env = dict(ws.env)
    if args.workers is not None:
        env["nnUNet_n_proc_DA"] = str(args.workers)
    meta = {k: v for k, v in metadata().items() if k not in ("flop_counter", "convention", "settings")}
    meta.update({"batchgeneratorsv2": version("batchgeneratorsv2"), "dataset": ws.name, "fold": args.fold,
                 "epochs": args.epochs, "cpus": os.cpu_count(),
                 "cpus_available": len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else None,
                 "nnUNet_n_proc_DA": env.get("nnUNet_n_proc_DA"), "nnUNet_compile": env.get("nnUNet_compile"),
                 "summary": "medians over the epochs after the first"})
    tag = args.tag or device_tag()
    args.out.mkdir(parents=True, exist_ok=True)
    runs: list[dict[str, Any]] = []
    for trainer in args.trainers:
        shutil.rmtree(ws.model_folder(trainer) / f"fold_{args.fold}", ignore_errors=True)  # no resumed checkpoint
        record = ws.results / f"epoch_time_{trainer}.json"
        command = [sys.executable, str(Path(__file__).resolve()), "_time", "--dataset", str(dataset_id(ws.raw)),
                   "--trainer", trainer, "--fold", str(args.fold), "--epochs", str(args.epochs),
                   "--iterations", str(args.iterations), "--out", str(record)]
        print("$", " ".join(command), flush=True)
        subprocess.run(command, env=env, check=True)
        runs.append(summarise(json.loads(record.read_text())))
        meta["device"] = runs[-1]["device"]
        print(json.dumps({k: v for k, v in runs[-1].items() if k not in ("epoch_seconds", "train_seconds")}),
              flush=True)
        # rewritten after every trainer: a run cut short keeps the trainers it finished
        (args.out / f"epoch_time_{tag}.json").write_text(json.dumps({"metadata": meta, "runs": runs}, indent=2) + "\n")


if __name__ == "__main__":
    main()
