"""nnU-Net trainers of this package. nnU-Net finds them through ``nnUNet_extTrainer`` (see ``lightmedseg env``).

Every ``nnUNetTrainer*`` class defined in ``lightmedseg`` and ``baselines`` is exported, so a new variant needs no
second list here. Importing this package does not import MONAI: the MONAI baselines import it only when they
build their network.
"""
from nnunetv2_lightmedseg.trainers import baselines, lightmedseg

__all__ = sorted(name for module in (lightmedseg, baselines) for name, value in vars(module).items()
                 if name.startswith("nnUNetTrainer") and isinstance(value, type)
                 and value.__module__ == module.__name__)
globals().update({name: getattr(lightmedseg, name, None) or getattr(baselines, name) for name in __all__})
