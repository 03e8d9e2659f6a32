"""Instance normalisation fused with LeakyReLU for CUDA tensors, as Triton kernels (forward and backward).

Equation, for x of shape (B, C, D, H, W), statistics per plane (b, c) over its N = D H W voxels::

    mu_bc = mean(x_bc),  var_bc = mean((x_bc - mu_bc)^2),  rstd_bc = 1 / sqrt(var_bc + eps)
    x_hat = (x - mu_bc) rstd_bc,  z = gamma_c x_hat + beta_c,  y = LeakyReLU_a(z)  (or y = z without activation)

Why: PyTorch runs instance_norm as batch_norm over (1, B C, N) with one thread block per plane (B C blocks: 16-160
per sample at LightMedSeg's shapes, 112 at full resolution in an ACDC training batch of 7, against an H200's 132
SMs), in two kernels, and the LeakyReLU after it is a third pass over memory. Here the statistics are a split
reduction over a 2-D grid (plane x chunk), so every SM has work even at B C = 16, and one elementwise pass
normalises, applies the affine and the activation.

Forward: ``_stats_kernel`` (grid P x S, P = B C planes, S chunks of ``chunk_tiles`` tiles of ``block`` voxels each)
writes each chunk's mean and M2 = sum (x - mean)^2 (Welford's update per lane over the chunk's tiles, then Chan's
combination of the lanes: no E[x^2] - E[x]^2 cancellation); ``_norm_act_kernel`` (grid P x ceil(N / block), one
tile each) combines the S partials of its plane (Chan's formula again), normalises its tile and stores y in x's
dtype; its programs of tile 0 also store mu and rstd for the backward.

Backward (once differentiable) from x and the float32 mu, rstd per plane, the only tensors saved besides the
parameters: with dz = dy LeakyReLU'(z) (z recomputed from x; slope a where z <= 0, as PyTorch's
leaky_relu_backward), ``_bwd_reduce_kernel`` (grid P x S) makes partial sums of dz and dz x_hat; torch adds them up
per plane and, for dbeta_c = sum_b sum(dz) and dgamma_c = sum_b sum(dz x_hat), per channel; ``_bwd_dx_kernel``
(grid P x ceil(N / block)) writes dx = gamma_c rstd_bc (dz - sum(dz) / N - x_hat sum(dz x_hat) / N).

Arithmetic is float32 throughout; x, y, dy and dx are in x's dtype (float32, bfloat16 or float16), dgamma and dbeta
in the parameters' dtype. Under autocast the result has x's dtype, as nn.InstanceNorm3d's does (instance_norm has no
autocast rule: a bf16 input gives a bf16 output, a float32 input a float32 one); group_norm would return float32.

:class:`FusedInstanceNormAct3d` is an nn.InstanceNorm3d (same parameters and state_dict) with the activation
inside. It runs the kernels for contiguous 5-D CUDA tensors; everything else (CPU tensors, another dtype, tracing
for ONNX export, torch.compile, dispatch modes such as FLOP counting, no Triton installed) takes the reference
``F.leaky_relu(F.instance_norm(...), a)``, so those see PyTorch's own operators. Tests run the kernels on CPU
tensors through Triton's interpreter: ``TRITON_INTERPRET=1`` set before this module is imported (the kernels are
made interpreted when they are defined), then ``with triton_on_cpu(): ...``.
"""
from __future__ import annotations

import contextlib
from typing import Iterator, Optional

import torch
import torch.nn.functional as F
from torch import nn
from torch.utils._python_dispatch import is_in_torch_dispatch_mode

try:
    import triton
    import triton.language as tl
except ImportError:  # CPU-only PyTorch wheels ship no Triton
    triton = None

NEGATIVE_SLOPE = 0.01
#: Voxels per tile (one program's vector); num_warps follows from it (8 voxels per thread: one 16-byte bf16 load).
BLOCK = 2048
#: Statistics programs the split reduction aims at in all (several per SM of a 132-SM GPU) ...
PROGRAMS = 1024
#: ... and at most this many chunks per plane: each program of the elementwise pass reads all of its plane's.
MAX_CHUNKS = 128
#: Grid axis 1 holds chunks and tiles: CUDA allows 65535 there.
MAX_GRID_Y = 65535
DTYPES = (torch.float32, torch.bfloat16, torch.float16)

_force_cpu = False

if triton is not None:
    @triton.jit
    def _affine(w_ptr, b_ptr, plane, C):
        """gamma_c and beta_c of the plane's channel, in float32."""
        c = plane % C
        return tl.load(w_ptr + c).to(tl.float32), tl.load(b_ptr + c).to(tl.float32)

    @triton.jit
    def _normalized_and_pre_activation_grad(x, dy, mean, rstd, gamma, beta, slope, HAS_ACT: tl.constexpr):
        """x_hat = (x - mu) rstd and dz = dy * act'(gamma x_hat + beta), the gradient before the activation."""
        x_hat = (x - mean) * rstd
        dz = dy
        if HAS_ACT:
            dz = tl.where(x_hat * gamma + beta > 0, dy, dy * slope)
        return x_hat, dz

    @triton.jit
    def _stats_kernel(x_ptr, part_ptr, N, CHUNK_TILES, S, P, BLOCK: tl.constexpr):
        """Chunk (plane, s) of x (P, N): its mean and M2 into part[0, plane, s] and part[1, plane, s]."""
        plane = tl.program_id(0)
        chunk = tl.program_id(1)
        base = x_ptr + plane.to(tl.int64) * N
        offs = tl.arange(0, BLOCK)
        start = chunk * CHUNK_TILES * BLOCK
        count = tl.zeros([BLOCK], dtype=tl.float32)
        mean = tl.zeros([BLOCK], dtype=tl.float32)
        m2 = tl.zeros([BLOCK], dtype=tl.float32)
        for t in range(CHUNK_TILES):
            idx = start + t * BLOCK + offs
            mask = idx < N
            x = tl.load(base + idx, mask=mask, other=0.0).to(tl.float32)
            # a lane inside the plane at tile t was inside at every earlier tile: its count is t + 1
            count += mask.to(tl.float32)
            delta = x - mean
            mean = tl.where(mask, mean + delta * (1.0 / (t + 1.0)), mean)
            m2 = tl.where(mask, m2 + delta * (x - mean), m2)
        # the chunk starts inside the plane, so n >= 1
        n = tl.sum(count, axis=0)
        chunk_mean = tl.sum(count * mean, axis=0) / n
        spread = mean - chunk_mean
        chunk_m2 = tl.sum(m2 + count * spread * spread, axis=0)
        tl.store(part_ptr + plane * S + chunk, chunk_mean)
        tl.store(part_ptr + P * S + plane * S + chunk, chunk_m2)

    @triton.jit
    def _norm_act_kernel(x_ptr, y_ptr, w_ptr, b_ptr, part_ptr, stats_ptr, C, N, CHUNK, S, P, eps, slope,
                         HAS_ACT: tl.constexpr, BLOCK: tl.constexpr, BLOCK_S: tl.constexpr):
        """Tile (plane, t) of y = act(gamma x_hat + beta); programs of tile 0 store mu, rstd into stats[0|1, plane]."""
        plane = tl.program_id(0)
        tile = tl.program_id(1)
        s = tl.arange(0, BLOCK_S)
        smask = s < S
        n_s = tl.where(smask, tl.minimum(N - s * CHUNK, CHUNK), 0).to(tl.float32)
        mean_s = tl.load(part_ptr + plane * S + s, mask=smask, other=0.0)
        m2_s = tl.load(part_ptr + P * S + plane * S + s, mask=smask, other=0.0)
        mean = tl.sum(n_s * mean_s, axis=0) / N
        spread = mean_s - mean
        var = tl.sum(m2_s + n_s * spread * spread, axis=0) / N
        rstd = 1.0 / tl.sqrt(var + eps)
        if tile == 0:
            tl.store(stats_ptr + plane, mean)
            tl.store(stats_ptr + P + plane, rstd)
        gamma, beta = _affine(w_ptr, b_ptr, plane, C)
        base = plane.to(tl.int64) * N
        idx = tile * BLOCK + tl.arange(0, BLOCK)
        mask = idx < N
        x = tl.load(x_ptr + base + idx, mask=mask, other=0.0).to(tl.float32)
        z = (x - mean) * rstd * gamma + beta
        if HAS_ACT:
            z = tl.where(z > 0, z, z * slope)
        tl.store(y_ptr + base + idx, z.to(y_ptr.dtype.element_ty), mask=mask)

    @triton.jit
    def _bwd_reduce_kernel(x_ptr, dy_ptr, w_ptr, b_ptr, stats_ptr, part_ptr, C, N, CHUNK_TILES, S, P, slope,
                           HAS_ACT: tl.constexpr, BLOCK: tl.constexpr):
        """Chunk (plane, s): sum(dz) into part[0, plane, s], sum(dz x_hat) into part[1, plane, s]."""
        plane = tl.program_id(0)
        chunk = tl.program_id(1)
        mean = tl.load(stats_ptr + plane)
        rstd = tl.load(stats_ptr + P + plane)
        gamma, beta = _affine(w_ptr, b_ptr, plane, C)
        base = plane.to(tl.int64) * N
        offs = tl.arange(0, BLOCK)
        start = chunk * CHUNK_TILES * BLOCK
        sum_dz = tl.zeros([BLOCK], dtype=tl.float32)
        sum_dz_xhat = tl.zeros([BLOCK], dtype=tl.float32)
        for t in range(CHUNK_TILES):
            idx = start + t * BLOCK + offs
            mask = idx < N
            x = tl.load(x_ptr + base + idx, mask=mask, other=0.0).to(tl.float32)
            dy = tl.load(dy_ptr + base + idx, mask=mask, other=0.0).to(tl.float32)  # 0 outside the plane
            x_hat, dz = _normalized_and_pre_activation_grad(x, dy, mean, rstd, gamma, beta, slope, HAS_ACT)
            sum_dz += dz
            sum_dz_xhat += dz * x_hat
        tl.store(part_ptr + plane * S + chunk, tl.sum(sum_dz, axis=0))
        tl.store(part_ptr + P * S + plane * S + chunk, tl.sum(sum_dz_xhat, axis=0))

    @triton.jit
    def _bwd_dx_kernel(x_ptr, dy_ptr, dx_ptr, w_ptr, b_ptr, stats_ptr, sums_ptr, C, N, P, slope,
                       HAS_ACT: tl.constexpr, BLOCK: tl.constexpr):
        """Tile (plane, t) of dx = gamma rstd (dz - sum(dz) / N - x_hat sum(dz x_hat) / N)."""
        plane = tl.program_id(0)
        tile = tl.program_id(1)
        mean = tl.load(stats_ptr + plane)
        rstd = tl.load(stats_ptr + P + plane)
        mean_dz = tl.load(sums_ptr + plane) / N
        mean_dz_xhat = tl.load(sums_ptr + P + plane) / N
        gamma, beta = _affine(w_ptr, b_ptr, plane, C)
        base = plane.to(tl.int64) * N
        idx = tile * BLOCK + tl.arange(0, BLOCK)
        mask = idx < N
        x = tl.load(x_ptr + base + idx, mask=mask, other=0.0).to(tl.float32)
        dy = tl.load(dy_ptr + base + idx, mask=mask, other=0.0).to(tl.float32)
        x_hat, dz = _normalized_and_pre_activation_grad(x, dy, mean, rstd, gamma, beta, slope, HAS_ACT)
        dx = gamma * rstd * (dz - mean_dz - x_hat * mean_dz_xhat)
        tl.store(dx_ptr + base + idx, dx.to(dx_ptr.dtype.element_ty), mask=mask)


def _cdiv(a: int, b: int) -> int:
    return -(-a // b)


def _split(planes: int, n: int, block: int, programs: int) -> tuple[int, int, int]:
    """(tiles per plane, chunks per plane S, tiles per chunk) for the split reductions."""
    tiles = _cdiv(n, block)
    chunks = min(tiles, MAX_CHUNKS, max(1, _cdiv(programs, planes)))
    chunk_tiles = _cdiv(tiles, chunks)
    return tiles, _cdiv(tiles, chunk_tiles), chunk_tiles


def _num_warps(block: int) -> int:
    return min(16, max(1, block // 256))


def _device_guard(x: torch.Tensor):
    # Triton launches on the current CUDA device, which need not be x's
    return torch.cuda.device(x.device) if x.is_cuda else contextlib.nullcontext()


def _forward(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor, eps: float, slope: Optional[float],
             block: int, programs: int) -> tuple[torch.Tensor, torch.Tensor]:
    """y (x's shape and dtype) and stats (2, B C) float32: mu and rstd per plane."""
    channels, planes = x.shape[1], x.shape[0] * x.shape[1]
    n = x.numel() // planes
    tiles, chunks, chunk_tiles = _split(planes, n, block, programs)
    part = torch.empty(2, planes, chunks, device=x.device, dtype=torch.float32)
    stats = torch.empty(2, planes, device=x.device, dtype=torch.float32)
    y = torch.empty_like(x)
    warps = _num_warps(block)
    with _device_guard(x):
        _stats_kernel[(planes, chunks)](x, part, n, chunk_tiles, chunks, planes, BLOCK=block, num_warps=warps)
        _norm_act_kernel[(planes, tiles)](
            x, y, weight, bias, part, stats, channels, n, chunk_tiles * block, chunks, planes, eps,
            0.0 if slope is None else slope, HAS_ACT=slope is not None, BLOCK=block,
            BLOCK_S=max(16, triton.next_power_of_2(chunks)), num_warps=warps)
    return y, stats


def _backward(dy: torch.Tensor, x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor, stats: torch.Tensor,
              slope: Optional[float], block: int, programs: int, need_dx: bool):
    """(dx or None, dgamma, dbeta) for y = _forward(x, ...)[0] and its gradient dy."""
    dy = dy.contiguous()
    batch, channels = x.shape[:2]
    planes = batch * channels
    n = x.numel() // planes
    tiles, chunks, chunk_tiles = _split(planes, n, block, programs)
    part = torch.empty(2, planes, chunks, device=x.device, dtype=torch.float32)
    warps, has_act, slope = _num_warps(block), slope is not None, 0.0 if slope is None else slope
    with _device_guard(x):
        _bwd_reduce_kernel[(planes, chunks)](x, dy, weight, bias, stats, part, channels, n, chunk_tiles, chunks,
                                             planes, slope, HAS_ACT=has_act, BLOCK=block, num_warps=warps)
        sums = part.sum(2)  # (2, P): sum(dz), sum(dz x_hat) per plane
        dbias, dweight = sums.view(2, batch, channels).sum(1)
        dx = None
        if need_dx:
            dx = torch.empty_like(x)
            _bwd_dx_kernel[(planes, tiles)](x, dy, dx, weight, bias, stats, sums, channels, n, planes, slope,
                                            HAS_ACT=has_act, BLOCK=block, num_warps=warps)
    return dx, dweight.to(weight.dtype), dbias.to(bias.dtype)


class _FusedInstanceNormAct(torch.autograd.Function):
    """y = act(instance_norm(x) gamma + beta) through the Triton kernels; saves x, weight, bias and (mu, rstd)."""

    @staticmethod
    def forward(ctx, x, weight, bias, eps, slope, block, programs):
        y, stats = _forward(x, weight, bias, eps, slope, block, programs)
        ctx.save_for_backward(x, weight, bias, stats)
        ctx.slope, ctx.block, ctx.programs = slope, block, programs
        return y

    @staticmethod
    @torch.autograd.function.once_differentiable
    def backward(ctx, dy):
        x, weight, bias, stats = ctx.saved_tensors
        dx, dweight, dbias = _backward(dy, x, weight, bias, stats, ctx.slope, ctx.block, ctx.programs,
                                       ctx.needs_input_grad[0])
        return dx, dweight, dbias, None, None, None, None


def fused_instance_norm_act(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor, eps: float = 1e-5,
                            negative_slope: Optional[float] = NEGATIVE_SLOPE, *, block: int = BLOCK,
                            programs: int = PROGRAMS) -> torch.Tensor:
    """The Triton path itself, whatever the device (CPU tensors need the interpreter): LeakyReLU with
    ``negative_slope`` of the affine instance norm of x, or none with ``negative_slope=None``.

    Shapes: x (B, C, D, H, W) contiguous, weight and bias (C,) -> (B, C, D, H, W) in x's dtype. ``block`` (a power
    of two) and ``programs`` set the tiling (see ``_split``); tests make them small to reach several chunks.
    """
    if x.ndim != 5 or not x.is_contiguous() or x.dtype not in DTYPES:
        raise ValueError(f"fused_instance_norm_act takes a contiguous 5-D {DTYPES} tensor, got "
                         f"{tuple(x.shape)} {x.dtype}")
    if weight.shape != (x.shape[1],) or bias.shape != (x.shape[1],):
        raise ValueError(f"weight and bias must have shape ({x.shape[1]},), got {tuple(weight.shape)} and "
                         f"{tuple(bias.shape)}")
    if block < 16 or block & (block - 1) or _cdiv(x[0, 0].numel(), block) > MAX_GRID_Y:
        raise ValueError(f"block must be a power of two from 16 with at most {MAX_GRID_Y} blocks per plane, "
                         f"got {block} for {x[0, 0].numel()} voxels")
    return _FusedInstanceNormAct.apply(x, weight, bias, eps, negative_slope, block, programs)


def reference_instance_norm_act(x: torch.Tensor, weight: Optional[torch.Tensor], bias: Optional[torch.Tensor],
                                eps: float = 1e-5, negative_slope: Optional[float] = NEGATIVE_SLOPE) -> torch.Tensor:
    """PyTorch's own ops for the same result: ``F.leaky_relu(F.instance_norm(x, ...), a)``."""
    y = F.instance_norm(x, weight=weight, bias=bias, eps=eps)
    return y if negative_slope is None else F.leaky_relu(y, negative_slope, inplace=True)


@contextlib.contextmanager
def triton_on_cpu() -> Iterator[None]:
    """Within it, :class:`FusedInstanceNormAct3d` runs the kernels on CPU tensors too, through Triton's interpreter
    (for tests): ``TRITON_INTERPRET=1`` must have been set before this module was imported."""
    global _force_cpu
    if triton is None or type(_stats_kernel).__name__ != "InterpretedFunction":
        raise RuntimeError("triton_on_cpu needs Triton's interpreter: set TRITON_INTERPRET=1 before importing "
                           f"{__name__}")
    previous, _force_cpu = _force_cpu, True
    try:
        yield
    finally:
        _force_cpu = previous


def triton_applies(x: torch.Tensor) -> bool:
    """Whether :class:`FusedInstanceNormAct3d` runs the kernels for x: a contiguous 5-D float32/bf16/fp16 CUDA
    tensor (or a CPU one within :func:`triton_on_cpu`) whose planes have more than one voxel (PyTorch's error for a
    single voxel stays) and fit the grid, outside tracing (ONNX export), torch.compile and dispatch modes (FLOP
    counting), which must see PyTorch's own operators."""
    if triton is None or x.ndim != 5 or x.dtype not in DTYPES or not (x.is_cuda or (_force_cpu and x.is_cpu)):
        return False
    planes = x.shape[0] * x.shape[1]
    n = x.numel() // max(planes, 1)
    return (planes > 0 and 1 < n < 2 ** 31 - BLOCK and _cdiv(n, BLOCK) <= MAX_GRID_Y and x.is_contiguous()
            and not torch.jit.is_tracing() and not torch.compiler.is_compiling() and not is_in_torch_dispatch_mode())


class FusedInstanceNormAct3d(nn.InstanceNorm3d):
    """nn.InstanceNorm3d(C, eps, affine=True) followed by LeakyReLU(0.01) (``activation=False``: the norm alone),
    in one module: y = LeakyReLU_0.01(gamma_c (x - mu_bc) / sqrt(var_bc + eps) + beta_c).

    Its parameters and state_dict are nn.InstanceNorm3d's (``weight``, ``bias``; no running statistics), so either
    loads into the other. CUDA tensors take the Triton kernels of this module, everything else the reference
    (see :func:`triton_applies`); the output has x's dtype, under autocast too, as nn.InstanceNorm3d's.

    Shapes: (B, C, D, H, W) -> (B, C, D, H, W).
    """

    def __init__(self, num_features: int, eps: float = 1e-5, activation: bool = True, device=None,
                 dtype=None) -> None:
        super().__init__(num_features, eps=eps, affine=True, track_running_stats=False, device=device, dtype=dtype)
        self.activation = activation

    def extra_repr(self) -> str:
        return f"{super().extra_repr()}, activation={'LeakyReLU(0.01)' if self.activation else None}"

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        slope = NEGATIVE_SLOPE if self.activation else None
        if x.ndim == 5 and x.shape[1] == self.num_features and triton_applies(x):  # else nn's checks raise
            return _FusedInstanceNormAct.apply(x, self.weight, self.bias, self.eps, slope, BLOCK, PROGRAMS)
        y = super().forward(x)
        return y if slope is None else F.leaky_relu(y, slope, inplace=True)
