"""``lightmedseg``: the command line of nnunetv2-lightmedseg.

``lightmedseg env``   prints the ``export`` lines nnU-Net needs to find our trainers (``eval "$(lightmedseg env)"``).
``lightmedseg demo``  runs the whole nnU-Net workflow with LightMedSeg on a small synthetic 3D dataset: generate,
                      plan and preprocess, train fold 0, predict held-out cases, score them with nnU-Net's own
                      evaluation, print a table and write it as JSON.
``lightmedseg export``        a trained model folder (one fold or an ensemble) to ONNX, checked against PyTorch
                              with ONNX Runtime (``nnunetv2_lightmedseg.export``).
``lightmedseg predict-onnx``  whole cases through nnU-Net's preprocessing, sliding window and export, with ONNX
                              Runtime as the network.
``lightmedseg show``          PNG: image, ground truth and prediction of chosen cases
                              (``nnunetv2_lightmedseg.figures``).
``lightmedseg anchors``       PNG: LightMedSeg's anchors S and texture map T on one case.

How the demo sets the training length: it drives nnU-Net's training from Python (``get_trainer_from_args``, as
``nnUNetv2_train`` does) and sets ``num_epochs`` / ``num_iterations_per_epoch`` / ``num_val_iterations_per_epoch``
on the trainer instance before ``run_training()``. A dedicated demo trainer class would have to be added to the
package's persistent trainer API and would fix one length; this way every length is a command-line option, and
the results folder is exactly the one ``nnUNetv2_train DATASET 3d_fullres 0 -tr nnUNetTrainerLightMedSeg`` makes,
so ``nnUNetv2_predict -tr nnUNetTrainerLightMedSeg`` and the other stock commands work on it unchanged. (The length
is not stored in the checkpoint: ``nnUNetv2_train ... --c`` on the demo's folder would go on to the class's 1000
epochs.)

On the CPU the demo gives torch half the cores (one on a 2-core machine) and nnU-Net's augmentation workers the
rest: on 2 cores this is as fast as two torch threads with in-process augmentation when the machine is quiet, and
stays fast when other programs load it, where two torch threads slow down 10-50 fold (measured on this project's
2-core CI machines).

Nothing heavy (torch, nnU-Net) is imported at module level: ``lightmedseg env`` stays instant, and the demo sets
nnU-Net's environment variables before nnU-Net reads them.
"""
from __future__ import annotations

import argparse
import datetime
import json
import os
import platform
import shlex
import shutil
import sys
import time
from pathlib import Path
from typing import Callable, Mapping, Optional, Sequence

import nnunetv2_lightmedseg

NNUNET_FOLDERS = ("nnUNet_raw", "nnUNet_preprocessed", "nnUNet_results")
DEFAULT_ROOT = "~/nnUNet_data"
DEMO_DATASET_ID = 990
DEMO_DATASET_NAME = "LightMedSegDemo"
DEMO_TRAINER = "nnUNetTrainerLightMedSeg"
DEMO_CONFIGURATION = "3d_fullres"

# The demo's defaults: about 6 minutes on a 2-core CPU (7 with other programs loading it) for a held-out mean
# foreground Dice of about 0.87 (measured: README, "The demo"; benchmarks/results/demo_cpu.json).
DEMO_DEFAULTS = dict(cases=20, test_cases=8, size=32, epochs=50, iterations=50, val_iterations=4, seed=0)


# ----------------------------------------------------------------------------------------------------------- env
def env_lines(root: str = DEFAULT_ROOT, environ: Optional[Mapping[str, str]] = None) -> list[str]:
    """The shell lines of ``lightmedseg env``: ``nnUNet_extTrainer`` always (our folder added to any value already
    set), the three nnU-Net folders only when unset, as folders under ``root``."""
    environ = os.environ if environ is None else environ
    lines = [f"export nnUNet_extTrainer={shlex.quote(nnunetv2_lightmedseg.ext_trainer_value(environ.get('nnUNet_extTrainer', '')))}"]
    root_path = Path(os.path.expanduser(root)).absolute()
    missing = [name for name in NNUNET_FOLDERS if not environ.get(name)]
    for name in missing:
        lines.append(f"export {name}={shlex.quote(str(root_path / name))}")
    if missing:
        folders = " ".join(shlex.quote(str(root_path / name)) for name in missing)
        lines.append(f"mkdir -p {folders}")
    return lines


def _cmd_env(args: argparse.Namespace) -> int:
    print("\n".join(env_lines(args.root)))
    return 0


# ---------------------------------------------------------------------------------------------------------- demo
def _phase(number: int, total: int, title: str) -> None:
    print(f"\n{'=' * 100}\n[{number}/{total}] {title}\n{'=' * 100}", flush=True)


def _resolve_device(requested: str):
    import torch
    if requested == "auto":
        requested = "cuda" if torch.cuda.is_available() else "cpu"
    if requested == "cuda" and not torch.cuda.is_available():
        raise SystemExit("lightmedseg demo: --device cuda was asked for, but torch sees no CUDA device")
    return torch.device(requested)


def _set_demo_environment(output: Path) -> None:
    """Point nnU-Net at folders inside ``output`` and size it to this machine, before nnU-Net reads anything."""
    for name in NNUNET_FOLDERS:
        folder = output / name
        folder.mkdir(parents=True, exist_ok=True)
        os.environ[name] = str(folder)
    nnunetv2_lightmedseg.enable()
    os.environ.setdefault("nnUNet_def_n_proc", str(max(1, min(os.cpu_count() or 1, 8))))
    # torch.compile costs a minute or more of compilation for a few minutes of training: off unless asked for
    os.environ.setdefault("nnUNet_compile", "f")
    os.environ.setdefault("MPLBACKEND", "Agg")  # nnU-Net's progress plot needs no display


def _count_gflops(network, patch_size: Sequence[int], num_input_channels: int, device) -> float:
    """GFLOPs of one forward pass at ``patch_size`` (batch 1), counted by torch's FlopCounterMode (it counts
    convolutions and matrix products, 2 FLOPs per multiply-add)."""
    import torch
    from torch.utils.flop_counter import FlopCounterMode
    x = torch.zeros((1, num_input_channels, *patch_size), device=device)
    counter = FlopCounterMode(display=False)
    with torch.no_grad(), counter:
        network(x)
    return counter.get_total_flops() / 1e9


def _format_table(summary: dict) -> str:
    rows = [f"LightMedSeg demo: {summary['dataset']}, {summary['configuration']}, fold {summary['fold']}, "
            f"trainer {summary['trainer']}, device {summary['device']}",
            f"  held-out test cases     {summary['test_cases']} (trained on {summary['training_cases']} of "
            f"{summary['cases']} cases; {summary['epochs']} epochs x {summary['iterations_per_epoch']} iterations)",
            "  Dice on held-out cases"]
    for name, dice in summary["dice"].items():
        rows.append(f"    {name:<22}{dice:.4f}")
    rows += [f"    {'mean foreground':<22}{summary['mean_foreground_dice']:.4f}",
             f"  parameters              {summary['parameters']:,} ({summary['parameters'] / 1e6:.2f} M)",
             f"  GFLOPs                  {summary['gflops']:.3f} at patch {summary['patch_size']} (batch 1)",
             "  wall time (s)"]
    for name, seconds in summary["seconds"].items():
        rows.append(f"    {name:<22}{seconds:8.1f}")
    return "\n".join(rows)


def run_demo(output: str | Path = "lightmedseg_demo", epochs: int = DEMO_DEFAULTS["epochs"],
             iterations: int = DEMO_DEFAULTS["iterations"], val_iterations: int = DEMO_DEFAULTS["val_iterations"],
             cases: int = DEMO_DEFAULTS["cases"], test_cases: int = DEMO_DEFAULTS["test_cases"],
             size: int = DEMO_DEFAULTS["size"], device: str = "auto", seed: int = DEMO_DEFAULTS["seed"],
             trainer_name: str = DEMO_TRAINER, validation: bool = False, threads: int = 0,
             command: Optional[str] = None) -> dict:
    """Run the demo (see the module docstring); returns the summary that it also prints and writes as JSON."""
    started = time.perf_counter()
    seconds: dict[str, float] = {}
    output = Path(output).absolute()
    output.mkdir(parents=True, exist_ok=True)
    torch_device = _resolve_device(device)
    _set_demo_environment(output)
    dataset_name = f"Dataset{DEMO_DATASET_ID:03d}_{DEMO_DATASET_NAME}"
    raw = output / "nnUNet_raw" / dataset_name
    predictions = output / "predictions"
    # a re-run starts clean: remove what an earlier run of the demo wrote (only inside the output folder)
    for folder in (raw, output / "nnUNet_preprocessed" / dataset_name, output / "nnUNet_results" / dataset_name,
                   predictions):
        if folder.exists():
            shutil.rmtree(folder)
    total_phases = 5

    # 1. data ---------------------------------------------------------------------------------------------------
    _phase(1, total_phases, f"Generating a synthetic 3D dataset: {cases} training + {test_cases} held-out cases of "
                            f"{size}^3 voxels (seed {seed}) in {raw}")
    t = time.perf_counter()
    from nnunetv2_lightmedseg.synthetic import make_dataset
    make_dataset(output / "nnUNet_raw", dataset_id=DEMO_DATASET_ID, name=DEMO_DATASET_NAME, num_train=cases,
                 num_test=test_cases, shape=(size, size, size), seed=seed)
    seconds["dataset"] = time.perf_counter() - t

    # 2. plan + preprocess --------------------------------------------------------------------------------------
    _phase(2, total_phases, f"nnU-Net planning and preprocessing (nnUNetv2_plan_and_preprocess -d {DEMO_DATASET_ID} "
                            f"-c {DEMO_CONFIGURATION})")
    t = time.perf_counter()
    n_proc = int(os.environ["nnUNet_def_n_proc"])
    saved_n_proc_da = os.environ.pop("nnUNet_n_proc_DA", None)  # 0 there crashes the planner (set_num_threads(0))
    from nnunetv2.experiment_planning.plan_and_preprocess_api import (extract_fingerprints, plan_experiments,
                                                                       preprocess)
    extract_fingerprints([DEMO_DATASET_ID], num_processes=n_proc, check_dataset_integrity=True)
    plans_identifier = plan_experiments([DEMO_DATASET_ID])
    preprocess([DEMO_DATASET_ID], plans_identifier, configurations=(DEMO_CONFIGURATION,), num_processes=(n_proc,))
    if saved_n_proc_da is not None:
        os.environ["nnUNet_n_proc_DA"] = saved_n_proc_da
    seconds["plan_and_preprocess"] = time.perf_counter() - t

    # 3. train --------------------------------------------------------------------------------------------------
    _phase(3, total_phases, f"Training {trainer_name} on fold 0 ({epochs} epochs x {iterations} iterations, "
                            f"device {torch_device.type}; nnUNetv2_train {DEMO_DATASET_ID} {DEMO_CONFIGURATION} 0 "
                            f"-tr {trainer_name})")
    t = time.perf_counter()
    import random

    import numpy as np
    import torch
    if torch_device.type == "cpu":
        # Half the cores for torch, the rest for nnU-Net's augmentation workers (which run single-threaded):
        # training and augmentation overlap, and a run with one torch thread per core pair stays fast when other
        # programs load the machine (two torch threads on two busy cores can be 10-50 times slower).
        threads = threads or max(1, (os.cpu_count() or 1) // 2)
        torch.set_num_threads(threads)
        os.environ.setdefault("nnUNet_n_proc_DA", str(max(1, min((os.cpu_count() or 1) - threads, 4))))
    else:
        torch.backends.cudnn.benchmark = True
        if threads:
            torch.set_num_threads(threads)
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)
    from nnunetv2.run.run_training import get_trainer_from_args
    trainer = get_trainer_from_args(str(DEMO_DATASET_ID), DEMO_CONFIGURATION, 0, trainer_name, plans_identifier,
                                    device=torch_device)
    trainer.num_epochs = epochs
    trainer.num_iterations_per_epoch = iterations
    trainer.num_val_iterations_per_epoch = val_iterations
    trainer.run_training()
    if validation:
        trainer.perform_actual_validation(False)
    seconds["train"] = time.perf_counter() - t

    # network size, at the demo's patch ----------------------------------------------------------------------------
    from nnunetv2.utilities.label_handling.label_handling import determine_num_input_channels
    from nnunetv2_lightmedseg.trainers.common import unwrap
    network = unwrap(trainer.network)
    network.eval()
    patch_size = [int(p) for p in trainer.configuration_manager.patch_size]
    num_input_channels = determine_num_input_channels(trainer.plans_manager, trainer.configuration_manager,
                                                      trainer.dataset_json)
    trainer.set_deep_supervision_enabled(False)
    parameters = sum(p.numel() for p in network.parameters())
    gflops = _count_gflops(network, patch_size, num_input_channels, trainer.device)
    batch_size = int(trainer.configuration_manager.batch_size)
    training_cases = len(trainer.do_split()[0])
    model_folder = Path(trainer.output_folder_base)
    del trainer, network

    # 4. predict ------------------------------------------------------------------------------------------------
    _phase(4, total_phases, f"Predicting the {test_cases} held-out cases with nnU-Net's predictor "
                            f"(nnUNetv2_predict -d {DEMO_DATASET_ID} -c {DEMO_CONFIGURATION} -f 0 -tr {trainer_name})")
    t = time.perf_counter()
    from nnunetv2.inference.predict_from_raw_data import nnUNetPredictor
    predictor = nnUNetPredictor(tile_step_size=0.5, use_gaussian=True, use_mirroring=True, device=torch_device,
                                allow_tqdm=False)
    predictor.initialize_from_trained_model_folder(str(model_folder), use_folds=(0,),
                                                   checkpoint_name="checkpoint_final.pth")
    predictor.predict_from_files(str(raw / "imagesTs"), str(predictions), save_probabilities=False, overwrite=True,
                                 num_processes_preprocessing=n_proc, num_processes_segmentation_export=n_proc)
    seconds["predict"] = time.perf_counter() - t

    # 5. evaluate -----------------------------------------------------------------------------------------------
    _phase(5, total_phases, "Scoring the predictions against the held-out labels with nnU-Net's evaluation "
                            "(nnUNetv2_evaluate_folder)")
    t = time.perf_counter()
    from nnunetv2.evaluation.evaluate_predictions import compute_metrics_on_folder2
    metrics_file = predictions / "summary.json"
    compute_metrics_on_folder2(str(raw / "labelsTs"), str(predictions), str(model_folder / "dataset.json"),
                               str(model_folder / "plans.json"), str(metrics_file), num_processes=n_proc)
    metrics = json.loads(metrics_file.read_text())
    seconds["evaluate"] = time.perf_counter() - t
    seconds["total"] = time.perf_counter() - started

    labels = json.loads((raw / "dataset.json").read_text())["labels"]
    names = {str(v): k for k, v in labels.items() if not isinstance(v, list)}
    names.update({str(tuple(v)) if len(v) > 1 else str(v[0]): k for k, v in labels.items() if isinstance(v, list)})
    dice = {f"{names.get(key, key)} ({key})": float(value["Dice"]) for key, value in metrics["mean"].items()}
    summary = {
        "command": command or "lightmedseg demo",
        "date": datetime.datetime.now().astimezone().isoformat(timespec="seconds"),
        "dataset": dataset_name, "configuration": DEMO_CONFIGURATION, "fold": 0, "trainer": trainer_name,
        "device": torch_device.type, "cases": cases, "training_cases": training_cases, "test_cases": test_cases,
        "image_size": [size] * 3, "seed": seed, "epochs": epochs, "iterations_per_epoch": iterations,
        "val_iterations_per_epoch": val_iterations, "patch_size": patch_size, "batch_size": batch_size,
        "torch_threads": torch.get_num_threads(), "nnUNet_n_proc_DA": os.environ.get("nnUNet_n_proc_DA"),
        "dice": dice, "mean_foreground_dice": float(metrics["foreground_mean"]["Dice"]),
        "parameters": parameters, "gflops": gflops,
        "seconds": {k: round(v, 1) for k, v in seconds.items()},
        "machine": {"platform": platform.platform(), "cpu": cpu_model(),
                    "cpu_count": os.cpu_count(), "python": platform.python_version(), "torch": torch.__version__,
                    "cuda_device": torch.cuda.get_device_name(0) if torch_device.type == "cuda" else None},
        "versions": _versions(),
    }
    (output / "summary.json").write_text(json.dumps(summary, indent=2) + "\n")
    print("\n" + _format_table(summary))
    print(f"\nSummary written to {output / 'summary.json'}; per-case metrics in {metrics_file}", flush=True)
    return summary


def cpu_model() -> str:
    """The CPU's model name (from /proc/cpuinfo on Linux), else what ``platform`` knows; also used by benchmarks."""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def _versions() -> dict:
    from importlib.metadata import PackageNotFoundError, version
    found = {}
    for package in ("nnunetv2", "nnunetv2-lightmedseg", "torch", "dynamic-network-architectures"):
        try:
            found[package] = version(package)
        except PackageNotFoundError:
            found[package] = None
    return found


def _cmd_demo(args: argparse.Namespace) -> int:
    run_demo(output=args.output, epochs=args.epochs, iterations=args.iterations, val_iterations=args.val_iterations,
             cases=args.cases, test_cases=args.test_cases, size=args.size, device=args.device, seed=args.seed,
             trainer_name=args.trainer, validation=args.validation, threads=args.threads,
             command=" ".join(["lightmedseg"] + [shlex.quote(a) for a in args.argv]))
    return 0


# --------------------------------------------------------------------------------------------------- deployment
def _report_errors(args: argparse.Namespace, action: Callable[[], None]) -> int:
    """Run ``action``; a DeploymentError (a problem the user can fix) becomes one message on stderr and exit 1."""
    from nnunetv2_lightmedseg.export import DeploymentError
    try:
        action()
    except DeploymentError as error:
        print(f"lightmedseg {args.command}: error: {error}", file=sys.stderr)
        return 1
    return 0


def _cmd_export(args: argparse.Namespace) -> int:
    def action() -> None:
        from nnunetv2_lightmedseg.export import export_and_check
        summary = export_and_check(args.model, args.output, args.folds, args.checkpoint, args.patch_size,
                                   args.tolerance, args.opset)
        print(f"\nExported {summary['trainer']}, folds {summary['folds']}, to {summary['onnx']}\n"
              f"  input    (batch, C, {', '.join(map(str, summary['patch_size']))}): batch dynamic, spatial size fixed "
              f"(a multiple of the total stride {summary['total_stride']})\n"
              f"  parity   max |logit difference| ONNX Runtime vs PyTorch, tolerance {summary['tolerance']:g}")
        for shape, difference in summary["max_abs_logit_difference"].items():
            print(f"    input {shape:<24}{difference:.3g}")
    return _report_errors(args, action)


def _cmd_predict_onnx(args: argparse.Namespace) -> int:
    def action() -> None:
        from nnunetv2_lightmedseg.export import DeploymentError, onnx_predictor
        if not Path(args.input).is_dir():
            raise DeploymentError(f"{args.input} is not a folder: give the folder of images to predict "
                                  f"(nnU-Net naming, CASE_0000.nii.gz)")
        predictor = onnx_predictor(args.onnx, args.step_size, not args.disable_tta, args.threads)
        predictor.predict_from_files(args.input, args.output, save_probabilities=args.save_probabilities,
                                     overwrite=True, num_processes_preprocessing=args.npp,
                                     num_processes_segmentation_export=args.nps)
    return _report_errors(args, action)


def _cmd_show(args: argparse.Namespace) -> int:
    def action() -> None:
        from nnunetv2_lightmedseg.figures import show_cases
        print(show_cases(args.images, args.labels, args.predictions, args.output, args.cases, args.num_cases,
                         args.width, args.slice, args.channel, args.dataset_json))
    return _report_errors(args, action)


def _cmd_anchors(args: argparse.Namespace) -> int:
    def action() -> None:
        from nnunetv2_lightmedseg.figures import anchor_figure
        print(anchor_figure(args.model, args.fold, args.images, args.case, args.output, args.checkpoint, args.width,
                            args.whole))
    return _report_errors(args, action)


def _model_arguments(parser: argparse.ArgumentParser) -> None:
    """-m and --checkpoint: a trained nnU-Net model folder (export, anchors)."""
    parser.add_argument("-m", "--model", required=True,
                        help="model folder nnUNet_results/DatasetXXX_Name/TRAINER__PLANS__CONFIGURATION")
    parser.add_argument("--checkpoint", default="checkpoint_final.pth",
                        help="checkpoint file name in fold_N/ (default: %(default)s)")


def _picture_arguments(parser: argparse.ArgumentParser) -> None:
    """-i, -o and --width: raw images in, a PNG of a given width out (show, anchors)."""
    parser.add_argument("-i", "--images", required=True, help="raw images folder (CASE_0000.nii.gz)")
    parser.add_argument("-o", "--output", required=True, help="the .png file to write")
    parser.add_argument("--width", type=_positive, default=1200, help="figure width in pixels (default: %(default)s)")


def _add_deployment_parsers(sub) -> None:
    """The subcommands export, predict-onnx, show and anchors."""
    export = sub.add_parser(
        "export", help="export a trained model folder (one fold or an ensemble) to ONNX and check it",
        description="Load a trained nnU-Net model folder with nnU-Net's predictor and write one ONNX graph "
                    "image -> logits (torch.onnx.export, TorchScript exporter, opset 17). Several folds make one "
                    "graph that returns the mean of the folds' logits, as nnU-Net's own fold ensembling does. Input: "
                    "nnU-Net-preprocessed float32 (batch, channels, D, H, W); the batch axis is dynamic, the spatial "
                    "size is fixed at export (LightMedSeg computes constants from it): the plan's patch size, or "
                    "--patch-size, every axis a multiple of the network's total stride. The file's metadata holds "
                    "the patch size, the total stride, plans, dataset.json and the mirroring axes, so "
                    "`lightmedseg predict-onnx` needs nothing else. Then ONNX Runtime is checked against PyTorch on "
                    "random inputs (batch 1 and 2): the max |logit difference| is printed, and above --tolerance "
                    "the command fails (exit 1).")
    _model_arguments(export)
    export.add_argument("-f", "--folds", nargs="+", default=None,
                        help="folds to export (several: one ensemble graph); default: every fold with the checkpoint")
    export.add_argument("-o", "--output", required=True, help="the .onnx file to write")
    export.add_argument("--patch-size", nargs=3, type=_positive, default=None, metavar=("Z", "Y", "X"),
                        help="spatial input size (default: the plan's patch size); each a multiple of the total stride")
    export.add_argument("--tolerance", type=float, default=1e-4,
                        help="largest allowed |logit difference| (float32; default: %(default)g)")
    export.add_argument("--opset", type=_positive, default=17, help="ONNX opset (default: %(default)s)")
    export.set_defaults(func=_cmd_export)

    predict = sub.add_parser(
        "predict-onnx", help="predict whole cases with an exported model through ONNX Runtime (CPU)",
        description="nnU-Net's predictor with an ONNX Runtime session as its network: nnU-Net's preprocessing, "
                    "sliding window with Gaussian weighting, mirroring (test-time augmentation) and export run "
                    "unchanged, so the output folder is what nnUNetv2_predict writes. Plans, dataset.json and "
                    "mirroring axes come from the ONNX file (written by `lightmedseg export`).")
    predict.add_argument("-i", "--input", required=True, help="folder of images, nnU-Net naming (CASE_0000.nii.gz)")
    predict.add_argument("-o", "--output", required=True, help="folder for the segmentations")
    predict.add_argument("--onnx", required=True, help="the .onnx file from `lightmedseg export`")
    predict.add_argument("--step-size", type=float, default=0.5,
                         help="sliding-window step, fraction of the patch (default: %(default)s)")
    predict.add_argument("--disable-tta", action="store_true", help="no mirroring (8 times faster in 3D)")
    predict.add_argument("--save-probabilities", action="store_true", help="also write .npz probabilities")
    predict.add_argument("--threads", type=_non_negative, default=0,
                         help="ONNX Runtime threads (default 0: as many as torch uses)")
    predict.add_argument("-npp", type=_positive, default=1, help="processes for preprocessing (default: 1)")
    predict.add_argument("-nps", type=_positive, default=1, help="processes for segmentation export (default: 1)")
    predict.set_defaults(func=_cmd_predict_onnx)

    show = sub.add_parser(
        "show", help="PNG of image, ground truth and prediction for chosen cases",
        description="One row per case: the image, the image with the ground truth and the image with the "
                    "prediction as semi-transparent colour overlays, on one axial slice, with a legend naming the "
                    "labels from dataset.json. The PNG is WIDTH pixels wide and WIDTH/3 per row + 60 pixels high.")
    _picture_arguments(show)
    show.add_argument("-l", "--labels", required=True, help="ground-truth folder (CASE.nii.gz)")
    show.add_argument("-p", "--predictions", required=True, help="predictions folder (CASE.nii.gz)")
    show.add_argument("--cases", nargs="+", default=None, help="case names (default: the first -n predicted cases)")
    show.add_argument("-n", "--num-cases", type=_positive, default=3,
                      help="how many cases without --cases (default: %(default)s)")
    show.add_argument("--slice", default="most",
                      help="axial slice: 'most' (most ground-truth foreground; the default), an index, or a label "
                           "name (the slice through that label's centre of mass)")
    show.add_argument("--channel", type=_non_negative, default=0,
                      help="image channel to show, CASE_000C (default: %(default)s)")
    show.add_argument("--dataset-json", default=None,
                      help="dataset.json for the label names (default: the predictions' or the labels' folder's)")
    show.set_defaults(func=_cmd_show)

    anchors = sub.add_parser(
        "anchors", help="PNG of LightMedSeg's anchors S and texture map T on one case",
        description="Preprocess one case with nnU-Net, run one fold's network on its centred patch of the plan's "
                    "patch size (or the whole image with --whole) and draw three orthogonal slices through the "
                    "patch centre with the anchors S projected (numbered markers), and below them the texture map T "
                    "upsampled to the image grid, with a colour bar.")
    _model_arguments(anchors)
    anchors.add_argument("-f", "--fold", default="0", help="fold (default: %(default)s)")
    _picture_arguments(anchors)
    anchors.add_argument("--case", required=True, help="case name (the file name before _0000)")
    anchors.add_argument("--whole", action="store_true",
                         help="the whole preprocessed image (padded to a multiple of the total stride), not a patch")
    anchors.set_defaults(func=_cmd_anchors)


# -------------------------------------------------------------------------------------------------------- parser
def _non_negative(text: str) -> int:
    value = int(text)
    if value < 0:
        raise argparse.ArgumentTypeError(f"must be 0 or a positive integer, got {text}")
    return value


def _positive(text: str) -> int:
    value = int(text)
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be a positive integer, got {text}")
    return value


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="lightmedseg",
        description="LightMedSeg (arXiv 2603.07228) for nnU-Net v2: shell set-up, an end-to-end demo, ONNX "
                    "deployment and pictures.")
    parser.add_argument("--version", action="version", version=f"%(prog)s {nnunetv2_lightmedseg.__version__}")
    sub = parser.add_subparsers(dest="command", required=True,
                                metavar="{env,demo,export,predict-onnx,show,anchors}")

    env = sub.add_parser(
        "env", help="print the shell lines that make nnU-Net find the LightMedSeg trainers",
        description="Print `export` lines for a POSIX shell; use them with: eval \"$(lightmedseg env)\". "
                    "nnUNet_extTrainer always gets this package's trainer folder (added to any value already set); "
                    "nnUNet_raw, nnUNet_preprocessed and nnUNet_results are printed (with a mkdir -p line) only "
                    "when they are not set yet, as folders under --root.")
    env.add_argument("--root", default=DEFAULT_ROOT,
                     help="folder for the nnU-Net folders that are not set yet (default: %(default)s)")
    env.set_defaults(func=_cmd_env)

    d = DEMO_DEFAULTS
    demo = sub.add_parser(
        "demo", help="generate a synthetic 3D dataset, then plan, train, predict and evaluate with nnU-Net",
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
        description="The whole nnU-Net workflow with LightMedSeg on a small synthetic 3D dataset (three structures "
                    "with overlapping intensities, distractors, bias field and noise): generate it, run nnU-Net's "
                    "planning and preprocessing (3d_fullres), train fold 0 with nnU-Net's trainer, predict held-out "
                    "cases with nnU-Net's predictor and score them with nnU-Net's evaluation. Prints Dice per label, "
                    "mean foreground Dice, parameters, GFLOPs at the demo patch and wall time per phase, and writes "
                    "them to OUTPUT/summary.json. nnUNet_raw, nnUNet_preprocessed and nnUNet_results are set to "
                    "folders inside OUTPUT for this run; a re-run replaces the demo's earlier results there. "
                    "The defaults take about 6 minutes on 2 CPU cores.")
    demo.add_argument("--output", default="lightmedseg_demo", help="folder for all the demo writes")
    demo.add_argument("--epochs", type=_positive, default=d["epochs"], help="training epochs")
    demo.add_argument("--iterations", type=_positive, default=d["iterations"],
                      help="training iterations (batches) per epoch (nnU-Net's default: 250)")
    demo.add_argument("--val-iterations", type=_positive, default=d["val_iterations"],
                      help="validation iterations per epoch, for nnU-Net's pseudo Dice (nnU-Net's default: 50)")
    demo.add_argument("--cases", type=_positive, default=d["cases"],
                      help="training cases to generate (fold 0 trains on 4/5 of them; at least 5)")
    demo.add_argument("--test-cases", type=_positive, default=d["test_cases"],
                      help="held-out cases, with labels, to predict and score")
    demo.add_argument("--size", type=_positive, default=d["size"], help="edge length of the cubic images, in voxels")
    demo.add_argument("--device", choices=("auto", "cpu", "cuda"), default="auto",
                      help="where to train and predict; auto takes CUDA when torch sees a GPU")
    demo.add_argument("--seed", type=int, default=d["seed"], help="seed of the data generator and of training")
    demo.add_argument("--trainer", default=DEMO_TRAINER,
                      help="nnU-Net trainer class (any nnUNetTrainerLightMedSeg variant)")
    demo.add_argument("--threads", type=_non_negative, default=0,
                      help="torch threads (0: on the CPU half the cores, at least 1, the other half running "
                           "nnU-Net's augmentation workers; on a GPU torch's default)")
    demo.add_argument("--validation", action="store_true",
                      help="also run nnU-Net's full fold-0 validation after training (as nnUNetv2_train does)")
    demo.set_defaults(func=_cmd_demo)
    _add_deployment_parsers(sub)
    return parser


def main(argv: Optional[Sequence[str]] = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    args = build_parser().parse_args(argv)
    args.argv = argv
    if args.command == "demo" and args.cases < 5:
        build_parser().error("demo --cases must be at least 5: nnU-Net's automatic 5-fold split needs 5 cases")
    return args.func(args)


if __name__ == "__main__":
    sys.exit(main())
