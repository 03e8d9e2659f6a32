"""Trainers named by their training length: ``<Trainer>_<E>epochs`` and ``<Trainer>_<E>epochs_<I>iters``.

nnU-Net's way to train for another length is a class of its own (``nnUNetTrainer_20epochs``), so that the results
folder names the length and ``--c`` continues it with that length. Such a class exists here for every trainer of
this package and for nnU-Net's ``nnUNetTrainer``, made on first use from the name: ``E`` epochs of ``I`` training
iterations (nnU-Net's 250 when absent) and ``I / 5`` validation iterations (nnU-Net's ratio, 250 to 50), and a
checkpoint every ``E / 10`` epochs (nnU-Net's 50 of 1000, at least every epoch), so that a short training that stops
loses at most a tenth of its epochs; nothing else changed. nnU-Net finds them by name through the shim on
``nnUNet_extTrainer``, at training and at prediction. A class that is defined explicitly (nnU-Net's own
``nnUNetTrainer_20epochs``, say) is found first and keeps its definition.
"""
from __future__ import annotations

import re
from typing import Optional

from nnunetv2.training.nnUNetTrainer.nnUNetTrainer import nnUNetTrainer

from nnunetv2_lightmedseg.trainers.common import TrainingLength

NAME = re.compile(r"^(?P<base>nnUNetTrainer\w*?)_(?P<epochs>[1-9]\d*)epochs(?:_(?P<iterations>[1-9]\d*)iters)?$")
DEFAULT_ITERATIONS = 250
_made: dict[str, type] = {}


def base_trainer_name(trainer: str) -> str:
    """``trainer`` without the length in its name (``nnUNetTrainerLightMedSeg_20epochs`` ->
    ``nnUNetTrainerLightMedSeg``); a name without one is returned as it is."""
    match = NAME.match(trainer)
    return match["base"] if match else trainer


def budget_trainer_name(trainer: str, epochs: int, iterations: Optional[int] = None) -> str:
    """The name of ``trainer`` trained for ``epochs`` x ``iterations`` (default nnU-Net's 250 per epoch).

    A name that already says that length is returned as it is (``nnUNetTrainerLightMedSeg_5epochs_30iters`` for 5
    x 30), a name without one is suffixed (``nnUNetTrainerLightMedSeg`` -> ``nnUNetTrainerLightMedSeg_20epochs``), and
    a name that says another length is refused (ValueError).
    """
    iterations = iterations or DEFAULT_ITERATIONS
    match = NAME.match(trainer)
    if match:
        named = (int(match["epochs"]), int(match["iterations"] or DEFAULT_ITERATIONS))
        if named != (epochs, iterations):
            raise ValueError(f"{trainer} trains {named[0]} epochs x {named[1]} iterations, not {epochs} x {iterations}:"
                             f" name the trainer without its length ({match['base']}) or with this one")
        return trainer
    return f"{trainer}_{epochs}epochs" + ("" if iterations == DEFAULT_ITERATIONS else f"_{iterations}iters")


def budget_trainer(name: str, bases: dict[str, type]) -> Optional[type]:
    """The trainer class ``name`` of the form ``<base>_<E>epochs[_<I>iters]`` for ``base`` in ``bases`` (or
    nnU-Net's ``nnUNetTrainer``), made once and kept; None for any other name."""
    if name in _made:
        return _made[name]
    match = NAME.match(name)
    if match is None:
        return None
    base = bases.get(match["base"]) or (nnUNetTrainer if match["base"] == "nnUNetTrainer" else None)
    if base is None:
        return None
    iterations = int(match["iterations"] or DEFAULT_ITERATIONS)
    # the package module resolves the name again (pickling finds the class there)
    attributes = {"epochs": int(match["epochs"]), "__module__": "nnunetv2_lightmedseg.trainers", "__qualname__": name,
                  "__doc__": f"{match['base']} for {match['epochs']} epochs x {iterations} iterations."}
    attributes["checkpoint_every"] = max(1, min(50, attributes["epochs"] // 10))
    if match["iterations"]:
        attributes.update(iterations_per_epoch=iterations, val_iterations_per_epoch=max(1, iterations // 5))
    _made[name] = type(name, (base,) if issubclass(base, TrainingLength) else (TrainingLength, base), attributes)
    return _made[name]
