"""Whole-case CPU prediction of one model with PyTorch and with ONNX Runtime, through the same nnU-Net predictor.

Both backends run inside ``nnUNetPredictor`` (nnU-Net's preprocessing, sliding window with Gaussian weighting,
mirroring, export); only the network differs: the PyTorch module, or ``nnunetv2_lightmedseg.export.OnnxNetwork``
running the file ``lightmedseg export`` writes (after its parity check). Timed, median of ``--repeats``:
- the sliding window on the preprocessed case (``predict_logits_from_preprocessed_data``), without and with
  mirroring (nnU-Net's default test-time augmentation: 8 forward passes per tile in 3D);
- the whole case from image file to segmentation file (``predict_from_files``, mirroring on).

The model: ``--model FOLDER`` (a trained nnU-Net model folder, ``--fold``), or by default LightMedSeg with its
initial weights (seed 0) on the ACDC plan (``benchmarks/plans``: patch 10 x 256 x 224), saved as an nnU-Net model
folder so that it loads through the same path. The time does not depend on the weight values. The case: the first
ACDC image in ``../shared/data/Dataset027_ACDC/imagesTr`` when present, else a generated ACDC-like 1 x 10 x 256 x 216
volume at the plan's spacing.

Usage::

    python benchmarks/onnx_speed.py [--model FOLDER --fold 0] [--case FILE_0000.nii.gz] [--threads N] [--repeats 3]

writes ``benchmarks/results/speed_onnx_cpu.json`` (metadata + rows) and ``speed_onnx_cpu.md`` (from the JSON).
"""
from __future__ import annotations

import argparse
import json
import shutil
import tempfile
import time
from importlib.metadata import version
from pathlib import Path
from typing import Any, Optional

import numpy as np
import torch

import nnunetv2_lightmedseg
from common import generated_line
from nnunetv2_lightmedseg import export
from nnunetv2_lightmedseg.provenance import provenance
from speed import median_ms

HERE = Path(__file__).resolve().parent
PLANS, DATASET = HERE / "plans" / "Dataset027_ACDC_nnUNetPlans.json", HERE / "plans" / "Dataset027_ACDC_dataset.json"
ACDC_IMAGES = HERE.parents[1] / "shared" / "data" / "Dataset027_ACDC" / "imagesTr"
CPU = torch.device("cpu")


def untrained_model_folder(root: Path, trainer_name: str) -> Path:
    """An nnU-Net model folder (plans.json, dataset.json, fold_0/checkpoint_final.pth) of ``trainer_name`` on the
    ACDC plan with its initial weights, in the checkpoint format ``nnUNetTrainer.save_checkpoint`` writes."""
    from nnunetv2.utilities.label_handling.label_handling import determine_num_input_channels
    from nnunetv2.utilities.plans_handling.plans_handler import PlansManager

    import nnunetv2_lightmedseg.trainers as trainers
    plans, dataset = json.loads(PLANS.read_text()), json.loads(DATASET.read_text())
    plans_manager = PlansManager(plans)
    configuration = plans_manager.get_configuration("3d_fullres")
    torch.manual_seed(0)
    network = getattr(trainers, trainer_name).build_network_architecture(
        plans_manager, configuration, determine_num_input_channels(plans_manager, configuration, dataset),
        plans_manager.get_label_manager(dataset).num_segmentation_heads, enable_deep_supervision=False)
    folder = root / f"{trainer_name}__{plans_manager.plans_name}__3d_fullres"
    (folder / "fold_0").mkdir(parents=True)
    (folder / "plans.json").write_text(json.dumps(plans, indent=2))
    (folder / "dataset.json").write_text(json.dumps(dataset, indent=2))
    # every 3D configuration mirrors along (0, 1, 2) (nnUNetTrainer.configure_rotation_dummyDA_mirroring_and_...)
    torch.save({"network_weights": network.state_dict(), "trainer_name": trainer_name,
                "init_args": {"configuration": "3d_fullres"}, "inference_allowed_mirroring_axes": (0, 1, 2)},
               folder / "fold_0" / "checkpoint_final.pth")
    return folder


def case_image(requested: Optional[Path], folder: Path) -> tuple[Path, str]:
    """The case to predict, copied into ``folder`` (one case: nnU-Net predicts every case of a folder)."""
    import SimpleITK as sitk
    if requested is None and ACDC_IMAGES.is_dir():
        requested = sorted(ACDC_IMAGES.glob("*_0000.nii.gz"))[0]
    folder.mkdir(parents=True)
    if requested is not None:
        shutil.copy(requested, folder / requested.name)
        where = requested.parent.resolve()
        if where.is_relative_to(HERE.parents[1]):  # the repository's sibling ../shared: say so, not the machine's path
            where = Path("..", where.relative_to(HERE.parents[1]))
        return folder / requested.name, f"{requested.name} ({where})"
    from nnunetv2_lightmedseg.synthetic import make_case
    spacing = json.loads(PLANS.read_text())["configurations"]["3d_fullres"]["spacing"]
    images, _ = make_case(np.random.default_rng(0), (10, 256, 216), spacing)
    image = sitk.GetImageFromArray(images[0])
    image.SetSpacing(tuple(float(s) for s in reversed(spacing)))
    sitk.WriteImage(image, str(folder / "generated_0000.nii.gz"))
    return folder / "generated_0000.nii.gz", f"generated ACDC-like 1 x 10 x 256 x 216 at spacing {spacing}"


def time_backend(predictor, data: torch.Tensor, images: Path, output: Path, repeats: int) -> dict[str, float]:
    """Median seconds of the sliding window without and with mirroring, and of the whole case file to file."""
    row = {}
    for mirroring in (False, True):
        predictor.use_mirroring = mirroring
        key = "sliding_window_tta_s" if mirroring else "sliding_window_s"
        row[key] = median_ms(lambda: predictor.predict_logits_from_preprocessed_data(data), CPU, warmup=1,
                             repeats=repeats) / 1e3
    predictor.use_mirroring = True  # nnU-Net's default
    row["whole_case_s"] = median_ms(lambda: predictor.predict_from_files(
        str(images), str(output), overwrite=True, num_processes_preprocessing=1, num_processes_segmentation_export=1),
        CPU, warmup=0, repeats=repeats) / 1e3
    return {k: round(v, 3) for k, v in row.items()}


def to_markdown(table: dict[str, Any]) -> str:
    meta = table["metadata"]
    lines = [
        "# Whole-case CPU prediction: PyTorch vs ONNX Runtime",
        "",
        generated_line(meta, f"onnxruntime {meta['onnxruntime']}, {meta['threads']} threads for torch and ONNX Runtime "
                             f"alike. Model: {meta['model']}. Case: {meta['case']} (preprocessed "
                             f"{meta['preprocessed_shape']}, patch {meta['patch_size']}, {meta['tiles']} tile(s)). "
                             f"Median of {meta['repeats']} runs. ONNX export {meta['export_s']} s; max |logit "
                             f"difference| ONNX Runtime vs PyTorch {meta['max_abs_logit_difference']}."),
        "",
        "| Backend | Sliding window (s) | Sliding window, mirroring x8 (s) | Whole case, file to file, mirroring (s) |",
        "|---|---:|---:|---:|",
    ]
    for r in table["rows"]:
        lines.append(f"| {r['backend']} | {r['sliding_window_s']:.2f} | {r['sliding_window_tta_s']:.2f} | "
                     f"{r['whole_case_s']:.2f} |")
    torch_row, onnx_row = table["rows"]
    lines.append("| speed-up of ONNX Runtime (PyTorch time / ONNX Runtime time) | "
                 + " | ".join(f"{torch_row[k] / onnx_row[k]:.2f}x" for k in
                              ("sliding_window_s", "sliding_window_tta_s", "whole_case_s")) + " |")
    return "\n".join(lines) + "\n"


def main(argv: Optional[list[str]] = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", type=Path, help="trained nnU-Net model folder (default: untrained, ACDC plan)")
    parser.add_argument("--fold", default="0")
    parser.add_argument("--trainer", default="nnUNetTrainerLightMedSeg", help="for the default untrained model")
    parser.add_argument("--case", type=Path, help="one image file CASE_0000.nii.gz (single-channel models)")
    parser.add_argument("--threads", type=int, default=torch.get_num_threads())
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--out", type=Path, default=HERE / "results")
    args = parser.parse_args(argv)

    torch.set_num_threads(args.threads)
    nnunetv2_lightmedseg.enable()
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        model = args.model or untrained_model_folder(tmp / "model", args.trainer)
        case, case_note = case_image(args.case, tmp / "images")
        torch_predictor = export.load_predictor(model, [args.fold])
        t0 = time.perf_counter()
        summary = export.export_and_check(model, tmp / "model.onnx", [args.fold])
        export_s = time.perf_counter() - t0
        onnx_predictor = export.onnx_predictor(tmp / "model.onnx", threads=args.threads)
        configuration = torch_predictor.configuration_manager
        data, _, _ = configuration.preprocessor_class(verbose=False).run_case(
            [str(case)], None, torch_predictor.plans_manager, configuration, torch_predictor.dataset_json)
        data = torch.from_numpy(data)
        rows = []
        for name, predictor in (("PyTorch (eager, float32)", torch_predictor), ("ONNX Runtime (CPU)", onnx_predictor)):
            row = {"backend": name, **time_backend(predictor, data, case.parent, tmp / name.split()[0], args.repeats)}
            print(json.dumps(row), flush=True)
            rows.append(row)
        tiles = len(torch_predictor._internal_get_sliding_window_slicers(
            [max(s, p) for s, p in zip(data.shape[1:], configuration.patch_size)]))

    meta = provenance("cpu")
    meta.update({
        "threads": args.threads, "repeats": args.repeats,
        "onnxruntime": version("onnxruntime"), "onnx": version("onnx"),
        "model": (f"{args.model} fold {args.fold}" if args.model else
                  f"{args.trainer}, initial weights (seed 0), ACDC 3d_fullres plan; time does not depend on weights"),
        "case": case_note, "preprocessed_shape": list(data.shape), "patch_size": summary["patch_size"],
        "tiles": tiles, "export_s": round(export_s, 1),
        "max_abs_logit_difference": float(f"{max(summary['max_abs_logit_difference'].values()):.3g}"),
    })
    table = {"metadata": meta, "rows": rows}
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "speed_onnx_cpu.json").write_text(json.dumps(table, indent=2) + "\n")
    (args.out / "speed_onnx_cpu.md").write_text(to_markdown(table))
    print(to_markdown(table))


if __name__ == "__main__":
    main()
