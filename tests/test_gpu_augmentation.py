"""nnU-Net's training augmentation batched on the training device (``execution.gpu_augmentation``), on the CPU.

The batched pipeline draws each sample's parameters with batchgeneratorsv2's own code in its order, so the same
seeds give it and batchgeneratorsv2's per-sample transforms the same parameters: every comparison below runs
both from the same seeds and compares outputs (bit for bit where the module docstring says so, else to float
rounding). Gaussian noise, drawn on the device, is compared in distribution. Then: the probabilities and ranges of
the parameter draws, labels staying aligned with the image, the unported cases, and the trainer mixin on a tiny
generated dataset planned in this process. ``test_cuda_equals_cpu`` runs only with a CUDA GPU.
"""
from __future__ import annotations

import copy
import hashlib
import inspect
import json
import math
import multiprocessing
import multiprocessing.pool
import types
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from batchgeneratorsv2.transforms.intensity.brightness import MultiplicativeBrightnessTransform
from batchgeneratorsv2.transforms.intensity.contrast import ContrastTransform
from batchgeneratorsv2.transforms.intensity.gamma import GammaTransform
from batchgeneratorsv2.transforms.intensity.gaussian_noise import GaussianNoiseTransform
from batchgeneratorsv2.transforms.nnunet.seg_to_onehot import MoveSegAsOneHotToDataTransform
from batchgeneratorsv2.transforms.noise.gaussian_blur import GaussianBlurTransform
from batchgeneratorsv2.transforms.spatial.low_resolution import SimulateLowResolutionTransform
from batchgeneratorsv2.transforms.spatial.mirroring import MirrorTransform
from batchgeneratorsv2.transforms.spatial.spatial import SpatialTransform
from batchgeneratorsv2.transforms.utils.compose import ComposeTransforms
from batchgeneratorsv2.transforms.utils.deep_supervision_downsampling import DownsampleSegForDSTransform
from batchgeneratorsv2.transforms.utils.pseudo2d import Convert2DTo3DTransform, Convert3DTo2DTransform
from batchgeneratorsv2.transforms.utils.random import RandomTransform
from nnunetv2.training.data_augmentation.compute_initial_patch_size import get_patch_size
from nnunetv2.training.nnUNetTrainer.nnUNetTrainer import nnUNetTrainer

from nnunetv2_lightmedseg.execution.gpu_augmentation import BatchedTrainingTransforms
from nnunetv2_lightmedseg.trainers.gpu_augmentation import DeviceAugmentation

#: per kind: patch, rotation range and pseudo-2D flag as nnU-Net's configure_rotation_dummyDA_mirroring_... gives
#: them (3D isotropic, 3D anisotropic with 2D augmentation in-plane, 2D)
KINDS = {
    "iso": ((16, 16, 16), (-math.pi / 6, math.pi / 6), False),
    "aniso": ((8, 24, 20), (-math.pi, math.pi), True),
    "2d": ((24, 20), (-math.pi, math.pi), False),
}
DS_SCALES = {"iso": [[1, 1, 1], [0.5, 0.5, 0.5], [0.25, 0.25, 0.25]],
             "aniso": [[1, 1, 1], [1, 0.5, 0.5], [0.5, 0.25, 0.25]], "2d": [[1, 1], [0.5, 0.5], [0.25, 0.25]]}


def _seed(seed: int) -> None:
    np.random.seed(seed)
    torch.manual_seed(seed)


def _initial_patch(kind: str) -> tuple[int, ...]:
    patch, rotation, dummy_2d = KINDS[kind]
    initial = get_patch_size(patch, rotation, rotation, rotation, (0.85, 1.25))
    if dummy_2d:
        initial[0] = patch[0]
    return tuple(int(i) for i in initial)


def _nnunet_pipeline(kind: str, **kwargs) -> ComposeTransforms:
    patch, rotation, dummy_2d = KINDS[kind]
    return nnUNetTrainer.get_training_transforms(patch, rotation, DS_SCALES[kind], tuple(range(len(patch))),
                                                 dummy_2d, **kwargs)


def _find(pipeline: ComposeTransforms, cls: type, **attributes):
    """The transform of class ``cls`` (inside its RandomTransform) whose attributes have these values."""
    for t in pipeline.transforms:
        inner = t.transform if isinstance(t, RandomTransform) else t
        if type(inner) is cls and all(getattr(inner, k) == v for k, v in attributes.items()):
            return t
    raise LookupError(cls)


def _reference(pipeline: ComposeTransforms) -> ComposeTransforms:
    """The pipeline to compare against: without its Gaussian noise, the only transform that draws from torch's
    generator while it applies (batchgeneratorsv2 then draws its next parameters from a moved stream), and with
    the blur's convolution always direct (``benchmark`` times FFT against direct convolution for each new size and
    takes the faster, for the same filter: slow here, and only a speed choice)."""
    noise = _find(pipeline, GaussianNoiseTransform)
    _find(pipeline, GaussianBlurTransform).transform.benchmark = False
    return ComposeTransforms([t for t in pipeline.transforms if t is not noise])


def _inputs(n: int, shape: tuple[int, ...], channels: int = 2, labels: int = 4, seed: int = 0
            ) -> tuple[torch.Tensor, torch.Tensor]:
    """What nnUNetDataLoader gives without transforms: image (n, C, *shape) float32, segmentation (n, 1, *shape)
    int16 of smooth blobs, padded with -1 on the second axis' low side. Sample 1 has two labels only and sample 2
    one (neither padded), so that batchgeneratorsv2's one- and two-label rules are met (in every slice, for
    pseudo-2D)."""
    generator = torch.Generator().manual_seed(seed)
    coarse = torch.rand((n, labels, *[max(2, s // 4) for s in shape]), generator=generator)
    seg = F.interpolate(coarse, shape, mode="trilinear" if len(shape) == 3 else "bilinear")
    seg = seg.argmax(1, keepdim=True).to(torch.int16)
    seg[:, :, :, :2] = -1
    if n > 1:
        seg[1] = torch.where(seg[1] >= 2, 2, 0)
    if n > 2:
        seg[2] = 1
    intensities = torch.linspace(-1.0, 2.0, labels + 1)
    image = intensities[seg.long() + 1].repeat(1, channels, *[1] * len(shape))
    image += 0.3 * torch.randn(image.shape, generator=generator)
    return image, seg


def _run_both(pipeline: ComposeTransforms, image: torch.Tensor, seg: torch.Tensor, seeds=None):
    """(batched image, batched segmentation, parameters), and batchgeneratorsv2's (image, segmentation) stacked,
    each sample b drawn from seed ``seeds[b]`` by both."""
    seeds = range(len(image)) if seeds is None else seeds
    batched = BatchedTrainingTransforms(pipeline)
    params = None
    for s in seeds:
        _seed(s)
        p = batched.sample_parameters(1, image.shape[1:])
        params = p if params is None else [a + b for a, b in zip(params, p)]
    got_image, got_seg = batched.apply(image.clone(), seg.clone(), params)
    want = []
    for b, s in enumerate(seeds):
        _seed(s)
        want.append(pipeline(image=image[b].clone(), segmentation=seg[b].clone()))
    want_image = torch.stack([w["image"] for w in want])
    if isinstance(want[0]["segmentation"], list):
        want_seg = [torch.stack([w["segmentation"][k] for w in want]) for k in range(len(want[0]["segmentation"]))]
    else:
        want_seg = torch.stack([w["segmentation"] for w in want])
    return got_image, got_seg, params, want_image, want_seg


def _assert_same_segmentation(got, want) -> None:
    got, want = (got, want) if isinstance(got, list) else ([got], [want])
    assert len(got) == len(want)
    for g, w in zip(got, want):
        assert g.dtype == w.dtype and g.shape == w.shape
        assert torch.equal(g, w), f"{(g != w).sum().item()} of {g.numel()} voxels differ"


# ------------------------------------------------------------------------------------------- each transform

def _fixed_spatial(kind: str, angles, scale, rotate: bool, zoom: bool, **attributes) -> ComposeTransforms:
    """nnU-Net's SpatialTransform (with the pseudo-2D conversions around it) drawing these angles and scale."""
    pipeline = _nnunet_pipeline(kind)
    spatial = copy.deepcopy(_find(pipeline, SpatialTransform))
    for name, value in attributes.items():
        setattr(spatial, name, value)
    spatial.p_rotation, spatial.p_scaling = float(rotate), float(zoom)
    spatial.rotation = lambda image, dim: angles[dim]
    spatial.scaling = scale
    steps = [spatial]
    if KINDS[kind][2]:
        steps = [Convert3DTo2DTransform(), spatial, Convert2DTo3DTransform()]
    return ComposeTransforms(steps)


#: (angles, scale, rotate, scale it): a plain crop, rotations (90 degrees puts sample points exactly between
#: pixels: ties), a zoom in that stays inside the crop, zooms out that reach outside it (the padding label competes)
SPATIAL_CASES = [((0, 0, 0), 1, False, False), ((0.3, -0.2, 0.5), 1, True, False),
                 ((0, 0, math.pi / 2), 1, True, False), ((0, 0, 0), 0.7, False, True),
                 ((0.5, 0.4, -0.6), 1.4, True, True), ((0, 0, math.pi), 1.25, True, True)]


def _spatial_both(kind: str, **attributes):
    """The SPATIAL_CASES, one per sample, batched and by batchgeneratorsv2: (batched, theirs, inputs, pipelines)."""
    image, seg = _inputs(len(SPATIAL_CASES), _initial_patch(kind))
    pipelines = [_fixed_spatial(kind, *case, **attributes) for case in SPATIAL_CASES]
    batched = [BatchedTrainingTransforms(p) for p in pipelines]
    params = [[] for _ in batched[0].steps]
    for b, one in enumerate(batched):
        for step_params, p in zip(params, one.sample_parameters(1, image.shape[1:])):
            step_params += p
    got = batched[0].apply(image.clone(), seg.clone(), params)
    want = [p(image=image[b].clone(), segmentation=seg[b].clone()) for b, p in enumerate(pipelines)]
    return got, (torch.stack([w["image"] for w in want]), torch.stack([w["segmentation"] for w in want])), \
        (image, seg), pipelines


@pytest.mark.parametrize("kind", KINDS)
def test_spatial_transform_equals_batchgeneratorsv2(kind: str) -> None:
    """Crop, rotation and scaling of image and segmentation bit for bit as batchgeneratorsv2's SpatialTransform,
    with one-, two- and many-label channels and patches that reach outside the crop."""
    (got_image, got_seg), (want_image, want_seg), (image, _), pipelines = _spatial_both(kind)
    assert torch.equal(got_image, want_image)
    _assert_same_segmentation(got_seg, want_seg)

    # the cases cover what they are meant to: patches inside and reaching outside, and the padding label kept
    spatial = next(t for t in pipelines[0].transforms if isinstance(t, SpatialTransform))
    plane = image.shape[2:] if not KINDS[kind][2] else image.shape[3:]
    reaches = []
    for p in pipelines[1:]:
        t = next(t for t in p.transforms if isinstance(t, SpatialTransform))
        grid = t.get_parameters(image=torch.empty((1, *plane)))["grid"]
        reaches.append(spatial._may_reach_outside(grid, plane))
    assert any(reaches) and not all(reaches)
    assert (got_seg == -1).any() and set(got_seg.unique().tolist()) <= {-1, 0, 1, 2, 3}


@pytest.mark.parametrize("attributes", [{"seg_tiebreak": "lowest"}, {"seg_tiebreak": "highest"},
                                        {"mode_seg": "nearest"}, {"border_mode_seg": "zeros"}],
                         ids=["lowest", "highest", "nearest", "zeros"])
def test_spatial_settings_nnunet_does_not_use_equal_batchgeneratorsv2(attributes: dict) -> None:
    """The other tie rules, nearest-neighbour segmentation sampling and zero padding, as batchgeneratorsv2 has them."""
    (got_image, got_seg), (want_image, want_seg), _, _ = _spatial_both("aniso", **attributes)
    assert torch.equal(got_image, want_image)
    _assert_same_segmentation(got_seg, want_seg)


INTENSITY = {
    "blur": (GaussianBlurTransform, {}, False), "brightness": (MultiplicativeBrightnessTransform, {}, True),
    "contrast": (ContrastTransform, {}, False), "low_resolution": (SimulateLowResolutionTransform, {}, True),
    "gamma_inverted": (GammaTransform, {"p_invert_image": 1}, False),
    "gamma": (GammaTransform, {"p_invert_image": 0}, False),
    "mirror": (MirrorTransform, {}, True),
}


@pytest.mark.parametrize("name", INTENSITY)
@pytest.mark.parametrize("kind", ["iso", "aniso"])
def test_intensity_and_mirror_transforms_equal_batchgeneratorsv2(kind: str, name: str) -> None:
    """Each of nnU-Net's intensity transforms (applied with probability 1, its per-channel probabilities kept) and
    the mirroring, with the same parameters: bit for bit or, for blur, contrast and gamma, to float rounding (the
    blur against direct convolution, see _reference)."""
    cls, attributes, exact = INTENSITY[name]
    transform = copy.deepcopy(_find(_reference(_nnunet_pipeline(kind)), cls, **attributes))
    if isinstance(transform, RandomTransform):
        transform.apply_probability = 1
    image, seg = _inputs(8, KINDS[kind][0])
    got_image, got_seg, _, want_image, want_seg = _run_both(ComposeTransforms([transform]), image, seg)
    assert not torch.equal(want_image, image), "the transform changed nothing: the comparison would be empty"
    if exact:
        assert torch.equal(got_image, want_image)
    else:
        torch.testing.assert_close(got_image, want_image, rtol=1e-5, atol=1e-5)
    _assert_same_segmentation(got_seg, want_seg)


def test_gaussian_noise_has_the_drawn_sigma_in_every_channel() -> None:
    """Noise is drawn on the device, so only its distribution is batchgeneratorsv2's: N(0, sigma^2) added to every
    channel, one sigma per sample (synchronize_channels), independent values per channel."""
    transform = copy.deepcopy(_find(_nnunet_pipeline("iso"), GaussianNoiseTransform))
    transform.apply_probability = 1
    batched = BatchedTrainingTransforms(ComposeTransforms([transform]))
    image = torch.zeros((6, 2, 24, 24, 24))
    _seed(0)
    params = batched.sample_parameters(6, image.shape[1:])
    out, _ = batched.apply(image.clone(), torch.zeros((6, 1, 24, 24, 24), dtype=torch.int16), params)
    for b, p in enumerate(params[0]):
        sigma = p["sigmas"]
        assert 0 <= sigma < 0.1
        for c in range(2):
            assert abs(out[b, c].std().item() - sigma) < 0.03 * sigma + 1e-6
            assert abs(out[b, c].mean().item()) < 5 * sigma / math.sqrt(out[b, c].numel()) + 1e-6
        if sigma > 0:
            assert not torch.equal(out[b, 0], out[b, 1])


# --------------------------------------------------------------------------------------- the whole pipeline

PIPELINES = {
    "iso": ("iso", {}, 4), "aniso": ("aniso", {}, 4), "2d": ("2d", {}, 4),
    "aniso_mask_for_norm": ("aniso", {"use_mask_for_norm": [True, False]}, 4),
    "iso_regions_ignore_label": ("iso", {"regions": [[1, 2, 3], [2, 3], [3]], "ignore_label": 4}, 5),
}


@pytest.mark.parametrize("name", PIPELINES)
def test_nnunet_pipeline_equals_batchgeneratorsv2(name: str) -> None:
    """nnU-Net's whole training pipeline (without the noise, see _without_noise) at its own probabilities on 16
    samples: every deep-supervision target bit for bit, the image to float rounding; no -1 padding remains; regions
    (with the ignore label as the last one) and use_mask_for_norm's masking included."""
    kind, kwargs, labels = PIPELINES[name]
    pipeline = _reference(_nnunet_pipeline(kind, **kwargs))
    image, seg = _inputs(16, _initial_patch(kind), labels=labels)
    got_image, got_seg, params, want_image, want_seg = _run_both(pipeline, image, seg)
    assert got_image.shape == (16, 2, *KINDS[kind][0])
    torch.testing.assert_close(got_image, want_image, rtol=1e-5, atol=1e-5)
    _assert_same_segmentation(got_seg, want_seg)
    assert [tuple(s.shape[2:]) for s in got_seg] == [
        tuple(round(i * j) for i, j in zip(KINDS[kind][0], s)) for s in DS_SCALES[kind]]
    if "regions" in kwargs:
        assert got_seg[0].dtype == torch.bool and got_seg[0].shape[1] == 4
    else:
        assert got_seg[0].dtype == torch.int16 and got_seg[0].min() >= 0
    warped = sum(p["affine"] is not None for p in params[int(KINDS[kind][2])])
    assert 0 < warped < 16, "some samples rotated or scaled, some only cropped"


def test_deep_supervision_targets_equal_batchgeneratorsv2() -> None:
    """Odd shapes (rounding of the scaled sizes), labels and regions (bool)."""
    transform = DownsampleSegForDSTransform([[1, 1, 1], [1, 0.5, 0.5], [0.5, 0.25, 0.25], [0.25, 0.125, 0.125]])
    batched = BatchedTrainingTransforms(ComposeTransforms([transform]))
    for seg in (torch.randint(0, 4, (3, 1, 7, 23, 19), dtype=torch.int16), torch.rand((3, 2, 7, 23, 19)) > 0.5):
        params = batched.sample_parameters(3, (1, 7, 23, 19))
        _, got = batched.apply(torch.zeros((3, 1, 7, 23, 19)), seg.clone(), params)
        want = [transform(segmentation=s.clone())["segmentation"] for s in seg]
        _assert_same_segmentation(got, [torch.stack([w[k] for w in want]) for k in range(4)])


# ------------------------------------------------------------------------------------------------ sampling

def _fraction_close(values, p: float) -> None:
    n = len(values)
    assert abs(np.mean(values) - p) < 4.5 * math.sqrt(p * (1 - p) / n) + 1e-9, (np.mean(values), p, n)


@pytest.mark.parametrize("kind", ["iso", "aniso"])
def test_parameter_draws_have_nnunets_probabilities_and_ranges(kind: str) -> None:
    """Over 2000 samples' draws (the parameters only): each transform's probability, its per-channel probability,
    synchronisation and range as nnU-Net sets them; mirroring of each axis with probability 0.5."""
    n = 2000
    batched = BatchedTrainingTransforms(_nnunet_pipeline(kind))
    _seed(1)
    params = dict(zip([type(getattr(s, "inner", s)).__name__ + ("_inv" if getattr(getattr(s, "inner", s).transform,
                                                                                   "p_invert_image", 0) else "")
                       for s in batched.steps], batched.sample_parameters(n, (2, *_initial_patch(kind)))))
    low, high = KINDS[kind][1]

    spatial = params["_Spatial"]
    _fraction_close([any(a != 0 for a in p["angles"]) for p in spatial], 0.2)
    _fraction_close([any(s != 1 for s in p["scales"]) for p in spatial], 0.2)
    for p in spatial:
        assert all(low <= a <= high for a in p["angles"])
        assert len(set(p["scales"])) == 1 and 0.7 <= p["scales"][0] <= 1.4
        assert p["affine"] is None or p["affine"].shape == ((2, 2) if KINDS[kind][2] else (3, 3))

    noise = params["_Noise"]
    _fraction_close([p is not None for p in noise], 0.1)
    assert all(0 <= p["sigmas"] <= 0.1 and p["num_apply"] == 2 for p in noise if p is not None)

    blur = [p for p in params["_Blur"] if p is not None]
    _fraction_close([p is not None for p in params["_Blur"]], 0.2)
    _fraction_close([bool(c) for p in blur for c in p["apply_to_channel"]], 0.5)
    assert all(0.5 <= s <= 1 for p in blur for per_channel in p["sigmas"] for s in per_channel)
    assert any(len(set(per_channel)) == 3 for p in blur for per_channel in p["sigmas"]), "axes not synchronised"

    for name in ("_Brightness", "_Contrast"):
        applied = [p for p in params[name] if p is not None]
        _fraction_close([p is not None for p in params[name]], 0.15)
        multipliers = [m.item() for p in applied for m in p["multipliers"]]
        assert all(len(p["multipliers"]) == 2 for p in applied)
        assert all(0.75 <= m <= 1.25 for m in multipliers)
        _fraction_close([m < 1 for m in multipliers], 0.5)  # BGContrast: below 1 or above it, half each

    low_res = [p for p in params["_LowResolution"] if p is not None]
    _fraction_close([p is not None for p in params["_LowResolution"]], 0.25)
    _fraction_close([c in p["apply_to_channel"].tolist() for p in low_res for c in range(2)], 0.5)
    for p in low_res:
        for s in p["scales"]:
            kept = s[1:] if KINDS[kind][2] else s
            assert len(set(kept.tolist())) == 1 and 0.5 <= kept[0] <= 1
            assert not KINDS[kind][2] or s[0] == 1

    for name, p_apply, inverted in (("_Gamma_inv", 0.1, True), ("_Gamma", 0.3, False)):
        applied = [p for p in params[name] if p is not None]
        _fraction_close([p is not None for p in params[name]], p_apply)
        assert all(bool(i) == inverted for p in applied for i in p["invert_image"])
        assert all(bool(r) for p in applied for r in p["retain_stats"])
        assert all(0.7 <= g <= 1.5 for p in applied for g in p["gamma"].tolist())

    for axis in range(3):
        _fraction_close([axis in p["axes"] for p in params["_Mirror"]], 0.5)


# ------------------------------------------------------------------------------------------------ alignment

@pytest.mark.parametrize("kind", ["iso", "aniso"])
def test_labels_stay_integer_and_aligned_with_the_image(kind: str) -> None:
    """An image that is the label map, rotated, scaled and mirrored with it, still equals the label away from
    label boundaries; the labels stay integers of the input's labels with the -1 padding turned into 0."""
    pipeline = _nnunet_pipeline(kind)
    spatial = _find(pipeline, SpatialTransform)
    spatial.p_rotation = spatial.p_scaling = 1
    keep = [t for t in pipeline.transforms if type(t) in (Convert3DTo2DTransform, SpatialTransform,
                                                         Convert2DTo3DTransform, MirrorTransform)
            or type(t).__name__ == "RemoveLabelTransform"]
    batched = BatchedTrainingTransforms(ComposeTransforms(keep))
    _, seg = _inputs(8, _initial_patch(kind))
    image = seg.clamp(min=0).float()
    _seed(2)
    out_image, out_seg = batched.augment(image.clone(), seg.clone())
    assert out_seg.dtype == torch.int16 and set(out_seg.unique().tolist()) <= {0, 1, 2, 3}
    label = out_seg[:, 0].float()
    axes = [2, 3] if KINDS[kind][2] else [1, 2, 3]
    interior = torch.ones_like(label, dtype=torch.bool)
    for axis in axes:
        for shift in (-1, 1):
            interior &= torch.roll(label, shift, axis) == label
    assert interior.float().mean() > 0.3
    matches = ((out_image[:, 0] - label).abs() < 0.5)[interior].float().mean()
    flipped = ((out_image[:, 0].flip(2) - label).abs() < 0.5)[interior].float().mean()
    assert matches > 0.995 and flipped < matches - 0.1, (matches, flipped)


# --------------------------------------------------------------------------------------------- not ported

def test_cascade_and_unported_transforms_raise_naming_the_fallback() -> None:
    with pytest.raises(NotImplementedError, match="nnU-Net's CPU augmentation"):
        BatchedTrainingTransforms.from_arguments((16, 16, 16), (-0.5, 0.5), None, (0, 1, 2), False,
                                                 is_cascaded=True, foreground_labels=[1, 2])
    with pytest.raises(NotImplementedError, match="MoveSegAsOneHotToDataTransform.*CPU augmentation"):
        BatchedTrainingTransforms(ComposeTransforms([MoveSegAsOneHotToDataTransform(1, [1, 2])]))
    elastic = SpatialTransform((16, 16, 16), 0, False, p_elastic_deform=0.2)
    with pytest.raises(NotImplementedError, match="elastic deformation"):
        BatchedTrainingTransforms(ComposeTransforms([elastic]))
    built = BatchedTrainingTransforms.from_arguments((16, 16, 16), (-0.5, 0.5), None, (0, 1, 2), False)
    assert "SpatialTransform" in repr(built) and "MirrorTransform" in repr(built)


# ------------------------------------------------------------------------------------------- trainer mixin

@pytest.fixture(scope="module")
def tiny_plan(tmp_path_factory):
    """Five generated 8 x 32 x 24 cases at 4 x 1 x 1 mm (an anisotropic plan: augmentation in-plane), planned and
    preprocessed in this process through nnU-Net's API, its worker pools as thread pools (spawning processes that
    import torch costs most of the time on two cores) and its intensity statistics from 10^4 rather than 10^8
    foreground voxels."""
    from nnunetv2.experiment_planning.dataset_fingerprint.fingerprint_extractor import DatasetFingerprintExtractor
    from nnunetv2.experiment_planning.plan_and_preprocess_api import plan_experiments, preprocess

    from nnunetv2_lightmedseg.synthetic import make_dataset
    root = tmp_path_factory.mktemp("gpuda")
    monkeypatch = pytest.MonkeyPatch()
    for key in ("raw", "preprocessed", "results"):
        (root / key).mkdir()
        monkeypatch.setenv(f"nnUNet_{key}", str(root / key))
    make_dataset(root / "raw", 996, "GpuDA", num_train=5, num_test=0, shape=(8, 32, 24), spacing=(4.0, 1.0, 1.0),
                 seed=3)
    spawn = types.SimpleNamespace(Pool=multiprocessing.pool.ThreadPool)
    get_context = multiprocessing.get_context
    monkeypatch.setattr(multiprocessing, "get_context",
                        lambda method=None: spawn if method == "spawn" else get_context(method))
    monkeypatch.setattr("nnunetv2.utilities.utils.Pool", multiprocessing.pool.ThreadPool)
    fingerprint = DatasetFingerprintExtractor(996, num_processes=1)
    fingerprint.num_foreground_voxels_for_intensitystats = 1e4
    fingerprint.run(overwrite_existing=True)
    plan_experiments([996])
    preprocess([996], configurations=("3d_fullres",), num_processes=(1,), verbose=False)
    monkeypatch.undo()
    yield root / "preprocessed" / "Dataset996_GpuDA", {k: str(root / k) for k in ("raw", "preprocessed", "results")}


def _trainer(cls: type, tiny_plan, monkeypatch):
    folder, paths = tiny_plan
    for key, value in paths.items():
        monkeypatch.setenv(f"nnUNet_{key}", value)
    monkeypatch.setenv("nnUNet_n_proc_DA", "0")
    monkeypatch.setenv("nnUNet_compile", "f")
    plans = {**json.loads((folder / "nnUNetPlans.json").read_text()), "continue_training": False}
    dataset_json = json.loads((folder / "dataset.json").read_text())
    trainer = cls(plans, "3d_fullres", 0, dataset_json, torch.device("cpu"))
    trainer.initialize()
    return trainer


def _shapes(batch: dict) -> tuple:
    target = batch["target"] if isinstance(batch["target"], list) else [batch["target"]]
    return (tuple(batch["data"].shape), batch["data"].dtype), [(tuple(t.shape), t.dtype) for t in target]


def test_trainer_augments_on_the_device_with_nnunets_shapes(tiny_plan, monkeypatch) -> None:
    """A trainer with augmentation_device "device" on the CPU: its loader gives the uncropped initial patch, two
    training steps run on batches of the shapes and dtypes nnU-Net's CPU pipeline gives for the same plan, and the
    log and debug.json say which pipeline runs; a transform without a batched port, and "auto" on the CPU, keep
    nnU-Net's pipeline."""
    from nnunetv2_lightmedseg.trainers import nnUNetTrainerLightMedSeg_gpuDA_2epochs_10iters as Auto

    assert issubclass(Auto, DeviceAugmentation) and Auto.augmentation_device == "auto"
    nnunet_train_step = nnUNetTrainer.train_step

    def seen_by_nnunet(self, batch):  # what nnU-Net's train_step receives, after the mixin's augmentation
        self.seen = [*getattr(self, "seen", []), batch]
        return nnunet_train_step(self, batch)

    monkeypatch.setattr(nnUNetTrainer, "train_step", seen_by_nnunet)

    class OnDevice(Auto):
        augmentation_device = "device"

    torch.manual_seed(0)
    trainer = _trainer(OnDevice, tiny_plan, monkeypatch)
    loader, _ = trainer.get_dataloaders()
    assert isinstance(trainer.device_augmentation, BatchedTrainingTransforms)
    assert loader.data_loader.transforms is None
    raw = next(loader)
    assert tuple(raw["data"].shape[2:]) == tuple(loader.data_loader.patch_size)
    losses = [trainer.train_step(next(loader))["loss"] for _ in range(2)]
    assert all(np.isfinite(loss) for loss in losses)
    log = Path(trainer.log_file).read_text()
    assert log.count("Training augmentation: nnU-Net's pipeline run batched on cpu") == 1
    trainer._save_debug_information()  # nnU-Net's debug.json records the pipeline that ran
    debug = json.loads((Path(trainer.output_folder) / "debug.json").read_text())
    assert debug["device_augmentation"].startswith("BatchedTrainingTransforms([") and "SpatialTransform" in \
        debug["device_augmentation"]

    # a pipeline with a transform that has no batched port stays nnU-Net's, in its workers
    own_pipeline = trainer.get_training_transforms

    def with_elastic_deformation(*args, **kwargs):
        pipeline = own_pipeline(*args, **kwargs)
        _find(pipeline, SpatialTransform).p_elastic_deform = 1
        return pipeline

    monkeypatch.setattr(trainer, "get_training_transforms", with_elastic_deformation)
    loader, _ = trainer.get_dataloaders()
    assert trainer.device_augmentation is None and loader.data_loader.transforms is not None
    assert "own pipeline in its data loader processes, since SpatialTransform with elastic deformation" in \
        Path(trainer.log_file).read_text()

    reference = _trainer(Auto, tiny_plan, monkeypatch)
    reference_loader, _ = reference.get_dataloaders()
    assert reference.device_augmentation is None and reference_loader.data_loader.transforms is not None
    want = _shapes(next(reference_loader))
    assert [_shapes(batch) for batch in trainer.seen] == [want, want]
    assert "nnU-Net's own pipeline in its data loader processes" in Path(reference.log_file).read_text()


def test_get_dataloaders_copy_follows_nnunets() -> None:
    """DeviceAugmentation.get_dataloaders copies nnunetv2 2.8.1's with one change; when nnU-Net's changes, this
    fails: bring the copy in line, then record the new hash."""
    source = inspect.getsource(nnUNetTrainer.get_dataloaders)
    assert hashlib.sha256(source.encode()).hexdigest() == \
        "5f59e2b907cfa2d1eb1e77ab2a5b8893161e7af8567fc5669c62a4810334899e"


# --------------------------------------------------------------------------------------------------- CUDA

@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
@pytest.mark.parametrize("name", ["iso", "aniso", "iso_regions_ignore_label"])
def test_cuda_equals_cpu(name: str) -> None:
    """The same parameters on CUDA and on the CPU: the image to float precision, the targets except where the GPU's
    grid arithmetic moves a float16 score across a tie (at most a tiny fraction of voxels). With TF32 off: cuDNN
    rounds the blur's convolutions to TF32 by default on Ampere and later GPUs, a relative error of about 1e-3 that
    training tolerates but that would hide a real difference here."""
    kind, kwargs, labels = PIPELINES[name]
    batched = BatchedTrainingTransforms(_reference(_nnunet_pipeline(kind, **kwargs)))
    image, seg = _inputs(16, _initial_patch(kind), labels=labels)
    _seed(0)
    params = batched.sample_parameters(16, image.shape[1:])
    cpu_image, cpu_seg = batched.apply(image.clone(), seg.clone(), params)
    with torch.backends.cudnn.flags(enabled=True, allow_tf32=False):
        cuda_image, cuda_seg = batched.apply(image.cuda(), seg.cuda(), params)
    assert cuda_image.is_cuda and all(s.is_cuda for s in cuda_seg)
    torch.testing.assert_close(cuda_image.cpu(), cpu_image, rtol=1e-4, atol=1e-4)
    for g, w in zip(cuda_seg, cpu_seg):
        assert g.dtype == w.dtype and g.shape == w.shape
        assert (g.cpu() != w).float().mean() < 1e-3
    noisy = BatchedTrainingTransforms(_nnunet_pipeline(kind, **kwargs))
    out_image, out_seg = noisy.augment(image.cuda(), seg.cuda())
    assert out_image.is_cuda and torch.isfinite(out_image).all() and out_seg[0].is_cuda
