"""What a head that places boundaries only in blocks of the stem's stride can reach: each label map (the reference,
and optionally a model's validation predictions) reduced to blocks of ``--block`` voxels and brought back to its grid,
scored against the reference by MONAI (``accuracy.score_arrays``), per class, averaged over cases.

Two ways back from the blocks (the block average of the one-hot labels, the best per-block class probabilities):
``nearest`` (every voxel takes its block's class: what LightMedSeg's paper head, a transposed convolution with kernel
= stride, can express once deep supervision makes its coarse logits class scores) and ``trilinear`` (interpolated
between neighbouring blocks: ``nnUNetTrainerLightMedSeg_smoothHead``). The blocks are taken on the label files' own
grid, not on the plan's (ACDC's in-plane spacing, 1.4-1.7 mm, lies around the plan's 1.5625 mm).

    python benchmarks/head_ceiling.py --labels .data/Dataset027_ACDC/labelsTr --block 1 2 2 \\
        --predictions "nnU-Net default fold 1=FOLD_FOLDER/validation" --name acdc
"""
from __future__ import annotations

import argparse
import json
from pathlib import Path
from typing import Optional

import numpy as np
import torch
import torch.nn.functional as F

from accuracy import foreground_labels, score_arrays
from common import RESULTS, generated_line
from nnunetv2_lightmedseg.provenance import provenance


def blocked(labels: np.ndarray, block: tuple[int, int, int], num_classes: int, mode: str) -> np.ndarray:
    """``labels`` (D, H, W) through blocks of ``block`` voxels and back (``mode`` nearest or trilinear); the edges
    that do not fill a block are cropped away (and from the reference alike)."""
    one_hot = F.one_hot(torch.from_numpy(labels.astype(np.int64)), num_classes).permute(3, 0, 1, 2)[None].float()
    coarse = F.avg_pool3d(one_hot, block)
    back = (F.interpolate(coarse, scale_factor=block, mode="nearest") if mode == "nearest"
            else F.interpolate(coarse, scale_factor=block, mode="trilinear", align_corners=False))
    return back[0].argmax(0).numpy()


def crop(labels: np.ndarray, block: tuple[int, int, int]) -> np.ndarray:
    return labels[tuple(slice(0, s - s % b) for s, b in zip(labels.shape, block))]


def main(argv: Optional[list[str]] = None) -> list[dict]:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--labels", type=Path, required=True, help="the raw dataset's labelsTr")
    parser.add_argument("--block", type=int, nargs=3, default=(1, 2, 2), help="z y x, the stem's stride")
    parser.add_argument("--predictions", nargs="*", default=[], help="NAME=FOLDER of predicted label files")
    parser.add_argument("--name", required=True)
    parser.add_argument("--out", type=Path, default=RESULTS, help="folder of head_ceiling_NAME.{json,md}")
    args = parser.parse_args(argv)
    import SimpleITK as sitk
    block = tuple(args.block)
    classes = foreground_labels(json.loads((args.labels.parent / "dataset.json").read_text()))
    num_classes = max(classes.values()) + 1
    sources = {"reference": sorted(args.labels.glob("*.nii.gz"))}
    sources.update({name: sorted(Path(folder).glob("*.nii.gz"))
                    for name, folder in (p.split("=", 1) for p in args.predictions)})
    rows = []
    for name, files in sources.items():
        # the reference as is would only score against itself
        scores = {mode: [] for mode in (() if name == "reference" else ("as is",)) + ("nearest", "trilinear")}
        for file in files:
            ref = sitk.ReadImage(str(args.labels / file.name))
            spacing = ref.GetSpacing()[::-1]
            ref = crop(sitk.GetArrayFromImage(ref), block)
            source = ref if name == "reference" else crop(sitk.GetArrayFromImage(sitk.ReadImage(str(file))), block)
            for mode in scores:
                labels = source if mode == "as is" else blocked(source, block, num_classes, mode)
                scores[mode].append(score_arrays(labels, ref, spacing, classes, hd95=False))
        for mode, cases in scores.items():
            dice = {c: float(np.mean([case[c]["dice"] for case in cases])) for c in classes}
            rows.append({"labels": name, "through_blocks": mode, "cases": len(cases), "dice": dice,
                         "mean_dice": float(np.mean(list(dice.values())))})
            print(rows[-1], flush=True)
    meta = provenance("cpu")
    meta.update({"block": block, "labels": str(args.labels)})
    out = args.out / f"head_ceiling_{args.name}.json"
    out.write_text(json.dumps({"metadata": meta, "rows": rows}, indent=1) + "\n")
    lines = [f"# Boundaries in blocks of {' x '.join(map(str, block))} voxels ({args.name})", "",
             generated_line(meta, "Dice by MONAI, mean over cases; edges that fill no block cropped."), "",
             "| labels | through blocks | cases | " + " | ".join(classes) + " | mean |",
             "|---|---|---|" + "---|" * (len(classes) + 1)]
    for row in rows:
        lines.append(f"| {row['labels']} | {row['through_blocks']} | {row['cases']} | "
                     + " | ".join(f"{row['dice'][c]:.3f}" for c in classes) + f" | {row['mean_dice']:.3f} |")
    out.with_suffix(".md").write_text("\n".join(lines) + "\n")
    return rows


if __name__ == "__main__":
    main()
