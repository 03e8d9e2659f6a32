"""LightMedSeg (Tyagi, Rathi, Goyal, arXiv 2603.07228): the network, its configuration and its named presets."""
from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass
from typing import Any, NamedTuple, Optional, Sequence, Union

import torch
from torch import nn

from .blocks import GhostConv3D, Stride3D, resize_to
from .decoder import (
    AdaptiveMixBlock,
    AnchorPositionBias,
    HeadUpsampling,
    InputGuidedRefinement,
    SegmentationHead,
    SkipRouter,
)
from .encoder import TextureRoutedStage
from .priors import AnchorMode, Anchors, GlobalAnchorDetector, LocalStructuralPrior

StrideLike = Union[int, Sequence[int]]


@dataclass(frozen=True)
class LightMedSegConfig:
    """Every choice that shapes a LightMedSeg network apart from its input, output and strides.

    widths: (C_stem, C_0, ..., C_{N-1}): the stem width, then the width of each encoder stage i = 0..N-1
    (N stages, N strides).
    The ``use_*`` switches and ``ghost`` replace each named component by its plain alternative
    (see :class:`LightMedSeg`), so that an ablation is one flag per row. ``refine_head`` adds what the paper does
    not have: an input-guided refinement of the logits at the input resolution (:class:`InputGuidedRefinement`).
    """

    widths: tuple[int, ...] = (16, 20, 32, 64, 160)
    num_anchors: int = 8
    router_width: int = 12
    se_reduction: int = 4
    anchor_mode: AnchorMode = "softargmax"
    use_anchors: bool = True
    use_lspm: bool = True
    use_film: bool = True
    use_texture_routing: bool = True
    use_skip_router: bool = True
    use_position_bias: bool = True
    use_adaptive_decoder: bool = True
    ghost: bool = True
    refine_head: bool = False
    head_upsampling: HeadUpsampling = "transposed"

    @property
    def num_stages(self) -> int:
        return len(self.widths) - 1

    def scaled(self, width_multiplier: float) -> "LightMedSegConfig":
        """The same network with every width (and the router width) multiplied, rounded to a multiple of 4."""
        def scale(c: int) -> int:
            return max(4, int(round(c * width_multiplier / 4)) * 4)
        return dataclasses.replace(self, widths=tuple(scale(c) for c in self.widths),
                                   router_width=scale(self.router_width))


PAPER_CONFIG = LightMedSegConfig()
#: Named presets, timm-style: one configurable class, a registry of configurations.
PRESETS: dict[str, LightMedSegConfig] = {
    "tiny": PAPER_CONFIG.scaled(0.5),
    "small": PAPER_CONFIG.scaled(0.75),
    "paper": PAPER_CONFIG,
    "base": PAPER_CONFIG.scaled(1.5),
    "large": PAPER_CONFIG.scaled(2.0),
    # the paper's parameter budget with width moved from the coarsest stage, where most of the paper's parameters
    # sit, to the stem and the first stages, where the boundaries are drawn
    "fine": dataclasses.replace(PAPER_CONFIG, widths=(24, 32, 48, 64, 112)),
}


def register_preset(name: str, config: LightMedSegConfig) -> None:
    """Add a named preset (for example a trained variant's configuration) to the registry."""
    if name in PRESETS and PRESETS[name] != config:
        raise ValueError(f"LightMedSeg preset {name!r} is already registered with another configuration")
    PRESETS[name] = config


def get_preset(name: str) -> LightMedSegConfig:
    try:
        return PRESETS[name]
    except KeyError:
        raise ValueError(f"Unknown LightMedSeg preset {name!r}; available presets: {', '.join(PRESETS)}") from None


def _as_stride(stride: StrideLike) -> Stride3D:
    if isinstance(stride, int):
        return (stride, stride, stride)
    stride = tuple(int(s) for s in stride)
    if len(stride) != 3 or any(s < 1 for s in stride):
        raise ValueError(f"A stride must be an int or three positive ints (z, y, x), got {stride}")
    return stride  # type: ignore[return-value]


def total_stride(strides: Sequence[StrideLike]) -> Stride3D:
    """Per-axis product of the strides: every input axis must be a multiple of it."""
    strides = [_as_stride(s) for s in strides]
    return tuple(math.prod(s[a] for s in strides) for a in range(3))  # type: ignore[return-value]


def deep_supervision_scales(strides: Sequence[StrideLike]) -> list[list[float]]:
    """Per-axis scales of LightMedSeg's deep-supervision outputs for these strides, full resolution first:
    1, 1/s_0, 1/(s_0 s_1), ..., 1/(s_0 ... s_{N-2}) (N outputs for N strides), as nnU-Net's target downsampling
    expects them."""
    scales = [[1.0, 1.0, 1.0]]
    for n in range(1, len(strides)):
        scales.append([1.0 / t for t in total_stride(strides[:n])])
    return scales


class LightMedSegPriors(NamedTuple):
    """What the prior modules saw: the anchors S (None when switched off) and the texture map T at the stem grid,
    (B, 1, (D, H, W) / s_0) (None when the LSPM or texture routing is switched off)."""

    anchors: Optional[Anchors]
    texture: Optional[torch.Tensor]


class LightMedSeg(nn.Module):
    """LightMedSeg: a 3D segmentation network guided by learned spatial anchors and a texture routing map.

    Data flow, in the order of the paper's Figure 1 (docs/design.md), for N encoder stages i = 0..N-1 and strides
    s_0..s_{N-1}: s_0 is the stem's, stage 0 keeps the stem's grid and stage i >= 1 downsamples by s_i, so E_i lies
    at 1/(s_0 s_1 ... s_i) of the input (per axis):
      F = GhostConv3D_{s_0}(X)                                  stem, at 1/s_0
      S = GlobalAnchorDetector(F); (F', T) = LSPM(F)            priors: anchors, texture map, mixed features
      E_0 = Stage_0(F'); E_i = Stage_i(E_{i-1}), i = 1..N-1     FiLM by S and routing by T in every stage
      skip_l = SkipRouter(E_0, ..., E_{N-1})_l, l = 0..N-2      per-voxel softmax over all encoder scales
      D_{N-1} = E_{N-1}; for l = N-2 down to 0:                 decoder, coarsest level first
        U_l = ConvTranspose3D_{s_{l+1}}(D_{l+1})                 upsampled to the grid of E_l
        U_l' = U_l + gate_l(U_l) * bias_l(p - S)                 anchor position bias
        D_l = AdaptiveMix_l(U_l', skip_l)
      Y = ConvTranspose3D_{s_0}(Conv1x1(D_0))                   head: logits at the input resolution

    Widths: ``config.widths`` = (C_stem, C_0, ..., C_{N-1}); E_i, skip_i, U_i and D_i have C_i channels.

    Shapes: X (B, C_in, D, H, W), each axis divisible by the product of the strides on that axis ->
    Y (B, num_classes, D, H, W). With ``deep_supervision=True`` forward returns the list
    [Y, Conv1x1(D_0), Conv1x1(D_1), ..., Conv1x1(D_{N-2})] (N outputs, full resolution first, at the scales of
    :func:`deep_supervision_scales`). The auxiliary heads exist whatever the flag, so a state_dict loads strictly
    either way.

    Switches (config): ``use_anchors=False`` removes S (FiLM and position bias become identities);
    ``use_lspm=False`` gives F' = F and T = 0.5 (T is not computed either when texture routing is off);
    ``use_film=False`` identity FiLM; ``use_texture_routing=False`` plain Detail branch;
    ``use_skip_router=False`` plain U-Net skips skip_l = E_l; ``use_position_bias=False`` U_l' = U_l;
    ``use_adaptive_decoder=False`` one Ghost branch; ``ghost=False`` plain 3x3x3 convolutions;
    ``anchor_mode="mlp"`` global pool + MLP anchors. Extensions, not in the paper: ``refine_head=True`` gives
    Y' = InputGuidedRefinement(Y, X); ``head_upsampling="trilinear"`` gives Y = trilinear(Conv1x1(D_0)).

    This class is the architecture, in plain PyTorch modules. How it runs fast is switched in beside it:
    ``nnunetv2_lightmedseg.execution.accelerate(network)`` (which nnU-Net's trainers apply) changes how some
    operations run on the CPU and replays GPU inference from CUDA graphs, with the same parameters and state_dict
    and the same outputs up to float rounding.
    """

    def __init__(self, in_channels: int, num_classes: int, strides: Optional[Sequence[StrideLike]] = None,
                 config: LightMedSegConfig = PAPER_CONFIG, deep_supervision: bool = False) -> None:
        super().__init__()
        n = config.num_stages
        strides = [(2, 2, 2)] * n if strides is None else [_as_stride(s) for s in strides]
        if len(strides) != n:
            raise ValueError(f"LightMedSeg with widths {config.widths} has {n} stages and needs {n} strides "
                             f"(stem first), got {len(strides)}: {strides}")
        if in_channels < 1 or num_classes < 1:
            raise ValueError(f"in_channels and num_classes must be positive, got {in_channels} and {num_classes}")
        self.in_channels = in_channels
        self.num_classes = num_classes
        self.strides: list[Stride3D] = strides
        self.config = config
        self.deep_supervision = deep_supervision

        c_stem, stage_widths = config.widths[0], config.widths[1:]
        k = config.num_anchors
        use_film = config.use_anchors and config.use_film
        use_position_bias = config.use_anchors and config.use_position_bias

        self.stem = GhostConv3D(in_channels, c_stem, stride=strides[0], ghost=config.ghost)
        self.anchor_detector = GlobalAnchorDetector(c_stem, k, config.anchor_mode) if config.use_anchors else None
        self.structural_prior = (LocalStructuralPrior(c_stem, texture=config.use_texture_routing) if config.use_lspm
                                 else None)
        self.stages = nn.ModuleList(
            TextureRoutedStage(cin, cout, (1, 1, 1) if i == 0 else strides[i], 4 * k, use_film=use_film,
                               use_texture_routing=config.use_texture_routing, ghost=config.ghost,
                               se_reduction=config.se_reduction)
            for i, (cin, cout) in enumerate(zip((c_stem,) + stage_widths[:-1], stage_widths)))
        self.skip_router = SkipRouter(stage_widths, config.router_width) if config.use_skip_router else None
        # decoder level l (finest first) receives level l + 1 upsampled by stage l + 1's stride
        self.upsample = nn.ModuleList(
            nn.ConvTranspose3d(stage_widths[l + 1], stage_widths[l], kernel_size=strides[l + 1],
                               stride=strides[l + 1])
            for l in range(n - 1))
        self.position_bias = nn.ModuleList(
            AnchorPositionBias(stage_widths[l], k) for l in range(n - 1)) if use_position_bias else None
        self.decoder = nn.ModuleList(
            AdaptiveMixBlock(stage_widths[l], stage_widths[l], stage_widths[l], adaptive=config.use_adaptive_decoder,
                             ghost=config.ghost, se_reduction=config.se_reduction)
            for l in range(n - 1))
        self.head = SegmentationHead(stage_widths[0], num_classes, strides[0], config.head_upsampling)
        self.refinement = InputGuidedRefinement(num_classes, in_channels, strides[0]) if config.refine_head else None
        self.auxiliary_heads = nn.ModuleList(nn.Conv3d(stage_widths[l], num_classes, 1) for l in range(1, n - 1))

    @classmethod
    def from_preset(cls, name: str, in_channels: int, num_classes: int,
                    strides: Optional[Sequence[StrideLike]] = None, deep_supervision: bool = False,
                    **overrides: Any) -> "LightMedSeg":
        """Build a registered preset; ``overrides`` replace fields of its config (switches, num_anchors, ...)."""
        config = get_preset(name)
        unknown = set(overrides) - {f.name for f in dataclasses.fields(LightMedSegConfig)}
        if unknown:
            raise TypeError(f"Unknown LightMedSeg option(s) {sorted(unknown)}; "
                            f"valid: {[f.name for f in dataclasses.fields(LightMedSegConfig)]}")
        return cls(in_channels, num_classes, strides, dataclasses.replace(config, **overrides), deep_supervision)

    @property
    def total_stride(self) -> Stride3D:
        """Per-axis product of the strides: every input axis must be a multiple of it."""
        return total_stride(self.strides)

    @property
    def deep_supervision_scales(self) -> list[list[float]]:
        """Per-axis scale of each deep-supervision output relative to the input, full resolution first."""
        return deep_supervision_scales(self.strides)

    def check_input(self, x: torch.Tensor) -> None:
        """Raise one clear error for an input the network cannot take."""
        if x.ndim != 5:
            raise ValueError(f"LightMedSeg expects a 5D input (B, C, D, H, W), got shape {tuple(x.shape)}")
        if x.shape[1] != self.in_channels:
            raise ValueError(f"LightMedSeg was built for {self.in_channels} input channel(s) but got {x.shape[1]} "
                             f"(input shape {tuple(x.shape)}). Give every case exactly the channels of the model's "
                             f"dataset.json channel_names (for nnU-Net: files CASE_0000 ... "
                             f"CASE_{self.in_channels - 1:04d})")
        spatial = tuple(x.shape[2:])
        divisor = self.total_stride
        if any(size % d for size, d in zip(spatial, divisor)):
            raise ValueError(f"LightMedSeg cannot take spatial shape {spatial}: every axis must be divisible by the "
                             f"total stride {divisor} (strides {self.strides}); pad or crop the input, or choose a "
                             f"patch size that is a multiple of {divisor}")
        if math.prod(size // d for size, d in zip(spatial, divisor)) < 2:
            raise ValueError(f"LightMedSeg cannot take spatial shape {spatial}: with total stride {divisor} its "
                             f"coarsest level is a single voxel, which instance normalisation cannot normalise; "
                             f"use a larger patch (at least twice the total stride along one axis)")

    def forward(self, x: torch.Tensor) -> Union[torch.Tensor, list[torch.Tensor]]:
        """Logits Y, or with deep supervision the list of N outputs, full resolution first (class docstring)."""
        return self.forward_with_priors(x)[0]

    def forward_with_priors(self, x: torch.Tensor
                            ) -> tuple[Union[torch.Tensor, list[torch.Tensor]], LightMedSegPriors]:
        """The forward, step by step as in the class docstring, also returning the anchors S and the texture map T
        (for pictures and analysis)."""
        self.check_input(x)
        # stem
        stem = self.stem(x)

        # priors: anchors S, and the LSPM's texture map T and mixed features F'
        anchors = self.anchor_detector(stem) if self.anchor_detector is not None else None
        features, texture = self.structural_prior(stem) if self.structural_prior is not None else (stem, None)

        # encoder stages, each conditioned on S (FiLM) and routed by T resized to the stage's output grid
        descriptor = anchors.descriptor() if anchors is not None else None
        encoder = []
        for stage in self.stages:
            stage_texture = (None if texture is None
                             else resize_to(texture, [f // s for f, s in zip(features.shape[2:], stage.stride)]))
            features = stage(features, descriptor, stage_texture)
            encoder.append(features)

        # skip router: skip_l for decoder levels l = 0..N-2, each mixing all encoder scales
        skips = self.skip_router(encoder) if self.skip_router is not None else encoder[:-1]

        # decoder, coarsest level first: upsample, anchor position bias, AdaptiveMix with the skip
        decoded = encoder[-1]
        levels = []
        for l in reversed(range(len(self.decoder))):
            up = self.upsample[l](decoded)
            if self.position_bias is not None:
                up = self.position_bias[l](up, anchors.positions)
            decoded = self.decoder[l](up, skips[l])
            levels.insert(0, decoded)  # levels[l] = D_l, finest first

        # head: logits at 1/s_0, then at the input resolution
        full, coarse = self.head(levels[0])
        if self.refinement is not None:  # not in the paper (config.refine_head)
            full = self.refinement(full, x)
        priors = LightMedSegPriors(anchors, texture)
        if not self.deep_supervision:
            return full, priors
        return [full, coarse] + [head(level) for head, level in zip(self.auxiliary_heads, levels[1:])], priors
