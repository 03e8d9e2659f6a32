"""Shim that nnU-Net imports (as a top-level module) through ``nnUNet_extTrainer``.

It defines nothing: it re-exports the trainer classes from their canonical module, so nnU-Net gets the same
class objects as a Python user who imports ``nnunetv2_lightmedseg.trainers``, and the trainers named by their
training length (``<Trainer>_<E>epochs[_<I>iters]``), made on first use.
"""
from nnunetv2_lightmedseg.trainers import *  # noqa: F401,F403
from nnunetv2_lightmedseg.trainers import __all__, __getattr__  # noqa: F401
