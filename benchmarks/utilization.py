"""The card's utilisation during a device session of trainings, as a results file.

``benchmarks/device/recipe_session.sh`` samples the GPU's utilisation and the 1-minute load average every 15 s into
``utilization.txt`` (in its ``out.tgz``). This reads it with the nnU-Net training logs of the session's trainings,
which say when training ran (from the first "Epoch 0" to the last "Training done."), and writes
``benchmarks/results/utilization_NAME.json`` beside the session's ``accuracy_NAME.json`` (whose versions it
repeats: the device's, from the trainings' debug.json): every sample, and how many of the training's samples found
the GPU busy, which says whether the trainings were bound by the card or by something before it.

Usage::

    python benchmarks/utilization.py --samples out/utilization.txt --training-logs FOLD/training_log_*.txt \\
        --name acdc_20epochs_refinedHead_fold0 --command "the session's command" --device "1 x NVIDIA H200 (16 CPUs)"
"""
from __future__ import annotations

import argparse
import json
import re
import statistics
from pathlib import Path
from typing import Any, Optional, Sequence

from common import RESULTS

LOG_TIME = re.compile(r"^(\d{4}-\d{2}-\d{2}) (\d{2}:\d{2}:\d{2})\.\d+: (Epoch 0|Training done\.)\s*$")


def training_window(logs: Sequence[Path]) -> tuple[str, str, str]:
    """(date, first training start, last training end) of nnU-Net training logs, times as HH:MM:SS (UTC)."""
    starts, ends, dates = [], [], set()
    for log in logs:
        for line in log.read_text().splitlines():
            match = LOG_TIME.match(line)
            if match:
                dates.add(match[1])
                (starts if match[3] == "Epoch 0" else ends).append(match[2])
    if not starts or not ends:
        raise ValueError(f"no 'Epoch 0' and 'Training done.' lines in {[str(p) for p in logs]}: did training end?")
    return min(dates), min(starts), max(ends)


def read_samples(path: Path) -> list[dict[str, Any]]:
    """The samples of recipe_session.sh's utilization.txt (header line first; a sample without a GPU reading is
    kept with None)."""
    samples = []
    for line in path.read_text().splitlines()[1:]:
        fields = line.split()
        if len(fields) < 2:
            continue
        util = int(fields[2]) if len(fields) > 2 else None
        memory = int(fields[3]) if len(fields) > 3 else None
        samples.append({"time_utc": fields[0], "load_1min": float(fields[1]), "gpu_util_percent": util,
                        "gpu_mem_mib": memory})
    return samples


def summarize(samples: list[dict[str, Any]], start: str, end: str) -> dict[str, Any]:
    training = [s for s in samples if start <= s["time_utc"] <= end and s["gpu_util_percent"] is not None]
    busy = [s["gpu_util_percent"] for s in training]
    return {
        "samples": len(samples),
        "samples_at_100_percent": sum(s["gpu_util_percent"] == 100 for s in samples),
        "training_utc": [start, end],
        "training_samples": len(training),
        "training_samples_at_90_percent_or_more": sum(u >= 90 for u in busy),
        "training_median_gpu_util_percent": statistics.median(busy) if busy else None,
        "training_median_load_1min": statistics.median(s["load_1min"] for s in training) if training else None,
    }


def main(argv: Optional[list[str]] = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--samples", type=Path, required=True, help="recipe_session.sh's utilization.txt")
    parser.add_argument("--training-logs", type=Path, nargs="+", required=True)
    parser.add_argument("--name", required=True, help="the session's table name (results file utilization_NAME)")
    parser.add_argument("--command", required=True, help="the device command that ran the session")
    parser.add_argument("--device", required=True, help='e.g. "1 x NVIDIA H200 (16 CPUs)"')
    parser.add_argument("--out", type=Path, default=RESULTS)
    args = parser.parse_args(argv)
    date, start, end = training_window(args.training_logs)
    samples = read_samples(args.samples)
    accuracy = json.loads((args.out / f"accuracy_{args.name}.json").read_text())["metadata"]
    metadata = {"date": date, "device": args.device, "torch": accuracy["torch"], "nnunetv2": accuracy["nnunetv2"],
                "command": args.command,
                "what": f"the card's utilisation and the 1-minute load average every 15 s, sampled by "
                        f"recipe_session.sh during the run of accuracy_{args.name}.json; training from the nnU-Net "
                        f"training logs ({', '.join(p.name for p in args.training_logs)})",
                **summarize(samples, start, end)}
    path = args.out / f"utilization_{args.name}.json"
    path.write_text(json.dumps({"metadata": metadata, "samples": samples}, indent=1) + "\n")
    print(json.dumps(metadata, indent=1))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
