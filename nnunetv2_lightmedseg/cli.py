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

Nothing heavy (torch, nnU-Net) is imported at module level: ``lightmedseg env`` stays instant, and the demo sets
nnU-Net's environment variables before nnU-Net reads them.
"""
from __future__ import annotations

import argparse
import os
import shlex
import sys
from pathlib import Path
from typing import Mapping, Optional, Sequence

import nnunetv2_lightmedseg
from nnunetv2_lightmedseg import demo

DEFAULT_ROOT = "~/nnUNet_data"


# ----------------------------------------------------------------------------------------------------------- env
def env_lines(root: str = DEFAULT_ROOT, environ: Optional[Mapping[str, str]] = None) -> list[str]:
    """The shell lines of ``lightmedseg env``: ``nnUNet_extTrainer`` always (our folder added to any value already
    set), the three nnU-Net folders only when unset, as folders under ``root``."""
    environ = os.environ if environ is None else environ
    ext_trainer = nnunetv2_lightmedseg.ext_trainer_value(environ.get("nnUNet_extTrainer", ""))
    lines = [f"export nnUNet_extTrainer={shlex.quote(ext_trainer)}"]
    root_path = Path(os.path.expanduser(root)).absolute()
    missing = [name for name in demo.NNUNET_FOLDERS if not environ.get(name)]
    for name in missing:
        lines.append(f"export {name}={shlex.quote(str(root_path / name))}")
    if missing:
        folders = " ".join(shlex.quote(str(root_path / name)) for name in missing)
        lines.append(f"mkdir -p {folders}")
    return lines


def _cmd_env(args: argparse.Namespace) -> None:
    print("\n".join(env_lines(args.root)))


def _cmd_demo(args: argparse.Namespace) -> None:
    demo.run_demo(output=args.output, epochs=args.epochs, iterations=args.iterations, cases=args.cases,
                  test_cases=args.test_cases, size=args.size, device=args.device, seed=args.seed,
                  trainer=args.trainer, validation=args.validation, threads=args.threads,
                  command=shlex.join(["lightmedseg", *args.argv]))


# --------------------------------------------------------------------------------------------------- deployment
def _cmd_export(args: argparse.Namespace) -> None:
    from nnunetv2_lightmedseg.export import export_and_check
    summary = export_and_check(args.model, args.output, args.folds, args.checkpoint, args.patch_size, args.tolerance,
                               args.opset)
    print(f"\nExported {summary['trainer']}, folds {summary['folds']}, to {summary['onnx']}\n"
          f"  input    (batch, C, {', '.join(map(str, summary['patch_size']))}): batch dynamic, spatial size fixed "
          f"(a multiple of the total stride {summary['total_stride']})\n"
          f"  parity   max |logit difference| ONNX Runtime vs PyTorch, tolerance {summary['tolerance']:g}")
    for shape, difference in summary["max_abs_logit_difference"].items():
        print(f"    input {shape:<24}{difference:.3g}")


def _cmd_predict_onnx(args: argparse.Namespace) -> None:
    from nnunetv2_lightmedseg.export import DeploymentError, onnx_predictor
    if not Path(args.input).is_dir():
        raise DeploymentError(f"{args.input} is not a folder: give the folder of images to predict "
                              f"(nnU-Net naming, CASE_0000.nii.gz)")
    predictor = onnx_predictor(args.onnx, args.step_size, not args.disable_tta, args.threads)
    predictor.predict_from_files(args.input, args.output, save_probabilities=args.save_probabilities, overwrite=True,
                                 num_processes_preprocessing=args.npp, num_processes_segmentation_export=args.nps)


def _cmd_show(args: argparse.Namespace) -> None:
    from nnunetv2_lightmedseg.figures import show_cases
    print(show_cases(args.images, args.labels, args.predictions, args.output, args.cases, args.num_cases, args.width,
                     args.slice, args.channel, args.dataset_json))


def _cmd_anchors(args: argparse.Namespace) -> None:
    from nnunetv2_lightmedseg.figures import anchor_figure
    print(anchor_figure(args.model, args.fold, args.images, args.case, args.output, args.checkpoint, args.width,
                        args.whole))


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

    d = demo.DEFAULTS
    demo_parser = sub.add_parser(
        "demo", help="generate a synthetic 3D dataset, then plan, train, predict and evaluate with nnU-Net",
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
        description="The whole nnU-Net workflow with LightMedSeg on a small synthetic 3D dataset (three structures "
                    "with overlapping intensities, distractors, bias field and noise): generate it, run nnU-Net's "
                    "planning and preprocessing (3d_fullres), train fold 0 with nnU-Net's trainer (the trainer "
                    "named by its length, e.g. nnUNetTrainerLightMedSeg_8epochs_100iters), predict held-out "
                    "cases with nnU-Net's predictor and score them with nnU-Net's evaluation. Prints Dice per label, "
                    "mean foreground Dice, parameters, GFLOPs at the demo patch and wall time per phase, and writes "
                    "them to OUTPUT/summary.json. nnUNet_raw, nnUNet_preprocessed and nnUNet_results are set to "
                    "folders inside OUTPUT for this run; a re-run replaces the demo's earlier results there. "
                    "The README's section 'The demo' gives the time and Dice measured with the defaults.")
    demo_parser.add_argument("--output", default="lightmedseg_demo", help="folder for all the demo writes")
    demo_parser.add_argument("--epochs", type=_positive, default=d["epochs"], help="training epochs")
    demo_parser.add_argument("--iterations", type=_positive, default=d["iterations"],
                             help="training iterations (batches) per epoch (nnU-Net's default: 250); validation "
                                  "takes a fifth of that, as in nnU-Net")
    demo_parser.add_argument("--cases", type=_positive, default=d["cases"],
                             help="training cases to generate (fold 0 trains on 4/5 of them; at least 5)")
    demo_parser.add_argument("--test-cases", type=_positive, default=d["test_cases"],
                             help="held-out cases, with labels, to predict and score")
    demo_parser.add_argument("--size", type=_positive, default=d["size"],
                             help="edge length of the cubic images, in voxels")
    demo_parser.add_argument("--device", choices=("auto", "cpu", "cuda"), default="auto",
                             help="where to train and predict; auto takes CUDA when torch sees a GPU")
    demo_parser.add_argument("--seed", type=int, default=d["seed"], help="seed of the data generator and of training")
    demo_parser.add_argument("--trainer", default=demo.TRAINER,
                             help="nnU-Net trainer class (any nnUNetTrainerLightMedSeg variant), trained under the "
                                  "name that adds the length")
    demo_parser.add_argument("--threads", type=_non_negative, default=0,
                             help="torch threads (0: on the CPU half the CPUs this process may use, at least 1, the "
                                  "others running nnU-Net's augmentation workers; on a GPU torch's default)")
    demo_parser.add_argument("--validation", action="store_true",
                             help="also run nnU-Net's full fold-0 validation after training (as nnUNetv2_train does)")
    demo_parser.set_defaults(func=_cmd_demo)
    _add_deployment_parsers(sub)
    return parser


def main(argv: Optional[Sequence[str]] = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    args.argv = list(sys.argv[1:] if argv is None else argv)
    if args.command == "env":  # before the import below, which loads torch: `lightmedseg env` stays instant
        args.func(args)
        return 0
    if args.command == "demo" and args.cases < 5:
        parser.error("demo --cases must be at least 5: nnU-Net's automatic 5-fold split needs 5 cases")
    from nnunetv2_lightmedseg.export import DeploymentError
    try:
        args.func(args)
    except DeploymentError as error:  # a problem the user can fix: its message, no traceback
        print(f"lightmedseg {args.command}: error: {error}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
