"""Kernel choices for float32 on the CPU: subclasses of three torch modules with the same parameters and results,
switched into a built network by :func:`use_fast_cpu_kernels`.

Why: for some of LightMedSeg's shapes PyTorch's CPU dispatch picks a slow kernel (its reference ``slow_conv3d`` and
``slow_conv_transpose3d``, or oneDNN's plain-layout kernel for 1^3 and depthwise convolutions), and its
``instance_norm`` is slower than ``group_norm`` computing the same thing. The measurements behind each choice are in
``benchmarks/SPEED_NOTES.md``. Every other case (another device or dtype, tracing for ONNX export, torch.compile, a
dispatch mode such as FLOP counting) runs the torch module's own forward, so those see PyTorch's own operators.
"""
from __future__ import annotations

from typing import Optional

import torch
import torch.nn.functional as F
from torch import nn
from torch.utils._python_dispatch import is_in_torch_dispatch_mode


def takes_cpu_path(x: torch.Tensor) -> bool:
    """Whether a module may run its own CPU kernel choice for x: float32 on the CPU, outside tracing (ONNX export),
    torch.compile and dispatch modes (FLOP counting), which must see PyTorch's own operators."""
    return (x.device.type == "cpu" and x.dtype == torch.float32 and not torch.jit.is_tracing()
            and not torch.compiler.is_compiling() and not is_in_torch_dispatch_mode())


class FastCPUConv3d(nn.Conv3d):
    """nn.Conv3d (same arguments, parameters and result) whose float32 forward on the CPU picks its kernel.

    A 1^3 convolution (stride 1, one group, no padding) runs as the matrix product y = W x + b over the voxels; a
    depthwise one through oneDNN in channels-last layout (the input converted, the output converted back); every
    other one through oneDNN directly, where PyTorch would take its reference ``slow_conv3d`` for some shapes.
    Results agree with nn.Conv3d's up to float rounding; other cases take nn.Conv3d's path (see ``takes_cpu_path``).

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


class FastCPUConvTranspose3d(nn.ConvTranspose3d):
    """nn.ConvTranspose3d (same arguments, parameters and result) whose float32 forward on the CPU is a matrix
    product when kernel = stride (no overlap), instead of PyTorch's reference ``slow_conv_transpose3d``.

    Equation: every input voxel makes one s_z x s_y x s_x block of the output,
    Y[:, :, s_z z + i, s_y y + j, s_x x + k] = W[:, :, i, j, k]^T X[:, :, z, y, x] + b: one matrix product over the
    voxels, then one copy that interleaves the blocks. Other cases take nn's path (see ``takes_cpu_path``).

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


class FastCPUInstanceNorm3d(nn.InstanceNorm3d):
    """nn.InstanceNorm3d (same arguments, parameters and result) whose float32 forward on the CPU is group_norm's.

    Instance normalisation is group normalisation with one channel per group, and PyTorch's CPU kernel for
    group_norm is faster than instance_norm's. GPUs keep instance_norm: under autocast group_norm returns float32,
    which costs training memory there. Running statistics, tracing (ONNX export), torch.compile and dispatch modes
    (FLOP counting) keep it too.

    Shapes: (B, C, D, H, W) -> (B, C, D, H, W).
    """

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if takes_cpu_path(x) and x.ndim == 5 and self.affine and not self.track_running_stats:
            return F.group_norm(x, self.num_features, self.weight, self.bias, self.eps)
        return super().forward(x)


#: torch module -> its fast-CPU subclass.
FAST_CPU_CLASSES: dict[type[nn.Module], type[nn.Module]] = {
    nn.Conv3d: FastCPUConv3d, nn.ConvTranspose3d: FastCPUConvTranspose3d, nn.InstanceNorm3d: FastCPUInstanceNorm3d,
}


def use_fast_cpu_kernels(module: nn.Module) -> nn.Module:
    """Switch every ``nn.Conv3d``, ``nn.ConvTranspose3d`` and ``nn.InstanceNorm3d`` in ``module`` (itself included)
    to its fast-CPU subclass, in place, and return ``module``.

    The subclasses add no parameters, buffers or attributes and change only ``forward``, so each module keeps its
    class's state as it is: parameters, state_dict, hooks, device and mode are unchanged, and copies and pickles
    refer to the subclasses by name (``torch.nn.utils.parametrize`` switches a module's class the same way). Only
    modules of exactly these classes are switched: subclasses of them are left as they are.
    """
    for submodule in module.modules():
        fast = FAST_CPU_CLASSES.get(type(submodule))
        if fast is not None:
            submodule.__class__ = fast
    return module
