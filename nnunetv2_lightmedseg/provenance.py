"""Where a result was measured: date, command, machine, device and versions, for every results file.

One place for what the demo and the scripts in ``benchmarks/`` write beside their numbers, so that two results
files can be compared by the same keys.
"""
from __future__ import annotations

import datetime
import os
import platform
import shlex
import sys
from importlib.metadata import PackageNotFoundError, version
from pathlib import Path
from typing import Any, Optional

import torch
from joblib import cpu_count

import nnunetv2_lightmedseg

PACKAGES = ("nnunetv2", "dynamic-network-architectures")


def cpu_model() -> str:
    """The CPU's model name, with family and model numbers where /proc/cpuinfo has them: a virtual machine often
    names only the vendor ("AMD EPYC"), and CPUs of one name can differ several-fold in a training step."""
    try:
        fields = dict(line.split(":", 1) for line in Path("/proc/cpuinfo").read_text().split("\n\n")[0].splitlines()
                      if ":" in line)
    except OSError:
        return platform.processor() or platform.machine()
    fields = {key.strip(): value.strip() for key, value in fields.items()}
    name = fields.get("model name") or platform.processor() or platform.machine()
    if "cpu family" in fields and "model" in fields:
        name += f" (family {fields['cpu family']}, model {fields['model']})"
    return name


def device_name(device: Optional[torch.device | str] = None) -> str:
    """The GPU's name for a CUDA ``device``; with none given, every visible GPU ("4 x NVIDIA H200"); else the CPU's
    ("CPU: ...")."""
    device = torch.device(device) if device is not None else None
    if device is None and torch.cuda.is_available():
        count = torch.cuda.device_count()
        return torch.cuda.get_device_name() if count == 1 else f"{count} x {torch.cuda.get_device_name()}"
    if device is not None and device.type == "cuda":
        return torch.cuda.get_device_name(device)
    return f"CPU: {cpu_model()}"


def provenance(device: Optional[torch.device | str] = None, command: Optional[str] = None) -> dict[str, Any]:
    """Date (UTC, ISO 8601), the command (default: this process's), device, CPU and versions.

    ``cpu_count`` is what this process may use (affinity and a container's CPU quota counted, by joblib);
    ``cpu_capability`` the instruction set PyTorch's CPU kernels use (AVX2, AVX512, ...); ``load_average`` the
    machine's over the last 1, 5 and 15 minutes, taken now (a timing on a loaded machine says little).
    """
    versions = {}
    for package in PACKAGES:
        try:
            versions[package] = version(package)
        except PackageNotFoundError:  # complexity and speed tables are still useful without nnU-Net
            versions[package] = None
    return {
        "date": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
        "command": command or shlex.join(sys.orig_argv),
        "device": device_name(device),
        "cpu": cpu_model(), "cpu_count": cpu_count(), "cpu_capability": torch.backends.cpu.get_cpu_capability(),
        "torch_threads": torch.get_num_threads(), "load_average": [round(load, 2) for load in os.getloadavg()],
        "platform": platform.platform(), "python": platform.python_version(), "torch": torch.__version__,
        "nnunetv2-lightmedseg": nnunetv2_lightmedseg.__version__, **versions,
    }
