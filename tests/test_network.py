"""LightMedSeg network: shapes, errors, gradients, priors, identities at init, switches, budget, deep supervision.

All on the CPU with small inputs (the one 128^3 forward is the budget check); every test seeds torch.
"""
from __future__ import annotations

import fnmatch
import hashlib
import pickle
import re
from copy import deepcopy
from typing import Any

import pytest
import torch
from torch import nn
from torch.utils.flop_counter import FlopCounterMode

from nnunetv2_lightmedseg.architectures import PRESETS, AnchorFiLM, AnchorPositionBias, LightMedSeg, LightMedSegConfig
from nnunetv2_lightmedseg.execution import (
    FAST_CPU_CLASSES,
    CUDAGraphLightMedSeg,
    FastCPUConv3d,
    FastCPUConvTranspose3d,
    FastCPUInstanceNorm3d,
    InferenceGraphs,
    accelerate,
)

ISO_STRIDES = [(2, 2, 2)] * 4
ANISO_STRIDES = [(1, 2, 2), (1, 2, 2), (2, 2, 2), (1, 2, 2)]  # total (2, 16, 16), an nnU-Net ACDC-like plan
#: total stride 8: a 16^3 input keeps a 2^3 bottleneck (InstanceNorm needs more than one voxel there)
SMALL_STRIDES = [(2, 2, 2), (2, 2, 2), (2, 2, 2), (1, 1, 1)]
ANCHOR_MODES = ["softargmax", "mlp"]


pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture(autouse=True)
def _seed() -> None:
    torch.manual_seed(0)


def tiny(in_channels: int = 1, num_classes: int = 3, strides: Any = SMALL_STRIDES, deep_supervision: bool = False,
         **overrides: Any) -> LightMedSeg:
    return LightMedSeg.from_preset("tiny", in_channels, num_classes, strides=strides,
                                   deep_supervision=deep_supervision, **overrides)


def perturb_zero_initialised(model: nn.Module, std: float = 0.5) -> None:
    """Give the zero-initialised output layers (FiLM generators, position-bias embeddings) random weights."""
    with torch.no_grad():
        for module in model.modules():
            layer = (module.linear if isinstance(module, AnchorFiLM)
                     else module.embed[-1] if isinstance(module, AnchorPositionBias) else None)
            if layer is not None:
                nn.init.normal_(layer.weight, std=std)
                nn.init.normal_(layer.bias, std=std)


def ds_loss(outputs: list[torch.Tensor]) -> torch.Tensor:
    """A loss over every deep-supervision output (non-symmetric, so no gradient cancels by accident)."""
    return sum(o.square().mean() + o.mean() for o in outputs)


def grads_after_backward(model: LightMedSeg, x: torch.Tensor) -> dict[str, torch.Tensor]:
    loss = ds_loss(model(x))
    loss.backward()
    return {name: p.grad for name, p in model.named_parameters()}


def matches(name: str, patterns: list[str]) -> bool:
    return any(fnmatch.fnmatchcase(name, p) for p in patterns)


# ---------------------------------------------------------------------------------------------------- shapes

@pytest.mark.parametrize("strides, input_shape", [
    (ISO_STRIDES, (2, 1, 32, 32, 32)),
    (ISO_STRIDES, (1, 1, 16, 32, 48)),
    (ANISO_STRIDES, (2, 1, 4, 32, 32)),
    (ANISO_STRIDES, (1, 1, 6, 48, 80)),  # odd bottleneck (3, 3, 5)
    ([(1, 2, 2), (1, 1, 1), (1, 2, 2), (1, 1, 1)], (1, 1, 5, 12, 20)),  # total (1, 4, 4), odd everywhere
])
def test_output_shape(strides: list, input_shape: tuple[int, ...]) -> None:
    model = tiny(strides=strides)
    with torch.no_grad():
        out, priors = model.forward_with_priors(torch.randn(input_shape))
    assert out.shape == (input_shape[0], 3, *input_shape[2:])
    assert priors.anchors.positions.shape == (input_shape[0], 8, 3)
    assert priors.anchors.confidence.shape == (input_shape[0], 8)
    stem_grid = tuple(s // t for s, t in zip(input_shape[2:], strides[0]))
    assert priors.texture.shape == (input_shape[0], 1, *stem_grid)
    assert torch.isfinite(out).all()


def test_undivisible_shape_is_one_clear_error() -> None:
    model = tiny(strides=ANISO_STRIDES)
    for shape in [(4, 30, 32), (3, 32, 32)]:
        with pytest.raises(ValueError, match=re.escape(str(shape))) as error:
            model(torch.randn(1, 1, *shape))
        assert "(2, 16, 16)" in str(error.value)  # the divisor


def test_wrong_channel_count_is_one_clear_error() -> None:
    model = tiny(in_channels=2)
    with pytest.raises(ValueError, match=r"built for 2 input channel\(s\) but got 1"):
        model(torch.randn(1, 1, 16, 16, 16))
    with pytest.raises(ValueError, match="5D input"):
        model(torch.randn(2, 16, 16, 16))


# ---------------------------------------------------------------------------------------------------- gradients

#: Parameters whose gradient is exactly zero at initialisation, by construction: the FiLM generators and the
#: position-bias output convolutions start at zero, so nothing flows back through them into the anchor detector,
#: the position-bias hidden layer, or the position-bias gate (which multiplies a zero bias).
ZERO_GRAD_AT_INIT = ["anchor_detector.*", "position_bias.*.embed.0.*", "position_bias.*.gate.*"]
#: Parameters whose gradient is zero analytically but not bitwise (float rounding), at initialisation only:
#: the transposed-convolution bias adds a per-channel constant that the decoder's 1x1 fuse (no bias) and
#: InstanceNorm remove; it reaches the loss only through the position-bias gate, which is off at init.
NUMERICALLY_ZERO_AT_INIT = ["upsample.*.bias"]


@pytest.mark.parametrize("mode", ANCHOR_MODES)
def test_gradients_at_init(mode: str) -> None:
    model = tiny(in_channels=2, deep_supervision=True, anchor_mode=mode)
    grads = grads_after_backward(model, torch.randn(2, 2, 16, 16, 16))
    assert all(g is not None for g in grads.values()), [n for n, g in grads.items() if g is None]
    assert all(torch.isfinite(g).all() for g in grads.values())
    exactly_zero = {n for n, g in grads.items() if not g.any()}
    expected_zero = {n for n in grads if matches(n, ZERO_GRAD_AT_INIT)}
    assert exactly_zero - {n for n in grads if matches(n, NUMERICALLY_ZERO_AT_INIT)} == expected_zero
    assert len(expected_zero) >= 4 * 3  # the detector's layers and three position-bias levels were really matched
    for name in grads:
        if matches(name, NUMERICALLY_ZERO_AT_INIT):
            weight_grad = grads[name.replace(".bias", ".weight")].abs().max()
            assert grads[name].abs().max() < 1e-4 * weight_grad, name


@pytest.mark.parametrize("mode", ANCHOR_MODES)
def test_gradients_reach_every_parameter(mode: str) -> None:
    """Once the zero-initialised layers have moved (as after the first steps), every parameter learns."""
    model = tiny(in_channels=2, deep_supervision=True, anchor_mode=mode)
    perturb_zero_initialised(model)
    grads = grads_after_backward(model, torch.randn(2, 2, 16, 16, 16))
    assert all(g is not None and torch.isfinite(g).all() for g in grads.values())
    # live gradients here are >= 5e-6 (SE of stage 0 is the smallest); rounding noise is ~1e-8
    weak = {n: g.abs().max().item() for n, g in grads.items() if g.abs().max() <= 1e-7}
    assert not weak, weak


# ---------------------------------------------------------------------------------------------------- priors

@pytest.mark.parametrize("mode", ANCHOR_MODES)
@pytest.mark.parametrize("scale", [1.0, 100.0])
def test_anchors_and_texture_in_unit_range(mode: str, scale: float) -> None:
    model = tiny(in_channels=2, strides=ANISO_STRIDES, anchor_mode=mode)
    perturb_zero_initialised(model)
    with torch.no_grad():
        _, (anchors, texture) = model.forward_with_priors(scale * torch.randn(2, 2, 4, 32, 32))
    for tensor in (anchors.positions, anchors.confidence, texture):
        assert torch.isfinite(tensor).all()
        assert tensor.min() >= 0 and tensor.max() <= 1
    if mode == "softargmax":  # a soft-argmax lies in the convex hull of the voxel centres (i + 0.5) / n
        grid = torch.tensor([4, 16, 16], dtype=torch.float32)  # stem grid: (4, 32, 32) / (1, 2, 2)
        eps = 1e-5
        assert (anchors.positions >= 0.5 / grid - eps).all() and (anchors.positions <= 1 - 0.5 / grid + eps).all()


def test_film_starts_at_identity() -> None:
    film = AnchorFiLM(descriptor_size=32, channels=12)
    features, descriptor = torch.randn(2, 12, 4, 5, 6), torch.rand(2, 32)
    assert torch.equal(film(features, descriptor), features)
    model = tiny()
    for stage in model.stages:
        channels = stage.film.linear.out_features // 2
        features = torch.randn(2, channels, 3, 3, 3)
        assert torch.equal(stage.film(features, torch.rand(2, stage.film.linear.in_features)), features)


def test_position_bias_starts_at_identity() -> None:
    bias = AnchorPositionBias(channels=12, num_anchors=8)
    features, positions = torch.randn(2, 12, 4, 5, 6), torch.rand(2, 8, 3)
    assert torch.equal(bias(features, positions), features)
    model = tiny()
    for level, block in enumerate(model.position_bias):
        features = torch.randn(2, model.config.widths[1 + level], 3, 3, 3)
        assert torch.equal(block(features, positions), features)


def test_network_without_film_and_position_bias_equals_full_network_at_init() -> None:
    """FiLM and the position bias are identities at init: dropping them (same other weights) changes nothing."""
    full = tiny(in_channels=2)
    plain = tiny(in_channels=2, use_film=False, use_position_bias=False)
    result = plain.load_state_dict(full.state_dict(), strict=False)
    assert not result.missing_keys
    assert result.unexpected_keys and all(k.startswith(("anchor_detector.", "position_bias.")) or ".film." in k
                                          for k in result.unexpected_keys)
    x = torch.randn(1, 2, 16, 16, 16)
    with torch.no_grad():
        torch.testing.assert_close(full(x), plain(x), rtol=0, atol=1e-6)


# ---------------------------------------------------------------------------------------------------- switches

SWITCHES: dict[str, dict[str, Any]] = {
    "no_anchors": {"use_anchors": False},
    "mlp_anchors": {"anchor_mode": "mlp"},
    "no_lspm": {"use_lspm": False},
    "no_film": {"use_film": False},
    "no_texture_routing": {"use_texture_routing": False},
    "no_skip_router": {"use_skip_router": False},
    "no_position_bias": {"use_position_bias": False},
    "no_adaptive_decoder": {"use_adaptive_decoder": False},
    "no_ghost": {"ghost": False},
    "all_off": {"use_anchors": False, "use_lspm": False, "use_film": False, "use_texture_routing": False,
                "use_skip_router": False, "use_position_bias": False, "use_adaptive_decoder": False, "ghost": False},
}


def check_switch_structure(model: LightMedSeg, overrides: dict[str, Any]) -> None:
    """The switched-off component is really gone (replaced by its plain alternative)."""
    stages = list(model.stages)
    if overrides.get("use_anchors") is False:
        assert model.anchor_detector is None and model.position_bias is None
        assert all(s.film is None for s in stages)
    if overrides.get("anchor_mode") == "mlp":
        assert model.anchor_detector.mode == "mlp"
    if overrides.get("use_lspm") is False:
        assert model.structural_prior is None
    if overrides.get("use_film") is False:
        assert all(s.film is None for s in stages)
    if overrides.get("use_texture_routing") is False:
        assert all(s.smooth is None for s in stages)
    if overrides.get("use_skip_router") is False:
        assert model.skip_router is None
    if overrides.get("use_position_bias") is False:
        assert model.position_bias is None
    if overrides.get("use_adaptive_decoder") is False:
        assert not any(block.adaptive for block in model.decoder)
    if overrides.get("ghost") is False:
        assert model.stem.cheap is None and all(s.project.cheap is None for s in stages)


@pytest.mark.parametrize("switch", SWITCHES)
def test_switch_off_builds_runs_and_trains(switch: str) -> None:
    overrides = SWITCHES[switch]
    model = tiny(in_channels=2, deep_supervision=True, **overrides)
    check_switch_structure(model, overrides)
    before = {n: p.detach().clone() for n, p in model.named_parameters()}
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1)

    x = torch.randn(2, 2, 16, 16, 16)
    outputs, priors = model.forward_with_priors(x)
    assert (priors.anchors is None) == (overrides.get("use_anchors") is False)
    assert (priors.texture is None) == (overrides.get("use_lspm") is False
                                        or overrides.get("use_texture_routing") is False)
    targets = [torch.randn_like(o) for o in outputs]
    loss = sum(nn.functional.mse_loss(o, t) for o, t in zip(outputs, targets))
    assert torch.isfinite(loss)
    loss.backward()
    assert [n for n, p in model.named_parameters() if p.grad is None] == [], "unused parameters break DDP"
    optimizer.step()

    for name, p in model.named_parameters():
        assert torch.isfinite(p).all(), name
        moved = not torch.equal(p, before[name])
        if p.grad is not None and p.grad.abs().max() > 1e-6:
            assert moved, name
        elif p.grad is None or not p.grad.any():  # plain SGD: no gradient, no step
            assert not moved, name
    assert sum(not torch.equal(p, before[n]) for n, p in model.named_parameters()) > len(before) // 2
    with torch.no_grad():
        assert torch.isfinite(sum(nn.functional.mse_loss(o, t) for o, t in zip(model(x), targets)))


# ---------------------------------------------------------------------------------------------------- budget

def test_paper_preset_budget() -> None:
    """0.48M parameters within 5% and 14.64 GFLOPs within 10% at 1 x 4 x 128^3, 4 outputs."""
    model = LightMedSeg.from_preset("paper", in_channels=4, num_classes=4, strides=ISO_STRIDES).eval()
    params = sum(p.numel() for p in model.parameters())
    assert abs(params / 0.48e6 - 1) < 0.05, params
    with torch.no_grad(), FlopCounterMode(display=False) as counter:
        out = model(torch.randn(1, 4, 128, 128, 128))
    assert out.shape == (1, 4, 128, 128, 128)
    flops = counter.get_total_flops()  # counts 2 FLOPs per multiply-add
    assert abs(flops / 14.64e9 - 1) < 0.10, flops


# ---------------------------------------------------------------------------------------------------- deep supervision

@pytest.mark.parametrize("strides, input_shape", [
    (ISO_STRIDES, (1, 1, 16, 16, 32)),
    (ANISO_STRIDES, (2, 1, 4, 32, 32)),
    (SMALL_STRIDES, (1, 1, 16, 16, 24)),
])
def test_deep_supervision_outputs_match_scales(strides: list, input_shape: tuple[int, ...]) -> None:
    model = tiny(strides=strides, deep_supervision=True)
    with torch.no_grad():
        outputs = model(torch.randn(input_shape))
    scales = model.deep_supervision_scales
    assert isinstance(outputs, list) and len(outputs) == len(scales) == len(strides)
    assert scales[0] == [1.0, 1.0, 1.0]
    for output, scale in zip(outputs, scales):
        expected = [size * s for size, s in zip(input_shape[2:], scale)]
        assert all(e == int(e) for e in expected), (input_shape, scale)
        assert output.shape == (input_shape[0], 3, *map(int, expected))


def test_deep_supervision_state_dict_loads_strictly_without_it() -> None:
    trained = tiny(in_channels=2, deep_supervision=True)
    perturb_zero_initialised(trained)  # so that the anchors matter to the outputs compared below
    inference = tiny(in_channels=2, deep_supervision=False)
    inference.load_state_dict(trained.state_dict(), strict=True)
    trained.load_state_dict(inference.state_dict(), strict=True)  # and back
    x = torch.randn(1, 2, 16, 16, 16)
    with torch.no_grad():
        torch.testing.assert_close(inference(x), trained(x)[0], rtol=0, atol=0)


def test_cpu_inference_runs_eagerly_and_copies_carry_no_graphs() -> None:
    """CUDA-graph replay (tests/test_gpu.py) is for GPUs: on the CPU the plain forward runs, and the network
    copies, pickles and saves as before (the graphs are no state)."""
    model = accelerate(tiny(in_channels=2)).eval()
    x = torch.randn(1, 2, 16, 16, 16)
    with torch.inference_mode():
        torch.testing.assert_close(model(x), model.forward_eager(x), rtol=0, atol=0)
    assert len(model.inference_graphs) == 0 and model.cuda_graphs
    assert set(model.state_dict()) == set(tiny(in_channels=2).state_dict())
    for copy in (deepcopy(model), pickle.loads(pickle.dumps(model))):
        with torch.inference_mode():
            torch.testing.assert_close(copy(x), model(x), rtol=0, atol=0)
        assert copy.inference_graphs is not model.inference_graphs
        assert type(copy) is CUDAGraphLightMedSeg and type(copy.stem.primary) is FastCPUConv3d


def test_a_failed_cuda_graph_capture_falls_back_to_the_eager_forward(monkeypatch) -> None:
    """Where a graph cannot be captured (a driver or setup that refuses it), prediction goes on eagerly, with one
    warning. The capture is made to fail the way CUDA reports it, so that the test means the same with a GPU."""
    def refused(self, forward, x):
        raise RuntimeError("CUDA error: operation not permitted when stream is capturing")

    monkeypatch.setattr(InferenceGraphs, "applies", staticmethod(lambda module, x: True))
    monkeypatch.setattr(InferenceGraphs, "_capture", refused)
    model = accelerate(tiny(in_channels=2)).eval()
    x = torch.randn(1, 2, 16, 16, 16)
    with torch.inference_mode():
        with pytest.warns(RuntimeWarning, match="LIGHTMEDSEG_CUDA_GRAPHS=0"):
            out = model(x)
        torch.testing.assert_close(out, model.forward_eager(x), rtol=0, atol=0)
        assert not model.cuda_graphs and len(model.inference_graphs) == 0
        with pytest.raises(ValueError, match="input channel"):  # bad input is still an error, not a fallback
            accelerate(tiny(in_channels=2)).eval()(torch.randn(1, 3, 16, 16, 16))


def test_refined_head_starts_as_the_paper_head_and_refines_where_the_stem_downsampled():
    paper = LightMedSeg.from_preset("paper", 1, 4, strides=ANISO_STRIDES).eval()
    refined = LightMedSeg.from_preset("paper", 1, 4, strides=ANISO_STRIDES, refine_head=True).eval()
    missing, unexpected = refined.load_state_dict(paper.state_dict(), strict=False)
    assert all(name.startswith("refinement.") for name in missing) and not unexpected
    hidden_conv = refined.refinement.hidden[0]
    assert hidden_conv.kernel_size == (1, 3, 3)  # the stem keeps z (stride 1) and halves y, x
    x = torch.randn(1, 1, 4, 32, 32)
    torch.testing.assert_close(refined(x), paper(x))  # zero-initialised: the paper's logits
    refined(x).square().mean().backward()
    assert refined.refinement.out.weight.grad.abs().sum() > 0  # the output convolution learns first
    torch.nn.init.normal_(refined.refinement.out.weight)  # as after some training
    refined.zero_grad()
    refined(x).square().mean().backward()
    assert hidden_conv.weight.grad[:, 4:].abs().sum() > 0  # then the hidden layer learns from the image channel


def test_smooth_head_interpolates_the_coarse_logits_across_blocks():
    smooth = LightMedSeg.from_preset("paper", 1, 4, strides=ANISO_STRIDES, head_upsampling="trilinear",
                                     deep_supervision=True).eval()
    assert smooth.head.upsample is None
    full, coarse = smooth(torch.randn(1, 1, 4, 32, 32))[:2]
    torch.testing.assert_close(full, torch.nn.functional.interpolate(coarse, size=(4, 32, 32), mode="trilinear"))
    paper = LightMedSeg.from_preset("paper", 1, 4, strides=ANISO_STRIDES, deep_supervision=True).eval()
    torch.nn.init.constant_(paper.head.upsample.weight, 0.25)  # the same weight at every position of a block
    blocks = paper(torch.randn(1, 1, 4, 32, 32))[0]
    # the paper's head then repeats each coarse voxel over its 2 x 2 block; interpolation does not
    torch.testing.assert_close(blocks[..., 0::2, 0::2], blocks[..., 1::2, 1::2])
    assert not torch.allclose(full[..., 0::2, 0::2], full[..., 1::2, 1::2])
    with pytest.raises(ValueError, match="head upsampling"):
        LightMedSeg.from_preset("paper", 1, 4, head_upsampling="nearest")


# ---------------------------------------------------------------------------------------------------- state_dict

#: (number of entries, number of values, digest of the sorted "name [shape]" lines) of each preset's and ablation's
#: state_dict, 1 input channel, 4 outputs, default strides unless named: checkpoints trained before load strictly
#: only while these stay. Change them only with a way to load the old checkpoints.
STATE_DICTS: dict[str, tuple[int, int, str]] = {
    "tiny": (188, 131343, "91b1d49505524960"),
    "small": (188, 282761, "aa9f23ee389b52f1"),
    "paper": (188, 485201, "3d742415a6ae81b0"),
    "base": (188, 1061639, "cb1d2b3e596095f9"),
    "large": (188, 1848839, "7671db1d93c1711f"),
    "fine": (188, 489143, "a167d3f246e579ed"),
    "paper, ACDC strides": (188, 441617, "ab28a158aab6377c"),
    "use_anchors=False": (157, 457482, "0525cb3918ffc9f9"),
    "anchor_mode=mlp": (187, 485953, "15035ff926024804"),
    "use_lspm=False": (180, 481774, "cd210a5d69447d77"),
    "use_film=False": (180, 466985, "ea9d5bd2503ff95f"),
    "use_texture_routing=False": (175, 451756, "e44a5fc484bd3853"),
    "use_skip_router=False": (169, 479677, "79c31756eb30717b"),
    "use_position_bias=False": (170, 476546, "00b0fb8106a47b82"),
    "use_adaptive_decoder=False": (149, 467303, "bb96135e4fbdd308"),
    "ghost=False": (180, 733277, "d83ece3d7723237b"),
    "refine_head=True": (193, 486333, "50d5feca71c5bc46"),
    "head_upsampling=trilinear": (186, 485069, "84e69fda7dc3399a"),
}


def pinned_network(name: str, in_channels: int = 1, **kwargs: Any) -> LightMedSeg:
    """The network of a STATE_DICTS row."""
    if name in PRESETS:
        return LightMedSeg.from_preset(name, in_channels, 4, **kwargs)
    if name == "paper, ACDC strides":
        return LightMedSeg.from_preset("paper", in_channels, 4, strides=ANISO_STRIDES, **kwargs)
    option, value = name.split("=")
    text_options = ("anchor_mode", "head_upsampling")
    return LightMedSeg.from_preset("paper", in_channels, 4,
                                   **{option: value if option in text_options else value == "True"}, **kwargs)


def state_dict_signature(model: nn.Module) -> tuple[int, int, str]:
    state = model.state_dict()
    listing = "\n".join(f"{name} {list(t.shape)}" for name, t in sorted(state.items()))
    return len(state), sum(t.numel() for t in state.values()), hashlib.sha256(listing.encode()).hexdigest()[:16]


@pytest.mark.parametrize("name", STATE_DICTS)
def test_state_dict_keys_and_shapes_are_pinned(name: str) -> None:
    model = pinned_network(name)
    assert state_dict_signature(model) == STATE_DICTS[name]
    assert state_dict_signature(accelerate(model)) == STATE_DICTS[name]  # execution choices add no state


def fill_deterministically(model: nn.Module) -> nn.Module:
    """Every state_dict entry j (sorted by name) set to 0.2 sin(0.37 n + j) over its values n: weights that do not
    depend on torch's random generator or the order in which modules are built."""
    with torch.no_grad():
        for j, (_, tensor) in enumerate(sorted(model.state_dict().items())):
            values = torch.arange(tensor.numel(), dtype=torch.float64)
            tensor.copy_((0.2 * torch.sin(0.37 * values + j)).view(tensor.shape))
    return model


#: sum, sum of magnitudes and a position-weighted sum of each deep-supervision output of the paper preset (2 input
#: channels, ACDC strides) with ``fill_deterministically``'s weights on a fixed input, float64: the forward's
#: results for given weights, as computed by the network that trained the existing checkpoints.
PINNED_OUTPUTS = [(2768.67534, 2768.68449, -970.469721), (636.589769, 1092.28938, 567.135577),
                  (188.113517, 221.475429, 56.2061162), (46.3110414, 97.4313275, -11.8927783)]


@pytest.mark.parametrize("dtype, accelerated", [(torch.float64, False), (torch.float32, False),
                                                (torch.float32, True)])
def test_outputs_for_given_weights_are_pinned(dtype: torch.dtype, accelerated: bool) -> None:
    """The same weights give the same outputs as the network that trained the existing checkpoints, plain or with
    the execution choices switched in (up to float rounding in float32)."""
    model = fill_deterministically(pinned_network("paper, ACDC strides", in_channels=2, deep_supervision=True)
                                   .double()).to(dtype).eval()
    if accelerated:
        accelerate(model)
    x = torch.sin(0.013 * torch.arange(2 * 4 * 32 * 48, dtype=torch.float64)).view(1, 2, 4, 32, 48).to(dtype)
    with torch.no_grad():
        outputs = [o.double() for o in model(x)]
    got = [(o.sum().item(), o.abs().sum().item(),
            (o * torch.linspace(-1, 1, o.numel(), dtype=torch.float64).view_as(o)).sum().item()) for o in outputs]
    tolerance = 1e-8 if dtype == torch.float64 else 1e-5
    for values, pinned in zip(got, PINNED_OUTPUTS, strict=True):
        # the weighted sum cancels: its rounding error scales with the sum of magnitudes, not with its own value
        assert values == pytest.approx(pinned, rel=tolerance, abs=tolerance * pinned[1]), (got, PINNED_OUTPUTS)


def test_architecture_is_plain_pytorch_and_accelerate_switches_in_place() -> None:
    """LightMedSeg itself holds torch's own modules; accelerate re-classes them (and the network) in place, keeping
    every parameter object, so the two forms share weights and state_dict."""
    model = tiny(in_channels=2)
    assert type(model) is LightMedSeg
    assert not any(isinstance(m, tuple(FAST_CPU_CLASSES.values())) for m in model.modules())
    parameters = dict(model.named_parameters())
    plain = deepcopy(model)
    assert accelerate(model) is model and type(model) is CUDAGraphLightMedSeg
    assert {type(m) for m in model.modules()} & set(FAST_CPU_CLASSES) == set()  # every one switched
    assert {FastCPUConv3d, FastCPUConvTranspose3d, FastCPUInstanceNorm3d} <= {type(m) for m in model.modules()}
    assert all(p is parameters[n] for n, p in model.named_parameters()) and len(parameters) == len(plain.state_dict())
    plain.load_state_dict(model.state_dict(), strict=True)
    x = torch.randn(2, 2, 16, 16, 16)
    with torch.no_grad():
        torch.testing.assert_close(model.eval()(x), plain.eval()(x), rtol=1e-5, atol=1e-5)
    assert type(accelerate(tiny(), cuda_graphs=False)) is LightMedSeg


def test_flop_counting_and_tracing_see_the_plain_operators() -> None:
    """The execution choices step aside in dispatch modes (FLOP counting) and tracing (ONNX export): the same
    FLOPs and the same traced operators as the plain network, and no CUDA-graph replay there."""
    plain = tiny(in_channels=2).eval()
    fast = accelerate(deepcopy(plain)).eval()
    x = torch.randn(1, 2, 16, 16, 16)
    flops = []
    for model in (plain, fast):
        with torch.no_grad(), FlopCounterMode(display=False) as counter:
            model(x)
        flops.append(counter.get_total_flops())
    assert flops[0] == flops[1] > 0
    with torch.no_grad():
        graphs = [torch.jit.trace(model, x, check_trace=False).inlined_graph for model in (plain, fast)]
    kinds = [sorted(node.kind() for node in graph.nodes()) for graph in graphs]
    assert kinds[0] == kinds[1] and "aten::_convolution" in kinds[0]
    cuda_input = type("CudaInput", (), {"is_cuda": True})()  # InferenceGraphs.applies reads only is_cuda of x
    with torch.no_grad():
        assert InferenceGraphs.applies(fast, cuda_input)
        with FlopCounterMode(display=False):
            assert not InferenceGraphs.applies(fast, cuda_input)


# ---------------------------------------------------------------------------------------------------- presets

def test_unknown_preset_lists_available_presets() -> None:
    with pytest.raises(ValueError, match="no_such_preset") as error:
        LightMedSeg.from_preset("no_such_preset", 1, 2)
    assert all(name in str(error.value) for name in PRESETS)


def test_unknown_option_is_a_type_error() -> None:
    with pytest.raises(TypeError, match="use_nonsense"):
        LightMedSeg.from_preset("tiny", 1, 2, use_nonsense=True)
    assert {"use_anchors", "anchor_mode", "ghost"} <= set(LightMedSegConfig.__dataclass_fields__)


# ------------------------------------------------------------------------------------------ dtypes and tiny inputs

@pytest.mark.parametrize("dtype", [torch.float64, torch.bfloat16])
def test_softargmax_network_runs_in_other_dtypes(dtype: torch.dtype) -> None:
    model = tiny().to(dtype)
    with torch.no_grad():
        assert model(torch.randn(1, 1, 16, 16, 16, dtype=dtype)).dtype == dtype


def test_single_voxel_bottleneck_is_clearly_refused() -> None:
    model = tiny(strides=ISO_STRIDES).eval()  # total stride 16; 16^3 -> 1^3 bottleneck
    with pytest.raises(ValueError, match=r"LightMedSeg cannot take spatial shape \(16, 16, 16\).*single voxel"):
        model(torch.randn(1, 1, 16, 16, 16))
    assert model(torch.randn(1, 1, 16, 16, 32)).shape[2:] == (16, 16, 32)


@pytest.mark.parametrize("kwargs", [
    dict(in_channels=6, out_channels=5, kernel_size=1, bias=False),  # a matrix product over the voxels
    dict(in_channels=6, out_channels=5, kernel_size=1, bias=True),
    dict(in_channels=6, out_channels=5, kernel_size=3, padding=1, stride=(1, 2, 2)),  # oneDNN
    dict(in_channels=6, out_channels=6, kernel_size=3, padding=1, groups=6, bias=False),
])
def test_cpu_fast_convolution_equals_pytorchs(kwargs: dict) -> None:
    """FastCPUConv3d's CPU paths give nn.Conv3d's outputs and gradients (batch of 2, float32)."""
    torch.manual_seed(0)
    conv = FastCPUConv3d(**kwargs)
    x = torch.randn(2, kwargs["in_channels"], 4, 6, 8, requires_grad=True)
    fast = conv(x)
    (fast_grad_x, *fast_grads) = torch.autograd.grad(fast.square().sum(), [x, *conv.parameters()])
    reference = nn.Conv3d.forward(conv, x)
    (ref_grad_x, *ref_grads) = torch.autograd.grad(reference.square().sum(), [x, *conv.parameters()])
    torch.testing.assert_close(fast, reference, rtol=1e-5, atol=1e-5)
    for a, b in zip([fast_grad_x, *fast_grads], [ref_grad_x, *ref_grads]):
        torch.testing.assert_close(a, b, rtol=1e-4, atol=1e-4)


@pytest.mark.parametrize("stride, bias", [((2, 2, 2), True), ((1, 2, 2), False), ((1, 1, 1), True)])
def test_cpu_fast_transposed_convolution_equals_pytorchs(stride: tuple, bias: bool) -> None:
    """FastCPUConvTranspose3d's CPU path (kernel = stride as a matrix product) gives nn's outputs and gradients."""
    conv = FastCPUConvTranspose3d(3, 5, kernel_size=stride, stride=stride, bias=bias)
    x = torch.randn(2, 3, 3, 4, 5, requires_grad=True)
    outputs = [conv(x), nn.ConvTranspose3d.forward(conv, x)]
    grads = [torch.autograd.grad((out * torch.linspace(-1, 2, out.numel()).view_as(out)).sum(),
                                 [x, *conv.parameters()]) for out in outputs]
    assert outputs[0].shape == (2, 5, 3 * stride[0], 4 * stride[1], 5 * stride[2])
    torch.testing.assert_close(outputs[0], outputs[1], rtol=1e-5, atol=1e-5)
    for a, b in zip(*grads):
        torch.testing.assert_close(a, b, rtol=1e-4, atol=1e-4)


def test_cpu_fast_instance_norm_equals_pytorchs() -> None:
    """FastCPUInstanceNorm3d's CPU path (group_norm) gives nn.InstanceNorm3d's outputs and gradients."""
    norm = FastCPUInstanceNorm3d(3, affine=True)
    nn.init.normal_(norm.weight)
    nn.init.normal_(norm.bias)
    x = (torch.randn(2, 3, 4, 6, 8) * 3 + 1).requires_grad_()
    outputs = [norm(x), nn.InstanceNorm3d.forward(norm, x)]
    grads = [torch.autograd.grad((out * torch.linspace(-1, 2, out.numel()).view_as(out)).sum(),
                                 [x, *norm.parameters()]) for out in outputs]
    torch.testing.assert_close(outputs[0], outputs[1], rtol=1e-5, atol=1e-5)
    for a, b in zip(*grads):
        torch.testing.assert_close(a, b, rtol=1e-4, atol=1e-4)


def test_modules_compute_their_equations() -> None:
    """The element-wise parts run fused (addcmul: one pass over the volume instead of two or three); written out
    as in the spec, with the same submodules, they give the same values."""
    from nnunetv2_lightmedseg.architectures import (
        AdaptiveMixBlock,
        LocalStructuralPrior,
        SqueezeExcite3D,
        TextureRoutedStage,
    )
    from nnunetv2_lightmedseg.architectures.blocks import normalized_grid
    torch.manual_seed(0)
    x, descriptor, texture = torch.randn(2, 8, 6, 8, 8), torch.rand(2, 16), torch.rand(2, 1, 6, 8, 8)
    se = SqueezeExcite3D(8)
    residual = torch.randn_like(x)
    torch.testing.assert_close(se(x, residual=residual), residual + se(x))

    stage = TextureRoutedStage(8, 8, (1, 1, 1), descriptor_size=16)
    nn.init.normal_(stage.film.linear.weight, std=0.1)  # zero at init: give FiLM something to do
    with torch.no_grad():
        g = stage.project(x)
        gamma, beta = stage.film.linear(descriptor)[:, :, None, None, None].chunk(2, dim=1)
        f = g * (1 + gamma) + beta  # F~ = FiLM(G, a)
        for t in (texture, None):
            weight = 0.5 if t is None else t
            y = weight * stage.detail(f) + (1 - weight) * stage.smooth(f)  # Y = T Detail(F~) + (1 - T) Smooth(F~)
            torch.testing.assert_close(stage(x, descriptor, t), stage.se(y) + f)

        block = AdaptiveMixBlock(8, 8, 8)
        skip = torch.randn_like(x)
        fused = block.fuse(torch.cat([x, skip], dim=1))
        w = torch.softmax(block.router(fused), dim=1)
        mixed = w[:, 0:1] * block.separable(fused) + w[:, 1:2] * block.ghost(fused) + w[:, 2:3] * block.pointwise(fused)
        torch.testing.assert_close(block(x, skip), block.se(mixed) + fused)

        bias = AnchorPositionBias(channels=8, num_anchors=4)
        nn.init.normal_(bias.embed[-1].weight, std=0.1)
        positions = torch.rand(2, 4, 3)
        offsets = normalized_grid(x.shape[2:], x.device, x.dtype)[None, None] - positions[..., None, None, None]
        torch.testing.assert_close(bias(x, positions),  # U' = U + sigmoid(Conv1x1(U)) * bias(O)
                                   x + torch.sigmoid(bias.gate(x)) * bias.embed(offsets.flatten(1, 2)))

        prior = LocalStructuralPrior(8)
        weights = torch.softmax(prior.gate(x), dim=1)
        first, second = prior.projections(x).chunk(2, dim=1)
        torch.testing.assert_close(prior(x)[0], x + weights[:, :1] * first + weights[:, 1:] * second)
