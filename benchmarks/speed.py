"""Speed and memory of LightMedSeg presets beside nnU-Net's default network and the baselines: one card, one run.

For every model of the complexity table (``complexity.MODELS``) at every named input (``complexity.SETTINGS``):
- forward latency of one patch, batch 1, and images per second at the largest batch that fits (``--throughput``);
- one training step (forward + backward + SGD step as nnU-Net configures it, nnU-Net's Dice + CE loss on the
  full-resolution output) at nnU-Net's batch size for that plan, and its peak memory;
- optionally (``--prediction``) whole-case prediction through ``nnUNetPredictor`` (sliding window, nnU-Net's own
  autocast, mirroring on and off) on a BraTS-sized 4 x 155 x 240 x 240 case (``iso128`` setting) and an ACDC case
  (``acdc`` setting, the plan's median shape).
GPU timings use bf16 autocast, CUDA events, warm-up, and the median of many repeats; CPU timings a synchronous clock.
``--modes eager graphs compile cudagraphs as-shipped`` measures each model's plain forward, its inference forward
replayed from CUDA graphs as LightMedSeg predicts by default (``InferenceGraphs``; for LightMedSeg the training
forward and backward replayed too, ``TrainingGraphs`` as ``nnUNetTrainerLightMedSeg_graphedStep`` trains), under
``torch.compile`` (nnU-Net compiles on CUDA by default) and under ``torch.compile(mode="reduce-overhead")`` (CUDA
graphs, training too), and as nnU-Net's commands run it by default (``as-shipped``: forward and cases as
``nnUNetv2_predict`` runs them, the training step as ``nnUNetv2_train`` does): the headline ratio, what a user gets.
The forward's activation traffic (every module output written once and read once, counted with forward hooks) over
its time gives an achieved bandwidth, to set beside the card's measured copy bandwidth.

Usage::

    python benchmarks/speed.py [--models NAME ...] [--settings iso128 acdc] [--modes as-shipped eager compile]
                               [--prediction] [--throughput] [--out benchmarks/results] [--tag NAME]

writes ``speed_<tag>.json`` (metadata + rows) and ``speed_<tag>.md`` (generated from the JSON); the tag defaults to
the device ("cpu" or the GPU's name).
"""
from __future__ import annotations

import argparse
import json
import re
import statistics
import time
from contextlib import nullcontext
from dataclasses import asdict
from functools import partial
from pathlib import Path
from typing import Any, Callable, Optional

import torch
from torch import nn

from common import cell, generated_line
from complexity import MODELS, SETTINGS, InputSetting, NotApplicable, build
from nnunetv2_lightmedseg.architectures import LightMedSeg
from nnunetv2_lightmedseg.execution import InferenceGraphs, accelerate, replay_cuda_graphs
from nnunetv2_lightmedseg.provenance import provenance
from nnunetv2_lightmedseg.trainers.common import unwrap

PLANS = Path(__file__).resolve().parent / "plans"
#: nnU-Net's batch size for each setting's plan: BraTS at 128^3 plans 2, the ACDC plan 7.
TRAIN_BATCH = {"iso128": 2, "acdc": json.loads((PLANS / "Dataset027_ACDC_nnUNetPlans.json").read_text())
               ["configurations"]["3d_fullres"]["batch_size"]}
#: Whole-case prediction: the case each setting's plan is measured on (C x D x H x W).
CASES = {"iso128": (4, 155, 240, 240),
         "acdc": (1, *map(int, json.loads((PLANS / "Dataset027_ACDC_nnUNetPlans.json").read_text())
                                ["configurations"]["3d_fullres"]["median_image_size_in_voxels"]))}
REFERENCE = "nnU-Net default (PlainConvUNet)"
#: ``--modes`` other than eager: torch.compile's mode for each. "cudagraphs" replays the fixed-shape forward (and
#: training graphs) as CUDA graphs, which removes the kernel-launch cost that bounds LightMedSeg's eager forward.
COMPILE_MODES = {"compile": None, "cudagraphs": "reduce-overhead"}
#: ``--modes``: the plain forward, the inference forward replayed from CUDA graphs, the compiled ones, and each model
#: as nnU-Net's commands run it by default ("as-shipped": ``nnUNetv2_predict`` compiles nothing and LightMedSeg's
#: trainers switch its graph replay in; ``nnUNetv2_train`` compiles every trainer's network on CUDA with
#: ``torch.compile(network)``, nothing on the CPU).
MODES = ["eager", "graphs", *COMPILE_MODES, "as-shipped"]


class ReplayedInference(nn.Module):
    """Any model's inference forward replayed from CUDA graphs as LightMedSeg's own is (``graphs`` mode)."""

    def __init__(self, model: nn.Module) -> None:
        super().__init__()
        self.model = model
        self.graphs = InferenceGraphs()

    def forward(self, x: torch.Tensor) -> Any:
        if InferenceGraphs.applies(self, x):
            return self.graphs.run(self.model, x)
        return self.model(x)


def synchronize(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def median_ms(fn: Callable[[], Any], device: torch.device, warmup: int, repeats: int) -> float:
    """Median wall time of ``fn`` in milliseconds after ``warmup`` calls (CUDA events on a GPU)."""
    for _ in range(warmup):
        fn()
    synchronize(device)
    times = []
    for _ in range(repeats):
        if device.type == "cuda":
            start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
            start.record()
            fn()
            end.record()
            end.synchronize()
            times.append(start.elapsed_time(end))
        else:
            t0 = time.perf_counter()
            fn()
            times.append((time.perf_counter() - t0) * 1e3)
    return statistics.median(times)


def autocast(device: torch.device):
    return torch.autocast("cuda", dtype=torch.bfloat16) if device.type == "cuda" else nullcontext()


def first_output(out: Any) -> torch.Tensor:
    return out[0] if isinstance(out, (list, tuple)) else out


def activation_bytes(model: nn.Module, x: torch.Tensor, device: torch.device) -> int:
    """Bytes the eager forward writes and reads back: every leaf module's output, counted twice."""
    total = 0

    def hook(_module, _inputs, output):
        nonlocal total
        for t in (output if isinstance(output, (list, tuple)) else [output]):
            if isinstance(t, torch.Tensor):
                total += 2 * t.numel() * t.element_size()

    handles = [m.register_forward_hook(hook) for m in model.modules() if not list(m.children())]
    try:
        with torch.inference_mode(), autocast(device):
            model(x)
    finally:
        for h in handles:
            h.remove()
    return total + x.numel() * x.element_size()


def copy_bandwidth_gbps(device: torch.device) -> Optional[float]:
    """Device-to-device copy bandwidth (bytes read + written per second) of a 1 GiB buffer."""
    if device.type != "cuda":
        return None
    src = torch.empty(2 ** 30, dtype=torch.uint8, device=device).random_(0, 255)
    dst = torch.empty_like(src)
    ms = median_ms(partial(dst.copy_, src), device, warmup=3, repeats=20)  # partial: src and dst are deleted below
    del src, dst
    return round(2 * 2 ** 30 / (ms * 1e-3) / 1e9, 1)


def nnunet_loss(num_classes: int) -> nn.Module:
    from nnunetv2.training.loss.compound_losses import DC_and_CE_loss
    from nnunetv2.training.loss.dice import MemoryEfficientSoftDiceLoss
    return DC_and_CE_loss({"batch_dice": False, "smooth": 1e-5, "do_bg": False, "ddp": False}, {}, weight_ce=1,
                          weight_dice=1, ignore_label=None, dice_class=MemoryEfficientSoftDiceLoss)


def training_step_ms(model: nn.Module, setting: InputSetting, batch: int, device: torch.device,
                     warmup: int, repeats: int) -> tuple[float, Optional[float]]:
    """Median ms of forward + backward + SGD step (nnU-Net's optimiser) and the peak memory (GiB) on a GPU."""
    model.train()
    optimizer = torch.optim.SGD(model.parameters(), 1e-2, momentum=0.99, nesterov=True, weight_decay=3e-5)
    loss_fn = nnunet_loss(setting.num_classes)
    x = torch.randn((batch, setting.in_channels, *setting.patch_size), device=device)
    target = torch.randint(0, setting.num_classes, (batch, 1, *setting.patch_size), device=device)

    def step():
        optimizer.zero_grad(set_to_none=True)
        with autocast(device):
            loss = loss_fn(first_output(model(x)), target)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 12)
        optimizer.step()

    # the peak over warm-up and timed steps: CUDA graphs allocate their memory pool while capturing (in the
    # warm-up), so a peak taken over later steps alone misses it (SPEED_NOTES.md)
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
    ms = median_ms(step, device, warmup, repeats)
    peak = torch.cuda.max_memory_allocated(device) / 2 ** 30 if device.type == "cuda" else None
    model.eval()
    return ms, peak


def largest_batch_throughput(model: nn.Module, setting: InputSetting, device: torch.device,
                             max_batch: int = 64) -> tuple[Optional[int], Optional[float]]:
    """Images per second of the forward at the largest power-of-two batch (up to ``max_batch``) that fits."""
    best: tuple[Optional[int], Optional[float]] = (None, None)
    batch = 1
    while batch <= max_batch:
        try:
            x = torch.randn((batch, setting.in_channels, *setting.patch_size), device=device)
            with torch.inference_mode(), autocast(device):
                ms = median_ms(lambda: model(x), device, warmup=2, repeats=5)
            best = (batch, batch / (ms * 1e-3))
            del x
        except torch.OutOfMemoryError:
            break
        batch *= 2
    if device.type == "cuda":
        torch.cuda.empty_cache()
    return best


def case_prediction_s(model: nn.Module, setting: InputSetting, device: torch.device, mirroring: bool,
                      repeats: int) -> float:
    """Median seconds of ``nnUNetPredictor.predict_logits_from_preprocessed_data`` on a whole case."""
    from nnunetv2.inference.predict_from_raw_data import nnUNetPredictor
    from nnunetv2.utilities.plans_handling.plans_handler import PlansManager
    plans = json.loads((PLANS / "Dataset027_ACDC_nnUNetPlans.json").read_text())
    plans["configurations"]["3d_fullres"]["patch_size"] = list(setting.patch_size)
    dataset_json = {"channel_names": {str(i): f"channel{i}" for i in range(setting.in_channels)},
                    "labels": {"background": 0, **{f"class{i}": i for i in range(1, setting.num_classes)}},
                    "file_ending": ".nii.gz"}
    plans_manager = PlansManager(plans)
    predictor = nnUNetPredictor(tile_step_size=0.5, use_gaussian=True, use_mirroring=mirroring,
                                perform_everything_on_device=device.type == "cuda", device=device, verbose=False,
                                allow_tqdm=False)
    predictor.manual_initialization(model, plans_manager, plans_manager.get_configuration("3d_fullres"),
                                    [unwrap(model).state_dict()], dataset_json, "speed-benchmark", (0, 1, 2))
    data = torch.randn(CASES[setting.name])
    ms = median_ms(lambda: predictor.predict_logits_from_preprocessed_data(data), device, warmup=1, repeats=repeats)
    return ms / 1e3


def profile_forward(model: nn.Module, x: torch.Tensor, device: torch.device, rows: int = 15) -> str:
    """The forward's most expensive kernels (torch.profiler), to see where the time goes."""
    from torch.profiler import ProfilerActivity, profile
    activities = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if device.type == "cuda" else [])
    with torch.inference_mode(), autocast(device):
        for _ in range(3):
            model(x)
        synchronize(device)
        with profile(activities=activities) as prof:
            model(x)
            synchronize(device)
    sort = "cuda_time_total" if device.type == "cuda" else "cpu_time_total"
    return prof.key_averages().table(sort_by=sort, row_limit=rows)


def speed_row(name: str, setting: InputSetting, device: torch.device, mode: str, args: argparse.Namespace
              ) -> dict[str, Any]:
    """One row; a failure (a compile error, say) becomes the row's note instead of ending the run."""
    row: dict[str, Any] = {"model": name, "setting": setting.name, "mode": mode,
                           "input_shape": list(setting.input_shape), "train_batch": TRAIN_BATCH[setting.name]}
    try:
        return measure_row(row, name, setting, device, mode, args)
    except NotApplicable as reason:
        return {**row, "note": str(reason)}
    except Exception as error:  # noqa: BLE001 -- one model's failure must not lose the others' numbers
        if device.type == "cuda":
            torch.cuda.empty_cache()
        return {**row, "note": f"failed: {type(error).__name__}: {str(error).splitlines()[0][:200]}"}


def measure_row(row: dict[str, Any], name: str, setting: InputSetting, device: torch.device, mode: str,
                args: argparse.Namespace) -> dict[str, Any]:
    gpu = device.type == "cuda"
    if mode == "graphs" and not gpu:
        raise NotApplicable("CUDA graphs need a GPU")
    model, setting, note = build(MODELS[name], setting)
    model = model.to(device).eval()
    if isinstance(model, LightMedSeg):  # as its trainers build it; CUDA-graph replay only in the graphs mode
        model = accelerate(model, cuda_graphs=False)
    row.update(input_shape=list(setting.input_shape), built=note, note="")
    row["params_m"] = round(sum(p.numel() for p in model.parameters()) / 1e6, 4)
    x = torch.randn(setting.input_shape, device=device)
    row["activation_gb"] = round(activation_bytes(model, x, device) / 1e9, 3)
    runnable = trained = model
    if mode in COMPILE_MODES:
        # each row compiles a new model instance: no row inherits earlier rows' compiled code or recompile counts
        # (compiled LightMedSeg's speed depended on its place in the run; SPEED_NOTES.md)
        torch._dynamo.reset()
        runnable = trained = torch.compile(model, dynamic=False, mode=COMPILE_MODES[mode])
    elif mode == "graphs":
        if isinstance(model, LightMedSeg):
            replay_cuda_graphs(model, training=True)
        else:
            runnable = ReplayedInference(model)
    elif mode == "as-shipped":
        if gpu and isinstance(model, LightMedSeg):
            replay_cuda_graphs(model)  # as LightMedSeg's trainers build it for nnUNetv2_predict
        if gpu:  # nnUNetTrainer.initialize: torch.compile(self.network), when nnUNet_compile is not set
            torch._dynamo.reset()
            trained = torch.compile(model)
    if args.profile and mode == "eager":
        print(f"--- profile: {name} at {setting.name}\n{profile_forward(model, x, device)}", flush=True)
    with torch.inference_mode(), autocast(device):
        row["forward_ms"] = round(median_ms(partial(runnable, x), device, warmup=10 if gpu else 1,
                                            repeats=50 if gpu else 5), 3)
    row["achieved_gbps"] = round(row["activation_gb"] / (row["forward_ms"] * 1e-3), 1)
    if args.throughput:
        row["max_batch"], row["images_per_s"] = largest_batch_throughput(runnable, setting, device)
    # other models replay only their inference in the graphs mode: their training is the eager row's
    if not args.no_training and (mode != "graphs" or isinstance(model, LightMedSeg)):
        try:
            ms, peak = training_step_ms(trained, setting, TRAIN_BATCH[setting.name], device,
                                        warmup=5 if gpu else 1, repeats=20 if gpu else 2)
            row["train_step_ms"], row["train_peak_gib"] = round(ms, 2), None if peak is None else round(peak, 3)
        except torch.OutOfMemoryError:
            row["note"] = "training step out of memory"
    # not compiled: nnUNetPredictor compiles only when nnUNet_compile is set, and a compiled model recompiles for
    # the predictor's shapes, which costs more device time than the measurement
    if args.prediction and mode in ("eager", "graphs", "as-shipped") and (
            args.prediction_models is None or name in args.prediction_models):
        for mirroring in (False, True):
            key = "case_s_mirror" if mirroring else "case_s"
            # three on the CPU too: one repeat left the mirrored case at the mercy of run-to-run spread (SPEED_NOTES.md)
            row[key] = round(case_prediction_s(runnable, setting, device, mirroring, repeats=3), 3)
    del model, runnable, trained, x
    if gpu:
        torch.cuda.empty_cache()
    return row


def add_speedups(rows: list[dict[str, Any]]) -> None:
    """Ratio of nnU-Net default's time (same setting and mode, same run) over each row's: > 1 means faster."""
    for row in rows:
        ref = next((r for r in rows if r["model"] == REFERENCE and r["setting"] == row["setting"]
                    and r["mode"] == row["mode"]), None)
        if ref is None:
            continue
        for key in ("forward_ms", "train_step_ms", "case_s", "case_s_mirror"):
            if row.get(key) and ref.get(key):
                row[f"{key}_speedup"] = round(ref[key] / row[key], 2)
        if row.get("train_peak_gib") and ref.get("train_peak_gib"):
            row["train_peak_ratio"] = round(row["train_peak_gib"] / ref["train_peak_gib"], 3)


def to_markdown(table: dict[str, Any]) -> str:
    meta = table["metadata"]
    lines = [
        f"# Speed and memory: {meta['device']}",
        "",
        generated_line(meta, f"{meta['precision']}. Speed-ups are nnU-Net default's time over the row's, same setting, "
                             f"mode and run. Copy bandwidth of the card: {meta.get('copy_bandwidth_gbps')} GB/s."),
        "",
        "| Model | Setting | Mode | Params (M) | Fwd b1 (ms) | x | Train step (ms) | x | Train peak (GiB) | "
        "Case (s) | x | Case, mirrored (s) | x | Activations (GB) | Achieved (GB/s) | Note |",
        "|---|---|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---|",
    ]
    for r in table["rows"]:
        lines.append(
            f"| {r['model']} | {r['setting']} (b{r['train_batch']}) | {r['mode']} | {cell(r.get('params_m'), '.3f')} | "
            f"{cell(r.get('forward_ms'), '.2f')} | {cell(r.get('forward_ms_speedup'), '.1f')} | "
            f"{cell(r.get('train_step_ms'), '.1f')} | {cell(r.get('train_step_ms_speedup'), '.1f')} | "
            f"{cell(r.get('train_peak_gib'), '.2f')} | {cell(r.get('case_s'), '.2f')} | "
            f"{cell(r.get('case_s_speedup'), '.1f')} | "
            f"{cell(r.get('case_s_mirror'), '.2f')} | {cell(r.get('case_s_mirror_speedup'), '.1f')} | "
            f"{cell(r.get('activation_gb'), '.2f')} | {cell(r.get('achieved_gbps'), '.0f')} | {r.get('note', '')} |")
    return "\n".join(lines) + "\n"


def device_tag(device: torch.device) -> str:
    if device.type != "cuda":
        return "cpu"
    return re.sub(r"[^a-z0-9]+", "-", torch.cuda.get_device_name(device).lower()).strip("-")


def main(argv: Optional[list[str]] = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--models", nargs="+", default=list(MODELS), help="names from complexity.MODELS")
    parser.add_argument("--settings", nargs="+", default=[s.name for s in SETTINGS])
    parser.add_argument("--modes", nargs="+", default=["eager"], choices=MODES)
    parser.add_argument("--compile-models", nargs="+", default=None,
                        help="models measured under compile too (default: all of --models)")
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--prediction", action="store_true", help="also time whole-case prediction")
    parser.add_argument("--prediction-models", nargs="+", default=None,
                        help="with --prediction: the models whose whole-case prediction is timed (default: all)")
    parser.add_argument("--throughput", action="store_true", help="also find the largest batch and its images/s")
    parser.add_argument("--no-training", action="store_true", help="skip the training step (CPU runs)")
    parser.add_argument("--profile", action="store_true", help="print each eager forward's top kernels")
    parser.add_argument("--out", type=Path, default=Path(__file__).resolve().parent / "results")
    parser.add_argument("--tag", help="file name tag (default: the device)")
    args = parser.parse_args(argv)

    device = torch.device(args.device)
    torch.backends.cudnn.benchmark = True
    unknown = set(args.models) - set(MODELS)
    if unknown:
        parser.error(f"unknown models {sorted(unknown)}; known: {list(MODELS)}")
    meta = provenance(device)
    meta.update({
        "settings": [{**asdict(s), "input_shape": list(s.input_shape)} for s in SETTINGS if s.name in args.settings],
        "cuda": torch.version.cuda, "cudnn": torch.backends.cudnn.version() if device.type == "cuda" else None,
        "precision": "bf16 autocast for forward and training step; nnUNetPredictor's own autocast for cases"
                     if device.type == "cuda" else "float32",
        "copy_bandwidth_gbps": copy_bandwidth_gbps(device),
        "train_batch": TRAIN_BATCH, "cases": {k: list(v) for k, v in CASES.items()},
        "train_peak_over": "warm-up and timed steps",  # earlier files: timed steps only (too low under CUDA graphs)
    })
    tag = args.tag or device_tag(device)
    args.out.mkdir(parents=True, exist_ok=True)
    rows: list[dict[str, Any]] = []
    # every model of a (mode, setting) before the next, in the order given: a run cut short (a time limit) keeps
    # the first ones side by side (a run once measured LightMedSeg's modes and ran out before nnU-Net's first row,
    # SPEED_NOTES.md), and the slow compiled modes can come last; the files are rewritten after every row
    for mode in args.modes:
        for setting in [s for s in SETTINGS if s.name in args.settings]:
            for name in args.models:
                if mode in COMPILE_MODES and args.compile_models is not None and name not in args.compile_models:
                    continue
                torch.manual_seed(0)
                row = speed_row(name, setting, device, mode, args)
                print(json.dumps(row), flush=True)
                rows.append(row)
                add_speedups(rows)
                table = {"metadata": meta, "rows": rows}
                (args.out / f"speed_{tag}.json").write_text(json.dumps(table, indent=2) + "\n")
                (args.out / f"speed_{tag}.md").write_text(to_markdown(table))
    print(to_markdown(table))


if __name__ == "__main__":
    main()
