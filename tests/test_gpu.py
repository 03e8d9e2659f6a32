"""On a CUDA GPU only: LightMedSeg's inference CUDA graphs give the eager forward's outputs, in nnU-Net's predictor too.

Skipped without a GPU (CI and this project's development machine have none); run on a GPU machine with
``python -m pytest -q tests/test_gpu.py``.
"""
from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from nnunetv2_lightmedseg.architectures import LightMedSeg
from nnunetv2_lightmedseg.execution import CUDAGraphLightMedSeg, accelerate

pytestmark = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")

ANISO_STRIDES = [(1, 2, 2), (1, 2, 2), (2, 2, 2), (1, 2, 2)]
PLANS = Path(__file__).resolve().parents[1] / "benchmarks" / "plans" / "Dataset027_ACDC_nnUNetPlans.json"


def paper(deep_supervision: bool = False, cuda_graphs: bool = True, **options) -> LightMedSeg:
    """The paper preset (``options``: fields of its config) as nnU-Net's trainers build it (``accelerate``), on the
    GPU in eval mode."""
    torch.manual_seed(0)
    network = LightMedSeg.from_preset("paper", 2, 4, strides=ANISO_STRIDES, deep_supervision=deep_supervision,
                                      **options)
    return accelerate(network, cuda_graphs=cuda_graphs).cuda().eval()


@pytest.mark.parametrize("dtype", [None, torch.bfloat16, torch.float16])
@pytest.mark.parametrize("deep_supervision", [False, True])
@pytest.mark.parametrize("head_upsampling", ["transposed", "trilinear"])
def test_replay_equals_eager_forward(dtype: torch.dtype, deep_supervision: bool, head_upsampling: str) -> None:
    model = paper(deep_supervision, head_upsampling=head_upsampling)
    inputs = [torch.randn(1, 2, 8, 64, 48, device="cuda") for _ in range(3)]
    with torch.inference_mode(), torch.autocast("cuda", dtype=dtype or torch.float32, enabled=dtype is not None):
        replayed = [model(x) for x in inputs]  # kept across calls: each is a copy, not the graph's output buffer
        eager = [model.forward_eager(x) for x in inputs]
    assert len(model.inference_graphs) == 1
    tolerance = 1e-4 if dtype is None else 2e-2
    for got, want in zip(replayed, eager):
        for g, w in zip(*(o if deep_supervision else [o] for o in (got, want))):
            assert g.dtype == w.dtype and g.shape == w.shape
            torch.testing.assert_close(g.float(), w.float(), atol=tolerance, rtol=tolerance)


def test_replay_reads_weights_loaded_after_capture_outside_the_callers_autocast() -> None:
    """The graph casts the weights itself: the caller's autocast cache is gone after its context, and weights
    loaded in place (nnUNetPredictor loads each fold's into one network) must be the ones used."""
    model, other = paper(), LightMedSeg.from_preset("paper", 2, 4, strides=ANISO_STRIDES).cuda().eval()
    x = torch.randn(1, 2, 8, 64, 48, device="cuda")
    with torch.inference_mode():
        with torch.autocast("cuda", dtype=torch.float16):
            model(x)
        model.load_state_dict(other.state_dict())
        with torch.autocast("cuda", dtype=torch.float16):
            got, want = model(x), other(x)
    assert len(model.inference_graphs) == 1
    torch.testing.assert_close(got.float(), want.float(), atol=2e-2, rtol=2e-2)


def test_graphs_outlive_eval_and_to_and_go_when_the_weights_move() -> None:
    """nnUNetPredictor calls .to(device) and .eval() for every case: the graph must stay (capture costs three
    forwards); .half() re-allocates the weights it reads, so it must go."""
    model = paper()
    x = torch.randn(1, 2, 8, 64, 48, device="cuda")
    with torch.inference_mode():
        model(x)
        captured = list(model.inference_graphs._graphs.values())
        model.to("cuda").eval()
        assert [a is b for a, b in zip(model.inference_graphs._graphs.values(), captured)] == [True]
        model.half()
        assert len(model.inference_graphs) == 0
        model.float()
        torch.testing.assert_close(model(x), model.forward_eager(x), atol=1e-4, rtol=1e-4)


def test_training_runs_eagerly_and_frees_the_graphs() -> None:
    model = paper()
    x = torch.randn(2, 2, 8, 64, 48, device="cuda")
    with torch.no_grad():
        model(x)
    assert len(model.inference_graphs) == 1
    model.train()
    assert len(model.inference_graphs) == 0
    model(x).float().mean().backward()
    assert next(model.stem.parameters()).grad is not None
    assert len(model.inference_graphs) == 0


def test_nnunet_predictor_gives_the_same_logits_with_and_without_graphs() -> None:
    """Sliding window with mirroring: nnU-Net sums the network's outputs in place across calls."""
    from nnunetv2.inference.predict_from_raw_data import nnUNetPredictor
    from nnunetv2.utilities.plans_handling.plans_handler import PlansManager
    plans = json.loads(PLANS.read_text())
    plans["configurations"]["3d_fullres"]["patch_size"] = [8, 64, 48]
    manager = PlansManager(plans)
    dataset_json = {"channel_names": {"0": "a", "1": "b"}, "labels": {"background": 0, "x": 1, "y": 2, "z": 3},
                    "file_ending": ".nii.gz"}
    data = torch.randn(2, 11, 90, 70)
    logits = {}
    for graphs in (True, False):
        model = paper(cuda_graphs=graphs)
        predictor = nnUNetPredictor(tile_step_size=0.5, use_mirroring=True, device=torch.device("cuda"),
                                    verbose=False, allow_tqdm=False)
        predictor.manual_initialization(model, manager, manager.get_configuration("3d_fullres"),
                                        [model.state_dict()], dataset_json, "test", (0, 1, 2))
        logits[graphs] = predictor.predict_logits_from_preprocessed_data(data).float()
        assert isinstance(model, CUDAGraphLightMedSeg) is graphs
        assert not graphs or len(model.inference_graphs) == 1
    torch.testing.assert_close(logits[True], logits[False], atol=2e-2, rtol=2e-2)


def nnunet_step_parts(network: torch.nn.Module):
    """nnU-Net's deep-supervision loss (Dice + CE, weights 1/2^i, the coarsest 0), its AdamW recipe and GradScaler."""
    import numpy as np
    from nnunetv2.training.loss.compound_losses import DC_and_CE_loss
    from nnunetv2.training.loss.deep_supervision import DeepSupervisionWrapper
    from nnunetv2.training.loss.dice import MemoryEfficientSoftDiceLoss

    from nnunetv2_lightmedseg.trainers.recipes import get_recipe
    weights = np.array([1 / 2 ** i for i in range(4)])
    weights[-1] = 0
    loss = DeepSupervisionWrapper(DC_and_CE_loss({"batch_dice": False, "smooth": 1e-5, "do_bg": False, "ddp": False},
                                                 {}, weight_ce=1, weight_dice=1,
                                                 dice_class=MemoryEfficientSoftDiceLoss), weights / weights.sum())
    recipe = get_recipe("adamw")
    return loss, recipe.make_optimizer(network, recipe.learning_rate, recipe.weight_decay), torch.amp.GradScaler()


def nnunet_train_step(network, loss, optimizer, scaler, data, target) -> float:
    """nnunetv2 2.8.1's nnUNetTrainer.train_step on CUDA, without the transfer: fp16 autocast, scaled backward,
    unscale, clip at 12, step, update."""
    optimizer.zero_grad(set_to_none=True)
    with torch.autocast("cuda", enabled=True):
        output = network(data)
        value = loss(output, target)
    scaler.scale(value).backward()
    scaler.unscale_(optimizer)
    torch.nn.utils.clip_grad_norm_(network.parameters(), 12)
    scaler.step(optimizer)
    scaler.update()
    return value.detach().cpu().item()


def test_training_graphs_follow_the_eager_training_step_of_nnunet() -> None:
    """Three steps of nnU-Net's train_step (fp16 autocast, GradScaler, clipping, AdamW) on two copies of one network,
    one replaying its training forward and backward: the same losses and, at the first step whose gradients are finite
    (GradScaler skips the others), the same clipped gradients, up to fp16 rounding; a batch of another shape runs
    eagerly; eval mode still replays the inference graphs. Weights are not compared: AdamW's first updates are about
    lr x sign(gradient), so fp16 rounding of a gradient near zero moves a weight by up to 2 lr either way
    (``benchmarks/results/graphed_step_diff_nvidia-h200.txt``)."""
    import copy

    import torch.nn.functional as F
    torch.manual_seed(0)
    built = LightMedSeg.from_preset("paper", 2, 4, strides=ANISO_STRIDES, deep_supervision=True).cuda().train()
    networks = {graphed: accelerate(copy.deepcopy(built), training_graphs=graphed) for graphed in (True, False)}
    parts = {graphed: nnunet_step_parts(network) for graphed, network in networks.items()}
    scales = networks[True].deep_supervision_scales
    losses = {True: [], False: []}
    compared = False
    for step in range(3):
        data = torch.randn(2, 2, 8, 64, 48, device="cuda")
        labels = torch.randint(0, 4, (2, 1, 8, 64, 48), device="cuda").float()
        target = [F.interpolate(labels, scale_factor=s, mode="nearest") if s != [1.0, 1.0, 1.0] else labels
                  for s in scales]
        for graphed, network in networks.items():
            losses[graphed].append(nnunet_train_step(network, *parts[graphed], data, target))
        # a parameter that only an unused output reaches: no gradient eagerly, zeros from the graph
        gradients = {graphed: [torch.zeros_like(p) if p.grad is None else p.grad for p in network.parameters()]
                     for graphed, network in networks.items()}
        if not compared and all(bool(torch.isfinite(g).all()) for g in sum(gradients.values(), [])):
            for (name, _), got, want in zip(networks[True].named_parameters(), gradients[True], gradients[False]):
                bound = 1e-2 * float(want.abs().max()) + 1e-6
                torch.testing.assert_close(got, want, atol=bound, rtol=1e-2, msg=name)
            compared = True
    assert compared, "no step had finite gradients in both networks"
    assert len(networks[True].training_graphs) == 1 and len(networks[False].training_graphs) == 0
    assert losses[True] == pytest.approx(losses[False], rel=1e-2, abs=1e-3)
    model = networks[True]
    other = torch.randn(1, 2, 8, 64, 48, device="cuda")
    outputs = model(other)  # another batch: eager, the captured graph stays
    assert len(model.training_graphs) == 1
    torch.testing.assert_close(outputs[0], model.forward_eager(other)[0])
    model.eval()
    with torch.no_grad():
        model(other)
    assert len(model.inference_graphs) == 1 and len(model.training_graphs) == 1
