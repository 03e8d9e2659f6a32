"""Shim that nnU-Net imports (as a top-level module) through ``nnUNet_extTrainer``.

It defines nothing: it re-exports the trainer classes from their canonical module, so nnU-Net gets the same
class objects as a Python user who imports ``nnunetv2_lightmedseg.trainers``.
"""
from nnunetv2_lightmedseg.trainers import *  # noqa: F401,F403
from nnunetv2_lightmedseg.trainers import __all__  # noqa: F401
