"""Mean Dice against parameters and against GFLOPs (log scale) for every model trained by ``accuracy.py``.

One point per trainer of every ``accuracy_*.json`` given but smoke tests (cross-validation on all training cases; the
mean over its folds, with the spread over folds as an error bar), labelled with the trainer name and its number of
folds. A trainer in several tables (LightMedSeg is the reference row of the ablation and data-efficiency tables) is
drawn from the table with the most folds: folds of different runs are not pooled. Parameters and GFLOPs are those
the accuracy script recorded (the network at the patch it trained at).

Usage::

    python benchmarks/plots.py [RESULTS_JSON ...] [--out benchmarks/results/accuracy_vs_cost.png]
"""
from __future__ import annotations

import argparse
import json
from pathlib import Path
from typing import Any, Optional

import numpy as np

from common import RESULTS
from nnunetv2_lightmedseg.trainers.budgets import base_trainer_name


def points(tables: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """One point per (dataset, trainer): mean and standard deviation of mean Dice over its full-data folds, from
    the table with the most of them."""
    groups: dict[tuple[str, str], list[dict[str, Any]]] = {}
    for table in tables:
        if table["metadata"].get("smoke_test"):
            continue
        rows_of: dict[tuple[str, str], list[dict[str, Any]]] = {}
        for row in table["rows"]:
            if row["kind"] == "cross-validation" and row["train_fraction"] == 1.0:
                rows_of.setdefault((table["metadata"]["dataset"], row["trainer"]), []).append(row)
        for key, rows in rows_of.items():
            if len(rows) > len(groups.get(key, [])):
                groups[key] = rows
    budgets = {(t["metadata"]["dataset"], r["trainer"]): t["metadata"]["budget"] for t in tables for r in t["rows"]}
    return [{"dataset": dataset, "trainer": trainer, "params": rows[0]["params"], "gflops": rows[0].get("gflops"),
             "budget": budgets[dataset, trainer],
             "dice": float(np.mean([r["mean_dice"] for r in rows])),
             "dice_sd": float(np.std([r["mean_dice"] for r in rows])), "folds": len(rows)}
            for (dataset, trainer), rows in groups.items()]


def label_of(point: dict[str, Any]) -> str:
    """The trainer without its length (nnU-Net's ``nnUNetTrainer`` as nnU-Net default), the budget, the folds."""
    name = base_trainer_name(point["trainer"]).replace("nnUNetTrainer", "") or "nnU-Net default"
    budget, folds = point["budget"], point["folds"]
    return (f"{name}, {budget['epochs']} x {budget['iterations_per_epoch']} it. "
            f"({folds} fold{'s' if folds > 1 else ''})")


def plot(data: list[dict[str, Any]], out: Path, width_px: int = 1400) -> Path:
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    fig, axes = plt.subplots(1, 2, figsize=(width_px / 100, width_px / 250), dpi=100, sharey=True)
    colours, markers = plt.get_cmap("tab10").colors, "osD^vP*Xph<>"
    for ax, key, label in ((axes[0], "params", "parameters"), (axes[1], "gflops", "GFLOPs per patch (batch 1)")):
        for i, point in enumerate(data):
            if point[key] is None:
                continue
            # a legend, not labels at the points: the ablation variants lie too close together to label
            ax.errorbar(point[key], point["dice"], yerr=point["dice_sd"], fmt=markers[i % len(markers)],
                        color=colours[i % len(colours)], capsize=3,
                        label=label_of(point))
        ax.set_xscale("log")
        ax.set_xlabel(label)
        ax.grid(True, which="both", alpha=0.3)
    axes[0].set_ylabel("mean foreground Dice (cross-validation)")
    datasets = sorted({p["dataset"] for p in data})
    fig.suptitle(f"Accuracy against cost: {', '.join(datasets)}")
    handles, labels = axes[0].get_legend_handles_labels()
    fig.legend(handles, labels, loc="center right", fontsize=8)
    fig.tight_layout(rect=(0, 0, 0.74, 1))
    out.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(out)
    plt.close(fig)
    return out


def main(argv: Optional[list[str]] = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("results", nargs="*", type=Path, help="accuracy JSON files (default: all in results/)")
    parser.add_argument("--out", type=Path, default=RESULTS / "accuracy_vs_cost.png")
    args = parser.parse_args(argv)
    files = args.results or sorted(RESULTS.glob("accuracy_*.json"))
    if not files:
        raise SystemExit("No accuracy results: run benchmarks/accuracy.py first")
    data = points([json.loads(f.read_text()) for f in files])
    print(f"wrote {plot(data, args.out)} ({len(data)} models)")


if __name__ == "__main__":
    main()
