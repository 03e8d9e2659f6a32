"""LightMedSeg network, its building blocks and its named presets, in plain PyTorch modules.

How it runs fast (CPU kernel choices, CUDA-graph replay) is ``nnunetv2_lightmedseg.execution``.
"""
from .blocks import DepthwiseSeparableConv3D, GhostConv3D, SqueezeExcite3D
from .decoder import AdaptiveMixBlock, AnchorPositionBias, SegmentationHead, SkipRouter
from .encoder import AnchorFiLM, TextureRoutedStage
from .lightmedseg import (
                          PRESETS,
                          LightMedSeg,
                          LightMedSegConfig,
                          LightMedSegPriors,
                          deep_supervision_scales,
                          get_preset,
                          register_preset,
                          total_stride,
)
from .priors import Anchors, GlobalAnchorDetector, LocalStructuralPrior

__all__ = [
    "AdaptiveMixBlock", "AnchorFiLM", "AnchorPositionBias", "Anchors", "DepthwiseSeparableConv3D", "GhostConv3D",
    "GlobalAnchorDetector", "LightMedSeg", "LightMedSegConfig", "LightMedSegPriors", "LocalStructuralPrior",
    "PRESETS", "SegmentationHead", "SkipRouter", "SqueezeExcite3D", "TextureRoutedStage", "get_preset",
    "deep_supervision_scales", "register_preset", "total_stride",
]
