"""Generic 3D building blocks shared by LightMedSeg's named modules, in plain PyTorch modules.

Shapes use B (batch), C (channels) and (D, H, W) for the spatial axes, in nnU-Net's (z, y, x) order; a stride s is
per axis, s = (s_z, s_y, s_x).
"""
from __future__ import annotations

from typing import Optional, Sequence

import torch
import torch.nn.functional as F
from torch import nn

Stride3D = tuple[int, int, int]


def norm3d(channels: int) -> nn.Module:
    """Instance normalisation with affine parameters, as nnU-Net's default 3D networks use.

    Batch statistics are unusable at nnU-Net's batch sizes (2 for most 3D plans), hence per-instance statistics.
    """
    return nn.InstanceNorm3d(channels, eps=1e-5, affine=True)


def activation() -> nn.Module:
    """LeakyReLU(0.01), nnU-Net's default non-linearity."""
    return nn.LeakyReLU(negative_slope=1e-2, inplace=True)


class ConvNormAct3D(nn.Sequential):
    """y = act(norm(conv_k(x))).

    Shapes: (B, C_in, D, H, W) -> (B, C_out, D / s_z, H / s_y, W / s_x).
    The kernel is one odd size or one per axis; a kernel of 3 uses padding 1, so a stride s divides each axis
    exactly when the axis is divisible by s.
    """

    def __init__(self, in_channels: int, out_channels: int, kernel_size: int | Stride3D = 3,
                 stride: Stride3D = (1, 1, 1), groups: int = 1) -> None:
        padding = kernel_size // 2 if isinstance(kernel_size, int) else tuple(k // 2 for k in kernel_size)
        super().__init__(
            nn.Conv3d(in_channels, out_channels, kernel_size, stride=stride, padding=padding,
                      groups=groups, bias=False),
            norm3d(out_channels),
            activation(),
        )


class GhostConv3D(nn.Module):
    """GhostConv3D: a primary convolution makes half of the channels, a cheap depthwise one the other half.

    Equation: P = Conv3x3x3_s(x) with ceil(C_out / 2) channels; Q = DWConv3x3x3(P) with the remaining channels
    (the first C_out - |P| channels of P, one filter each); y = act(norm([P, Q])).
    With ``ghost=False`` it is the plain alternative y = act(norm(Conv3x3x3_s(x))), C_out channels at once.

    Shapes: (B, C_in, D, H, W) -> (B, C_out, D / s_z, H / s_y, W / s_x).
    """

    def __init__(self, in_channels: int, out_channels: int, stride: Stride3D = (1, 1, 1), ghost: bool = True) -> None:
        super().__init__()
        self.ghost = ghost
        primary_channels = (out_channels + 1) // 2 if ghost else out_channels
        self.primary = nn.Conv3d(in_channels, primary_channels, 3, stride=stride, padding=1, bias=False)
        self.cheap_channels = out_channels - primary_channels
        self.cheap = (nn.Conv3d(self.cheap_channels, self.cheap_channels, 3, padding=1, groups=self.cheap_channels,
                                bias=False) if ghost else None)
        self.norm = norm3d(out_channels)
        self.act = activation()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        primary = self.primary(x)
        if self.cheap is not None:
            primary = torch.cat([primary, self.cheap(primary[:, :self.cheap_channels])], dim=1)
        return self.act(self.norm(primary))


class DepthwiseSeparableConv3D(nn.Sequential):
    """y = act(norm(PWConv(DWConv_k(x)))): a depthwise k^3 convolution, then a pointwise one.

    Shapes: (B, C_in, D, H, W) -> (B, C_out, D, H, W).
    """

    def __init__(self, in_channels: int, out_channels: int, kernel_size: int = 3) -> None:
        super().__init__(
            nn.Conv3d(in_channels, in_channels, kernel_size, padding=kernel_size // 2, groups=in_channels, bias=False),
            nn.Conv3d(in_channels, out_channels, 1, bias=False),
            norm3d(out_channels),
            activation(),
        )


class SqueezeExcite3D(nn.Module):
    """Channel attention: y = x * g with g = sigmoid(W_1 act(W_0 m + b_0) + b_1), m = mean_{DHW}(x) per channel;
    given a residual r, y = r + x * g in one pass over the volume.

    Shapes: (B, C, D, H, W) [and r (B, C, D, H, W)] -> (B, C, D, H, W); the hidden width is
    max(floor(C / reduction), 4).
    """

    def __init__(self, channels: int, reduction: int = 4) -> None:
        super().__init__()
        hidden = max(channels // reduction, 4)
        self.fc1 = nn.Conv3d(channels, hidden, 1)
        self.fc2 = nn.Conv3d(hidden, channels, 1)

    def forward(self, x: torch.Tensor, residual: Optional[torch.Tensor] = None) -> torch.Tensor:
        squeezed = x.mean(dim=(2, 3, 4), keepdim=True)
        gate = torch.sigmoid(self.fc2(F.leaky_relu(self.fc1(squeezed), 1e-2)))
        return x * gate if residual is None else torch.addcmul(residual, x, gate)


def resize_to(x: torch.Tensor, size: Sequence[int]) -> torch.Tensor:
    """Resize (B, C, D, H, W) to the spatial ``size``: average pooling where it shrinks, trilinear where it grows.

    Encoder and decoder grids are nested by integer strides, so shrinking is an exact block average and
    a map in [0, 1] stays in [0, 1] either way.
    """
    size = tuple(int(s) for s in size)
    if tuple(x.shape[2:]) == size:
        return x
    if all(t <= s for t, s in zip(size, x.shape[2:])):
        return F.adaptive_avg_pool3d(x, size)
    return F.interpolate(x, size=size, mode="trilinear", align_corners=False)


def normalized_grid(size: Sequence[int], device: torch.device, dtype: torch.dtype) -> torch.Tensor:
    """Voxel-centre coordinates (i + 0.5) / n per axis, in (0, 1): shape (3, D, H, W), channels (z, y, x)."""
    axes = [(torch.arange(n, device=device, dtype=dtype) + 0.5) / n for n in size]
    return torch.stack(torch.meshgrid(*axes, indexing="ij"), dim=0)
