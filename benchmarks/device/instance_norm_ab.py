"""Interleaved A/B of instance norm (+ LeakyReLU(0.01)): PyTorch's ops (A) against the fused Triton module (B).

A is ``F.leaky_relu(F.instance_norm(x, weight, bias, eps=1e-5), 0.01, inplace=True)``, as LightMedSeg runs it;
B is ``FusedInstanceNormAct3d`` (``nnunetv2_lightmedseg/execution/triton_instance_norm.py``). The shapes are those
of every instance norm of the paper preset (found by forward hooks, with the number of calls per shape and how
many of them a LeakyReLU follows) at two training patches: ACDC (batch 7 x 1 x 10 x 256 x 224, the strides of
``benchmarks/plans/Dataset027_ACDC_nnUNetPlans.json``) and a BraTS-like 128^3 (batch 2 x 4 x 128^3, strides
(2, 2, 2) x 4). x is bfloat16 (a convolution's output under bf16 autocast), the parameters float32, both sides run
under bf16 autocast.

For every shape, activation (with, without) and pass (forward; forward + backward through
``torch.autograd.grad`` of x, weight and bias), ``--rounds`` rounds alternate A and B (ABBA), each timing
``--repeats`` calls with CUDA events, the L2 cache flushed before each call (``--no-flush``: not); reported are the
median ms, the host time to issue one call (median, no synchronisation: a call whose host time exceeds its GPU
time is launch-bound in eager mode), achieved GB/s over the bytes each pass must move once (forward reads x and
writes y: 2 |x|; backward reads x, dy and writes dx: 3 |x| more), the max abs difference of B to A in y and in the
gradients, and per setting the sum over the network's norm calls. ``--blocks`` and ``--programs`` add B variants
with other tilings (``fused_instance_norm_act``'s ``block`` and ``programs``).

On the GPU machine (torch with its Triton), from the repository root::

    python benchmarks/device/instance_norm_ab.py $OUT/instance_norm_ab.json [--blocks 1024 2048 4096]

Before that, on a machine without a GPU (Triton's interpreter, one tiny shape, one call each)::

    TRITON_INTERPRET=1 python benchmarks/device/instance_norm_ab.py --smoke /tmp/instance_norm_ab.json
"""
from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from contextlib import nullcontext
from pathlib import Path
from typing import Any, Callable

import torch
from torch import nn

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT))
from nnunetv2_lightmedseg.architectures import LightMedSeg  # noqa: E402
from nnunetv2_lightmedseg.architectures.lightmedseg import get_preset  # noqa: E402
from nnunetv2_lightmedseg.execution import triton_instance_norm as tin  # noqa: E402
from nnunetv2_lightmedseg.provenance import provenance  # noqa: E402

PLAN = ROOT / "benchmarks" / "plans" / "Dataset027_ACDC_nnUNetPlans.json"
EPS, SLOPE = 1e-5, tin.NEGATIVE_SLOPE


def acdc_strides(num_stages: int) -> list[tuple[int, int, int]]:
    """The plan's strides after the leading (1, 1, 1), as trainers/common.py ``strides_from_plan`` takes them
    (nnU-Net's pool_op_kernel_sizes are the architecture's strides), read without importing nnU-Net."""
    planned = json.loads(PLAN.read_text())["configurations"]["3d_fullres"]["architecture"]["arch_kwargs"]["strides"]
    return ([tuple(int(v) for v in s) for s in planned[1:]] + [(1, 1, 1)] * num_stages)[:num_stages]


def settings(smoke: bool) -> dict[str, dict[str, Any]]:
    """Each training patch: input channels, batch, patch (D, H, W), strides; ``smoke``: the smallest patches."""
    stages = get_preset("paper").num_stages
    return {
        "acdc": {"in_channels": 1, "batch": 2 if smoke else 7, "patch": (2, 32, 32) if smoke else (10, 256, 224),
                 "strides": acdc_strides(stages)},
        "iso128": {"in_channels": 4, "batch": 2, "patch": (32, 16, 16) if smoke else (128, 128, 128),
                   "strides": [(2, 2, 2)] * stages},
    }


def norm_calls(setting: dict[str, Any], device: torch.device) -> list[dict[str, Any]]:
    """Every distinct input shape of the network's instance norms (batch of the setting), with its number of calls
    and how many of them a LeakyReLU module takes the output of (the training forward, deep supervision on)."""
    model = LightMedSeg.from_preset("paper", setting["in_channels"], 4, strides=setting["strides"],
                                    deep_supervision=True).to(device)
    calls: dict[tuple[int, ...], dict[str, Any]] = {}
    last = {}

    def on_norm(module, inputs, output):
        shape = (setting["batch"], *inputs[0].shape[1:])
        entry = calls.setdefault(shape, {"shape": list(shape), "calls": 0, "calls_with_act": 0})
        entry["calls"] += 1
        last["output"], last["entry"] = output, entry

    def on_act(module, inputs):
        if last.get("output") is inputs[0]:
            last["entry"]["calls_with_act"] += 1

    for module in model.modules():
        if isinstance(module, nn.InstanceNorm3d):
            module.register_forward_hook(on_norm)
        elif isinstance(module, nn.LeakyReLU):
            module.register_forward_pre_hook(on_act)
    autocast = torch.autocast("cuda", dtype=torch.bfloat16) if device.type == "cuda" else nullcontext()
    with torch.no_grad(), autocast:  # shapes per sample do not depend on the batch: one sample suffices
        model(torch.randn(1, setting["in_channels"], *setting["patch"], device=device))
    return sorted(calls.values(), key=lambda e: -e["shape"][2] * e["shape"][3] * e["shape"][4])


class Timer:
    """Times callables on one device: CUDA events per call on a GPU (all read after one synchronisation, the L2
    flushed by zeroing a 256 MB buffer before each call), perf_counter elsewhere; host time per call besides."""

    def __init__(self, device: torch.device, flush: bool) -> None:
        self.device = device
        self.flush = torch.empty(64 * 2 ** 20, dtype=torch.int32, device=device) if (
            flush and device.type == "cuda") else None

    def __call__(self, fn: Callable[[], Any], repeats: int) -> tuple[list[float], list[float]]:
        cuda = self.device.type == "cuda"
        events, host = [], []
        for _ in range(repeats):
            if self.flush is not None:
                self.flush.zero_()
            if cuda:
                start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
                start.record()
            t0 = time.perf_counter()
            fn()
            host.append((time.perf_counter() - t0) * 1e3)
            if cuda:
                end.record()
                events.append((start, end))
        if cuda:
            torch.cuda.synchronize(self.device)
            return [s.elapsed_time(e) for s, e in events], host
        return host, host


def make_case(shape: list[int], device: torch.device, seed: int) -> dict[str, torch.Tensor]:
    gen = torch.Generator(device="cpu").manual_seed(seed)
    channels = shape[1]
    return {"x": (torch.randn(shape, generator=gen) + 0.5).to(device, torch.bfloat16).requires_grad_(),
            "dy": torch.randn(shape, generator=gen).to(device, torch.bfloat16),
            "weight": 1 + 0.1 * torch.randn(channels, generator=gen),
            "bias": 0.1 * torch.randn(channels, generator=gen)}


def variants(case: dict[str, torch.Tensor], act: bool, blocks: list[int], programs: list[int]
             ) -> tuple[dict[str, Callable[[torch.Tensor], torch.Tensor]], tuple[nn.Parameter, nn.Parameter]]:
    """'reference', 'fused' (the module) and 'fused[block=..,programs=..]' for tilings other than the default, all
    on the module's parameters (returned with them)."""
    slope = SLOPE if act else None
    module = tin.FusedInstanceNormAct3d(case["x"].shape[1], eps=EPS, activation=act).to(case["x"].device)
    with torch.no_grad():
        module.weight.copy_(case["weight"])
        module.bias.copy_(case["bias"])
    w, b = module.weight, module.bias
    fns: dict[str, Callable[[torch.Tensor], torch.Tensor]] = {
        "reference": lambda x: tin.reference_instance_norm_act(x, w, b, EPS, slope), "fused": module}
    for block in blocks:
        for target in programs:
            if (block, target) != (tin.BLOCK, tin.PROGRAMS):
                fns[f"fused[block={block},programs={target}]"] = (
                    lambda x, block=block, target=target:
                    tin.fused_instance_norm_act(x, w, b, EPS, slope, block=block, programs=target))
    return fns, (w, b)


def run_case(fn: Callable[[torch.Tensor], torch.Tensor], case: dict[str, torch.Tensor],
             params: tuple[nn.Parameter, nn.Parameter], backward: bool) -> tuple[torch.Tensor, ...]:
    """y = fn(x) as in training (x and the parameters require gradients), and with ``backward`` the gradients of
    x, weight and bias for dy (torch.autograd.grad: nothing accumulates across calls)."""
    y = fn(case["x"])
    return (y, *torch.autograd.grad(y, (case["x"], *params), case["dy"])) if backward else (y,)


def timed_cases(args: argparse.Namespace, device: torch.device, report: dict[str, Any]
                ) -> list[tuple[str, dict[str, Any]]]:
    """(setting, norm-call entry) to time: the network's norm shapes of each setting in ``args.settings`` (recorded
    in ``report``), or ``--shapes`` (setting "shapes"); ``--smoke`` finds the network's shapes at the smallest
    patches but times one tiny shape only, since the interpreter runs one program at a time."""
    cases = []
    for name, setting in settings(args.smoke).items():
        if name in args.settings:
            calls = norm_calls(setting, device)
            report["settings"][name] = {**setting, "norm_calls": calls}
            cases += [(name, entry) for entry in calls]
    shapes = args.shapes or ([[1, 2, 2, 16, 12]] if args.smoke else None)
    if shapes:
        cases = [("shapes", {"shape": list(shape), "calls": 1, "calls_with_act": 1}) for shape in shapes]
    return cases


def measure(args: argparse.Namespace, device: torch.device) -> dict[str, Any]:
    timer = Timer(device, flush=not args.no_flush)
    autocast = torch.autocast(device.type, dtype=torch.bfloat16)
    report: dict[str, Any] = {"settings": {}}
    rows = []
    for seed, (name, entry) in enumerate(timed_cases(args, device, report)):
        shape, nbytes = entry["shape"], torch.Size(entry["shape"]).numel() * 2  # |x| in bf16
        case = make_case(shape, device, seed)
        for act in (True, False):
            fns, params = variants(case, act, args.blocks, args.programs)
            for backward in (False, True):
                times: dict[str, tuple[list[float], list[float]]] = {key: ([], []) for key in fns}
                for r in range(args.rounds):
                    for key in (list(fns) if r % 2 == 0 else list(fns)[::-1]):
                        def call(key=key):
                            with autocast:
                                return run_case(fns[key], case, params, backward)
                        for _ in range(args.warmup if r == 0 else 0):
                            call()
                        gpu, host = timer(call, args.repeats)
                        times[key][0].extend(gpu)
                        times[key][1].extend(host)
                with autocast:
                    want = run_case(fns["reference"], case, params, backward)
                moved = nbytes * (5 if backward else 2)
                for key in fns:
                    with autocast:
                        got = want if key == "reference" else run_case(fns[key], case, params, backward)
                    ms = statistics.median(times[key][0])
                    rows.append({
                        "setting": name, "shape": shape, "calls": entry["calls"],
                        "calls_with_act": entry["calls_with_act"], "act": act,
                        "pass": "forward+backward" if backward else "forward", "variant": key,
                        "ms": ms, "host_ms": statistics.median(times[key][1]), "gb_per_s": moved / ms / 1e6,
                        "bytes": moved, "y_dtype": str(got[0].dtype).replace("torch.", ""),
                        "max_abs_diff": {k: (g.float() - w.float()).abs().max().item()
                                         for k, g, w in zip(("y", "dx", "dweight", "dbias"), got, want)},
                        "max_abs_reference": {k: w.float().abs().max().item()
                                              for k, w in zip(("y", "dx", "dweight", "dbias"), want)},
                    })
    report["rows"] = rows
    report["totals"] = totals(rows)
    return report


def totals(rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Per setting, pass and variant: the network's norm time, each shape's calls taking the timing with or
    without the activation as the network calls it."""
    out: dict[tuple[str, str, str], float] = {}
    for row in rows:
        calls = row["calls_with_act"] if row["act"] else row["calls"] - row["calls_with_act"]
        key = (row["setting"], row["pass"], row["variant"])
        out[key] = out.get(key, 0.0) + calls * row["ms"]
    return [{"setting": s, "pass": p, "variant": v, "network_norm_ms": ms} for (s, p, v), ms in out.items()]


def table(report: dict[str, Any]) -> str:
    rows = report["rows"]
    lines = [f"{report['device']}, torch {report['torch']}, triton {report['triton']}; x bfloat16 under bf16 autocast, "
             f"L2 {'flushed' if report['flush_l2'] else 'warm'}; median of {report['rounds']} x {report['repeats']} "
             "calls per variant",
             f"{'setting':8} {'shape':22} {'calls':>5} {'act':>3} {'pass':>7} {'variant':32} {'ms':>8} "
             f"{'host ms':>8} {'GB/s':>7} {'speedup':>7} {'max|d y|':>9} {'max|d dx|':>9}"]
    reference = {(r["setting"], tuple(r["shape"]), r["act"], r["pass"]): r["ms"] for r in rows
                 if r["variant"] == "reference"}
    for r in rows:
        speedup = reference[(r["setting"], tuple(r["shape"]), r["act"], r["pass"])] / r["ms"]
        diff = r["max_abs_diff"]
        lines.append(f"{r['setting']:8} {'x'.join(map(str, r['shape'])):22} {r['calls']:5d} "
                     f"{'y' if r['act'] else 'n':>3} "
                     f"{'fwd' if r['pass'] == 'forward' else 'fwd+bwd':>7} {r['variant']:32} {r['ms']:8.4f} "
                     f"{r['host_ms']:8.4f} {r['gb_per_s']:7.0f} {speedup:7.2f} {diff['y']:9.2e} "
                     f"{diff.get('dx', float('nan')):9.2e}")
    lines.append("")
    lines.append("sum over the network's norm calls of each setting (ms per training step):")
    for t in report["totals"]:
        lines.append(f"  {t['setting']:8} {t['pass']:17} {t['variant']:32} {t['network_norm_ms']:8.3f}")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> dict[str, Any]:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("out", type=Path, help="JSON file to write")
    parser.add_argument("--smoke", action="store_true",
                        help="CPU through Triton's interpreter (TRITON_INTERPRET=1), one tiny shape, one call each")
    parser.add_argument("--settings", nargs="+", default=["acdc", "iso128"], choices=["acdc", "iso128"])
    parser.add_argument("--rounds", type=int, default=6)
    parser.add_argument("--repeats", type=int, default=20, help="timed calls per round and variant")
    parser.add_argument("--warmup", type=int, default=5, help="untimed calls per variant before the first round")
    parser.add_argument("--shapes", type=lambda v: [int(d) for d in v.split("x")], nargs="+",
                        help="time these shapes B x C x D x H x W (e.g. 7x16x10x128x112) instead of the network's")
    parser.add_argument("--blocks", type=int, nargs="+", default=[tin.BLOCK])
    parser.add_argument("--programs", type=int, nargs="+", default=[tin.PROGRAMS])
    parser.add_argument("--no-flush", action="store_true", help="leave the L2 cache warm between calls")
    args = parser.parse_args(argv)
    if args.smoke:
        args.rounds, args.repeats, args.warmup = 1, 1, 0
        device, context = torch.device("cpu"), tin.triton_on_cpu()
    else:
        if not torch.cuda.is_available():
            parser.error("needs a CUDA GPU (or --smoke with TRITON_INTERPRET=1)")
        device, context = torch.device("cuda"), nullcontext()
    with context:
        report = measure(args, device)
    report.update({
        "device": torch.cuda.get_device_name() if device.type == "cuda" else f"cpu ({torch.get_num_threads()} threads)",
        "torch": torch.__version__, "triton": tin.triton.__version__, "x_dtype": "bfloat16", "autocast": "bfloat16",
        "rounds": args.rounds, "repeats": args.repeats, "flush_l2": device.type == "cuda" and not args.no_flush,
        "smoke": args.smoke, "provenance": provenance(device),
    })
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(report, indent=1, default=list))
    print(table(report))
    return report


if __name__ == "__main__":
    main()
