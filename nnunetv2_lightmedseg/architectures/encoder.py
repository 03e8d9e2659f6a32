"""Encoder modules: anchor-conditioned FiLM and the texture-routed encoder stage."""
from __future__ import annotations

from typing import Optional

import torch
from torch import nn

from .blocks import ConvNormAct3D, GhostConv3D, SqueezeExcite3D, Stride3D


class AnchorFiLM(nn.Module):
    """Anchor-conditioned FiLM: F~ = (1 + gamma(a)) * G + beta(a), channel-wise.

    [gamma, beta] = Linear(a), where a (B, 4K) is the anchor descriptor (positions and confidences). The linear
    map starts at zero, so the block is the identity at initialisation.

    Shapes: G (B, C, D, H, W), a (B, 4K) -> (B, C, D, H, W).
    """

    def __init__(self, descriptor_size: int, channels: int) -> None:
        super().__init__()
        self.linear = nn.Linear(descriptor_size, 2 * channels)
        nn.init.zeros_(self.linear.weight)
        nn.init.zeros_(self.linear.bias)

    def forward(self, features: torch.Tensor, descriptor: torch.Tensor) -> torch.Tensor:
        film = self.linear(descriptor.to(self.linear.weight.dtype)).to(features.dtype)
        gamma, beta = film[:, :, None, None, None].chunk(2, dim=1)
        return torch.addcmul(beta, features, 1 + gamma)  # one pass over G, not two


class TextureRoutedStage(nn.Module):
    """Encoder stage i: Ghost projection, anchor FiLM, texture-routed processing, SE, residual.

    G = Ghost_s(E_{i-1}) (E_{-1} = F', the mixed stem features; the stride s does the stage's downsampling:
    1 for stage 0, s_i for stage i >= 1); F~ = FiLM(G, a);
    Y = T_i * Detail(F~) + (1 - T_i) * Smooth(F~), with Detail = act(norm(DWConv3x3x3)) and Smooth = Conv1x1;
    E_i = SE(Y) + F~.
    Switches: ``use_film=False`` gives F~ = G; ``use_texture_routing=False`` gives the plain Y = Detail(F~)
    (no Smooth branch, T unused). T_i is the texture map resized to this stage's grid, or None for the constant
    0.5 used when the LSPM is switched off.

    Shapes: E_{i-1} (B, C_in, D, H, W), a (B, 4K), T_i (B, 1, D / s_z, H / s_y, W / s_x) ->
    E_i (B, C_out, D / s_z, H / s_y, W / s_x).
    """

    def __init__(self, in_channels: int, out_channels: int, stride: Stride3D, descriptor_size: int,
                 use_film: bool = True, use_texture_routing: bool = True, ghost: bool = True,
                 se_reduction: int = 4) -> None:
        super().__init__()
        self.stride = stride
        self.project = GhostConv3D(in_channels, out_channels, stride=stride, ghost=ghost)
        self.film = AnchorFiLM(descriptor_size, out_channels) if use_film else None
        self.detail = ConvNormAct3D(out_channels, out_channels, 3, groups=out_channels)
        self.smooth = nn.Conv3d(out_channels, out_channels, 1) if use_texture_routing else None
        self.se = SqueezeExcite3D(out_channels, se_reduction)

    def forward(self, x: torch.Tensor, descriptor: Optional[torch.Tensor], texture: Optional[torch.Tensor]
                ) -> torch.Tensor:
        features = self.project(x)
        if self.film is not None:
            features = self.film(features, descriptor)
        detail = self.detail(features)
        if self.smooth is None:
            routed = detail
        else:
            smooth = self.smooth(features)
            routed = (torch.add(smooth, detail - smooth, alpha=0.5) if texture is None
                      else torch.addcmul(smooth, texture.to(features.dtype), detail - smooth))
        return self.se(routed, residual=features)
