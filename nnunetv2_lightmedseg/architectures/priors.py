"""The two prior modules that read the stem features F: spatial anchors S and the texture routing map T."""
from __future__ import annotations

import math
from typing import Literal, NamedTuple, Optional

import torch
from torch import nn

from .blocks import DepthwiseSeparableConv3D, activation, norm3d, normalized_grid

AnchorMode = Literal["softargmax", "mlp"]


class Anchors(NamedTuple):
    """K learned spatial anchors of one batch.

    positions: (B, K, 3) in [0, 1], normalised (z, y, x) inside the patch (voxel centres at (i + 0.5) / n).
    confidence: (B, K) in [0, 1].
    """

    positions: torch.Tensor
    confidence: torch.Tensor

    def descriptor(self) -> torch.Tensor:
        """(B, 4K): positions then confidences, the input of the FiLM generators."""
        return torch.cat([self.positions.flatten(1), self.confidence], dim=1)


class GlobalAnchorDetector(nn.Module):
    """Global Anchor Detector: K anchors k = 0..K-1 from the stem features F.

    ``mode="softargmax"`` (default): heatmaps H = Conv1x1(DWSep3x3x3(F)) with K channels (no bias); per anchor
    P_k = softmax_p(H_k(p)) over the N voxels p of the patch (p its normalised voxel centre); S_k = sum_p P_k(p) p,
    the expected coordinate, so S_k lies in the convex hull of the voxel centres, inside [0, 1]^3. The confidence
    is the peak of P_k on a log scale, c_k = log(N max_p P_k(p)) / log(N): 0 for a flat map, 1 for a one-hot one
    (c_k = 1 when N = 1). Soft-argmax keeps anchors tied to the anatomy inside each random training patch.

    ``mode="mlp"`` (ablation): [S, c] = sigmoid(MLP(mean_p F(p))), the "global pool + MLP regression" form, with
    MLP = Linear(C, h), LeakyReLU, Linear(h, 4K), h = max(C, 4K); its first 3K outputs are S, the last K are c.

    Shapes: F (B, C, D, H, W) -> Anchors(positions (B, K, 3), confidence (B, K)).
    """

    def __init__(self, channels: int, num_anchors: int = 8, mode: AnchorMode = "softargmax") -> None:
        super().__init__()
        if mode not in ("softargmax", "mlp"):
            raise ValueError(f"anchor_mode must be 'softargmax' or 'mlp', got {mode!r}")
        self.mode = mode
        self.num_anchors = num_anchors
        if mode == "softargmax":
            self.features = DepthwiseSeparableConv3D(channels, channels)
            # no bias: a constant per heatmap leaves its spatial softmax, and so the anchor, unchanged
            self.heatmaps = nn.Conv3d(channels, num_anchors, 1, bias=False)
        else:
            hidden = max(channels, 4 * num_anchors)
            self.mlp = nn.Sequential(nn.Linear(channels, hidden), activation(), nn.Linear(hidden, 4 * num_anchors))

    def forward(self, stem_features: torch.Tensor) -> Anchors:
        batch = stem_features.shape[0]
        if self.mode == "mlp":
            out = torch.sigmoid(self.mlp(stem_features.mean(dim=(2, 3, 4))))
            positions, confidence = out.split([3 * self.num_anchors, self.num_anchors], dim=1)
            return Anchors(positions.reshape(batch, self.num_anchors, 3), confidence)
        heat = self.heatmaps(self.features(stem_features)).flatten(2).float()  # (B, K, N); softmax in fp32
        num_voxels = heat.shape[-1]
        probs = torch.softmax(heat, dim=-1)
        grid = normalized_grid(stem_features.shape[2:], heat.device, heat.dtype).flatten(1)  # (3, N)
        positions = torch.matmul(probs, grid.t())  # (B, K, 3)
        if num_voxels > 1:
            confidence = (torch.log(probs.amax(dim=-1)) + math.log(num_voxels)) / math.log(num_voxels)
        else:
            confidence = torch.ones_like(probs[..., 0])
        return Anchors(positions.clamp(0.0, 1.0), confidence.clamp(0.0, 1.0))


class LocalStructuralPrior(nn.Module):
    """Local Structural Prior Module (LSPM): texture map T and adaptive feature mixing of the stem features F.

    Texture: M = act(norm(DWConv5x5x5(F))) is a smoothed copy of F; T = sigmoid(Conv1x1(|M - F|)), high at
    edges and texture, low on flat tissue.
    Mixing: w = softmax_2(Conv3x3x3(F)) per voxel; F' = F + w_0 * P_0(F) + w_1 * P_1(F) with pointwise
    projections P_0, P_1 (no bias). The residual keeps F reachable, so the mix only adds what helps.

    ``texture=False`` (texture routing switched off elsewhere) builds only the mixing and returns T = None.

    Shapes: F (B, C, D, H, W) -> (F' (B, C, D, H, W), T (B, 1, D, H, W) in [0, 1]).
    """

    def __init__(self, channels: int, texture: bool = True) -> None:
        super().__init__()
        self.smooth = nn.Sequential(
            nn.Conv3d(channels, channels, 5, padding=2, groups=channels, bias=False), norm3d(channels), activation()
        ) if texture else None
        self.texture = nn.Conv3d(channels, 1, 1) if texture else None
        self.gate = nn.Conv3d(channels, 2, 3, padding=1)
        self.projections = nn.Conv3d(channels, 2 * channels, 1, bias=False)

    def forward(self, stem_features: torch.Tensor) -> tuple[torch.Tensor, Optional[torch.Tensor]]:
        texture = None
        if self.texture is not None:
            texture = torch.sigmoid(self.texture(torch.abs(self.smooth(stem_features) - stem_features)))
        weights = torch.softmax(self.gate(stem_features), dim=1)
        first, second = self.projections(stem_features).chunk(2, dim=1)
        mixed = torch.addcmul(torch.addcmul(stem_features, weights[:, :1], first), weights[:, 1:], second)
        return mixed, texture
