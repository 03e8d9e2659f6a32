"""Numerical stability on the GPU: a trainer under bf16 and fp16 autocast on real, augmented nnU-Net patches.

The trainer is nnU-Net's own (data loading, augmentation, deep-supervision loss, the trainer's optimiser and
learning-rate schedule, torch.compile as nnU-Net sets it up); only the step is written out here so that every
iteration's loss and gradient norm can be checked. fp16 uses nnU-Net's GradScaler, which skips a step whose
gradients overflow and lowers the scale: those skips are counted apart from non-finite values that reach the weights.

Usage (after ``nnUNetv2_plan_and_preprocess``, with the nnU-Net variables and ``nnUNet_extTrainer`` set)::

    python benchmarks/stability.py -d 27 -tr nnUNetTrainerLightMedSeg --iterations 2000 --dtypes bf16 fp16
"""
from __future__ import annotations

import argparse
import json
import math
import time
from pathlib import Path
from typing import Any, Optional

import torch

from nnunetv2_lightmedseg.provenance import provenance

DTYPES = {"bf16": torch.bfloat16, "fp16": torch.float16}


def run_stability(dataset: str, trainer_name: str, dtype: str, iterations: int, fold: int,
                  configuration: str = "3d_fullres", log_every: int = 100, save_checkpoint: bool = False
                  ) -> dict[str, Any]:
    """Train ``iterations`` steps under autocast ``dtype`` and count non-finite losses and gradients."""
    from nnunetv2.run.run_training import get_trainer_from_args

    import nnunetv2_lightmedseg
    from nnunetv2_lightmedseg.trainers import budget_trainer_name
    nnunetv2_lightmedseg.enable()
    # the trainer named by the length that covers the iterations (its poly schedule spans them), 250 per epoch
    trainer_name = budget_trainer_name(trainer_name, math.ceil(iterations / 250))
    trainer = get_trainer_from_args(dataset, configuration, fold, trainer_name, device=torch.device("cuda"))
    trainer.on_train_start()
    scaler = torch.amp.GradScaler("cuda") if dtype == "fp16" else None
    params = [p for p in trainer.network.parameters() if p.requires_grad]
    losses, window, nonfinite_loss, nonfinite_grad, skipped = [], [], 0, 0, 0
    start = time.perf_counter()
    for it in range(iterations):
        if it % trainer.num_iterations_per_epoch == 0:
            trainer.lr_scheduler.step(it // trainer.num_iterations_per_epoch)
        batch = next(trainer.dataloader_train)
        data = batch["data"].to(trainer.device, non_blocking=True)
        target = [t.to(trainer.device, non_blocking=True) for t in batch["target"]] \
            if isinstance(batch["target"], list) else batch["target"].to(trainer.device, non_blocking=True)
        if getattr(trainer, "device_augmentation", None) is not None:  # a trainer that augments on the GPU
            with torch.no_grad():
                data, target = trainer.device_augmentation.augment(data, target)
        trainer.optimizer.zero_grad(set_to_none=True)
        with torch.autocast("cuda", dtype=DTYPES[dtype]):
            loss = trainer.loss(trainer.network(data), target)
        if not torch.isfinite(loss):
            nonfinite_loss += 1
        if scaler is not None:
            scaler.scale(loss).backward()
            scaler.unscale_(trainer.optimizer)
        else:
            loss.backward()
        grad_norm = torch.nn.utils.clip_grad_norm_(params, 12)
        if not torch.isfinite(grad_norm):
            if scaler is None:
                nonfinite_grad += 1
            else:
                skipped += 1  # the scaler will skip this step and lower its scale
        if scaler is not None:
            scaler.step(trainer.optimizer)
            scaler.update()
        else:
            trainer.optimizer.step()
        window.append(loss.item())
        if (it + 1) % log_every == 0:
            losses.append(round(sum(window) / len(window), 4))
            window = []
            print(f"{dtype} iteration {it + 1}/{iterations}: mean loss {losses[-1]}, skipped {skipped}, "
                  f"non-finite loss {nonfinite_loss}, non-finite grad {nonfinite_grad}", flush=True)
    seconds = time.perf_counter() - start
    weights_finite = all(torch.isfinite(p).all().item() for p in params)
    if save_checkpoint:  # nnU-Net's own checkpoint, so that the predictor and our figures can use the model
        trainer.save_checkpoint(str(Path(trainer.output_folder) / "checkpoint_final.pth"))
    trainer.on_train_end()
    return {
        "dtype": dtype, "trainer": trainer_name, "recipe": getattr(trainer, "recipe", None),
        "optimizer": type(trainer.optimizer).__name__, "compiled": trainer._do_i_compile(),
        "dataset": dataset, "fold": fold, "iterations": iterations,
        "batch_size": trainer.batch_size, "patch_size": list(trainer.configuration_manager.patch_size),
        "nonfinite_loss": nonfinite_loss, "nonfinite_grad_applied": nonfinite_grad,
        "fp16_overflow_steps_skipped_by_scaler": skipped if scaler is not None else None,
        "final_grad_scale": scaler.get_scale() if scaler is not None else None,
        "weights_finite_at_end": weights_finite, f"mean_loss_every_{log_every}": losses,
        "seconds_per_iteration": round(seconds / iterations, 4),
    }


def main(argv: Optional[list[str]] = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("-d", "--dataset", required=True)
    parser.add_argument("-tr", "--trainer", default="nnUNetTrainerLightMedSeg")
    parser.add_argument("-f", "--fold", type=int, default=0)
    parser.add_argument("--iterations", type=int, default=2000)
    parser.add_argument("--dtypes", nargs="+", default=list(DTYPES), choices=list(DTYPES))
    parser.add_argument("--save-checkpoint", action="store_true",
                        help="write checkpoint_final.pth into the trainer's output folder at the end")
    parser.add_argument("--out", type=Path, default=Path(__file__).resolve().parent / "results" / "stability.json")
    args = parser.parse_args(argv)
    meta = provenance("cuda")
    runs = [run_stability(args.dataset, args.trainer, dtype, args.iterations, args.fold,
                          save_checkpoint=args.save_checkpoint) for dtype in args.dtypes]
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps({"metadata": meta, "runs": runs}, indent=2) + "\n")
    for run in runs:
        print(json.dumps({k: v for k, v in run.items() if not k.startswith("mean_loss")}))


if __name__ == "__main__":
    main()
