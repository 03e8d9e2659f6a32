"""nnU-Net's training augmentation, run on the training device on the whole batch at once.

nnU-Net augments one sample at a time in CPU worker processes (batchgeneratorsv2 transforms); for a network as
small as LightMedSeg those workers, not the GPU, set the pace of training. ``BatchedTrainingTransforms`` runs the
same pipeline, ``nnUNetTrainer.get_training_transforms``, on a batch that nnU-Net's ``nnUNetDataLoader`` only
loaded and cropped (``transforms=None``: the crop at the initial, enlarged patch size, the segmentation padded
with -1), on whatever device that batch lives on.

It is built from nnU-Net's own transform objects: every probability, range and flag is read from them, and every
random parameter is drawn per sample by batchgeneratorsv2's own code (each transform's ``get_parameters``, or for
``SpatialTransform`` the lines of it that draw, since its grid is built on the device instead), in
batchgeneratorsv2's order, from the same host generators (NumPy's and torch's global ones). Only the application
is batched: one ``grid_sample`` for all rotated or scaled samples, grouped convolutions for the per-channel blur
sigmas, masks and row indexing for the samples and channels a random transform applies to.

Equal to batchgeneratorsv2 0.3.6 for the same parameters:
- bit for bit on the CPU: the spatial transform (the same grid arithmetic, ``grid_sample`` and, for the
  segmentation, its per-label scores, float16 rounding, argmax and nearest-neighbour tie rule), the crop,
  brightness, low resolution, mirroring, masking, label removal, regions and deep-supervision targets;
- up to float rounding: blur (grouped direct convolutions, where batchgeneratorsv2 convolves each channel alone
  and, with nnU-Net's ``benchmark=True``, by FFT where that was faster), contrast and gamma (per-channel means and
  standard deviations reduced over a dimension rather than over a whole tensor), and on another device
  everything, to the precision of its kernels;
- in distribution only: Gaussian noise, drawn on the device for the whole batch. The parameter streams are
  batchgeneratorsv2's, but drawn in the training process rather than in nnU-Net's worker processes, so a run is
  not the same sequence of augmentations as a CPU-augmented one with the same seeds.

Not ported: the cascade's transforms (one-hot of the previous stage, binary operators, connected components),
elastic deformation and random crops in ``SpatialTransform``; a pipeline that contains them raises
``NotImplementedError`` and the trainer keeps nnU-Net's CPU pipeline.
"""
from __future__ import annotations

import importlib.metadata
import math
from collections import defaultdict
from typing import Any, Optional, Sequence, Union

import numpy as np
import torch
import torch.nn.functional as F
from batchgeneratorsv2.helpers.scalar_type import sample_scalar
from batchgeneratorsv2.transforms.base.basic_transform import BasicTransform
from batchgeneratorsv2.transforms.intensity.brightness import MultiplicativeBrightnessTransform
from batchgeneratorsv2.transforms.intensity.contrast import ContrastTransform
from batchgeneratorsv2.transforms.intensity.gamma import GammaTransform
from batchgeneratorsv2.transforms.intensity.gaussian_noise import GaussianNoiseTransform
from batchgeneratorsv2.transforms.noise.gaussian_blur import GaussianBlurTransform, _build_kernel
from batchgeneratorsv2.transforms.spatial.low_resolution import SimulateLowResolutionTransform
from batchgeneratorsv2.transforms.spatial.mirroring import MirrorTransform
from batchgeneratorsv2.transforms.spatial.spatial import (
    SpatialTransform,
    _convert_my_grid_to_grid_sample_grid,
    _create_centered_identity_grid2,
    create_affine_matrix_2d,
    create_affine_matrix_3d,
)
from batchgeneratorsv2.transforms.utils.compose import ComposeTransforms
from batchgeneratorsv2.transforms.utils.cropping import crop_tensor
from batchgeneratorsv2.transforms.utils.deep_supervision_downsampling import DownsampleSegForDSTransform
from batchgeneratorsv2.transforms.utils.nnunet_masking import MaskImageTransform
from batchgeneratorsv2.transforms.utils.pseudo2d import Convert2DTo3DTransform, Convert3DTo2DTransform
from batchgeneratorsv2.transforms.utils.random import RandomTransform
from batchgeneratorsv2.transforms.utils.remove_label import RemoveLabelTransform
from batchgeneratorsv2.transforms.utils.seg_to_regions import ConvertSegmentationToRegionsTransform

#: What a trainer does with a pipeline this module cannot run: said in every NotImplementedError.
FALLBACK = "the trainer keeps nnU-Net's CPU augmentation (augmentation_device = 'cpu')"
#: batchgeneratorsv2's blur_dimension builds its kernels to 6 sigma (its own default of 4 is not the one used).
BLUR_TRUNCATE = 6
#: SpatialTransform's per-label score scale: float16 scores of 1000 * indicator, as batchgeneratorsv2 0.3.6.
SEG_SCORE_SCALE = 1000


def _stand_in(shape: Sequence[int]) -> torch.Tensor:
    """A float32 CPU tensor of ``shape`` without memory, for ``get_parameters`` that read only shape, device, dtype."""
    return torch.empty((), dtype=torch.float32).expand(*shape)


class _Batch:
    """The batch between steps: image (B, C, *spatial) float, segmentation (B, Cs, *spatial) integer (bool after
    regions, a list after deep-supervision downsampling), and the channel counts the 3D-to-2D steps folded."""

    def __init__(self, image: torch.Tensor, segmentation: torch.Tensor) -> None:
        self.image, self.segmentation = image, segmentation
        self.folded_channels: list[tuple[int, int]] = []


class _Step:
    """One transform of the pipeline: ``sample`` draws one sample's parameters on the host (None: the transform
    is skipped for that sample), ``apply`` applies a batch's parameters to the whole batch."""

    #: whether ``apply`` leaves the samples whose parameters are None as they are, as a RandomTransform around it
    #: needs (the steps that change shapes or apply to every sample do not)
    skips_samples: bool = False

    def __init__(self, transform: BasicTransform) -> None:
        self.transform = transform

    def sample(self, shape: tuple[int, ...]) -> Optional[dict]:
        """Parameters for one sample of shape ``shape`` (C, *spatial) as this step receives it."""
        return self.transform.get_parameters(image=_stand_in(shape))

    def shape_after(self, shape: tuple[int, ...], folded: list[int]) -> tuple[int, ...]:
        return shape

    def apply(self, batch: _Batch, params: list[Optional[dict]]) -> None:
        raise NotImplementedError

    def __repr__(self) -> str:
        return f"{type(self).__name__}({self.transform!r})"


def _applied(params: list[Optional[dict]]) -> list[int]:
    return [b for b, p in enumerate(params) if p is not None]


def _channel_rows(params: list[Optional[dict]], num_channels: int, key: str) -> tuple[list[int], list[int]]:
    """Rows b * C + c of the (B * C, voxels) view for the channels each applied sample's ``params[key]`` names,
    and for each row its position in that sample's list of channels."""
    rows, positions = [], []
    for b, p in enumerate(params):
        if p is None:
            continue
        channels = p[key]
        if isinstance(channels, torch.Tensor) and channels.dtype == torch.bool:
            channels = channels.nonzero().flatten()
        for k, c in enumerate(int(c) for c in channels):
            rows.append(b * num_channels + c)
            positions.append(k)
    return rows, positions


def _row_values(values: Sequence[float], device: torch.device, ndim: int = 2) -> torch.Tensor:
    """Per-row float32 values as a (N, 1, ...) tensor on ``device`` (float32 first, as batchgeneratorsv2 keeps them)."""
    return torch.as_tensor(values, dtype=torch.float32).to(device).view(-1, *([1] * (ndim - 1)))


class _Random(_Step):
    """nnU-Net's ``RandomTransform``: the wrapped step for a sample with probability ``apply_probability``, drawn
    by its own ``get_parameters`` before (and only then) the wrapped step draws its parameters."""

    def __init__(self, transform: RandomTransform, inner: _Step) -> None:
        super().__init__(transform)
        self.inner = inner

    def sample(self, shape):
        return self.inner.sample(shape) if self.transform.get_parameters()["apply_transform"] else None

    def shape_after(self, shape, folded):
        return self.inner.shape_after(shape, folded)

    def apply(self, batch, params):
        if _applied(params):
            self.inner.apply(batch, params)

    def __repr__(self) -> str:
        return f"_Random(p={self.transform.apply_probability}, {self.inner!r})"


class _To2D(_Step):
    """nnU-Net's ``Convert3DTo2DTransform``: (B, C, X, Y, Z) -> (B, C * X, Y, Z), so that the next steps treat the
    slices along the first axis as channels (rotation and scaling in-plane only)."""

    def sample(self, shape):
        return {}

    def shape_after(self, shape, folded):
        folded.append(shape[0])
        return (shape[0] * shape[1], *shape[2:])

    def apply(self, batch, params):
        b, c, x = batch.image.shape[:3]
        cs = batch.segmentation.shape[1]
        batch.folded_channels.append((c, cs))
        batch.image = batch.image.reshape(b, c * x, *batch.image.shape[3:])
        batch.segmentation = batch.segmentation.reshape(b, cs * x, *batch.segmentation.shape[3:])


class _To3D(_Step):
    """nnU-Net's ``Convert2DTo3DTransform``: undoes the last ``Convert3DTo2DTransform``."""

    def sample(self, shape):
        return {}

    def shape_after(self, shape, folded):
        c = folded.pop()
        return (c, shape[0] // c, *shape[1:])

    def apply(self, batch, params):
        c, cs = batch.folded_channels.pop()
        b, cx = batch.image.shape[:2]
        batch.image = batch.image.reshape(b, c, cx // c, *batch.image.shape[2:])
        batch.segmentation = batch.segmentation.reshape(b, cs, batch.segmentation.shape[1] // cs,
                                                        *batch.segmentation.shape[2:])


class _Spatial(_Step):
    """nnU-Net's ``SpatialTransform`` (rotation and scaling about the patch centre, then the centre crop from the
    initial patch to the patch), with its parameters.

    Image (B, C, *S) -> (B, C, *patch_size); segmentation (B, Cs, *S) -> (B, Cs, *patch_size), same dtype. A sample
    that is neither rotated nor scaled is cropped (batchgeneratorsv2's ``crop_tensor``, no interpolation); the
    others go through one ``grid_sample`` together, each with its own grid, built on the device by
    batchgeneratorsv2's own grid functions. The segmentation is resampled as batchgeneratorsv2 0.3.6 does it: per
    label, the ``mode_seg``-interpolated indicator x 1000 in float16 (outside the image counting as the padding
    label wherever some kernel of the sample reaches outside), the label of the top score, ties settled by
    ``seg_tiebreak`` (nnU-Net: the nearest neighbour's label where it is among the tied ones, else the lowest),
    and for a channel with exactly two labels the second one where its score passes 500.
    """

    def __init__(self, transform: SpatialTransform) -> None:
        super().__init__(transform)
        t = transform
        unsupported = [name for name, bad in [
            ("elastic deformation (p_elastic_deform > 0)", t.p_elastic_deform > 0),
            ("random_crop=True", t.random_crop),
            (f"mode_seg={t.mode_seg!r}", t.mode_seg not in ("bilinear", "nearest")),
            (f"mode_image={t.mode_image!r}", t.mode_image not in ("bilinear", "nearest")),
        ] if bad]
        if unsupported:
            raise NotImplementedError(f"SpatialTransform with {', '.join(unsupported)} has no batched port; "
                                      f"{FALLBACK}")
        if not hasattr(t, "seg_tiebreak"):
            # before 0.3.6 batchgeneratorsv2 resampled segmentations by other rules (thresholds at 0.7 or 0.5)
            raise NotImplementedError(f"batchgeneratorsv2 {importlib.metadata.version('batchgeneratorsv2')} "
                                      f"resamples segmentations otherwise than 0.3.6, whose rules are ported here; "
                                      f"{FALLBACK}")
        self.patch_size = tuple(int(i) for i in t.patch_size)
        self._base_grids: dict[torch.device, torch.Tensor] = {}

    def sample(self, shape):
        # SpatialTransform.get_parameters' draws, in its order, without the grid it then builds on the host
        t, image, dim = self.transform, _stand_in(shape), len(shape) - 1
        do_rotation = np.random.uniform() < t.p_rotation
        do_scale = np.random.uniform() < t.p_scaling
        np.random.uniform()  # do_deform: drawn by batchgeneratorsv2 whatever p_elastic_deform, which is 0 here
        if do_rotation:
            angles = [sample_scalar(t.rotation, image=image, dim=i) for i in range(dim)]
            if t.p_rot_per_axis < 1:
                for i in range(dim):
                    if np.random.uniform() > t.p_rot_per_axis:
                        angles[i] = 0
        else:
            angles = [0] * dim
        if do_scale:
            if np.random.uniform() <= t.p_synchronize_scaling_across_axes:
                scales = [sample_scalar(t.scaling, image=image, dim=None)] * dim
            else:
                scales = [sample_scalar(t.scaling, image=image, dim=i) for i in range(dim)]
        else:
            scales = [1] * dim
        if do_scale or do_rotation:
            affine = create_affine_matrix_3d(angles, scales) if dim == 3 else create_affine_matrix_2d(angles[-1],
                                                                                                        scales)
        else:
            affine = None
        return {"affine": affine, "angles": angles, "scales": scales,
                "center_location_in_pixels": [i / 2 for i in shape[1:]]}

    def shape_after(self, shape, folded):
        return (shape[0], *self.patch_size)

    def grid(self, affine: np.ndarray, input_shape: Sequence[int], device: torch.device) -> torch.Tensor:
        """batchgeneratorsv2's sampling grid (*patch_size, dim) for ``affine`` and the centred crop, on ``device``."""
        base = self._base_grids.get(device)
        if base is None:
            base = _create_centered_identity_grid2(self.patch_size).float().contiguous().to(device)
            self._base_grids[device] = base
        grid = torch.matmul(base, torch.from_numpy(affine.T).float().to(device))
        # batchgeneratorsv2 adds the crop centre's offset from the input's centre here, which without random crops
        # is zero
        return _convert_my_grid_to_grid_sample_grid(grid, input_shape)

    def apply(self, batch, params):
        t = self.transform
        image, seg = batch.image, batch.segmentation
        device, shape = image.device, tuple(image.shape[2:])
        out_image = torch.empty((image.shape[0], image.shape[1], *self.patch_size), dtype=image.dtype, device=device)
        out_seg = torch.empty((seg.shape[0], seg.shape[1], *self.patch_size), dtype=seg.dtype, device=device)
        cropped = [b for b, p in enumerate(params) if p["affine"] is None]
        warped = [b for b, p in enumerate(params) if p["affine"] is not None]
        if cropped:
            center = [math.floor(i) for i in params[cropped[0]]["center_location_in_pixels"]]
            index = torch.tensor(cropped, device=device)
            for source, out, mode, value in ((image, out_image, t.padding_mode_image, t.padding_value_image),
                                             (seg, out_seg, t.border_mode_seg, t.padding_value_seg)):
                pad_mode, pad_kwargs = t._get_crop_pad_settings(mode, value)
                crop = crop_tensor(source.reshape(-1, *shape), center, self.patch_size, pad_mode=pad_mode,
                                   pad_kwargs=pad_kwargs)
                out[index] = crop.reshape(source.shape[0], source.shape[1], *self.patch_size)[index]
        if warped:
            index = torch.tensor(warped, device=device)
            grids = torch.stack([self.grid(params[b]["affine"], shape, device) for b in warped])
            shift = float(t.padding_value_image) if t.padding_mode_image == "constant" else 0.
            # grid_sample pads with zeros only; it is linear, so sampling (image - v) and adding v back is padding
            # with v, as batchgeneratorsv2 does
            warped_image = F.grid_sample(image[index] - shift if shift else image[index], grids, mode=t.mode_image,
                                         padding_mode=t._get_grid_sample_padding_mode(t.padding_mode_image),
                                         align_corners=t.align_corners)
            out_image[index] = warped_image + shift if shift else warped_image
            out_seg[index] = self.resample_segmentation(seg[index], grids)
        batch.image, batch.segmentation = out_image, out_seg

    def resample_segmentation(self, seg: torch.Tensor, grids: torch.Tensor) -> torch.Tensor:
        """(n, Cs, *S) integer labels sampled at ``grids`` (n, *patch_size, dim) -> (n, Cs, *patch_size), as
        ``SpatialTransform._apply_to_segmentation`` does for each sample and channel."""
        t = self.transform
        padding_mode = t._get_grid_sample_padding_mode(t.border_mode_seg)
        pads = padding_mode == "zeros"
        pad_label = t.padding_value_seg if t.border_mode_seg == "constant" else 0
        shift = float(pad_label) if pads else 0.
        nearest = (F.grid_sample(seg.float() - shift, grids, mode="nearest", padding_mode=padding_mode,
                                 align_corners=t.align_corners) + shift).to(seg.dtype)
        if t.mode_seg == "nearest":
            return nearest

        n, channels = seg.shape[:2]
        device = seg.device
        if pads:
            # whether any kernel of a sample reaches outside its input, compared in float64 as batchgeneratorsv2
            # does it with .item()
            bound = float(t._kernel_bound(seg.shape[2:]).min())
            low, high = grids.flatten(1).aminmax(dim=1)
            reaches = [not (-lo <= bound and hi <= bound) for lo, hi in zip(low.tolist(), high.tolist())]
        else:
            reaches = [False] * n
        labels = torch.unique(seg)
        if any(reaches):
            labels = torch.unique(torch.cat((labels, torch.tensor([pad_label], dtype=labels.dtype, device=device))))
        reach = torch.tensor(reaches, device=device)
        reach_shift = reach.float().view(n, *([1] * (seg.ndim - 1)))
        spatial_ones = [1] * (seg.ndim - 2)

        half = 0.5 * SEG_SCORE_SCALE
        out_shape = (n, channels, *self.patch_size)
        best = torch.full(out_shape, float("-inf"), dtype=torch.float16, device=device)
        winner = torch.zeros(out_shape, dtype=seg.dtype, device=device)
        nearest_score = torch.full(out_shape, float("-inf"), dtype=torch.float16, device=device)
        second_score = torch.zeros(out_shape, dtype=torch.float16, device=device)
        count = torch.zeros((n, channels), dtype=torch.long, device=device)
        first_label = torch.zeros((n, channels), dtype=seg.dtype, device=device)
        second_label = torch.zeros((n, channels), dtype=seg.dtype, device=device)
        take_ties = t.seg_tiebreak == "highest"
        for u in labels.tolist():
            is_u = seg == u
            present = is_u.flatten(2).any(-1)
            indicator = is_u.float()
            if pads and u == pad_label:
                # the padding label's indicator is 1 outside the image for the samples that reach outside:
                # sample (indicator - 1) with zeros padding and add the 1 back, as batchgeneratorsv2 does
                present |= reach[:, None]
                score = F.grid_sample((indicator - reach_shift) * SEG_SCORE_SCALE, grids, mode=t.mode_seg,
                                      padding_mode=padding_mode, align_corners=t.align_corners)
                score = (score + reach_shift * SEG_SCORE_SCALE).to(torch.float16)
            else:
                score = F.grid_sample(indicator * SEG_SCORE_SCALE, grids, mode=t.mode_seg, padding_mode=padding_mode,
                                      align_corners=t.align_corners).to(torch.float16)
            # a label absent from a channel is not among batchgeneratorsv2's candidates for it
            candidate = torch.where(present.view(n, channels, *spatial_ones), score, float("-inf"))
            better = candidate >= best if take_ties else candidate > best
            torch.maximum(best, candidate, out=best)
            winner.masked_fill_(better, u)
            nearest_score = torch.where(nearest == u, candidate, nearest_score)
            becomes_second = present & (count == 1)
            second_score = torch.where(becomes_second.view(n, channels, *spatial_ones), score, second_score)
            second_label.masked_fill_(becomes_second, u)
            first_label.masked_fill_(present & (count == 0), u)
            count += present

        if t.seg_tiebreak == "nearest":
            winner = torch.where(nearest_score == best, nearest, winner)
        # batchgeneratorsv2 answers a channel of two labels from the second label's score alone
        two = torch.where(second_score >= half if take_ties else second_score > half,
                          second_label.view(n, channels, *spatial_ones), first_label.view(n, channels, *spatial_ones))
        if t.seg_tiebreak == "nearest":
            two = torch.where(second_score == half, nearest, two)
        count = count.view(n, channels, *spatial_ones)
        winner = torch.where(count == 2, two, winner)
        return torch.where(count == 1, first_label.view(n, channels, *spatial_ones), winner)


class _Noise(_Step):
    """nnU-Net's ``GaussianNoiseTransform``: adds N(0, sigma^2) noise to each chosen channel (sigma drawn from
    ``noise_variance``, which batchgeneratorsv2 uses as the standard deviation). Noise is drawn on the device for
    all chosen channels at once: equal to batchgeneratorsv2 in distribution, not in values."""

    skips_samples = True

    def apply(self, batch, params):
        image = batch.image
        num_channels = image.shape[1]
        rows, sigmas = [], []
        for b, p in enumerate(params):
            if p is None or p["num_apply"] == 0 or p["sigmas"] is None:
                continue
            for k, c in enumerate(p["apply_idx"].tolist()):
                rows.append(b * num_channels + c)
                sigmas.append(p["sigmas"] if self.transform.synchronize_channels else p["sigmas"][k])
        if not rows:
            return
        flat = image.view(-1, *image.shape[2:])
        index = torch.tensor(rows, device=image.device)
        noise = torch.randn((len(rows), *image.shape[2:]), dtype=image.dtype, device=image.device)
        flat.index_add_(0, index, noise * _row_values(sigmas, image.device, image.ndim - 1))


class _Blur(_Step):
    """nnU-Net's ``GaussianBlurTransform``: each chosen channel smoothed along each axis in turn by a 1D Gaussian of
    that channel's and axis' sigma (kernel to 6 sigma, reflect padding), as batchgeneratorsv2's ``blur_dimension``.
    The channels of the whole batch are one grouped convolution per axis and kernel size."""

    skips_samples = True

    def apply(self, batch, params):
        image = batch.image
        num_channels, spatial = image.shape[1], tuple(image.shape[2:])
        rows, sigmas = [], []
        for b, p in enumerate(params):
            if p is None:
                continue
            for k, c in enumerate(p["apply_to_channel"].nonzero().flatten().tolist()):
                rows.append(b * num_channels + c)
                sigmas.append(p["sigmas"] if self.transform.synchronize_channels else p["sigmas"][k])
        if not rows:
            return
        flat = image.view(-1, *spatial)
        index = torch.tensor(rows, device=image.device)
        work = flat[index]
        dims = len(spatial)
        conv = {1: F.conv1d, 2: F.conv2d, 3: F.conv3d}[dims]
        for d in range(dims):
            kernels = [_build_kernel(s[d], truncate=BLUR_TRUNCATE) for s in sigmas]
            by_size = defaultdict(list)
            for j, kernel in enumerate(kernels):
                by_size[kernel.shape[0]].append(j)
            for size, members in by_size.items():
                weight_shape = [1] * dims
                weight_shape[d] = size
                weight = torch.stack([kernels[j] for j in members]).view(len(members), 1, *weight_shape)
                padding = [0] * (2 * dims)
                padding[2 * (dims - 1 - d)] = padding[2 * (dims - 1 - d) + 1] = size // 2
                every = len(members) == len(rows)
                group = work if every else work[torch.tensor(members, device=image.device)]
                blurred = conv(F.pad(group[None], padding, mode="reflect"), weight.to(image.device),
                               groups=len(members))[0]
                if every:
                    work = blurred
                else:
                    work[torch.tensor(members, device=image.device)] = blurred
        flat[index] = work


def _chosen_rows_and_multipliers(image: torch.Tensor, params: list[Optional[dict]]
                                 ) -> Optional[tuple[torch.Tensor, torch.Tensor, torch.Tensor]]:
    """For the transforms that scale chosen channels by drawn multipliers: the (B * C, voxels) view of the image,
    the rows of the chosen channels and each row's multiplier as a (rows, 1) tensor; None when no channel is chosen."""
    rows, positions = _channel_rows(params, image.shape[1], "apply_to_channel")
    if not rows:
        return None
    multipliers = [params[r // image.shape[1]]["multipliers"][k].item() for r, k in zip(rows, positions)]
    return (image.view(image.shape[0] * image.shape[1], -1), torch.tensor(rows, device=image.device),
            _row_values(multipliers, image.device))


class _Brightness(_Step):
    """nnU-Net's ``MultiplicativeBrightnessTransform``: each chosen channel multiplied by its drawn multiplier."""

    skips_samples = True

    def apply(self, batch, params):
        chosen = _chosen_rows_and_multipliers(batch.image, params)
        if chosen is not None:
            flat, index, multipliers = chosen
            flat[index] = flat[index] * multipliers


class _Contrast(_Step):
    """nnU-Net's ``ContrastTransform``: each chosen channel x -> (x - mean) * m + mean, clipped to the channel's
    former [min, max] when ``preserve_range``."""

    skips_samples = True

    def apply(self, batch, params):
        chosen = _chosen_rows_and_multipliers(batch.image, params)
        if chosen is None:
            return
        flat, index, multipliers = chosen
        x = flat[index]
        mean = x.mean(dim=1, keepdim=True)
        contrasted = (x - mean) * multipliers + mean
        if self.transform.preserve_range:
            low, high = x.aminmax(dim=1, keepdim=True)
            contrasted = torch.clamp(contrasted, low, high)
        flat[index] = contrasted


class _LowResolution(_Step):
    """nnU-Net's ``SimulateLowResolutionTransform``: each chosen channel resampled to round(shape * scale)
    (nearest-exact) and back (linear, bilinear or trilinear); ``ignore_axes`` keep scale 1. Channels whose reduced
    shapes coincide are resampled together, the others one by one (each has its own target size)."""

    skips_samples = True

    def apply(self, batch, params):
        image = batch.image
        num_channels, spatial = image.shape[1], tuple(image.shape[2:])
        groups: dict[tuple[int, ...], list[int]] = defaultdict(list)
        for b, p in enumerate(params):
            if p is None:
                continue
            for c, s in zip(p["apply_to_channel"], p["scales"]):
                groups[tuple(round(i * j.item()) for i, j in zip(spatial, s))].append(b * num_channels + int(c))
        if not groups:
            return
        flat = image.view(-1, *spatial)
        mode = self.transform.upmodes[len(spatial)]
        for new_shape, rows in groups.items():
            index = torch.tensor(rows, device=image.device)
            low = F.interpolate(flat[index][:, None], list(new_shape), mode="nearest-exact")
            flat[index] = F.interpolate(low, spatial, mode=mode)[:, 0]


class _Gamma(_Step):
    """nnU-Net's ``GammaTransform``: each chosen channel (negated first if ``invert_image``) rescaled to [0, 1],
    raised to gamma, scaled back, and with ``retain_stats`` shifted and scaled to its former mean and standard
    deviation."""

    skips_samples = True

    def apply(self, batch, params):
        image = batch.image
        rows, positions = _channel_rows(params, image.shape[1], "apply_to_channel")
        if not rows:
            return
        device, eps = image.device, 1e-7
        chosen = [(params[r // image.shape[1]], k) for r, k in zip(rows, positions)]
        gamma = _row_values([p["gamma"][k].item() for p, k in chosen], device)
        retain = torch.tensor([bool(p["retain_stats"][k]) for p, k in chosen], device=device)[:, None]
        sign = _row_values([-1. if bool(p["invert_image"][k]) else 1. for p, k in chosen], device)
        flat = image.view(image.shape[0] * image.shape[1], -1)
        index = torch.tensor(rows, device=device)
        x = flat[index] * sign
        mean, std = x.mean(dim=1, keepdim=True), x.std(dim=1, keepdim=True)
        low, high = x.aminmax(dim=1, keepdim=True)
        spread = high - low
        x = ((x - low) / torch.clamp(spread, min=eps)).pow(gamma) * spread + low
        mean_here, std_here = x.mean(dim=1, keepdim=True), x.std(dim=1, keepdim=True)
        x = torch.where(retain, (x - mean_here) * (std / torch.clamp(std_here, min=eps)) + mean, x)
        flat[index] = x * sign


class _Mirror(_Step):
    """nnU-Net's ``MirrorTransform``: image and segmentation flipped along the axes drawn for each sample (each
    allowed axis with probability 0.5); the samples that share a set of axes are flipped together."""

    skips_samples = True

    def apply(self, batch, params):
        groups: dict[tuple[int, ...], list[int]] = defaultdict(list)
        for b, p in enumerate(params):
            if p is not None and p["axes"]:
                groups[tuple(p["axes"])].append(b)
        for axes, samples in groups.items():
            dims = [a + 2 for a in axes]
            index = torch.tensor(samples, device=batch.image.device)
            batch.image[index] = torch.flip(batch.image[index], dims)
            batch.segmentation[index] = torch.flip(batch.segmentation[index], dims)


class _MaskImage(_Step):
    """nnU-Net's ``MaskImageTransform`` (``use_mask_for_norm``): the chosen image channels set to ``set_outside_to``
    where the segmentation's channel ``channel_idx_in_seg`` is negative (outside nnU-Net's nonzero mask)."""

    def sample(self, shape):
        return {}

    def apply(self, batch, params):
        t = self.transform
        if len(t.apply_to_channels) == 0:
            return
        outside = batch.segmentation[:, t.channel_idx_in_seg] < 0
        for a in t.apply_to_channels:
            batch.image[:, a].masked_fill_(outside, t.set_outside_to)


class _RemoveLabel(_Step):
    """nnU-Net's ``RemoveLabelTransform``: ``label_value`` (nnU-Net: the -1 padding) set to ``set_to`` (0)."""

    def sample(self, shape):
        return {}

    def apply(self, batch, params):
        t, seg = self.transform, batch.segmentation
        channels = range(seg.shape[1]) if t.segmentation_channels is None else t.segmentation_channels
        for s in channels:
            seg[:, s].masked_fill_(seg[:, s] == t.label_value, t.set_to)


class _Regions(_Step):
    """nnU-Net's ``ConvertSegmentationToRegionsTransform``: (B, Cs, *spatial) labels -> (B, R, *spatial) bool, one
    channel per region (nnU-Net appends the ignore label as a last region)."""

    def sample(self, shape):
        return {}

    def apply(self, batch, params):
        t, seg = self.transform, batch.segmentation
        source = seg[:, t.channel_in_seg]
        out = torch.zeros((seg.shape[0], len(t.regions), *seg.shape[2:]), dtype=torch.bool, device=seg.device)
        for r, region_labels in enumerate(t.regions):
            region_labels = region_labels.to(device=seg.device, dtype=source.dtype)
            out[:, r] = source == region_labels if len(region_labels) == 1 else torch.isin(source, region_labels)
        batch.segmentation = out


class _DownsampleForDS(_Step):
    """nnU-Net's ``DownsampleSegForDSTransform``: the segmentation as a list, one per deep-supervision scale
    (full resolution first, the very tensor), each round(shape * scale) by nearest-exact interpolation."""

    def sample(self, shape):
        return {}

    def apply(self, batch, params):
        seg = batch.segmentation
        results, seg_float = [], None
        for s in self.transform.ds_scales:
            if not isinstance(s, (tuple, list)):
                s = [s] * (seg.ndim - 2)
            if all(i == 1 for i in s):
                results.append(seg)
                continue
            if seg_float is None:
                seg_float = seg.float()
            new_shape = [round(i * j) for i, j in zip(seg.shape[2:], s)]
            results.append(F.interpolate(seg_float, new_shape, mode="nearest-exact").to(seg.dtype))
        batch.segmentation = results


#: The batchgeneratorsv2 transforms with a batched port: exactly these classes (a subclass may change what they do).
PORTS: dict[type, type[_Step]] = {
    Convert3DTo2DTransform: _To2D, Convert2DTo3DTransform: _To3D, SpatialTransform: _Spatial,
    GaussianNoiseTransform: _Noise, GaussianBlurTransform: _Blur, MultiplicativeBrightnessTransform: _Brightness,
    ContrastTransform: _Contrast, SimulateLowResolutionTransform: _LowResolution, GammaTransform: _Gamma,
    MirrorTransform: _Mirror, MaskImageTransform: _MaskImage, RemoveLabelTransform: _RemoveLabel,
    ConvertSegmentationToRegionsTransform: _Regions, DownsampleSegForDSTransform: _DownsampleForDS,
}


def _port(transform: BasicTransform) -> list[_Step]:
    if type(transform) is ComposeTransforms:
        return [step for t in transform.transforms for step in _port(t)]
    if type(transform) is RandomTransform:
        inner = _port(transform.transform)
        if len(inner) != 1 or not inner[0].skips_samples:
            raise NotImplementedError(f"RandomTransform around {transform.transform!r} has no batched port; "
                                      f"{FALLBACK}")
        return [_Random(transform, inner[0])]
    port = PORTS.get(type(transform))
    if port is None:
        raise NotImplementedError(f"{type(transform).__name__} has no batched port in nnunetv2_lightmedseg; "
                                  f"{FALLBACK}")
    return [port(transform)]


class BatchedTrainingTransforms:
    """nnU-Net's training augmentation pipeline (a batchgeneratorsv2 ``ComposeTransforms``) run on whole batches.

    ``augment(image, segmentation)`` takes what nnU-Net's ``nnUNetDataLoader`` gives without transforms, on any
    device: image (B, C, *initial_patch_size) float32, segmentation (B, 1, *initial_patch_size) int16 padded with
    -1, and returns what the CPU pipeline's loader would have stacked: image (B, C, *patch_size) and the target,
    (B, 1 or regions, *patch_size) or, with deep supervision, a list of those at each scale, full resolution
    first. Both inputs may be modified in place. The steps, with nnU-Net's probabilities, are listed by ``repr``.

    The constructor takes the pipeline object itself, e.g. a trainer's ``get_training_transforms(...)`` (so that a
    trainer's own override of it is what runs), and raises NotImplementedError for a transform or setting it has
    no port for; ``from_arguments`` builds nnU-Net's default pipeline from ``get_training_transforms``' arguments.
    Parameters are drawn per sample on the host (``sample_parameters``), then applied batched on the input's
    device (``apply``); see the module docstring for what is equal to batchgeneratorsv2 and what only in
    distribution.
    """

    def __init__(self, pipeline: BasicTransform) -> None:
        self.pipeline = pipeline
        self.steps = _port(pipeline)
        seen_ds = False
        for step in self.steps:
            if seen_ds:
                raise NotImplementedError(f"{step!r} after DownsampleSegForDSTransform has no batched port; "
                                          f"{FALLBACK}")
            seen_ds = isinstance(step, _DownsampleForDS)

    @classmethod
    def from_arguments(cls, patch_size: Sequence[int], rotation_for_DA: Any,
                       deep_supervision_scales: Optional[Sequence], mirror_axes: Optional[tuple[int, ...]],
                       do_dummy_2d_data_aug: bool, use_mask_for_norm: Optional[list[bool]] = None,
                       is_cascaded: bool = False, foreground_labels: Optional[Sequence[int]] = None,
                       regions: Optional[list] = None, ignore_label: Optional[int] = None
                       ) -> "BatchedTrainingTransforms":
        """nnU-Net's pipeline for these ``nnUNetTrainer.get_training_transforms`` arguments, batched."""
        if is_cascaded:
            raise NotImplementedError(f"the cascade's augmentation (previous stage's segmentation as one-hot "
                                      f"input, binary operators, connected components) has no batched port; "
                                      f"{FALLBACK}")
        from nnunetv2.training.nnUNetTrainer.nnUNetTrainer import nnUNetTrainer
        return cls(nnUNetTrainer.get_training_transforms(
            patch_size, rotation_for_DA, deep_supervision_scales, mirror_axes, do_dummy_2d_data_aug,
            use_mask_for_norm=use_mask_for_norm, is_cascaded=is_cascaded, foreground_labels=foreground_labels,
            regions=regions, ignore_label=ignore_label))

    def sample_parameters(self, batch_size: int, sample_shape: Sequence[int]) -> list[list[Optional[dict]]]:
        """For each step, each sample's parameters (None where a random step skips it), drawn sample after
        sample and step after step as the CPU pipeline draws them. ``sample_shape`` is (C, *spatial) of one input
        sample."""
        params: list[list[Optional[dict]]] = [[] for _ in self.steps]
        for _ in range(batch_size):
            shape, folded = tuple(int(i) for i in sample_shape), []
            for step, out in zip(self.steps, params):
                out.append(step.sample(shape))
                shape = step.shape_after(shape, folded)
        return params

    def apply(self, image: torch.Tensor, segmentation: torch.Tensor, params: list[list[Optional[dict]]]
              ) -> tuple[torch.Tensor, Union[torch.Tensor, list[torch.Tensor]]]:
        """The pipeline with given parameters (``sample_parameters``' form) on a batch, on the batch's device."""
        batch = _Batch(image.contiguous(), segmentation.contiguous())
        for step, step_params in zip(self.steps, params):
            step.apply(batch, step_params)
        return batch.image, batch.segmentation

    def augment(self, image: torch.Tensor, segmentation: torch.Tensor
                ) -> tuple[torch.Tensor, Union[torch.Tensor, list[torch.Tensor]]]:
        """The pipeline with freshly drawn parameters on a batch (see the class docstring)."""
        return self.apply(image, segmentation, self.sample_parameters(image.shape[0], image.shape[1:]))

    def __repr__(self) -> str:
        return f"{type(self).__name__}([{', '.join(map(repr, self.steps))}])"
