"""Several GPUs against one: nnU-Net's own DDP training (``nnUNetv2_train ... -num_gpus N``) and a one-GPU training
of the same trainer, fold and plans, then ``nnUNetv2_predict`` with the N-GPU model, scored against the labels.

With more than N GPUs the two trainings run at the same time (GPUs 0..N-1 and GPU N), else one after the other.
Epoch times are nnU-Net's own (its training log; median over epochs, the first one excluded: it holds cuDNN's
autotuning). Under DDP nnU-Net splits each batch over the GPUs and keeps the iterations per epoch, so the speed-up
is the one-GPU epoch time over the N-GPU epoch time.

Usage (the dataset planned and preprocessed, e.g. by ``accuracy.py``; nnU-Net compiles nothing here)::

    python benchmarks/multi_gpu.py --raw /opt/data/Dataset027_ACDC --preprocessed /opt/acc/preprocessed \\
        --work /opt/multigpu -tr nnUNetTrainerLightMedSeg_5epochs --fold 0 --gpus 2 --name acdc
"""
from __future__ import annotations

import argparse
import json
import os
import subprocess
import time
from pathlib import Path
from typing import Any, Optional

import numpy as np

from accuracy import dataset_id, epoch_times, foreground_labels, score_folder, scoring_pool, summarise
from nnunetv2_lightmedseg.provenance import provenance


def start_training(env: dict, gpus: list[int], dataset: int, trainer: str, fold: int, log: Path) -> subprocess.Popen:
    argv = ["nnUNetv2_train", str(dataset), "3d_fullres", str(fold), "-tr", trainer]
    if len(gpus) > 1:
        argv += ["-num_gpus", str(len(gpus))]
    print("$ CUDA_VISIBLE_DEVICES=" + ",".join(map(str, gpus)), " ".join(argv), flush=True)
    return subprocess.Popen(argv, env={**env, "CUDA_VISIBLE_DEVICES": ",".join(map(str, gpus))},
                            stdout=open(log, "w"), stderr=subprocess.STDOUT)


def main(argv: Optional[list[str]] = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--raw", type=Path, required=True, help="raw dataset folder (DatasetXXX_Name)")
    parser.add_argument("--preprocessed", type=Path, required=True, help="nnUNet_preprocessed holding that dataset")
    parser.add_argument("--work", type=Path, required=True, help="folder for the results of both trainings")
    parser.add_argument("-tr", "--trainer", default="nnUNetTrainerLightMedSeg_5epochs")
    parser.add_argument("--fold", type=int, default=0)
    parser.add_argument("--gpus", type=int, default=2, help="GPUs of the DDP training")
    parser.add_argument("--predict-cases", type=int, default=4, help="validation cases of the fold to predict")
    parser.add_argument("--name", required=True, help="results file: benchmarks/results/multi_gpu_<name>.json")
    parser.add_argument("--out", type=Path, default=Path(__file__).resolve().parent / "results")
    args = parser.parse_args(argv)

    import torch

    import nnunetv2_lightmedseg
    available = torch.cuda.device_count()
    if available < args.gpus:
        raise SystemExit(f"{args.gpus} GPUs asked for, {available} visible")
    raw, dataset = args.raw.resolve(), dataset_id(args.raw)
    base_env = {**os.environ, "nnUNet_raw": str(raw.parent), "nnUNet_preprocessed": str(args.preprocessed.resolve()),
                "nnUNet_extTrainer": nnunetv2_lightmedseg.ext_trainer_value(), "nnUNet_compile": "f"}
    args.work.mkdir(parents=True, exist_ok=True)
    layouts = {1: [args.gpus if available > args.gpus else 0], args.gpus: list(range(args.gpus))}
    side_by_side = available > args.gpus
    runs: dict[int, dict[str, Any]] = {}
    pending = []
    for n, gpus in sorted(layouts.items(), reverse=True):
        env = {**base_env, "nnUNet_results": str(args.work / f"results_{n}gpu")}
        log = args.work / f"train_{n}gpu.log"
        started = time.time()
        process = start_training(env, gpus, dataset, args.trainer, args.fold, log)
        pending.append((n, env, process, started, log))
        if not side_by_side:
            process.wait()
    for n, env, process, started, log in pending:
        if process.wait() != 0:
            raise SystemExit(f"training on {n} GPU(s) failed (exit {process.returncode}); last lines of {log}:\n"
                             + "".join(log.read_text().splitlines(True)[-30:]))
        fold_folder = Path(env["nnUNet_results"]) / raw.name / f"{args.trainer}__nnUNetPlans__3d_fullres" / \
            f"fold_{args.fold}"
        times = epoch_times(fold_folder)
        validation = json.loads((fold_folder / "validation" / "summary.json").read_text())
        runs[n] = {"gpus": n, "cuda_visible_devices": layouts[n], "epoch_seconds": times,
                   "median_epoch_seconds": float(np.median(times[1:] or times)), "wall_seconds": time.time() - started,
                   "validation_mean_dice_nnunet": validation["foreground_mean"]["Dice"]}

    # prediction with the N-GPU model: nnUNetv2_predict on validation cases of the fold, scored by MONAI
    cases = json.loads((args.preprocessed / raw.name / "splits_final.json").read_text())[args.fold]["val"]
    cases = cases[:args.predict_cases]
    images = args.work / "predict_input"
    images.mkdir(exist_ok=True)
    for case in cases:
        for file in (raw / "imagesTr").glob(f"{case}_[0-9][0-9][0-9][0-9].*"):
            if not (images / file.name).exists():
                (images / file.name).symlink_to(file)
    predictions = args.work / f"predictions_{args.gpus}gpu"
    command = ["nnUNetv2_predict", "-i", str(images), "-o", str(predictions), "-d", str(dataset), "-c", "3d_fullres",
               "-tr", args.trainer, "-f", str(args.fold)]
    subprocess.run(command, env={**base_env, "nnUNet_results": str(args.work / f"results_{args.gpus}gpu")},
                   check=True)
    dataset_json = json.loads((raw / "dataset.json").read_text())
    classes = list(foreground_labels(dataset_json))
    with scoring_pool(4) as pool:
        scored = score_folder(predictions, raw / "labelsTr", dataset_json, pool)

    meta = provenance()
    meta.update({"dataset": raw.name, "trainer": args.trainer, "fold": args.fold,
                 "side_by_side": side_by_side})
    table = {"metadata": meta, "runs": [runs[n] for n in sorted(runs)],
             "speedup": runs[1]["median_epoch_seconds"] / runs[args.gpus]["median_epoch_seconds"],
             "prediction": {"model_gpus": args.gpus, "command": " ".join(command), "cases": cases,
                            **summarise(scored, classes)}}
    args.out.mkdir(parents=True, exist_ok=True)
    out = args.out / f"multi_gpu_{args.name}.json"
    out.write_text(json.dumps(table, indent=2) + "\n")
    print(json.dumps({k: table[k] for k in ("runs", "speedup")}, indent=1))
    print(f"wrote {out}")


if __name__ == "__main__":
    main()
