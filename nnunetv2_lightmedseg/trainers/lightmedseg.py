"""nnU-Net trainers for LightMedSeg: the default one and its short, stable-named variants.

Class names are a persistent API: results folders, checkpoints and nnU-Net's ensembling refer to them by name.
"""
from __future__ import annotations

import os
from typing import Any, ClassVar

import torch
from nnunetv2.training.nnUNetTrainer.nnUNetTrainer import nnUNetTrainer
from nnunetv2.utilities.plans_handling.plans_handler import ConfigurationManager, PlansManager
from torch import nn

from nnunetv2_lightmedseg.architectures import LightMedSeg, deep_supervision_scales, get_preset, total_stride
from nnunetv2_lightmedseg.execution import accelerate
from nnunetv2_lightmedseg.trainers.common import (
    InputChecks,
    TrainingLength,
    require_buildable,
    require_divisible_patch,
    strides_from_plan,
    unwrap,
)
from nnunetv2_lightmedseg.trainers.gpu_augmentation import DeviceAugmentation
from nnunetv2_lightmedseg.trainers.recipes import RecipeTraining


class nnUNetTrainerLightMedSeg(InputChecks, RecipeTraining, DeviceAugmentation, TrainingLength, nnUNetTrainer):
    """LightMedSeg (``paper`` preset, 0.48M parameters) in nnU-Net's pipeline, with deep supervision.

    Strides come from the plan (its strides after the leading (1, 1, 1), first N, padded with (1, 1, 1)), so every
    planned patch fits; deep-supervision scales are the network's real output scales (1, 1/s_0, 1/(s_0 s_1), ...).
    Training recipe ``adamw`` (``recipes.RECIPES``): AdamW, lr 2e-3, weight decay 1e-4, nnU-Net's poly decay;
    everything else nnU-Net's (loss, deep-supervision weights, clipping, augmentation, 1000 epochs x 250
    iterations). nnU-Net's own recipe, this trainer's default before 0.2, is ``nnUNetTrainerLightMedSeg_nnUNetSGD``;
    ``--c`` on a folder trained with it continues with it.

    ``nnUNetTrainerLightMedSeg_gpuDA`` runs nnU-Net's training augmentation batched on the GPU
    (``DeviceAugmentation``: the same transforms, probabilities and ranges; the data loader processes only load and
    crop), since for a network this small nnU-Net's CPU augmentation workers set the pace of training.

    The network is built with ``execution.accelerate``: fast float32 CPU kernels, and on a GPU its inference forward
    replayed from CUDA graphs (``LIGHTMEDSEG_CUDA_GRAPHS=0`` in the environment runs it eagerly instead);
    ``training_graphs`` replays its training forward and backward too (``nnUNetTrainerLightMedSeg_graphedStep``).

    Variants set ``preset`` (a name in ``nnunetv2_lightmedseg.architectures.PRESETS``), ``network_options``
    (fields of ``LightMedSegConfig``, e.g. ablation switches), ``recipe``, ``batch_multiplier`` (patches per
    iteration, as a multiple of the plan's batch) or the ``TrainingLength`` attributes.
    """

    recipe: ClassVar[str] = "adamw"
    batch_multiplier: ClassVar[int] = 1
    augmentation_device: ClassVar[str] = "cpu"
    preset: ClassVar[str] = "paper"
    network_options: ClassVar[dict[str, Any]] = {}
    training_graphs: ClassVar[bool] = False

    @classmethod
    def network_strides(cls, configuration_manager: ConfigurationManager) -> list[tuple[int, int, int]]:
        return strides_from_plan(configuration_manager, get_preset(cls.preset).num_stages)

    @classmethod
    def build_network_architecture(cls, plans_manager: PlansManager, configuration_manager: ConfigurationManager,
                                   num_input_channels: int, num_output_channels: int,
                                   enable_deep_supervision: bool = True) -> nn.Module:
        # a classmethod, not nnU-Net's staticmethod: the predictor calls it on the class, so cls gives variants
        # their preset without each one repeating this method
        require_buildable(cls, configuration_manager)
        strides = cls.network_strides(configuration_manager)
        require_divisible_patch(configuration_manager.patch_size, total_stride(strides), cls.__name__)
        network = LightMedSeg.from_preset(cls.preset, num_input_channels, num_output_channels, strides=strides,
                                          deep_supervision=enable_deep_supervision, **cls.network_options)
        # how it runs fast, switched in beside the architecture (same state_dict, so checkpoints load strictly)
        return accelerate(network, cuda_graphs=os.environ.get("LIGHTMEDSEG_CUDA_GRAPHS", "1").lower()
                          not in ("0", "f", "false"), training_graphs=cls.training_graphs)

    def _set_batch_size_and_oversample(self):
        super()._set_batch_size_and_oversample()  # the plan's batch (per GPU under DDP), oversampling unchanged
        self.batch_size *= self.batch_multiplier

    def _get_deep_supervision_scales(self):
        if not self.enable_deep_supervision:
            return None
        return deep_supervision_scales(self.network_strides(self.configuration_manager))

    def set_deep_supervision_enabled(self, enabled: bool) -> None:
        unwrap(self.network).deep_supervision = enabled


class nnUNetTrainerLightMedSeg_noDS(nnUNetTrainerLightMedSeg):
    """Without deep supervision: the loss sees only the full-resolution output."""

    def __init__(self, plans: dict, configuration: str, fold: int, dataset_json: dict,
                 device: torch.device = torch.device("cuda")):
        super().__init__(plans, configuration, fold, dataset_json, device)
        self.enable_deep_supervision = False


# training recipes (see recipes.RECIPES)
class nnUNetTrainerLightMedSeg_nnUNetSGD(nnUNetTrainerLightMedSeg):
    """nnU-Net's recipe (SGD, Nesterov momentum 0.99, lr 1e-2, weight decay 3e-5, poly decay), the default before
    0.2."""

    recipe = "nnUNetSGD"


class nnUNetTrainerLightMedSeg_adamwWarmup(nnUNetTrainerLightMedSeg):
    """AdamW, peak lr 5e-3 after a linear warm-up over the first 5 % of the iterations, decoupled weight decay 1e-2
    on convolution and linear weights only, nnU-Net's poly decay."""

    recipe = "adamwWarmup"


class nnUNetTrainerLightMedSeg_batch2x(nnUNetTrainerLightMedSeg):
    """Twice the plan's batch per iteration, everything else the default's. nnU-Net sizes the batch for its own
    U-Net's memory; LightMedSeg's training peak at that batch is about half of it (README speed table), so the same
    memory holds twice the patches, and each iteration sees twice the data at about the same GPU time when the step
    is bound by kernel launches rather than by work."""

    batch_multiplier = 2


# where the training augmentation runs (see DeviceAugmentation)
class nnUNetTrainerLightMedSeg_gpuDA(nnUNetTrainerLightMedSeg):
    """nnU-Net's training augmentation batched on the training GPU (on a CPU device: nnU-Net's own pipeline)."""

    augmentation_device = "auto"


# how the training step runs on a GPU (see execution.TrainingGraphs)
class nnUNetTrainerLightMedSeg_graphedStep(nnUNetTrainerLightMedSeg):
    """On a GPU, the network's training forward and backward replayed from CUDA graphs (``execution.TrainingGraphs``,
    captured on the first batch); nnU-Net's loss, gradient scaling, clipping and optimiser step run as before. The
    eager training step spends about a third of its time launching small kernels (benchmarks/SPEED_NOTES.md).

    The graphs replace nnU-Net's default ``torch.compile`` of the network on CUDA (a compiled network runs no graphs
    of ours); ``nnUNet_compile=t`` still compiles, and then the graphs step aside."""

    training_graphs = True

    def _do_i_compile(self) -> bool:
        if os.environ.get("nnUNet_compile", "").lower() in ("true", "1", "t"):
            return super()._do_i_compile()
        return False


# presets: one named configuration of widths each (see PRESETS)
class nnUNetTrainerLightMedSeg_tiny(nnUNetTrainerLightMedSeg):
    preset = "tiny"


class nnUNetTrainerLightMedSeg_small(nnUNetTrainerLightMedSeg):
    preset = "small"


class nnUNetTrainerLightMedSeg_base(nnUNetTrainerLightMedSeg):
    preset = "base"


class nnUNetTrainerLightMedSeg_large(nnUNetTrainerLightMedSeg):
    preset = "large"


class nnUNetTrainerLightMedSeg_fine(nnUNetTrainerLightMedSeg):
    """The paper's parameter budget spent at the fine scales (preset ``fine``): a wider stem and first stages, a
    narrower coarsest stage."""

    preset = "fine"


# ablations: each replaces one named component by its plain alternative (see LightMedSeg's docstring)
class nnUNetTrainerLightMedSeg_noAnchors(nnUNetTrainerLightMedSeg):
    network_options = {"use_anchors": False}


class nnUNetTrainerLightMedSeg_mlpAnchors(nnUNetTrainerLightMedSeg):
    network_options = {"anchor_mode": "mlp"}


class nnUNetTrainerLightMedSeg_noLSPM(nnUNetTrainerLightMedSeg):
    network_options = {"use_lspm": False}


class nnUNetTrainerLightMedSeg_noFiLM(nnUNetTrainerLightMedSeg):
    network_options = {"use_film": False}


class nnUNetTrainerLightMedSeg_noTextureRouting(nnUNetTrainerLightMedSeg):
    network_options = {"use_texture_routing": False}


class nnUNetTrainerLightMedSeg_noSkipRouter(nnUNetTrainerLightMedSeg):
    network_options = {"use_skip_router": False}


class nnUNetTrainerLightMedSeg_noPositionBias(nnUNetTrainerLightMedSeg):
    network_options = {"use_position_bias": False}


class nnUNetTrainerLightMedSeg_noAdaptiveDecoder(nnUNetTrainerLightMedSeg):
    network_options = {"use_adaptive_decoder": False}


class nnUNetTrainerLightMedSeg_noGhost(nnUNetTrainerLightMedSeg):
    network_options = {"ghost": False}


# extensions: what the paper does not have, measured against it
class nnUNetTrainerLightMedSeg_refinedHead(nnUNetTrainerLightMedSeg):
    """The paper network with an input-guided refinement of its logits at the input resolution
    (``LightMedSegConfig.refine_head``, ``InputGuidedRefinement``): the paper's head places boundaries only in
    blocks of the stem's stride, and the myocardium is where LightMedSeg's Dice falls furthest behind nnU-Net
    default's, with false positives and false negatives both above it (README gap table)."""

    network_options = {"refine_head": True}


class nnUNetTrainerLightMedSeg_smoothHead(nnUNetTrainerLightMedSeg):
    """The paper network with its head's transposed convolution replaced by trilinear upsampling of the logits
    (``LightMedSegConfig.head_upsampling``, ``SegmentationHead``): the paper's head computes each block of the stem's
    stride from that block's coarse logits alone, and what that costs a label map is in
    ``benchmarks/results/head_ceiling_acdc.md``. No parameters in the upsampling, no extra activations."""

    network_options = {"head_upsampling": "trilinear"}


class nnUNetTrainerLightMedSeg_fullResStem(nnUNetTrainerLightMedSeg):
    """The paper network with its stem at the input resolution: strides (1, 1, 1), then the plan's first N - 1, so
    that stage 0 and the last decoder level see every voxel, as nnU-Net default's first stage does (the paper's stem
    halves the in-plane grid first). The same widths; about four times the activations at the stem's grid, and the
    coarsest level one downsampling finer."""

    @classmethod
    def network_strides(cls, configuration_manager: ConfigurationManager) -> list[tuple[int, int, int]]:
        return [(1, 1, 1)] + super().network_strides(configuration_manager)[:-1]


# Training lengths need no class here: every trainer of this module exists for any length by name,
# <Trainer>_<E>epochs[_<I>iters] (budgets.py), e.g. nnUNetTrainerLightMedSeg_20epochs beside nnU-Net's
# nnUNetTrainer_20epochs, and nnUNetTrainerLightMedSeg_2epochs_10iters for the CPU tests.
