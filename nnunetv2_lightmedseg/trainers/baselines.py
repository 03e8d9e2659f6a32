"""Baseline trainers for comparisons through the same ``nnUNetv2_train`` / ``nnUNetv2_predict`` path as LightMedSeg.

- ``nnUNetTrainerUNETR`` and ``nnUNetTrainerSwinUNETR``: MONAI's networks (the optional ``baselines`` extra, imported
  only when a network is built, so this module and the core package work without MONAI).
- ``nnUNetTrainerPrimusV3S``: nnU-Net's own ``nnUNet_PrimusV3S_Trainer`` (nnunetv2 2.8.1 with
  dynamic-network-architectures 0.4.4 ships Primus V1, V2 and V3 in S/B/M/L), with the three things 2.8.1 gets wrong
  for us fixed and nothing else changed (see its docstring).

Every baseline, and nnU-Net's own ``nnUNetTrainer``, exists for any training length by name, as every LightMedSeg
trainer does (``<Trainer>_<E>epochs[_<I>iters]``, see ``budgets.py``): ``nnUNetTrainerUNETR_20epochs``,
``nnUNetTrainer_2epochs_10iters`` for the CPU tests. nnU-Net's own ``nnUNetTrainer_Xepochs`` classes are found first.

Fixed-input transformers and the plan's patch
---------------------------------------------
UNETR needs every axis of the patch to be a multiple of its 16^3 ViT patch, SwinUNETR a multiple of 32 (2^5: patch
embedding 2, then four patch mergings), Primus a multiple of 8 (its 8^3 tokens). nnU-Net's plans only guarantee
divisibility by the plan's own strides, so each trainer rounds the patch, per axis, to the nearest multiple (half-way
rounds up, at least one multiple) and writes it into ``plans`` *before* ``nnUNetTrainer.__init__`` runs, like
nnU-Net's own ``_Primus_*_96_BS1`` trainers. The ``plans.json`` saved into the results folder then holds the rounded
patch, and the predictor (which rebuilds the network from that file) and its sliding window use it too. Rounding is
idempotent, so ``--c``/``--val`` (which re-read the preprocessed plans) get the same patch.

On very anisotropic plans this changes the patch a lot. ACDC's 3d_fullres patch [10, 256, 224] becomes
[16, 256, 224] for UNETR, [32, 256, 224] for SwinUNETR and [8, 256, 224] for Primus. Rounding up beyond the volume is
accepted: ACDC's volumes have about 10 slices, so UNETR and SwinUNETR see 6 and 22 slices of padding in most
patches; nnU-Net's data loader pads the image with zeros and the label with background (-1, mapped to 0), and its
sliding window pads the volume and crops the prediction back. Those padded slices cost computation but carry no
information; SwinUNETR in particular pays about 3.2x the voxels of the planned patch on ACDC.

When the rounded patch has more voxels than the planned one, the batch size is reduced so that a batch holds no more
voxels than planned (``floor(batch * planned voxels / rounded voxels)``, never below 2 or above the plan's batch):
nnU-Net sized the batch for the planned patch, and keeping it would multiply activation memory (ACDC's plan has
batch 7: SwinUNETR would otherwise need about 3.2x the memory of a 7 x [10, 256, 224] batch). The batch is written
into ``plans`` as well. A smaller rounded patch keeps the plan's batch.
"""
from __future__ import annotations

import math
from typing import Any, ClassVar, Optional, Sequence, Union

import torch
from nnunetv2.training.lr_scheduler.warmup import Lin_incr_LRScheduler, PolyLRScheduler_offset
from nnunetv2.training.nnUNetTrainer.nnUNetTrainer import nnUNetTrainer
from nnunetv2.training.nnUNetTrainer.primus.primus_trainers import nnUNet_PrimusV3S_Trainer
from nnunetv2.training.nnUNetTrainer.variants.lr_schedule.nnUNetTrainer_warmup import nnUNetTrainer_warmup
from nnunetv2.utilities.helpers import empty_cache
from nnunetv2.utilities.plans_handling.plans_handler import ConfigurationManager, PlansManager
from torch import nn

from nnunetv2_lightmedseg.trainers.common import (
    InputChecks,
    TrainingLength,
    require_3d,
    require_buildable,
    require_divisible_patch,
    unwrap,
)

MONAI_HINT = 'pip install "nnunetv2-lightmedseg[baselines]"'


# ---------------------------------------------------------------------------------------------------------------------
# shared pieces
# ---------------------------------------------------------------------------------------------------------------------
def round_to_multiple(value: int, multiple: int) -> int:
    """The multiple of ``multiple`` nearest to ``value`` (half-way rounds up), at least ``multiple``."""
    return multiple * max(1, math.floor(value / multiple + 0.5))


def rounded_patch(patch_size: Sequence[int], multiple: Sequence[int]) -> list[int]:
    """``patch_size`` rounded per axis to the nearest multiple of ``multiple`` (at least one multiple)."""
    return [round_to_multiple(int(p), int(m)) for p, m in zip(patch_size, multiple)]


def batch_for_patch(batch_size: int, planned_patch: Sequence[int], new_patch: Sequence[int]) -> int:
    """The largest batch whose voxels do not exceed ``batch_size`` planned patches: never above the plan's batch,
    never below 2 (nnU-Net's smallest planned batch) unless the plan's batch already is."""
    fitting = math.floor(batch_size * math.prod(planned_patch) / math.prod(new_patch))
    return max(min(batch_size, 2), min(batch_size, fitting))


class RoundedPatch:
    """Trainer mixin: round the configuration's patch to ``patch_multiple`` in ``plans`` before nnU-Net's trainer
    reads the plans (and shrink the batch when the patch grows, see the module docstring)."""

    patch_multiple: ClassVar[tuple[int, int, int]]

    @classmethod
    def adapt_plans(cls, plans: dict, configuration: str) -> Optional[str]:
        """Round the patch (and maybe the batch) of ``configuration`` in ``plans``, in place; idempotent.

        Returns a message saying what changed, or None. Also used by ``benchmarks/complexity.py`` to measure the
        networks at exactly the patch training uses.
        """
        configuration_manager = PlansManager(plans).get_configuration(configuration)
        require_3d(configuration_manager, cls.__name__)
        planned = [int(p) for p in configuration_manager.patch_size]
        patch = cls.round_patch(planned)
        if patch == planned:
            return None
        batch = batch_for_patch(int(configuration_manager.batch_size), planned, patch)
        # written into the configuration itself (not into the one it inherits from): it overrides inherited values
        plans["configurations"][configuration]["patch_size"] = patch
        plans["configurations"][configuration]["batch_size"] = batch
        return (f"{cls.__name__}: patch_size {planned} -> {patch} (every axis a multiple of "
                f"{list(cls.patch_multiple)}), batch_size {configuration_manager.batch_size} -> {batch}")

    @classmethod
    def round_patch(cls, planned: list[int]) -> list[int]:
        """The patch this network trains on for a planned patch (idempotent)."""
        return rounded_patch(planned, cls.patch_multiple)

    def __init__(self, plans: dict, configuration: str, fold: int, dataset_json: dict,
                 device: torch.device = torch.device("cuda")):
        message = self.adapt_plans(plans, configuration)
        super().__init__(plans, configuration, fold, dataset_json, device)
        if message is not None:
            self.print_to_log_file(message)


class WarmupFraction:
    """Mixin for trainers built on ``nnUNetTrainer_warmup`` (linear warm-up, then poly decay).

    - The warm-up lasts ``warmup_fraction`` of the epochs: nnU-Net's 50 epochs of 1000 (5%) at full length, but also
      5% of a short run. nnU-Net's fixed 50 epochs would make every run of 50 epochs or fewer warm-up only (the
      learning rate would never reach its peak nor decay). At 1000 epochs this is exactly nnU-Net's schedule.
    - ``load_checkpoint`` reads the checkpoint with nnU-Net's own ``nnUNetTrainer.load_checkpoint`` (which passes
      ``weights_only=False``; ``nnUNetTrainer_warmup.load_checkpoint`` omits it, so ``--c`` and ``--val`` fail on
      torch >= 2.6), then sets up the warm-up or the decay stage as ``nnUNetTrainer_warmup`` does.
    """

    warmup_fraction: ClassVar[float] = 0.05

    def __init__(self, plans: dict, configuration: str, fold: int, dataset_json: dict,
                 device: torch.device = torch.device("cuda")):
        super().__init__(plans, configuration, fold, dataset_json, device)
        self.warmup_duration_whole_net = max(1, math.floor(self.warmup_fraction * self.num_epochs + 0.5))

    def load_checkpoint(self, filename_or_checkpoint: Union[dict, str]) -> None:
        nnUNetTrainer.load_checkpoint(self, filename_or_checkpoint)  # weights, epoch, logger, optimizer state
        stage = "warmup_all" if self.current_epoch < self.warmup_duration_whole_net else "train"
        loaded_state = self.optimizer.state_dict()
        optimizer, lr_scheduler = self.configure_optimizers(stage)
        if optimizer is not self.optimizer:  # a new optimizer for the stage: give it the checkpoint's state
            optimizer.load_state_dict(loaded_state)
        self.optimizer, self.lr_scheduler = optimizer, lr_scheduler


class MonaiTransformerTrainer(InputChecks, RoundedPatch, WarmupFraction, TrainingLength, nnUNetTrainer_warmup):
    """Common part of the MONAI baselines: rounded patch, no deep supervision, AdamW with warm-up and poly decay.

    Optimiser: AdamW, lr 1e-4, weight decay 1e-5, PyTorch's default betas (0.9, 0.999): the settings of the UNETR and
    SwinUNETR authors (MONAI research-contributions ``UNETR/BTCV`` and ``SWINUNETR/BTCV``: ``--optim_name adamw
    --optim_lr 1e-4 --reg_weight 1e-5``; MONAI's BTCV and BraTS tutorials use the same).
    Schedule: linear warm-up from lr/W to lr over the first W = 5% of the epochs (``Lin_incr_LRScheduler``), then
    nnU-Net's poly decay (exponent 0.9) to 0 at the last epoch (``PolyLRScheduler_offset``), stepped per epoch: the
    schedule of ``nnUNetTrainer_warmup`` and of nnU-Net's Primus trainers, only the optimiser differs. The authors'
    scripts use a linear warm-up then cosine decay (``LinearWarmupCosineAnnealingLR``, 50 of 5000 epochs); poly 0.9
    and cosine both decay smoothly to 0 and differ little, and nnU-Net's machinery gives the same schedule (and the
    same stage switch on ``--c``) to all three transformer baselines. Everything else is nnU-Net's (loss, data
    augmentation, gradient clipping at norm 12, 250 iterations per epoch, 1000 epochs).
    """

    initial_learning_rate: ClassVar[float] = 1e-4
    adamw_weight_decay: ClassVar[float] = 1e-5
    network_options: ClassVar[dict[str, Any]] = {}

    def __init__(self, plans: dict, configuration: str, fold: int, dataset_json: dict,
                 device: torch.device = torch.device("cuda")):
        super().__init__(plans, configuration, fold, dataset_json, device)
        self.initial_lr = self.initial_learning_rate
        self.weight_decay = self.adamw_weight_decay
        self.enable_deep_supervision = False

    @classmethod
    def build_network_architecture(cls, plans_manager: PlansManager, configuration_manager: ConfigurationManager,
                                   num_input_channels: int, num_output_channels: int,
                                   enable_deep_supervision: bool = True) -> nn.Module:
        # a classmethod, not nnU-Net's staticmethod: the predictor calls it on the class, so cls gives the network
        require_buildable(cls, configuration_manager)
        require_divisible_patch(configuration_manager.patch_size, cls.patch_multiple, cls.__name__)
        return cls.make_network(tuple(int(p) for p in configuration_manager.patch_size), num_input_channels,
                                num_output_channels)

    @classmethod
    def make_network(cls, patch_size: tuple[int, int, int], num_input_channels: int,
                     num_output_channels: int) -> nn.Module:
        raise NotImplementedError

    @classmethod
    def _monai_nets(cls):
        try:
            from monai.networks import nets
        except ImportError as error:
            raise ImportError(f"{cls.__name__} builds a MONAI network, and MONAI is not installed. MONAI is an "
                              f"optional dependency of nnunetv2-lightmedseg: {MONAI_HINT}") from error
        return nets

    def configure_optimizers(self, stage: str = "warmup_all"):
        """``nnUNetTrainer_warmup.configure_optimizers`` with AdamW instead of SGD."""
        assert stage in ("warmup_all", "train")
        if self.training_stage == stage:
            return self.optimizer, self.lr_scheduler
        if stage == "train" and self.training_stage == "warmup_all":
            optimizer = self.optimizer  # keep AdamW's moments across the switch, as nnU-Net does
        else:
            optimizer = torch.optim.AdamW(unwrap(self.network).parameters(), self.initial_lr,
                                          weight_decay=self.weight_decay)
        if stage == "warmup_all":
            lr_scheduler = Lin_incr_LRScheduler(optimizer, self.initial_lr, self.warmup_duration_whole_net)
        else:
            lr_scheduler = PolyLRScheduler_offset(optimizer, self.initial_lr, self.num_epochs,
                                                  self.warmup_duration_whole_net)
        self.print_to_log_file(f"AdamW (lr {self.initial_lr}, weight decay {self.weight_decay}), stage {stage}: "
                               f"{self.warmup_duration_whole_net} warm-up epochs of {self.num_epochs}, "
                               f"set up at epoch {self.current_epoch}")
        self.training_stage = stage
        empty_cache(self.device)
        return optimizer, lr_scheduler

    def set_deep_supervision_enabled(self, enabled: bool) -> None:
        pass  # single-output networks: nothing to switch


# ---------------------------------------------------------------------------------------------------------------------
# UNETR
# ---------------------------------------------------------------------------------------------------------------------
class nnUNetTrainerUNETR(MonaiTransformerTrainer):
    """UNETR (Hatamizadeh et al., WACV 2022) from MONAI, in nnU-Net's pipeline without deep supervision.

    Network: MONAI's BTCV configuration: ViT-B/16 encoder (hidden size 768, MLP 3072, 12 heads, 12 layers, 16^3
    patches with a linear ("perceptron") projection as in the paper and the tutorial), feature size 16, instance
    norm, convolutional skip blocks and residual decoder blocks (``conv_block=True, res_block=True``), no dropout.
    The position embedding depends on the patch, so the patch is rounded to a multiple of 16 on every axis (module
    docstring). Optimiser and schedule: see ``MonaiTransformerTrainer``.
    """

    patch_multiple = (16, 16, 16)
    network_options = dict(feature_size=16, hidden_size=768, mlp_dim=3072, num_heads=12, proj_type="perceptron",
                           norm_name="instance", conv_block=True, res_block=True, dropout_rate=0.0)

    @classmethod
    def make_network(cls, patch_size, num_input_channels, num_output_channels):
        return cls._monai_nets().UNETR(in_channels=num_input_channels, out_channels=num_output_channels,
                                       img_size=patch_size, spatial_dims=3, **cls.network_options)


# ---------------------------------------------------------------------------------------------------------------------
# SwinUNETR
# ---------------------------------------------------------------------------------------------------------------------
class nnUNetTrainerSwinUNETR(MonaiTransformerTrainer):
    """SwinUNETR (Hatamizadeh et al., BrainLes 2021) from MONAI, in nnU-Net's pipeline without deep supervision.

    Network: MONAI's BTCV/BraTS configuration: feature size 48, Swin depths (2, 2, 2, 2), heads (3, 6, 12, 24),
    window 7, 2^3 patch embedding, instance norm, no dropout, v1 blocks (``use_v2=False``). Gradient checkpointing
    (the tutorials' ``use_checkpoint=True``, a memory-for-time trade that changes no result) is off: set
    ``network_options`` in a subclass to turn it on for small GPUs. The patch is rounded to a multiple of 32 on every
    axis (module docstring); and since its deepest stage (1/32 of the patch) goes through instance norm, which needs
    more than one voxel in training, a patch that rounds to 32^3 gets 64 on its longest planned axis (only tiny
    plans, like the tests' 32^3 one, are affected). Optimiser and schedule: see ``MonaiTransformerTrainer``.
    """

    patch_multiple = (32, 32, 32)
    network_options = dict(feature_size=48, depths=(2, 2, 2, 2), num_heads=(3, 6, 12, 24), norm_name="instance",
                           drop_rate=0.0, attn_drop_rate=0.0, dropout_path_rate=0.0, use_checkpoint=False,
                           use_v2=False)

    @classmethod
    def round_patch(cls, planned: list[int]) -> list[int]:
        patch = super().round_patch(planned)
        if math.prod(p // m for p, m in zip(patch, cls.patch_multiple)) == 1:
            axis = max(range(len(planned)), key=lambda i: (planned[i], i))  # the longest axis, the last on a tie
            patch[axis] = 2 * cls.patch_multiple[axis]
        return patch

    @classmethod
    def make_network(cls, patch_size, num_input_channels, num_output_channels):
        return cls._monai_nets().SwinUNETR(in_channels=num_input_channels, out_channels=num_output_channels,
                                           spatial_dims=3, **cls.network_options)


# ---------------------------------------------------------------------------------------------------------------------
# Primus (nnU-Net's own)
# ---------------------------------------------------------------------------------------------------------------------
class nnUNetTrainerPrimusV3S(InputChecks, RoundedPatch, WarmupFraction, TrainingLength, nnUNet_PrimusV3S_Trainer):
    """nnU-Net 2.8.1's ``nnUNet_PrimusV3S_Trainer`` (Primus, Wald et al. 2025, V3 stem, size S), made usable here.

    Unchanged: the network (``PrimusV3S``, 8^3 tokens, drop path 0.2, LayerScale 0.1), no deep supervision, AdamW
    (lr 3e-4, weight decay 5e-2, betas (0.9, 0.98)), gradient clipping at norm 1, linear warm-up then poly decay.
    Fixed:

    1. ``--c`` and ``--val``: ``nnUNetTrainer_warmup.load_checkpoint`` calls ``torch.load`` without
       ``weights_only=False`` and fails on torch >= 2.6; this one loads through ``nnUNetTrainer.load_checkpoint``
       (see ``WarmupFraction``).
    2. Patch: Primus raises a bare ``AssertionError`` unless every axis is a multiple of 8 (ACDC's plan has 10
       slices); the patch is rounded to the nearest multiple of 8 in ``plans`` before ``__init__`` (module docstring).
    3. Warm-up length: 5% of the epochs instead of a fixed 50 (identical at nnU-Net's 1000 epochs; with a fixed 50,
       the ``_50epochs`` variant and shorter ones would never leave the warm-up).
    """

    patch_multiple = (8, 8, 8)
