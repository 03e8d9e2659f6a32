"""Trainer variants in-process on a tiny generated dataset: recipes (optimiser, warm-up, --c across recipes) and
trainers named by their training length."""
from __future__ import annotations

import pytest
import torch

import nnunetv2_lightmedseg
from nnunetv2_lightmedseg import trainers
from nnunetv2_lightmedseg.architectures import get_preset
from nnunetv2_lightmedseg.trainers.common import strides_from_plan, unwrap
from nnunetv2_lightmedseg.trainers.recipes import RECIPES, optimizer_signature

DATASET = "991"  # conftest's iso_planned


@pytest.fixture(scope="module")
def planned(iso_planned, monkeypatch_module):
    """The shared generated dataset, planned and preprocessed; nnU-Net's folders in this process's environment."""
    nnunet_env = iso_planned
    for key in ("nnUNet_raw", "nnUNet_preprocessed", "nnUNet_results"):
        monkeypatch_module.setenv(key, nnunet_env.env[key])
    monkeypatch_module.setenv("nnUNet_n_proc_DA", "0")
    nnunetv2_lightmedseg.enable()
    return nnunet_env


@pytest.fixture(scope="module")
def monkeypatch_module():
    with pytest.MonkeyPatch.context() as patch:
        yield patch


def make_trainer(name: str, fold: int = 0):
    from nnunetv2.run.run_training import get_trainer_from_args
    return get_trainer_from_args(DATASET, "3d_fullres", fold, name, device=torch.device("cpu"))


def train_iterations(trainer, iterations: int = 2) -> list[float]:
    """nnU-Net's training loop for a few iterations of one epoch; the learning rate of each."""
    trainer.on_train_start()
    trainer.on_train_epoch_start()
    rates = []
    try:
        for _ in range(iterations):
            batch = next(trainer.dataloader_train)
            assert batch["data"].shape[0] == trainer.batch_size
            result = trainer.train_step(batch)
            assert torch.isfinite(torch.as_tensor(result["loss"]))
            rates.append(trainer.optimizer.param_groups[0]["lr"])
    finally:
        trainer.on_train_end()
    return rates


@pytest.mark.parametrize("name, optimizer, learning_rate", [
    ("nnUNetTrainerLightMedSeg", torch.optim.AdamW, 2e-3),
    ("nnUNetTrainerLightMedSeg_nnUNetSGD", torch.optim.SGD, 1e-2),
    ("nnUNetTrainerLightMedSeg_adamwWarmup", torch.optim.AdamW, RECIPES["adamwWarmup"].learning_rate),
    ("nnUNetTrainerLightMedSeg_20epochs", torch.optim.AdamW, 2e-3),
    ("nnUNetTrainerLightMedSeg_gpuDA", torch.optim.AdamW, 2e-3),
    ("nnUNetTrainerLightMedSeg_batch2x", torch.optim.AdamW, 2e-3),
    ("nnUNetTrainerLightMedSeg_refinedHead", torch.optim.AdamW, 2e-3),
    ("nnUNetTrainerLightMedSeg_graphedStep", torch.optim.AdamW, 2e-3),
    ("nnUNetTrainerLightMedSeg_fullResStem", torch.optim.AdamW, 2e-3),
    ("nnUNetTrainerLightMedSeg_fine", torch.optim.AdamW, 2e-3),
    ("nnUNetTrainerLightMedSeg_smoothHead", torch.optim.AdamW, 2e-3),
])
def test_variant_trains_with_its_optimiser(planned, name, optimizer, learning_rate):
    trainer = make_trainer(name)
    train_iterations(trainer)
    assert type(trainer.optimizer) is optimizer
    assert trainer.optimizer.param_groups[0]["initial_lr"] == learning_rate
    if name.endswith("_20epochs"):
        assert trainer.num_epochs == 20
    assert trainer.augmentation_device == ("auto" if name.endswith("_gpuDA") else "cpu")
    assert trainer.device_augmentation is None  # on the CPU every one keeps nnU-Net's pipeline
    planned_batch = trainer.configuration_manager.batch_size
    assert trainer.batch_size == (2 * planned_batch if name.endswith("_batch2x") else planned_batch)
    refinement = unwrap(trainer.network).refinement
    assert (refinement is not None) == name.endswith("_refinedHead")
    if refinement is not None:  # it trained: the zero-initialised refinement moved
        assert refinement.out.weight.abs().sum() > 0
    network = unwrap(trainer.network)
    assert (network.head.upsample is None) == name.endswith("_smoothHead")
    assert network.config.widths == get_preset("fine" if name.endswith("_fine") else "paper").widths
    assert network.training_graphs_enabled == name.endswith("_graphedStep")
    assert len(network.training_graphs) == 0  # on the CPU every one trains eagerly
    planned_strides = strides_from_plan(trainer.configuration_manager, network.config.num_stages)
    assert network.strides == ([(1, 1, 1)] + planned_strides[:-1] if name.endswith("_fullResStem")
                               else planned_strides)



@pytest.mark.parametrize("compile_setting", [None, "t", "f"])
def test_graphed_step_replaces_nnunets_default_compile_on_cuda(planned, monkeypatch, compile_setting):
    """On CUDA nnU-Net compiles every network unless told not to; a compiled network would run none of the graphs."""
    if compile_setting is None:
        monkeypatch.delenv("nnUNet_compile", raising=False)
    else:
        monkeypatch.setenv("nnUNet_compile", compile_setting)
    compiles = {}
    for name in ("nnUNetTrainerLightMedSeg", "nnUNetTrainerLightMedSeg_graphedStep"):
        trainer = make_trainer(name)
        trainer.device = torch.device("cuda")  # only what _do_i_compile reads: nothing runs on it
        compiles[name] = trainer._do_i_compile()
    assert compiles == {"nnUNetTrainerLightMedSeg": compile_setting != "f",
                        "nnUNetTrainerLightMedSeg_graphedStep": compile_setting == "t"}

def test_warm_up_then_poly_decay(planned):
    recipe = RECIPES["adamwWarmup"]
    trainer = make_trainer("nnUNetTrainerLightMedSeg_adamwWarmup_20epochs")  # W = 5 % of 5000 iterations
    assert trainer.warmup_iterations == 250
    rates = train_iterations(trainer, 3)
    assert rates == pytest.approx([recipe.learning_rate * t / 250 for t in (1, 2, 3)])
    trainer = make_trainer("nnUNetTrainerLightMedSeg_20epochs")  # the default recipe has no warm-up
    assert trainer.warmup_iterations == 0
    assert train_iterations(trainer, 2) == pytest.approx([2e-3, 2e-3])  # poly decay at epoch 0: the peak


def test_weight_decay_spares_norms_and_biases(planned):
    trainer = make_trainer("nnUNetTrainerLightMedSeg_adamwWarmup")
    trainer.initialize()
    decayed, kept = trainer.optimizer.param_groups
    assert decayed["weight_decay"] == RECIPES["adamwWarmup"].weight_decay and kept["weight_decay"] == 0
    assert all(p.ndim > 1 for p in decayed["params"]) and all(p.ndim == 1 for p in kept["params"])
    network_parameters = list(trainer.network.parameters())
    assert len(decayed["params"]) + len(kept["params"]) == len(network_parameters)


def test_resume_continues_with_the_recipe_it_was_trained_with(planned):
    """--c of a fold trained by the former default (nnU-Net's SGD) under the new default goes on with SGD."""
    old = make_trainer("nnUNetTrainerLightMedSeg_nnUNetSGD")
    train_iterations(old, 1)
    checkpoint = f"{old.output_folder}/checkpoint_latest.pth"
    old.save_checkpoint(checkpoint)
    new = make_trainer("nnUNetTrainerLightMedSeg")
    new.load_checkpoint(checkpoint)
    assert type(new.optimizer) is torch.optim.SGD and new.recipe == "nnUNetSGD"
    assert optimizer_signature(new.optimizer.state_dict()) == optimizer_signature(old.optimizer.state_dict())
    assert "continuing it with 'nnUNetSGD'" in open(new.log_file).read()

    # a checkpoint that no registered recipe made: one clear error naming the variant to use
    state = torch.load(checkpoint, weights_only=False)
    state["optimizer_state"]["param_groups"][0]["initial_lr"] = 0.123
    torch.save(state, checkpoint)
    with pytest.raises(RuntimeError, match="nnUNetTrainerLightMedSeg_nnUNetSGD"):
        make_trainer("nnUNetTrainerLightMedSeg").load_checkpoint(checkpoint)


def test_trainers_named_by_their_length():
    assert trainers.budget_trainer_name("nnUNetTrainerLightMedSeg", 20) == "nnUNetTrainerLightMedSeg_20epochs"
    assert trainers.budget_trainer_name("nnUNetTrainerLightMedSeg_adamwWarmup", 10, 100) == \
        "nnUNetTrainerLightMedSeg_adamwWarmup_10epochs_100iters"
    assert trainers.budget_trainer_name("nnUNetTrainerLightMedSeg_5epochs_30iters", 5, 30) == \
        "nnUNetTrainerLightMedSeg_5epochs_30iters"
    assert trainers.budgets.base_trainer_name("nnUNetTrainerLightMedSeg_adamwWarmup_10epochs_100iters") == \
        "nnUNetTrainerLightMedSeg_adamwWarmup"
    assert trainers.budgets.base_trainer_name("nnUNetTrainerLightMedSeg") == "nnUNetTrainerLightMedSeg"
    made = trainers.nnUNetTrainerLightMedSeg_adamwWarmup_10epochs_100iters
    assert issubclass(made, trainers.nnUNetTrainerLightMedSeg_adamwWarmup) and made.recipe == "adamwWarmup"
    assert (made.epochs, made.iterations_per_epoch, made.val_iterations_per_epoch) == (10, 100, 20)
    assert made is trainers.nnUNetTrainerLightMedSeg_adamwWarmup_10epochs_100iters  # made once
    with pytest.raises(ValueError, match="trains 5 epochs x 30 iterations, not 10 x 30"):
        trainers.budget_trainer_name("nnUNetTrainerLightMedSeg_5epochs_30iters", 10, 30)
    from nnunetv2.training.nnUNetTrainer.nnUNetTrainer import nnUNetTrainer
    assert issubclass(trainers.nnUNetTrainer_10epochs_100iters, nnUNetTrainer)
    with pytest.raises(AttributeError):
        trainers.nnUNetTrainerNoSuchThing_10epochs


def test_trainer_named_by_its_length_is_found_by_nnunet(planned):
    """nnU-Net's own lookup (training, --c, prediction) finds the class through the shim, and it trains that long."""
    from nnunetv2.utilities.find_objects import recursive_find_trainer_class_by_name
    found = recursive_find_trainer_class_by_name("nnUNetTrainerLightMedSeg_3epochs_7iters")
    assert found is trainers.nnUNetTrainerLightMedSeg_3epochs_7iters
    trainer = make_trainer("nnUNetTrainerLightMedSeg_3epochs_7iters")
    assert (trainer.num_epochs, trainer.num_iterations_per_epoch) == (3, 7)
    assert trainer.output_folder_base.endswith("nnUNetTrainerLightMedSeg_3epochs_7iters__nnUNetPlans__3d_fullres")
