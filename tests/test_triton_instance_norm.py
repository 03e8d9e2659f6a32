"""The fused Triton instance norm (+ LeakyReLU) against PyTorch's instance_norm and leaky_relu.

The kernels run on CPU tensors through Triton's interpreter, which must be switched on (``TRITON_INTERPRET=1``)
before the kernels are defined, i.e. before the module is first imported: ``test_kernels_under_the_interpreter``
runs this file again in a subprocess with it set, where the tests marked ``interpreted`` run (directly:
``TRITON_INTERPRET=1 python -m pytest tests/test_triton_instance_norm.py``). The CUDA test compiles the kernels and
is skipped without a GPU.
"""
from __future__ import annotations

import importlib.util
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
from torch import nn
from torch.utils._python_dispatch import TorchDispatchMode

from nnunetv2_lightmedseg.execution import triton_instance_norm as tin

ROOT = Path(__file__).resolve().parents[1]
INTERPRETED = os.environ.get("TRITON_INTERPRET") == "1"
interpreted = pytest.mark.skipif(not INTERPRETED, reason="runs in test_kernels_under_the_interpreter's subprocess")
#: bfloat16 keeps 8 significant bits: rounding to nearest moves a value by at most 2^-9 of itself (twice that
#: allowed), as GPUs round; Triton's interpreter truncates float32 to bfloat16 instead: less than 2^-7.
BF16_RTOL = 2.0 ** -7 if INTERPRETED else 2.0 ** -8

#: (name, shape, tiling): B C > 1 in one tile; one plane of 10 tiles in 4 chunks of 3 (the last chunk one ragged
#: tile and two empty ones); two planes (B = 2, C = 1) of 7 tiles in 2 chunks (the last tile ragged, one empty).
CASES = [
    ("planes", (2, 3, 4, 6, 5), {}),
    ("one_plane_chunks", (1, 1, 5, 7, 9), {"block": 32, "programs": 4}),
    ("batch_chunks", (2, 1, 3, 5, 7), {"block": 16, "programs": 4}),
]


def inputs(shape, dtype, seed=0):
    """x (mean 1, std 2: the statistics matter), dy, and weight, bias away from the identity (float32)."""
    gen = torch.Generator().manual_seed(seed)
    channels = shape[1]
    x = (1 + 2 * torch.randn(shape, generator=gen)).to(dtype)
    dy = torch.randn(shape, generator=gen).to(dtype)
    weight = 1 + 0.5 * torch.randn(channels, generator=gen)
    bias = torch.randn(channels, generator=gen)
    return x, dy, weight, bias


def forward_backward(fn, x, dy, weight, bias):
    x, weight, bias = (t.detach().clone().requires_grad_() for t in (x, weight, bias))
    y = fn(x, weight, bias)
    return (y, *torch.autograd.grad(y, (x, weight, bias), dy))


def truth(x, dy, weight, bias, slope):
    """The reference in float64 from the same (rounded) inputs."""
    return forward_backward(lambda *a: tin.reference_instance_norm_act(*a, 1e-5, slope),
                            x.double(), dy.double(), weight.double(), bias.double())


def test_kernels_under_the_interpreter() -> None:
    if INTERPRETED:
        pytest.skip("already under the interpreter")
    pytest.importorskip("triton")
    proc = subprocess.run([sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", __file__],
                          cwd=ROOT, env={**os.environ, "TRITON_INTERPRET": "1"}, capture_output=True, text=True,
                          timeout=600)
    assert proc.returncode == 0, proc.stdout[-8000:] + proc.stderr[-4000:]


@interpreted
@pytest.mark.parametrize("slope", [tin.NEGATIVE_SLOPE, None], ids=["act", "no_act"])
@pytest.mark.parametrize("name, shape, tiling", CASES, ids=[c[0] for c in CASES])
def test_float32_matches_the_float64_reference(name, shape, tiling, slope) -> None:
    x, dy, weight, bias = inputs(shape, torch.float32)
    got = forward_backward(lambda *a: tin.fused_instance_norm_act(*a, 1e-5, slope, **tiling), x, dy, weight, bias)
    want = truth(x, dy, weight, bias, slope)
    assert got[0].dtype == torch.float32 and got[2].dtype == got[3].dtype == torch.float32
    for label, g, w, tol in zip(("y", "dx", "dweight", "dbias"), got, want, (1e-5, 1e-5, 1e-4, 1e-4)):
        torch.testing.assert_close(g.double(), w, rtol=tol, atol=tol, msg=lambda m, label=label: f"{label}: {m}")


@interpreted
@pytest.mark.parametrize("slope", [tin.NEGATIVE_SLOPE, None], ids=["act", "no_act"])
@pytest.mark.parametrize("name, shape, tiling", CASES, ids=[c[0] for c in CASES])
def test_bfloat16_is_the_float64_reference_rounded(name, shape, tiling, slope) -> None:
    """y and dx in bfloat16 within bf16 rounding of the float64 result from the same bf16 inputs (float32
    arithmetic inside); dweight and dbias, float32 like the parameters, to float32 summation."""
    x, dy, weight, bias = inputs(shape, torch.bfloat16)
    got = forward_backward(lambda *a: tin.fused_instance_norm_act(*a, 1e-5, slope, **tiling), x, dy, weight, bias)
    want = truth(x, dy, weight, bias, slope)
    assert got[0].dtype == got[1].dtype == torch.bfloat16 and got[2].dtype == torch.float32
    for label, g, w in zip(("y", "dx"), got, want):
        torch.testing.assert_close(g.double(), w, rtol=BF16_RTOL, atol=1e-4 * w.abs().max().item(),
                                   msg=lambda m, label=label: f"{label}: {m}")
    for label, g, w in zip(("dweight", "dbias"), got[2:], want[2:]):
        torch.testing.assert_close(g.double(), w, rtol=1e-4, atol=1e-4, msg=lambda m, label=label: f"{label}: {m}")


@interpreted
def test_statistics_hold_for_a_mean_far_above_the_spread() -> None:
    """mean 1000, std 1: E[x^2] - E[x]^2 in float32 would lose the variance (1e6 against a spacing of 0.06);
    the chunked Welford/Chan statistics keep y to float32 resolution of x (6e-5 at 1000)."""
    x = 1000 + inputs((2, 1, 3, 5, 7), torch.float32)[0] / 2
    weight, bias = torch.ones(1), torch.zeros(1)
    got = tin.fused_instance_norm_act(x, weight, bias, 1e-5, None, block=16, programs=4)
    want = tin.reference_instance_norm_act(x.double(), weight.double(), bias.double(), 1e-5, None)
    torch.testing.assert_close(got.double(), want, rtol=0, atol=1e-3)


@interpreted
def test_float16_and_weights_without_gradient() -> None:
    """float16 in and out; with x alone requiring a gradient only dx comes back, with the parameters alone only
    theirs (the dx pass is left out)."""
    x, dy, weight, bias = inputs((2, 3, 4, 6, 5), torch.float16)
    want = truth(x, dy, weight, bias, tin.NEGATIVE_SLOPE)
    xg = x.clone().requires_grad_()
    y = tin.fused_instance_norm_act(xg, weight, bias)
    (dx,) = torch.autograd.grad(y, xg, dy)
    assert y.dtype == dx.dtype == torch.float16
    torch.testing.assert_close(y.double(), want[0], rtol=2.0 ** -10, atol=1e-4)
    torch.testing.assert_close(dx.double(), want[1], rtol=2.0 ** -10, atol=1e-4 * want[1].abs().max().item())
    wg, bg = weight.clone().requires_grad_(), bias.clone().requires_grad_()
    dweight, dbias = torch.autograd.grad(tin.fused_instance_norm_act(x, wg, bg), (wg, bg), dy)
    torch.testing.assert_close(dweight.double(), want[2], rtol=1e-4, atol=1e-4)
    torch.testing.assert_close(dbias.double(), want[3], rtol=1e-4, atol=1e-4)


def test_module_has_the_parameters_and_state_dict_of_instance_norm() -> None:
    fused, plain = tin.FusedInstanceNormAct3d(5), nn.InstanceNorm3d(5, eps=1e-5, affine=True)
    assert isinstance(fused, nn.InstanceNorm3d) and fused.eps == plain.eps and not fused.track_running_stats
    assert [n for n, _ in fused.named_parameters()] == [n for n, _ in plain.named_parameters()] == ["weight", "bias"]
    assert list(fused.state_dict()) == list(plain.state_dict())
    with torch.no_grad():
        plain.weight.normal_()
        plain.bias.normal_()
    fused.load_state_dict(plain.state_dict(), strict=True)
    plain.load_state_dict(fused.state_dict(), strict=True)
    assert torch.equal(fused.weight, plain.weight) and torch.equal(fused.bias, plain.bias)


@pytest.mark.parametrize("activation", [True, False])
def test_cpu_tensors_take_the_reference(activation: bool) -> None:
    module = tin.FusedInstanceNormAct3d(3, activation=activation)
    x = inputs((2, 3, 4, 6, 5), torch.float32)[0]
    assert not tin.triton_applies(x)
    want = F.instance_norm(x, weight=module.weight, bias=module.bias, eps=1e-5)
    assert torch.equal(module(x), F.leaky_relu(want, 0.01) if activation else want)


@interpreted
@pytest.mark.parametrize("activation", [True, False])
def test_module_runs_the_kernels_when_forced_on_cpu(activation: bool) -> None:
    module = tin.FusedInstanceNormAct3d(3, activation=activation)
    x, dy, weight, bias = inputs((2, 3, 4, 6, 5), torch.float32)
    with torch.no_grad():
        module.weight.copy_(weight)
        module.bias.copy_(bias)
    with tin.triton_on_cpu():
        assert tin.triton_applies(x)
        assert not tin.triton_applies(x.transpose(3, 4))  # not contiguous
        assert not tin.triton_applies(x.double())
        got = module(x)
    assert not tin.triton_applies(x)
    want = truth(x, dy, weight, bias, tin.NEGATIVE_SLOPE if activation else None)[0]
    torch.testing.assert_close(got.double(), want, rtol=1e-5, atol=1e-5)


class RecordOps(TorchDispatchMode):
    def __init__(self) -> None:
        super().__init__()
        self.ops: list[str] = []

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        self.ops.append(str(func))
        return func(*args, **(kwargs or {}))


@interpreted
def test_tracing_compile_and_dispatch_modes_see_pytorch_ops(monkeypatch) -> None:
    module = tin.FusedInstanceNormAct3d(3)
    x = inputs((2, 3, 4, 6, 5), torch.float32)[0]
    with tin.triton_on_cpu():
        traced = torch.jit.trace(module, x)
        with RecordOps() as mode:
            module(x)
        monkeypatch.setattr(torch.compiler, "is_compiling", lambda: True)
        compiling = tin.triton_applies(x)
    assert "instance_norm" in str(traced.graph)
    assert any("batch_norm" in op for op in mode.ops) and any("leaky_relu" in op for op in mode.ops)
    assert not compiling


@interpreted
def test_autocast_keeps_the_input_dtype_as_instance_norm_does() -> None:
    """instance_norm has no autocast rule: under bf16 autocast a bf16 input gives bf16, a float32 one float32 (not
    group_norm's float32 for both)."""
    module = tin.FusedInstanceNormAct3d(3)
    for dtype in (torch.bfloat16, torch.float32):
        x = inputs((2, 3, 4, 6, 5), dtype)[0]
        with torch.autocast("cpu", dtype=torch.bfloat16):
            want = nn.InstanceNorm3d(3, affine=True)(x)
            with tin.triton_on_cpu():
                got = module(x)
        assert got.dtype == want.dtype == dtype


@interpreted
def test_ab_script_smoke(tmp_path) -> None:
    """benchmarks/device/instance_norm_ab.py --smoke runs end to end, reads the ACDC plan's strides as nnU-Net does
    (the pool_op_kernel_sizes that trainers/common.py strides_from_plan takes) and writes its JSON."""
    spec = importlib.util.spec_from_file_location("instance_norm_ab", ROOT / "benchmarks/device/instance_norm_ab.py")
    script = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(script)
    from nnunetv2.utilities.plans_handling.plans_handler import PlansManager
    planned = PlansManager(str(script.PLAN)).get_configuration("3d_fullres").pool_op_kernel_sizes
    assert script.acdc_strides(4) == [tuple(s) for s in planned[1:5]]

    report = script.main(["--smoke", str(tmp_path / "ab.json")])
    assert json.loads((tmp_path / "ab.json").read_text())["rows"] == json.loads(json.dumps(report["rows"]))
    acdc = report["settings"]["acdc"]["norm_calls"]
    assert sum(e["calls"] for e in acdc) == sum(e["calls_with_act"] for e in acdc) == 26
    assert {r["variant"] for r in report["rows"]} == {"reference", "fused"}
    for row in report["rows"]:
        assert row["y_dtype"] == "bfloat16"
        assert all(diff <= 2 ** -6 * max(1.0, row["max_abs_reference"][k]) for k, diff in row["max_abs_diff"].items())


@pytest.mark.skipif(INTERPRETED or torch.cuda.is_available() or tin.triton is None,
                    reason="for machines without a GPU (with one, test_cuda_kernels_match_the_reference compiles them)")
def test_kernels_compile_for_hopper_with_vector_loads() -> None:
    """What the interpreter cannot show: the four kernels compile (bf16, with the activation) for sm_90, as an H200
    runs them, with 16-byte loads when the pointers and N are multiples of 16 (Triton's launch-time specialisation;
    the network's planes are) and round-to-nearest bf16 stores."""
    from triton.backends.compiler import GPUTarget
    from triton.compiler import ASTSource

    data = {"x_ptr", "y_ptr", "dy_ptr", "dx_ptr"}
    for kernel, constexprs in [(tin._stats_kernel, {"BLOCK": tin.BLOCK}),
                               (tin._norm_act_kernel, {"HAS_ACT": True, "BLOCK": tin.BLOCK, "BLOCK_S": 16}),
                               (tin._bwd_reduce_kernel, {"HAS_ACT": True, "BLOCK": tin.BLOCK}),
                               (tin._bwd_dx_kernel, {"HAS_ACT": True, "BLOCK": tin.BLOCK})]:
        names = kernel.arg_names
        signature = {n: "constexpr" if n in constexprs else "*bf16" if n in data else "*fp32" if n.endswith("_ptr")
                     else "fp32" if n in ("eps", "slope") else "i32" for n in names}
        source = ASTSource(fn=kernel, signature=signature,
                           constexprs={(names.index(n),): v for n, v in constexprs.items()},
                           attrs={(i,): [["tt.divisibility", 16]] for i, n in enumerate(names)
                                  if n.endswith("_ptr") or n == "N"})
        ptx = tin.triton.compile(source, target=GPUTarget("cuda", 90, 32),
                             options={"num_warps": tin._num_warps(tin.BLOCK)}).asm["ptx"]
        assert "ld.global.v4.b32" in ptx, kernel.__name__
        assert ("cvt.rn.bf16" in ptx) == ("dx_ptr" in names or "y_ptr" in names), kernel.__name__


@pytest.mark.skipif(INTERPRETED or not torch.cuda.is_available(), reason="needs a CUDA GPU")
@pytest.mark.parametrize("shape, dtype", [((7, 16, 10, 128, 112), torch.bfloat16),
                                          ((7, 160, 5, 16, 14), torch.bfloat16),
                                          ((2, 20, 10, 64, 56), torch.float32),
                                          ((2, 32, 9, 17, 13), torch.float16)])
def test_cuda_kernels_match_the_reference(shape, dtype) -> None:
    """On the GPU, at network shapes: the module takes the kernels and, under bf16 autocast as in training, gives
    the float32 reference (from the same rounded inputs) up to the output dtype's rounding."""
    x, dy, weight, bias = (t.cuda() for t in inputs(shape, dtype))
    assert tin.triton_applies(x)
    module = tin.FusedInstanceNormAct3d(shape[1]).cuda()
    with torch.no_grad():
        module.weight.copy_(weight)
        module.bias.copy_(bias)
    xg = x.clone().requires_grad_()
    with torch.autocast("cuda", dtype=torch.bfloat16):
        y = module(xg)
    got = (y, *torch.autograd.grad(y, (xg, module.weight, module.bias), dy))
    want = forward_backward(lambda *a: tin.reference_instance_norm_act(*a), x.float(), dy.float(), weight, bias)
    rtol = {torch.float32: 1e-5, torch.bfloat16: BF16_RTOL, torch.float16: 2.0 ** -10}[dtype]
    assert got[0].dtype == got[1].dtype == dtype
    for label, g, w in zip(("y", "dx"), got, want):
        torch.testing.assert_close(g.float(), w, rtol=rtol, atol=1e-4 * w.abs().max().item(),
                                   msg=lambda m, label=label: f"{label}: {m}")
    for label, g, w in zip(("dweight", "dbias"), got[2:], want[2:]):
        torch.testing.assert_close(g, w, rtol=1e-3, atol=1e-3 * w.abs().max().item(),
                                   msg=lambda m, label=label: f"{label}: {m}")
