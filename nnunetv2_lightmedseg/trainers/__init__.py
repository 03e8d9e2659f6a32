"""nnU-Net trainers of this package. nnU-Net finds them through ``nnUNet_extTrainer`` (see ``lightmedseg env``)."""
from nnunetv2_lightmedseg.trainers.lightmedseg import (
    nnUNetTrainerLightMedSeg, nnUNetTrainerLightMedSeg_2epochs_10iters, nnUNetTrainerLightMedSeg_5epochs,
    nnUNetTrainerLightMedSeg_50epochs, nnUNetTrainerLightMedSeg_100epochs, nnUNetTrainerLightMedSeg_250epochs,
    nnUNetTrainerLightMedSeg_base, nnUNetTrainerLightMedSeg_large, nnUNetTrainerLightMedSeg_noDS,
    nnUNetTrainerLightMedSeg_small, nnUNetTrainerLightMedSeg_tiny)

__all__ = [
    "nnUNetTrainerLightMedSeg", "nnUNetTrainerLightMedSeg_2epochs_10iters", "nnUNetTrainerLightMedSeg_5epochs",
    "nnUNetTrainerLightMedSeg_50epochs", "nnUNetTrainerLightMedSeg_100epochs", "nnUNetTrainerLightMedSeg_250epochs",
    "nnUNetTrainerLightMedSeg_base", "nnUNetTrainerLightMedSeg_large", "nnUNetTrainerLightMedSeg_noDS",
    "nnUNetTrainerLightMedSeg_small", "nnUNetTrainerLightMedSeg_tiny",
]
