"""Deployment: a trained nnU-Net model folder to ONNX, a parity check, and ONNX Runtime inside nnU-Net's predictor.

What is exported
----------------
``export_onnx`` loads a model folder (``nnUNet_results/DatasetXXX_Name/TRAINER__PLANS__CONFIGURATION``) with nnU-Net's
own ``nnUNetPredictor.initialize_from_trained_model_folder`` and writes ONE graph, ``image -> logits``:

- input ``image``: float32 (batch, channels, D, H, W), nnU-Net-preprocessed (resampled to the plan's spacing and
  normalised as the plan says), axes in nnU-Net's (z, y, x) order;
- output ``logits``: float32 (batch, outputs, D, H, W), before softmax (or sigmoid for region-based models).
- Several folds (an ensemble) go into the same graph, which returns the mean of the folds' logits. That is exactly
  nnU-Net's own fold ensembling: ``nnUNetPredictor.predict_logits_from_preprocessed_data`` averages the folds'
  logits (not their softmax), and since the sliding window (Gaussian weighting, mirroring) is linear in the logits,
  averaging per patch equals averaging per case. One graph keeps deployment one file, one sliding window pass.

Axes
----
The batch axis is dynamic. The spatial axes are fixed at export (default: the plan's patch size; ``patch_size``
picks another one, every axis a multiple of the network's total stride): LightMedSeg computes Python constants from
the input size (the anchors' confidence divides by log N, N the voxels of the stem grid; the encoder resizes the
texture map to sizes it reads as ints), so a graph traced at one size is only valid at that size. nnU-Net's sliding
window feeds patches of one size only, so whole-case inference loses nothing. The patch size, the total stride and
all nnU-Net needs to predict with the file alone (plans, dataset.json, mirroring axes) are in the model's metadata.

Exporter
--------
``torch.onnx.export(..., dynamo=False)``, the TorchScript-based exporter: with torch 2.14 it gives logits within
about 1e-6 of PyTorch. The torch.export-based exporter (torch's default since 2.9) needs the extra ``onnxscript``
package and has no ONNX translation for ``aten._adaptive_avg_pool3d``, which LightMedSeg's ``resize_to`` uses.
"""
from __future__ import annotations

import copy
import json
import math
import warnings
from pathlib import Path
from typing import Any, Optional, Sequence, Union

import numpy as np
import torch
from torch import nn

import nnunetv2_lightmedseg

DEFAULT_TOLERANCE = 1e-4
OPSET = 17
INPUT_NAME, OUTPUT_NAME = "image", "logits"
CHECKPOINT = "checkpoint_final.pth"
ONNX_HINT = 'pip install "nnunetv2-lightmedseg[onnx]"'
Fold = Union[int, str]


class DeploymentError(Exception):
    """A problem the user can fix; the message says what is wrong and what to do."""


# ------------------------------------------------------------------------------------------------------ loading
def check_model_folder(model_folder: Union[str, Path]) -> Path:
    """The folder, if it is an nnU-Net model folder (plans.json, dataset.json, fold_N/); else a DeploymentError."""
    folder = Path(model_folder)
    if not folder.is_dir():
        raise DeploymentError(f"{folder} does not exist. Give an nnU-Net model folder: "
                              f"nnUNet_results/DatasetXXX_Name/TRAINER__PLANS__CONFIGURATION")
    missing = [name for name in ("plans.json", "dataset.json") if not (folder / name).is_file()]
    if missing:
        inside = sorted(p.name for p in folder.iterdir() if p.is_dir() and "__" in p.name)
        hint = (f" It holds model folders: {', '.join(inside)}; give one of them." if inside else
                " Give the folder nnUNet_results/DatasetXXX_Name/TRAINER__PLANS__CONFIGURATION that nnUNetv2_train "
                "wrote (it holds plans.json, dataset.json and fold_N/).")
        raise DeploymentError(f"{folder} is not an nnU-Net model folder: it has no {' and no '.join(missing)}.{hint}")
    return folder


def check_checkpoints(folder: Path, folds: Sequence[Fold], checkpoint: str) -> None:
    """A DeploymentError naming the checkpoints that exist when one of ``folds`` lacks ``checkpoint``."""
    missing = [f for f in folds if not (folder / f"fold_{f}" / checkpoint).is_file()]
    if missing:
        found = sorted(str(p.relative_to(folder)) for p in folder.glob("fold_*/*.pth"))
        raise DeploymentError(
            f"{folder} has no {checkpoint} for fold(s) {', '.join(map(str, missing))}. Checkpoints there: "
            f"{', '.join(found) or 'none'}. Choose folds with -f, another checkpoint with --checkpoint "
            f"(e.g. checkpoint_best.pth), or finish training (nnUNetv2_train ... --c).")


def resolve_folds(folder: Path, folds: Optional[Sequence[Fold]], checkpoint: str) -> list[Fold]:
    """``folds`` (ints, or "all"), checked to have ``checkpoint``; None: every fold that has it."""
    if folds is None:
        names = [p.parent.name[len("fold_"):] for p in folder.glob(f"fold_*/{checkpoint}")]
        folds = sorted(names, key=lambda f: (not f.isdigit(), f.zfill(4)))  # 0, 1, ..., then "all"
        if not folds:
            raise DeploymentError(f"{folder} has no fold_N/{checkpoint}: train a fold first (nnUNetv2_train), or "
                                  f"name another checkpoint with --checkpoint (e.g. checkpoint_best.pth)")
    folds = [int(f) if str(f).isdigit() else str(f) for f in folds]
    check_checkpoints(folder, folds, checkpoint)
    return folds


def load_predictor(model_folder: Union[str, Path], folds: Sequence[Fold], checkpoint: str = CHECKPOINT,
                   **predictor_options: Any):
    """nnU-Net's predictor (CPU) for ``folds`` of a model folder, loaded by nnU-Net itself after our checks.

    ``predictor_options`` go to ``nnUNetPredictor`` (tile_step_size, use_mirroring, ...).
    """
    from nnunetv2.inference.predict_from_raw_data import nnUNetPredictor
    folder = check_model_folder(model_folder)
    check_checkpoints(folder, folds, checkpoint)
    nnunetv2_lightmedseg.enable()  # nnU-Net looks the trainer class up by name to rebuild the network
    options = dict(tile_step_size=0.5, use_gaussian=True, use_mirroring=True, perform_everything_on_device=False,
                   device=torch.device("cpu"), allow_tqdm=False)
    predictor = nnUNetPredictor(**{**options, **predictor_options})
    predictor.initialize_from_trained_model_folder(str(folder), use_folds=tuple(folds), checkpoint_name=checkpoint)
    return predictor


class FoldEnsemble(nn.Module):
    """The mean of the folds' logits, as ``nnUNetPredictor.predict_logits_from_preprocessed_data`` computes it.

    Shapes: (B, C, D, H, W) -> (B, outputs, D, H, W).
    """

    def __init__(self, networks: Sequence[nn.Module]) -> None:
        super().__init__()
        self.folds = nn.ModuleList(networks)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.stack([network(x) for network in self.folds]).mean(dim=0)


def predictor_network(predictor) -> nn.Module:
    """The network the predictor runs, in eval mode: one fold's, or a FoldEnsemble of every loaded fold's."""
    from nnunetv2_lightmedseg.trainers.common import unwrap
    base = unwrap(predictor.network)
    networks = []
    for parameters in predictor.list_of_parameters:
        network = copy.deepcopy(base)
        network.load_state_dict(parameters)
        networks.append(network.eval())
    return networks[0] if len(networks) == 1 else FoldEnsemble(networks).eval()


def total_stride(predictor) -> tuple[int, ...]:
    """Per-axis divisor of every input size: LightMedSeg's own total stride, else the plan's (any nnU-Net net)."""
    from nnunetv2_lightmedseg.trainers.common import unwrap
    stride = getattr(unwrap(predictor.network), "total_stride", None)
    if stride is None:
        kernels = predictor.configuration_manager.pool_op_kernel_sizes
        stride = [math.prod(k[axis] for k in kernels) for axis in range(len(kernels[0]))]
    return tuple(int(s) for s in stride)


def check_spatial_size(size: Sequence[int], stride: Sequence[int]) -> list[int]:
    """``size`` as a list, if every axis is a multiple of ``stride``; else a DeploymentError that says what fits."""
    size = [int(s) for s in size]
    if len(size) != len(stride) or any(s < 1 or s % d for s, d in zip(size, stride)):
        nearest = [max(d, int(round(s / d)) * d) for s, d in zip(size, stride)]
        raise DeploymentError(f"spatial size {size} does not fit the network: every axis must be a positive multiple "
                              f"of its total stride {list(stride)} (z, y, x). The nearest size that fits: {nearest}.")
    return size


# ------------------------------------------------------------------------------------------------------- export
def onnx_metadata(predictor, folds: Sequence[Fold], patch_size: Sequence[int], stride: Sequence[int],
                  model_folder: Path) -> dict[str, str]:
    """Everything ``onnx_predictor`` needs besides the graph, and what a reader needs to feed it (strings)."""
    configuration = dict(predictor.configuration_manager.configuration, patch_size=list(patch_size))
    return {
        "producer": f"nnunetv2-lightmedseg {nnunetv2_lightmedseg.__version__} (lightmedseg export)",
        "input": f"{INPUT_NAME}: float32 (batch, {len(predictor.dataset_json['channel_names'])}, "
                 f"{', '.join(map(str, patch_size))}), nnU-Net-preprocessed, axes (z, y, x); batch dynamic, spatial "
                 f"axes fixed (export again with --patch-size for another size, each axis a multiple of "
                 f"{list(stride)})",
        "output": f"{OUTPUT_NAME}: float32 (batch, {predictor.label_manager.num_segmentation_heads}, spatial), "
                  f"before softmax/sigmoid; several folds: the mean of their logits (nnU-Net's fold ensembling)",
        "patch_size": json.dumps(list(patch_size)),
        "total_stride": json.dumps(list(stride)),
        "nnunet.model_folder": model_folder.name,
        "nnunet.trainer": predictor.trainer_name,
        "nnunet.folds": json.dumps([str(f) for f in folds]),
        "nnunet.inference_allowed_mirroring_axes": json.dumps(
            None if predictor.allowed_mirroring_axes is None else list(predictor.allowed_mirroring_axes)),
        "nnunet.configuration": json.dumps(configuration),
        "nnunet.plans": json.dumps(predictor.plans_manager.plans),
        "nnunet.dataset_json": json.dumps(predictor.dataset_json),
    }


def export_onnx(predictor, output: Union[str, Path], folds: Sequence[Fold], model_folder: Union[str, Path],
                patch_size: Optional[Sequence[int]] = None, opset: int = OPSET) -> Path:
    """Write the predictor's network (its loaded ``folds`` of ``model_folder``, see the module docstring) to
    ``output`` as ONNX, with the metadata of ``onnx_metadata``."""
    try:
        import onnx
    except ImportError as error:
        raise DeploymentError(f"ONNX export needs the onnx package: {ONNX_HINT}") from error
    stride = total_stride(predictor)
    patch = check_spatial_size(patch_size or predictor.configuration_manager.patch_size, stride)
    network = predictor_network(predictor)
    channels = len(predictor.dataset_json["channel_names"])
    example = torch.randn((2, channels, *patch))  # batch 2: a batch of 1 could be traced as a constant
    output = Path(output)
    output.parent.mkdir(parents=True, exist_ok=True)
    try:
        with warnings.catch_warnings(), torch.no_grad():
            # the TorchScript exporter warns about every Python value it freezes; the parity check is the real test
            warnings.simplefilter("ignore")
            torch.onnx.export(network, (example,), str(output), input_names=[INPUT_NAME], output_names=[OUTPUT_NAME],
                              dynamic_axes={INPUT_NAME: {0: "batch"}, OUTPUT_NAME: {0: "batch"}},
                              opset_version=opset, dynamo=False)
    except Exception as error:  # noqa: BLE001 -- any exporter failure gets the same advice
        first_line = (str(error).strip().splitlines() or [""])[0][:400]
        raise DeploymentError(
            f"torch.onnx.export could not export {predictor.trainer_name}'s network ({type(error).__name__}: "
            f"{first_line}). An operation of the network has no ONNX form at opset {opset}: try another --opset "
            f"(up to 20), or replace that operation in the network by one ONNX has; a network must also run "
            f"on the CPU in float32 to be exported.") from error
    model = onnx.load(str(output))
    metadata = onnx_metadata(predictor, folds, patch, stride, Path(model_folder))
    onnx.helper.set_model_props(model, metadata)
    model.doc_string = f"{predictor.trainer_name}, folds {list(folds)}. {metadata['input']}. {metadata['output']}."
    onnx.save(model, str(output))
    return output


# ------------------------------------------------------------------------------------------------ onnx runtime
class OnnxNetwork(nn.Module):
    """An ONNX Runtime session behind the ``nn.Module`` interface that ``nnUNetPredictor`` uses for its network.

    The predictor calls ``to``, ``eval``, ``load_state_dict(parameters)`` once per entry of its parameter list (the
    folds live inside the graph: give it one empty entry) and ``network(patch)`` per tile and mirror; so nnU-Net's
    preprocessing, sliding window, Gaussian weighting, mirroring and export run unchanged around ONNX Runtime.
    Shapes: (B, C, D, H, W) -> (B, outputs, D, H, W), D, H, W the exported patch size.
    """

    def __init__(self, onnx_file: Union[str, Path], threads: int = 0) -> None:
        super().__init__()
        try:
            import onnxruntime
        except ImportError as error:
            raise DeploymentError(f"ONNX Runtime is not installed: {ONNX_HINT}") from error
        if not Path(onnx_file).is_file():
            raise DeploymentError(f"{onnx_file} does not exist: write it with `lightmedseg export`")
        options = onnxruntime.SessionOptions()
        options.intra_op_num_threads = threads or torch.get_num_threads()  # the same threads as torch would use
        options.inter_op_num_threads = 1
        self.session = onnxruntime.InferenceSession(str(onnx_file), options, providers=["CPUExecutionProvider"])
        self.metadata = self.session.get_modelmeta().custom_metadata_map
        self.input_shape = self.session.get_inputs()[0].shape  # ['batch', C, D, H, W]

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        expected = [int(s) for s in self.input_shape[1:]]
        if list(x.shape[1:]) != expected:
            stride = self.metadata.get("total_stride", "?")
            raise DeploymentError(
                f"this ONNX model takes inputs (batch, {', '.join(map(str, expected))}) and got {list(x.shape)}: "
                f"its spatial size is fixed at export. Feed patches of that size (nnU-Net's sliding window does), "
                f"or export again with --patch-size Z Y X, each a multiple of the total stride {stride}.")
        logits = self.session.run([OUTPUT_NAME], {INPUT_NAME: x.detach().cpu().numpy().astype(np.float32)})[0]
        return torch.from_numpy(logits).to(x.device)


def onnx_predictor(onnx_file: Union[str, Path], tile_step_size: float = 0.5, use_mirroring: bool = True,
                   threads: int = 0):
    """An ``nnUNetPredictor`` (CPU) that runs an exported model through ONNX Runtime; plans, configuration,
    dataset.json and mirroring axes come from the file's metadata, so the ONNX file is all a deployment needs."""
    from nnunetv2.inference.predict_from_raw_data import nnUNetPredictor
    from nnunetv2.utilities.plans_handling.plans_handler import ConfigurationManager, PlansManager
    network = OnnxNetwork(onnx_file, threads)
    meta = network.metadata
    if "nnunet.plans" not in meta:
        raise DeploymentError(f"{onnx_file} has no nnU-Net metadata: it was not written by `lightmedseg export`. "
                              f"Export the model folder with `lightmedseg export`.")
    configuration_manager = ConfigurationManager(json.loads(meta["nnunet.configuration"]))
    if configuration_manager.previous_stage_name is not None:
        raise DeploymentError("cascade configurations (3d_cascade_fullres) need the previous stage's segmentation; "
                              "predict-onnx supports single-stage configurations only (3d_fullres, 3d_lowres).")
    mirror_axes = json.loads(meta["nnunet.inference_allowed_mirroring_axes"])
    predictor = nnUNetPredictor(tile_step_size=tile_step_size, use_gaussian=True, use_mirroring=use_mirroring,
                                perform_everything_on_device=False, device=torch.device("cpu"), allow_tqdm=False)
    predictor.manual_initialization(network, PlansManager(json.loads(meta["nnunet.plans"])), configuration_manager,
                                    [{}], json.loads(meta["nnunet.dataset_json"]), meta["nnunet.trainer"],
                                    None if mirror_axes is None else tuple(mirror_axes))
    return predictor


# ------------------------------------------------------------------------------------------------------- parity
def max_logit_difference(network: nn.Module, onnx_network: OnnxNetwork, shape: Sequence[int], seed: int = 0) -> float:
    """Max |PyTorch - ONNX Runtime| of the logits on a standard-normal input of ``shape`` (what z-scoring gives)."""
    x = torch.randn(tuple(shape), generator=torch.Generator().manual_seed(seed))
    with torch.no_grad():
        reference = network(x)
    return float((onnx_network(x) - reference).abs().max())


def parity_check(predictor, onnx_network: OnnxNetwork) -> dict[str, float]:
    """Max abs logit difference per input shape: the exported patch at batch 1 and at batch 2 (the dynamic axis)."""
    network = predictor_network(predictor)
    patch = [int(s) for s in onnx_network.input_shape[1:]]
    return {"x".join(map(str, [batch, *patch])): max_logit_difference(network, onnx_network, [batch, *patch], batch)
            for batch in (1, 2)}


def export_and_check(model_folder: Union[str, Path], output: Union[str, Path], folds: Optional[Sequence[Fold]] = None,
                     checkpoint: str = CHECKPOINT, patch_size: Optional[Sequence[int]] = None,
                     tolerance: float = DEFAULT_TOLERANCE, opset: int = OPSET) -> dict[str, Any]:
    """Export, then check ONNX Runtime against PyTorch; a DeploymentError above ``tolerance``. Returns a summary."""
    folds = resolve_folds(check_model_folder(model_folder), folds, checkpoint)
    predictor = load_predictor(model_folder, folds, checkpoint)
    path = export_onnx(predictor, output, folds, model_folder, patch_size, opset)
    onnx_network = OnnxNetwork(path)
    differences = parity_check(predictor, onnx_network)
    summary = {"onnx": str(path), "trainer": predictor.trainer_name, "folds": folds,
               "patch_size": [int(s) for s in onnx_network.input_shape[2:]],
               "total_stride": list(total_stride(predictor)), "max_abs_logit_difference": differences,
               "tolerance": tolerance}
    worst = max(differences.values())
    if not worst <= tolerance:  # also catches NaN
        raise DeploymentError(f"ONNX Runtime and PyTorch logits differ by up to {worst:.3g} (per input shape: "
                              f"{differences}), above the tolerance {tolerance:g}: {path} is not faithful. Try another "
                              f"--opset, or raise --tolerance if this difference is acceptable for your use.")
    return summary
