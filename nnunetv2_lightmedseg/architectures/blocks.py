"""Generic 3D building blocks shared by LightMedSeg's named modules.

Shapes use B (batch), C (channels) and (D, H, W) for the spatial axes, in nnU-Net's (z, y, x) order.
"""
from __future__ import annotations

from typing import Optional, Sequence

import torch
import torch.nn.functional as F
from torch import nn
from torch.utils._python_dispatch import is_in_torch_dispatch_mode

Stride3D = tuple[int, int, int]


def takes_cpu_path(x: torch.Tensor) -> bool:
    """Whether a block may run its own CPU kernel choice for x: float32 on the CPU, outside tracing (ONNX export),
    torch.compile and dispatch modes (FLOP counting), which must see PyTorch's own operators."""
    return (x.device.type == "cpu" and x.dtype == torch.float32 and not torch.jit.is_tracing()
            and not torch.compiler.is_compiling() and not is_in_torch_dispatch_mode())


class Conv3d(nn.Conv3d):
    """nn.Conv3d (same arguments, parameters and result) whose float32 forward on the CPU takes the fast kernel.

    Why: on the CPU PyTorch picks slow kernels for some of LightMedSeg's full-resolution shapes (2 threads, at
    10 x 128 x 112): its reference slow_conv3d for some 3^3 convolutions (16 -> 10 channels: 112 ms, oneDNN 5.7 ms),
    and oneDNN's plain-layout kernel for 1^3 convolutions (20 -> 20 channels: 14 ms, a matrix product 1.7 ms). So a
    1^3 convolution (stride 1, one group, no padding) runs as y = W x over the voxels, every other one through
    oneDNN directly, a depthwise one in channels-last layout (oneDNN's plain-layout depthwise kernel: 9.4 ms at
    20 channels, channels-last and back: 3.1 ms). Results agree up to float rounding. Other devices and dtypes, tracing (ONNX export),
    torch.compile and dispatch modes (FLOP counting) take nn.Conv3d's own path.

    Shapes: (B, C_in, D, H, W) -> (B, C_out, D', H', W') as nn.Conv3d.
    """

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if (takes_cpu_path(x) and self.padding_mode == "zeros" and not isinstance(self.padding, str)
                and torch.backends.mkldnn.is_available()):
            if self.kernel_size == (1, 1, 1) and self.stride == (1, 1, 1) and self.padding == (0, 0, 0) \
                    and self.groups == 1:
                weight = self.weight.flatten(1).expand(x.shape[0], -1, -1)  # bmm: no transposed copies, as matmul makes
                y = (torch.bmm(weight, x.flatten(2)) if self.bias is None
                     else torch.baddbmm(self.bias.view(1, -1, 1), weight, x.flatten(2)))  # bias in the same pass
                return y.view(x.shape[0], -1, *x.shape[2:])
            if self.groups > 1 and self.groups == self.in_channels == self.out_channels:
                # depthwise: oneDNN's channels-last kernel and two layout copies beat its plain-layout kernel
                y = torch.ops.aten.mkldnn_convolution(x.contiguous(memory_format=torch.channels_last_3d), self.weight,
                                                      self.bias, self.padding, self.stride, self.dilation, self.groups)
                return y.contiguous()
            return torch.ops.aten.mkldnn_convolution(x, self.weight, self.bias, self.padding, self.stride,
                                                     self.dilation, self.groups)
        return super().forward(x)


class ConvTranspose3d(nn.ConvTranspose3d):
    """nn.ConvTranspose3d (same arguments, parameters and result) whose float32 forward on the CPU is a matrix
    product when kernel = stride (no overlap): every input voxel makes one s_z x s_y x s_x block of the output.

    Why: PyTorch's CPU kernel for it is the reference slow_conv_transpose3d (the network's four took 12 ms at the ACDC
    patch, 2 threads). Equation: Y[:, :, s z + i, s y + j, s x + k] = W[:, :, i, j, k]^T X[:, :, z, y, x] + b, here
    one matrix product over the voxels, then one copy that interleaves the blocks. Other cases take nn's path (see
    ``takes_cpu_path``).

    Shapes: (B, C_in, D, H, W) -> (B, C_out, s_z D, s_y H, s_x W).
    """

    def forward(self, x: torch.Tensor, output_size: Optional[list[int]] = None) -> torch.Tensor:
        if (takes_cpu_path(x) and output_size is None and x.ndim == 5 and self.kernel_size == self.stride
                and self.padding == (0, 0, 0) and self.output_padding == (0, 0, 0) and self.groups == 1
                and self.dilation == (1, 1, 1) and self.padding_mode == "zeros"):
            (b, _, d, h, w), (sz, sy, sx) = x.shape, self.stride
            weight = self.weight.flatten(1).t().expand(b, -1, -1)  # (B, C_out s_z s_y s_x, C_in)
            y = (torch.bmm(weight, x.flatten(2)) if self.bias is None else
                 torch.baddbmm(self.bias.repeat_interleave(sz * sy * sx).view(1, -1, 1), weight, x.flatten(2)))
            y = y.view(b, self.out_channels, sz, sy, sx, d, h, w).permute(0, 1, 5, 2, 6, 3, 7, 4)
            return y.reshape(b, self.out_channels, d * sz, h * sy, w * sx)
        return super().forward(x, output_size)


class InstanceNorm3d(nn.InstanceNorm3d):
    """nn.InstanceNorm3d (same arguments, parameters and result) whose float32 forward on the CPU is group_norm's.

    Why: instance normalisation is group normalisation with one channel per group, and on the CPU PyTorch's
    group_norm kernel is several times faster than instance_norm's (2 threads, 1 x 16 x 64^3: 0.6 against 2.7 ms).
    On GPUs it is faster too, but under autocast group_norm returns float32, which costs 36-47 % more training
    memory there (benchmarks/SPEED_NOTES.md), so GPUs keep instance_norm, as do running statistics, tracing (ONNX
    export), torch.compile and dispatch modes (FLOP counting).

    Shapes: (B, C, D, H, W) -> (B, C, D, H, W).
    """

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if takes_cpu_path(x) and x.ndim == 5 and self.affine and not self.track_running_stats:
            return F.group_norm(x, self.num_features, self.weight, self.bias, self.eps)
        return super().forward(x)


def norm3d(channels: int) -> nn.Module:
    """Instance normalisation with affine parameters, as nnU-Net's default 3D networks use.

    Batch statistics are unusable at nnU-Net's batch sizes (2 for most 3D plans), hence per-instance statistics.
    """
    return InstanceNorm3d(channels, eps=1e-5, affine=True)


def activation() -> nn.Module:
    """LeakyReLU(0.01), nnU-Net's default non-linearity."""
    return nn.LeakyReLU(negative_slope=1e-2, inplace=True)


class ConvNormAct3D(nn.Sequential):
    """y = act(norm(conv_k(x))).

    Shapes: (B, C_in, D, H, W) -> (B, C_out, D / s_z, H / s_y, W / s_x).
    A kernel of 3 uses padding 1, so a stride s divides each axis exactly when the axis is divisible by s.
    """

    def __init__(self, in_channels: int, out_channels: int, kernel_size: int = 3, stride: Stride3D = (1, 1, 1),
                 groups: int = 1) -> None:
        super().__init__(
            Conv3d(in_channels, out_channels, kernel_size, stride=stride, padding=kernel_size // 2,
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
        self.primary = Conv3d(in_channels, primary_channels, 3, stride=stride, padding=1, bias=False)
        self.cheap_channels = out_channels - primary_channels
        self.cheap = (Conv3d(self.cheap_channels, self.cheap_channels, 3, padding=1, groups=self.cheap_channels,
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
            Conv3d(in_channels, in_channels, kernel_size, padding=kernel_size // 2, groups=in_channels, bias=False),
            Conv3d(in_channels, out_channels, 1, bias=False),
            norm3d(out_channels),
            activation(),
        )


class SqueezeExcite3D(nn.Module):
    """Channel attention: y = x * sigmoid(W2 act(W1 mean_{DHW}(x))), or r + x * sigmoid(...) given a residual r
    (one pass over the volume instead of two: on the CPU the element-wise passes, not the FLOPs, bound the time).

    Shapes: (B, C, D, H, W) [and r (B, C, D, H, W)] -> (B, C, D, H, W); the hidden width is max(C / reduction, 4).
    """

    def __init__(self, channels: int, reduction: int = 4) -> None:
        super().__init__()
        hidden = max(channels // reduction, 4)
        self.fc1 = Conv3d(channels, hidden, 1)
        self.fc2 = Conv3d(hidden, channels, 1)

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
