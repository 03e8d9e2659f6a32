"""Decoder modules: learned skip router, anchor-relative position bias, AdaptiveMix block, ConvTranspose3D head, and
the input-guided refinement of the head's logits (an extension, not in the paper)."""
from __future__ import annotations

from typing import Literal, Sequence

import torch
from torch import nn

from .blocks import (
    ConvNormAct3D,
    DepthwiseSeparableConv3D,
    GhostConv3D,
    SqueezeExcite3D,
    Stride3D,
    normalized_grid,
    resize_to,
)

HeadUpsampling = Literal["transposed", "trilinear"]


class SkipRouter(nn.Module):
    """Learned skip router: multi-scale skip fusion with a per-voxel softmax over encoder scales.

    Every encoder output E_j (j = 0..N-1) is projected once to a common width r: R_j = Conv1x1(E_j) (no bias).
    For decoder level l (grid_l, the grid of E_l): R_j^l = resize(R_j, grid_l);
    w^l = softmax_j(Conv1x1([R_0^l, ..., R_{N-1}^l])) per voxel; skip_l = act(norm(Conv1x1(sum_j w_j^l * R_j^l)))
    with C_l channels, the width of E_l.

    Shapes: [E_j (B, C_j, grid_j)] for j = 0..N-1 -> [skip_l (B, C_l, grid_l)] for l = 0..N-2 (finest first).
    """

    def __init__(self, encoder_channels: Sequence[int], width: int) -> None:
        super().__init__()
        num_scales = len(encoder_channels)
        self.project = nn.ModuleList(nn.Conv3d(c, width, 1, bias=False) for c in encoder_channels)
        self.controllers = nn.ModuleList(nn.Conv3d(num_scales * width, num_scales, 1)
                                         for _ in encoder_channels[:-1])
        self.outputs = nn.ModuleList(ConvNormAct3D(width, c, 1) for c in encoder_channels[:-1])

    def forward(self, encoder_features: Sequence[torch.Tensor]) -> list[torch.Tensor]:
        projected = [project(e) for project, e in zip(self.project, encoder_features)]
        skips = []
        for level, (controller, output) in enumerate(zip(self.controllers, self.outputs)):
            size = encoder_features[level].shape[2:]
            resized = torch.stack([resize_to(p, size) for p in projected], dim=1)  # (B, N, r, grid_l)
            weights = torch.softmax(controller(resized.flatten(1, 2)), dim=1)  # (B, N, grid_l)
            skips.append(output((weights.unsqueeze(2) * resized).sum(dim=1)))
        return skips


class AnchorPositionBias(nn.Module):
    """Anchor-relative, content-tied spatial position bias for one decoder level.

    For voxel p (normalised coordinate) and anchors S_k: O(p) = [p - S_0, ..., p - S_{K-1}] (3K channels);
    bias = Conv1x1(act(Conv1x1(O))) with C channels; gate = sigmoid(Conv1x1(U)) per voxel (one channel);
    U' = U + gate * bias. The hidden non-linearity matters: a single 1x1 convolution of the offsets would
    collapse to A p + c(S), a plane that cannot express distance to an anchor. The output convolution starts
    at zero, so the bias starts switched off.

    Shapes: U (B, C, D, H, W), S (B, K, 3) -> (B, C, D, H, W).
    """

    def __init__(self, channels: int, num_anchors: int) -> None:
        super().__init__()
        self.embed = nn.Sequential(nn.Conv3d(3 * num_anchors, channels, 1), nn.LeakyReLU(1e-2, inplace=True),
                                   nn.Conv3d(channels, channels, 1))
        nn.init.zeros_(self.embed[-1].weight)
        nn.init.zeros_(self.embed[-1].bias)
        self.gate = nn.Conv3d(channels, 1, 1)

    def forward(self, features: torch.Tensor, anchor_positions: torch.Tensor) -> torch.Tensor:
        grid = normalized_grid(features.shape[2:], features.device, features.dtype)  # (3, D, H, W)
        offsets = grid[None, None] - anchor_positions.to(features.dtype)[:, :, :, None, None, None]  # (B,K,3,...)
        bias = self.embed(offsets.flatten(1, 2))
        return torch.addcmul(features, torch.sigmoid(self.gate(features)), bias)


class AdaptiveMixBlock(nn.Module):
    """AdaptiveMix decoder block: fuse the upsampled path with the skip, mix three branches per voxel, SE.

    F = act(norm(Conv1x1([U, skip]))); w = softmax_3(Conv1x1(F)) per voxel;
    Y = w_0 * DWSep3x3x3(F) + w_1 * Ghost(F) + w_2 * act(norm(Conv1x1(F))); D_l = SE(Y) + F.
    ``adaptive=False`` is the plain alternative D_l = Ghost(F) + F (one branch, no router, no SE).

    Shapes: U (B, C_up, grid), skip (B, C_skip, grid) -> (B, C_out, grid).
    """

    def __init__(self, up_channels: int, skip_channels: int, out_channels: int, adaptive: bool = True,
                 ghost: bool = True, se_reduction: int = 4) -> None:
        super().__init__()
        self.fuse = ConvNormAct3D(up_channels + skip_channels, out_channels, 1)
        self.ghost = GhostConv3D(out_channels, out_channels, ghost=ghost)
        self.adaptive = adaptive
        if adaptive:
            self.separable = DepthwiseSeparableConv3D(out_channels, out_channels)
            self.pointwise = ConvNormAct3D(out_channels, out_channels, 1)
            self.router = nn.Conv3d(out_channels, 3, 1)
            self.se = SqueezeExcite3D(out_channels, se_reduction)

    def forward(self, upsampled: torch.Tensor, skip: torch.Tensor) -> torch.Tensor:
        fused = self.fuse(torch.cat([upsampled, skip], dim=1))
        if not self.adaptive:
            return self.ghost(fused) + fused
        w = torch.softmax(self.router(fused), dim=1)
        mixed = torch.addcmul(torch.addcmul(w[:, 0:1] * self.separable(fused), w[:, 1:2], self.ghost(fused)),
                              w[:, 2:3], self.pointwise(fused))
        return self.se(mixed, residual=fused)


class SegmentationHead(nn.Module):
    """Head: Z = Conv1x1(D_0) at 1/s_0, then Y = ConvTranspose3D(Z) with kernel = stride = s_0 (the paper's), or
    with ``upsampling="trilinear"`` Y = trilinear(Z) (an extension, ``LightMedSegConfig.head_upsampling``).

    The paper's transposed convolution maps each coarse voxel's logits alone to its s_0 block, and Z is trained as
    class logits by deep supervision: the boundaries of Y fall on the block edges. Trilinear upsampling interpolates
    between neighbouring coarse voxels, so a boundary can lie inside a block; it has no parameters.

    Returns both, since Z is also the second deep-supervision output.

    Shapes: D_0 (B, C_0, (D, H, W) / s_0) -> (Y (B, K_out, D, H, W), Z (B, K_out, (D, H, W) / s_0)), the division
    per axis.
    """

    def __init__(self, in_channels: int, num_classes: int, stem_stride: Stride3D,
                 upsampling: HeadUpsampling = "transposed") -> None:
        super().__init__()
        if upsampling not in ("transposed", "trilinear"):
            raise ValueError(f"head upsampling must be 'transposed' or 'trilinear', got {upsampling!r}")
        self.logits = nn.Conv3d(in_channels, num_classes, 1)
        self.stem_stride = tuple(stem_stride)
        self.upsample = (nn.ConvTranspose3d(num_classes, num_classes, kernel_size=stem_stride, stride=stem_stride)
                         if upsampling == "transposed" else None)

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        coarse = self.logits(x)
        if self.upsample is not None:
            return self.upsample(coarse), coarse
        return resize_to(coarse, [g * s for g, s in zip(coarse.shape[2:], self.stem_stride)]), coarse


class InputGuidedRefinement(nn.Module):
    """Refinement of the head's logits at the input resolution, guided by the input image (an extension of the
    paper, ``LightMedSegConfig.refine_head``): H = act(norm(Conv_k([Y, X]))) with h channels; Y' = Y + Conv1x1(H).

    The paper's head upsamples the logits Z from 1/s_0 with a transposed convolution whose kernel equals its stride,
    so each output voxel is a fixed linear map of its own coarse voxel's logits: within an s_0 block the boundary
    cannot follow the image. Conv_k sees the upsampled logits and the image together, with kernel 3 along every
    axis that the stem downsamples (s_0 > 1) and 1 along the others, so it works only where the head upsampled; the
    hidden non-linearity lets the correction depend on where the logits are uncertain, which a single linear
    convolution of [Y, X] cannot (it would add the same multiple of the image everywhere). The output convolution
    starts at zero: training starts from the paper's head exactly.

    Shapes: Y (B, K_out, D, H, W), X (B, C_in, D, H, W) -> Y' (B, K_out, D, H, W).
    """

    def __init__(self, num_classes: int, in_channels: int, stem_stride: Stride3D, hidden_channels: int = 8) -> None:
        super().__init__()
        kernel = tuple(3 if s > 1 else 1 for s in stem_stride)
        self.hidden = ConvNormAct3D(num_classes + in_channels, hidden_channels, kernel)
        self.out = nn.Conv3d(hidden_channels, num_classes, 1)
        nn.init.zeros_(self.out.weight)
        nn.init.zeros_(self.out.bias)

    def forward(self, logits: torch.Tensor, image: torch.Tensor) -> torch.Tensor:
        return logits + self.out(self.hidden(torch.cat([logits, image.to(logits.dtype)], dim=1)))
