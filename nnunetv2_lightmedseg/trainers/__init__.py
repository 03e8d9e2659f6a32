"""nnU-Net trainers of this package. nnU-Net finds them through ``nnUNet_extTrainer`` (see ``lightmedseg env``).

Every ``nnUNetTrainer*`` class defined in ``lightmedseg`` and ``baselines`` is exported, so a new variant needs no
second list here, and so is each of them for any training length, by name (``<Trainer>_<E>epochs[_<I>iters]``,
see ``budgets``). Importing this package does not import MONAI: the MONAI baselines import it only when they
build their network.
"""
from nnunetv2_lightmedseg.trainers import baselines, lightmedseg
from nnunetv2_lightmedseg.trainers.budgets import budget_trainer, budget_trainer_name  # noqa: F401 (API)

__all__ = sorted(name for module in (lightmedseg, baselines) for name, value in vars(module).items()
                 if name.startswith("nnUNetTrainer") and isinstance(value, type)
                 and value.__module__ == module.__name__)
globals().update({name: getattr(lightmedseg, name, None) or getattr(baselines, name) for name in __all__})


def __getattr__(name: str) -> type:
    trainer = budget_trainer(name, {n: globals()[n] for n in __all__})
    if trainer is None:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    return trainer
