"""What every trainer of this package shares: training length by class attribute, plan checks, unwrapping."""
from __future__ import annotations

import importlib
import os
from pathlib import Path
from typing import Optional, Sequence

import numpy as np
import torch
from nnunetv2.training.dataloading.nnunet_dataset import infer_dataset_class
from nnunetv2.utilities.plans_handling.plans_handler import ConfigurationManager
from torch import nn
from torch._dynamo import OptimizedModule
from torch.nn.parallel import DistributedDataParallel

import nnunetv2_lightmedseg


class TrainingLength:
    """Mixin for nnU-Net trainers: the class attributes replace nnU-Net's 1000 epochs x (250 + 50) iterations
    and its checkpoint interval (``checkpoint_latest.pth`` every 50 epochs).

    A variant is then one class attribute, e.g. ``class X_100epochs(X): epochs = 100``; None keeps nnU-Net's value.
    The explicit ``__init__`` signature matters: nnU-Net records it to re-create the trainer from a checkpoint.
    """

    epochs: Optional[int] = None
    iterations_per_epoch: Optional[int] = None
    val_iterations_per_epoch: Optional[int] = None
    checkpoint_every: Optional[int] = None

    def __init__(self, plans: dict, configuration: str, fold: int, dataset_json: dict,
                 device: torch.device = torch.device("cuda")):
        super().__init__(plans, configuration, fold, dataset_json, device)
        if self.epochs is not None:
            self.num_epochs = self.epochs
        if self.iterations_per_epoch is not None:
            self.num_iterations_per_epoch = self.iterations_per_epoch
        if self.val_iterations_per_epoch is not None:
            self.num_val_iterations_per_epoch = self.val_iterations_per_epoch
        if self.checkpoint_every is not None:
            self.save_every = self.checkpoint_every


class InputChecks:
    """Mixin for nnU-Net trainers: one clear error, instead of a late traceback or silent NaN, for two bad inputs.

    - fewer than 5 training cases and no ``splits_final.json``: nnU-Net's 5-fold split cannot be made;
    - NaN or Inf voxels in the images: nnU-Net's normalisation spreads them and the loss becomes NaN. Checked only
      when a step's loss is not finite (nnU-Net has already copied the loss to the CPU), so it costs nothing.
    """

    def do_split(self):
        splits_file = Path(self.preprocessed_dataset_folder_base) / "splits_final.json"
        if self.fold != "all" and not splits_file.is_file():
            if self.dataset_class is None:
                self.dataset_class = infer_dataset_class(self.preprocessed_dataset_folder)
            cases = self.dataset_class.get_identifiers(self.preprocessed_dataset_folder)
            if len(cases) < 5:
                raise RuntimeError(
                    f"Only {len(cases)} training case(s) and no {splits_file}: nnU-Net's default 5-fold "
                    f"cross-validation needs at least 5 cases. Train on all cases with fold 'all' "
                    f"(nnUNetv2_train DATASET 3d_fullres all ...), or write splits_final.json with your own splits.")
        return super().do_split()

    def train_step(self, batch: dict) -> dict:
        result = super().train_step(batch)
        if not np.isfinite(result["loss"]) and not torch.isfinite(batch["data"]).all():
            cases = batch.get("keys")
            raise ValueError(
                f"The training batch (cases {list(cases) if cases is not None else 'unknown'}) contains NaN or Inf "
                "voxels, so the loss is not finite. Find the images with `nnUNetv2_plan_and_preprocess -d DATASET "
                "--verify_dataset_integrity`, replace those voxels in the raw images (e.g. by 0 or the background "
                "value), and preprocess again.")
        return result


def unwrap(network: nn.Module) -> nn.Module:
    """The module itself, under DistributedDataParallel and torch.compile wrappers."""
    if isinstance(network, DistributedDataParallel):
        network = network.module
    if isinstance(network, OptimizedModule):
        network = network._orig_mod
    return network


def require_3d(configuration_manager: ConfigurationManager, trainer_name: str) -> None:
    """One clear error for a 2D configuration given to a 3D-only network."""
    patch = configuration_manager.patch_size
    if len(patch) != 3:
        raise ValueError(f"{trainer_name} trains a 3D network, but this configuration has a {len(patch)}D patch "
                         f"{list(patch)}. Use 3d_fullres, 3d_lowres or 3d_cascade_fullres instead of 2d.")


def strides_from_plan(configuration_manager: ConfigurationManager, num_stages: int) -> list[tuple[int, int, int]]:
    """The plan's strides after the leading (1, 1, 1), first ``num_stages``, padded with (1, 1, 1).

    Their product divides every patch the plan makes, since the plan's own strides do.
    """
    planned = [tuple(int(v) for v in s) for s in configuration_manager.pool_op_kernel_sizes[1:]]
    return (planned + [(1, 1, 1)] * num_stages)[:num_stages]


def require_divisible_patch(patch_size: Sequence[int], divisor: Sequence[int], trainer_name: str) -> None:
    """One clear error for a patch the network cannot take (a hand-edited plan, say)."""
    if any(p % d for p, d in zip(patch_size, divisor)):
        raise ValueError(f"{trainer_name} cannot take the plan's patch_size {list(patch_size)}: every axis must be a "
                         f"multiple of the network's total stride {list(divisor)}. Set patch_size in plans.json to a "
                         f"multiple of {list(divisor)} (the planned patch always is) and preprocess again if needed.")


def require_buildable(cls: type, configuration_manager: ConfigurationManager) -> None:
    """The checks that every trainer's ``build_network_architecture`` makes first: one of our trainer classes (not a
    second copy of our modules) and a 3D configuration."""
    require_canonical_class(cls)
    require_3d(configuration_manager, cls.__name__)


def require_canonical_class(cls: type) -> None:
    """One clear error when nnU-Net loaded a second copy of our trainer modules.

    That happens when ``nnUNet_extTrainer`` points at a folder inside the package other than its shim folder:
    nnU-Net then imports our modules again as top-level modules (``lightmedseg``, ``common``, ...), whose classes
    are other objects than ours. A user's own subclass of our trainers, defined in any module of the user's, is
    accepted: only classes of a second copy of our modules are refused.
    """
    for klass in cls.__mro__:
        if klass.__module__.startswith("nnunetv2_lightmedseg."):
            continue
        original = None
        for package in ("nnunetv2_lightmedseg.trainers", "nnunetv2_lightmedseg"):  # where such a folder can lie
            name = f"{package}.{klass.__module__}"
            try:  # imported afresh if nnU-Net's lookup dropped our modules from sys.modules: a third copy, still
                # another object than the class at hand
                original = getattr(importlib.import_module(name), klass.__qualname__, None)
            except ImportError:
                continue
            break
        if isinstance(original, type) and original is not klass:
            raise RuntimeError(
                f"nnU-Net loaded {cls.__name__} with a second copy of nnunetv2_lightmedseg's class "
                f"{klass.__qualname__} (from module {klass.__module__!r} instead of {original.__module__!r}): "
                f"nnUNet_extTrainer points at a folder inside the package other than its shim folder. Set it with "
                f"`eval \"$(lightmedseg env)\"`, i.e. nnUNet_extTrainer={nnunetv2_lightmedseg.EXT_TRAINER_DIR} "
                f"(your own trainer folders may stand beside it, separated by '{os.pathsep}').")
