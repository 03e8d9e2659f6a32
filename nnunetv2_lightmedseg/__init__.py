"""nnU-Net v2 extension that trains LightMedSeg (arXiv 2603.07228) through the stock ``nnUNetv2_*`` commands.

nnU-Net finds trainers outside its own package only through the ``nnUNet_extTrainer`` environment variable;
:func:`enable` sets it for this process (and the processes it starts), ``lightmedseg env`` prints the line
for a shell.
"""
from __future__ import annotations

import os
from pathlib import Path

__version__ = "0.2.0"

#: The folder to put on ``nnUNet_extTrainer``. It holds one shim module that re-exports our trainer classes;
#: pointing nnU-Net at the package root instead would import our modules a second time under other names.
EXT_TRAINER_DIR = str(Path(__file__).resolve().parent / "ext_trainers")


def ext_trainer_value(current: str | None = None) -> str:
    """``nnUNet_extTrainer`` with our folder added (kept once) to ``current`` (default: the environment's)."""
    current = os.environ.get("nnUNet_extTrainer", "") if current is None else current
    paths = [p for p in current.split(os.pathsep) if p.strip()]
    if not any(os.path.realpath(p) == EXT_TRAINER_DIR for p in paths):
        paths.append(EXT_TRAINER_DIR)
    return os.pathsep.join(paths)


def enable() -> str:
    """Make nnU-Net find our trainers in this process and its children. Idempotent; returns the new value."""
    os.environ["nnUNet_extTrainer"] = ext_trainer_value()
    return os.environ["nnUNet_extTrainer"]
