"""Deployment and pictures: ``lightmedseg export`` (ONNX + parity), ``predict-onnx`` (ONNX Runtime inside nnU-Net's
predictor), ``show`` and ``anchors``, on the two folds of the tiny model that the nnU-Net command tests train with the
stock commands (``iso`` in conftest.py, CPU). The CLI runs in-process through ``cli.main``.
"""
from __future__ import annotations

import contextlib
import io
import re
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest
import SimpleITK as sitk
import torch
from conftest import ISO as DATASET
from conftest import ISO_TRAINER as TRAINER

from nnunetv2_lightmedseg import cli, export, figures

pytest.importorskip("onnxruntime", reason='needs the onnx extra: pip install "nnunetv2-lightmedseg[onnx]"')
pytest.importorskip("matplotlib", reason='needs the figures extra: pip install "nnunetv2-lightmedseg[figures]"')

CASES = ("iso_ts000", "iso_ts001")


def _main(*args: str) -> tuple[int, str, str]:
    """``lightmedseg ARGS`` in this process: exit code, stdout, stderr."""
    out, err = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        code = cli.main([str(a) for a in args])
    return code, out.getvalue(), err.getvalue()


def _read(path: Path) -> np.ndarray:
    return sitk.GetArrayFromImage(sitk.ReadImage(str(path)))


@pytest.fixture(scope="module")
def model(iso, tmp_path_factory):
    """Fold 0 of the tiny model, its held-out cases predicted by nnUNetv2_predict (with probabilities), and the ONNX
    file `lightmedseg export` wrote from it, with what the command printed."""
    nnunet_env = iso
    tmp = tmp_path_factory.mktemp("deployment")
    raw = nnunet_env.raw / DATASET
    nnunet_env.run("nnUNetv2_predict", "-i", str(raw / "imagesTs"), "-o", str(tmp / "torch"), "-d", "991",
                   "-c", "3d_fullres", "-tr", TRAINER, "-f", "0", "-device", "cpu", "-npp", "1", "-nps", "1",
                   "--save_probabilities")
    folder = nnunet_env.model_folder(DATASET, TRAINER)
    code, printed, errors = _main("export", "-m", folder, "-f", "0", "-o", tmp / "model.onnx")
    assert code == 0, errors
    return SimpleNamespace(folder=folder, raw=raw, tmp=tmp, onnx=tmp / "model.onnx", printed=printed)


# ----------------------------------------------------------------------------------------------------------- export
def test_export_prints_parity_below_tolerance(model):
    differences = dict(re.findall(r"input (\S+)\s+(\S+)\n", model.printed))
    assert set(differences) == {"1x1x32x32x32", "2x1x32x32x32"}, model.printed  # patch size, batch 1 and 2
    assert all(0 <= float(d) < 1e-4 for d in differences.values()), differences
    network = export.OnnxNetwork(model.onnx)
    assert network.input_shape == ["batch", 1, 32, 32, 32]
    assert network.metadata["total_stride"] == "[8, 8, 8]" and network.metadata["nnunet.trainer"] == TRAINER


def test_dynamic_batch_and_another_exported_size(model):
    """The batch axis is dynamic; another spatial size (a multiple of the total stride) is another export."""
    predictor = export.load_predictor(model.folder, [0])
    network = export.predictor_network(predictor)
    assert export.max_logit_difference(network, export.OnnxNetwork(model.onnx), (3, 1, 32, 32, 32)) < 1e-4
    summary = export.export_and_check(model.folder, model.tmp / "other.onnx", [0], patch_size=[16, 32, 24])
    assert summary["patch_size"] == [16, 32, 24]
    assert max(summary["max_abs_logit_difference"].values()) < 1e-4
    assert export.max_logit_difference(network, export.OnnxNetwork(model.tmp / "other.onnx"), (2, 1, 16, 32, 24)) < 1e-4


def test_ensemble_of_folds_is_the_mean_of_their_logits(model, tmp_path):
    """Two folds make one graph whose logits are the mean of the folds' own (nnU-Net's fold ensembling)."""
    folder = model.folder
    summary = export.export_and_check(folder, tmp_path / "ensemble.onnx")  # default: every fold
    assert summary["folds"] == [0, 1] and max(summary["max_abs_logit_difference"].values()) < 1e-4
    x = torch.randn(1, 1, 32, 32, 32)
    with torch.no_grad():
        fold_logits = [export.predictor_network(export.load_predictor(folder, [f]))(x) for f in (0, 1)]
    assert (fold_logits[0] - fold_logits[1]).abs().max() > 1e-2, "the folds must differ for this test to mean much"
    onnx_logits = export.OnnxNetwork(tmp_path / "ensemble.onnx")(x)
    assert torch.allclose(onnx_logits, (fold_logits[0] + fold_logits[1]) / 2, atol=1e-4)


def test_clear_errors(model, tmp_path):
    code, _, errors = _main("export", "-m", model.raw, "-o", tmp_path / "x.onnx")
    assert code == 1 and "is not an nnU-Net model folder" in errors and "TRAINER__PLANS__CONFIGURATION" in errors
    code, _, errors = _main("export", "-m", model.folder.parent, "-o", tmp_path / "x.onnx")
    assert code == 1 and "give one of them" in errors and model.folder.name in errors
    code, _, errors = _main("export", "-m", model.folder, "-f", "3", "-o", tmp_path / "x.onnx")
    assert code == 1 and "no checkpoint_final.pth for fold(s) 3" in errors and "fold_0/checkpoint_final.pth" in errors
    code, _, errors = _main("export", "-m", model.folder, "-f", "0", "-o", tmp_path / "x.onnx",
                            "--patch-size", "30", "32", "32")
    assert code == 1 and "[30, 32, 32]" in errors and "total stride [8, 8, 8]" in errors and "[32, 32, 32]" in errors
    with pytest.raises(export.DeploymentError, match=r"takes inputs \(batch, 1, 32, 32, 32\).*fixed at export"):
        export.OnnxNetwork(model.onnx)(torch.zeros(1, 1, 30, 32, 32))


def test_exporter_failure_and_parity_failure_are_reported(model, tmp_path, monkeypatch):
    def failing_export(*args, **kwargs):
        raise RuntimeError("Unsupported: ONNX export of operator frobnicate")
    with monkeypatch.context() as patch:
        patch.setattr(torch.onnx, "export", failing_export)
        code, _, errors = _main("export", "-m", model.folder, "-f", "0", "-o", tmp_path / "x.onnx")
    assert code == 1 and "torch.onnx.export could not export" in errors and "frobnicate" in errors
    assert "--opset" in errors
    monkeypatch.setattr(export, "max_logit_difference", lambda *args, **kwargs: 1e-3)
    code, _, errors = _main("export", "-m", model.folder, "-f", "0", "-o", tmp_path / "x.onnx")
    assert code == 1 and "above the tolerance 0.0001" in errors


# -------------------------------------------------------------------------------------------------- predict-onnx
def test_onnx_runtime_prediction_equals_pytorch(model):
    """Whole cases through nnU-Net's predictor with ONNX Runtime as the network == nnUNetv2_predict's output."""
    out = model.tmp / "onnx"
    code, _, errors = _main("predict-onnx", "-i", model.raw / "imagesTs", "-o", out, "--onnx", model.onnx,
                            "--save-probabilities")
    assert code == 0, errors
    for case in CASES:
        onnx_seg, torch_seg = _read(out / f"{case}.nii.gz"), _read(model.tmp / "torch" / f"{case}.nii.gz")
        assert (onnx_seg == torch_seg).mean() > 0.999
        onnx_probabilities = np.load(out / f"{case}.npz")["probabilities"]
        torch_probabilities = np.load(model.tmp / "torch" / f"{case}.npz")["probabilities"]
        # both accumulate the Gaussian-weighted (x10) logits of the sliding window in float16, as nnU-Net does:
        # agreement to that precision (measured up to 1.1e-3; a wrong mirror or fold would differ by > 0.05)
        assert np.abs(onnx_probabilities - torch_probabilities).max() < 5e-3


# ------------------------------------------------------------------------------------------------------ pictures
def _png_shape(path: Path) -> tuple[int, ...]:
    import matplotlib.image
    assert path.is_file() and path.stat().st_size > 1000
    return matplotlib.image.imread(str(path)).shape


def test_show_writes_png_of_the_stated_size(model, tmp_path):
    code, _, errors = _main("show", "-i", model.raw / "imagesTs", "-l", model.raw / "labelsTs",
                            "-p", model.tmp / "torch", "-o", tmp_path / "cases.png", "--width", "600")
    assert code == 0, errors
    assert _png_shape(tmp_path / "cases.png") == (figures.figure_height(600, 2), 600, 4)  # two cases, RGBA
    code, _, errors = _main("show", "-i", model.raw / "imagesTs", "-l", model.raw / "labelsTs",
                            "-p", model.tmp / "torch", "-o", tmp_path / "one.png", "--cases", CASES[1],
                            "--slice", "wall", "--width", "450")
    assert code == 0, errors
    assert _png_shape(tmp_path / "one.png") == (figures.figure_height(450, 1), 450, 4)
    code, _, errors = _main("show", "-i", model.raw / "imagesTs", "-l", model.raw / "labelsTs",
                            "-p", model.tmp / "torch", "-o", tmp_path / "bad.png", "--slice", "liver")
    assert code == 1 and "'liver' is neither" in errors and "core, wall, tube" in errors


def test_slice_choice():
    label = np.zeros((5, 4, 4), np.uint8)
    label[1, :2, :2] = 1  # 4 voxels of label 1 on slice 1
    label[3] = 2  # 16 voxels of label 2 on slice 3
    labels = {"background": 0, "a": 1, "b": 2}
    assert figures.choose_slice(label, label, "most", labels) == 3
    assert figures.choose_slice(label, label, "a", labels) == 1
    assert figures.choose_slice(label, label, "-1", labels) == 4
    assert figures.label_names({"background": 0, "whole": [1, 2, 3], "core": [2, 3], "enhancing": [3]}) == \
        {1: "whole", 2: "core", 3: "enhancing"}


def test_anchors_writes_png_of_the_stated_size(model, tmp_path):
    code, _, errors = _main("anchors", "-m", model.folder, "-f", "0", "-i", model.raw / "imagesTs",
                            "--case", CASES[0], "-o", tmp_path / "anchors.png", "--width", "600")
    assert code == 0, errors
    assert _png_shape(tmp_path / "anchors.png") == (figures.figure_height(600, 2), 600, 4)  # S row and T row
    code, _, errors = _main("anchors", "-m", model.folder, "-f", "0", "-i", model.raw / "imagesTs",
                            "--case", "nosuchcase", "-o", tmp_path / "x.png")
    assert code == 1 and "nosuchcase_0000.nii.gz missing" in errors


def test_anchor_coordinates_follow_the_network_grid(monkeypatch):
    """An anchor at the centre of stem voxel (i, j, k) is drawn at that stem voxel's centre in input voxels."""
    from nnunetv2_lightmedseg.architectures import LightMedSeg
    from nnunetv2_lightmedseg.architectures.blocks import normalized_grid
    from nnunetv2_lightmedseg.architectures.priors import Anchors
    network = LightMedSeg.from_preset("tiny", 1, 2, strides=[(1, 2, 2), (2, 2, 2), (2, 2, 2), (1, 1, 1)]).eval()
    stem_voxel = (3, 0, 5)  # stem grid of a (8, 16, 16) input: (8, 8, 8)

    def detector(stem):
        grid = normalized_grid(stem.shape[2:], stem.device, stem.dtype)[(slice(None), *stem_voxel)]
        return Anchors(grid.expand(stem.shape[0], 8, 3), torch.ones(stem.shape[0], 8))
    monkeypatch.setattr(network.anchor_detector, "forward", detector)
    positions, confidence, texture = figures.run_priors(network, np.random.rand(1, 8, 16, 16).astype(np.float32))
    # stem voxel v with stride s covers input voxels v*s .. v*s + s - 1: centre v*s + (s - 1) / 2
    expected = [v * s + (s - 1) / 2 for v, s in zip(stem_voxel, (1, 2, 2))]
    assert np.allclose(positions, expected) and confidence.shape == (8,) and texture.shape == (8, 16, 16)


def test_network_input_pads_a_volume_thinner_than_the_patch():
    """ACDC: 9 slices against a 10-slice patch; the patch is centred, cropped where larger and zero-padded where
    smaller, and ``whole`` pads up to the total stride."""
    data = np.ones((1, 9, 40, 12), dtype=np.float32)
    patch = figures.network_input(data, (10, 32, 16), (1, 4, 4), whole=False)
    assert patch.shape == (1, 10, 32, 16)
    assert patch.sum() == 9 * 32 * 12  # every kept voxel of the image, zeros around it
    whole = figures.network_input(data, (10, 32, 16), (2, 8, 8), whole=True)
    assert whole.shape == (1, 10, 40, 16) and whole.sum() == data.sum()


@pytest.mark.parametrize("value, replayed", [(None, True), ("0", False), ("false", False), ("1", True)])
def test_prediction_network_replays_cuda_graphs_unless_switched_off(monkeypatch, value, replayed):
    """What nnUNetv2_predict builds: LightMedSeg with the execution choices switched in, CUDA-graph replay on by
    default (used on GPUs only; LIGHTMEDSEG_CUDA_GRAPHS=0 turns it off), and the plain network's state_dict."""
    from nnunetv2.utilities.plans_handling.plans_handler import PlansManager

    from nnunetv2_lightmedseg.architectures import LightMedSeg
    from nnunetv2_lightmedseg.execution import CUDAGraphLightMedSeg, FastCPUConv3d
    from nnunetv2_lightmedseg.trainers import nnUNetTrainerLightMedSeg
    if value is None:
        monkeypatch.delenv("LIGHTMEDSEG_CUDA_GRAPHS", raising=False)
    else:
        monkeypatch.setenv("LIGHTMEDSEG_CUDA_GRAPHS", value)
    manager = PlansManager(str(Path(__file__).resolve().parents[1] / "benchmarks" / "plans"
                               / "Dataset027_ACDC_nnUNetPlans.json"))
    network = nnUNetTrainerLightMedSeg.build_network_architecture(
        manager, manager.get_configuration("3d_fullres"), 1, 4, enable_deep_supervision=False)
    assert isinstance(network, CUDAGraphLightMedSeg) is replayed and isinstance(network, LightMedSeg)
    assert not replayed or network.cuda_graphs
    assert type(network.stem.primary) is FastCPUConv3d  # the CPU kernel choices either way
    # the plain network's checkpoint loads strictly into it, and back
    plain = LightMedSeg.from_preset("paper", 1, 4, strides=network.strides)
    network.load_state_dict(plain.state_dict(), strict=True)
    plain.load_state_dict(network.state_dict(), strict=True)
