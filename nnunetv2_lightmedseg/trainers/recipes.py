"""Training recipes for LightMedSeg: optimiser, learning rate and its schedule, weight decay.

nnU-Net's recipe (SGD, Nesterov momentum 0.99, lr 1e-2, poly decay) was tuned for plain convolutional U-Nets; a
network of sigmoid anchors, FiLM, softmax routers and depthwise convolutions may want another. A recipe is one named
configuration in :data:`RECIPES` (a registry, timm-style); a trainer names the one it trains with
(``recipe = "adamw"``). Measured recipes and the reasons for the default: ``benchmarks/results/accuracy_*`` and the
README's recipe sweep.

Everything not named here stays nnU-Net's: the loss and its deep-supervision weights, gradient clipping at norm 12,
mixed precision, the augmentation, 250 iterations per epoch.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Literal, Optional, Union

import torch
from nnunetv2.training.lr_scheduler.polylr import PolyLRScheduler
from torch import nn

from nnunetv2_lightmedseg.trainers.common import unwrap


@dataclass(frozen=True)
class TrainingRecipe:
    """How the weights are updated.

    optimizer: ``"sgd"`` (Nesterov, ``momentum``) or ``"adamw"`` (``betas``, decoupled weight decay).
    learning_rate: the peak learning rate; the schedule is nnU-Net's poly decay per epoch,
        lr_e = learning_rate * (1 - e / E) ^ 0.9, after a linear warm-up over the first ``warmup_fraction`` of all
        training iterations (lr_t = lr_e * (t + 1) / W for iteration t < W).
    weight_decay: on every parameter, or (``decay_norms_and_biases=False``) only on convolution and linear weights,
        not on normalisation affines and biases, whose scale decay would only pull towards an arbitrary value.
    """

    optimizer: Literal["sgd", "adamw"]
    learning_rate: float
    weight_decay: float
    momentum: float = 0.99
    betas: tuple[float, float] = (0.9, 0.999)
    decay_norms_and_biases: bool = True
    warmup_fraction: float = 0.0

    def parameter_groups(self, network: nn.Module, weight_decay: float) -> list[dict]:
        if self.decay_norms_and_biases:
            return [{"params": list(network.parameters()), "weight_decay": weight_decay}]
        decayed = [p for p in network.parameters() if p.ndim > 1]
        kept = [p for p in network.parameters() if p.ndim <= 1]
        return [{"params": decayed, "weight_decay": weight_decay}, {"params": kept, "weight_decay": 0.0}]

    def make_optimizer(self, network: nn.Module, learning_rate: float, weight_decay: float) -> torch.optim.Optimizer:
        groups = self.parameter_groups(network, weight_decay)
        if self.optimizer == "sgd":
            return torch.optim.SGD(groups, learning_rate, momentum=self.momentum, nesterov=True)
        return torch.optim.AdamW(groups, learning_rate, betas=self.betas)


#: nnU-Net's own recipe, LightMedSeg's default before 0.2 (``nnUNetTrainerLightMedSeg_nnUNetSGD``)
NNUNET_SGD = TrainingRecipe("sgd", 1e-2, 3e-5)

RECIPES: dict[str, TrainingRecipe] = {
    "nnUNetSGD": NNUNET_SGD,
    # AdamW at nnU-Net's schedule, nothing else changed: the default of nnUNetTrainerLightMedSeg
    "adamw": TrainingRecipe("adamw", 2e-3, 1e-4),
    # AdamW with a warm-up, a higher peak and decoupled decay on the weights only: tried, no better than "adamw"
    # (the README's recipe sweep)
    "adamwWarmup": TrainingRecipe("adamw", 5e-3, 1e-2, decay_norms_and_biases=False, warmup_fraction=0.05),
}


def get_recipe(name: str) -> TrainingRecipe:
    if name not in RECIPES:
        raise ValueError(f"Unknown LightMedSeg training recipe {name!r}; available: {', '.join(RECIPES)}")
    return RECIPES[name]


def optimizer_signature(state: dict) -> tuple:
    """What an optimizer's ``state_dict()`` says about the recipe that made it: its kind and, per parameter group,
    the initial learning rate and the weight decay."""
    groups = state["param_groups"]
    kind = "adamw" if "betas" in groups[0] else "sgd"
    return kind, tuple((g.get("initial_lr", g["lr"]), g["weight_decay"]) for g in groups)


class RecipeTraining:
    """Trainer mixin: the optimiser, schedule and warm-up of a :class:`TrainingRecipe`.

    ``recipe`` names the recipe; its learning rate and weight decay become nnU-Net's ``initial_lr`` and
    ``weight_decay`` attributes, so that a subclass can still change them in ``__init__`` as with nnU-Net's trainers.

    ``--c`` continues a training with the recipe it was trained with: a checkpoint whose optimiser state does not
    match this trainer's recipe (e.g. one trained by ``nnUNetTrainerLightMedSeg`` before its default changed) but
    matches another registered recipe is continued with that one, and the log says so; one that matches none stops
    with an error naming the variants to use.
    """

    recipe: str = "nnUNetSGD"

    def __init__(self, plans: dict, configuration: str, fold: int, dataset_json: dict,
                 device: torch.device = torch.device("cuda")):
        super().__init__(plans, configuration, fold, dataset_json, device)
        self.training_recipe = get_recipe(self.recipe)
        self.initial_lr = self.training_recipe.learning_rate
        self.weight_decay = self.training_recipe.weight_decay
        self._iteration_in_epoch = 0
        self._epoch_learning_rates: Optional[list[float]] = None  # set at each epoch's start

    def configure_optimizers(self):
        optimizer = self.training_recipe.make_optimizer(unwrap(self.network), self.initial_lr, self.weight_decay)
        return optimizer, PolyLRScheduler(optimizer, self.initial_lr, self.num_epochs)

    @property
    def warmup_iterations(self) -> int:
        return round(self.training_recipe.warmup_fraction * self.num_epochs * self.num_iterations_per_epoch)

    def on_train_epoch_start(self):
        super().on_train_epoch_start()  # the epoch's poly learning rate
        self._epoch_learning_rates = [group["lr"] for group in self.optimizer.param_groups]
        self._iteration_in_epoch = 0

    def train_step(self, batch: dict) -> dict:
        iteration = self.current_epoch * self.num_iterations_per_epoch + self._iteration_in_epoch
        # the iteration after the warm-up (factor 1) restores the epoch's rate
        if self.warmup_iterations and iteration <= self.warmup_iterations:
            if self._epoch_learning_rates is None:  # a step outside nnU-Net's loop (tests, tools)
                self._epoch_learning_rates = [group["lr"] for group in self.optimizer.param_groups]
            factor = min(1.0, (iteration + 1) / max(1, self.warmup_iterations))
            for group, learning_rate in zip(self.optimizer.param_groups, self._epoch_learning_rates):
                group["lr"] = learning_rate * factor
        self._iteration_in_epoch += 1
        return super().train_step(batch)

    def load_checkpoint(self, filename_or_checkpoint: Union[dict, str]) -> None:
        # nnU-Net's load_checkpoint takes a file name (given a dict, 2.8.1 fails), so the file is read twice
        checkpoint = (torch.load(filename_or_checkpoint, map_location="cpu", weights_only=False)
                      if isinstance(filename_or_checkpoint, str) else filename_or_checkpoint)
        if not self.was_initialized:
            self.initialize()
        trained_with = optimizer_signature(checkpoint["optimizer_state"])
        if trained_with != optimizer_signature(self.optimizer.state_dict()):
            name = self._recipe_with_signature(trained_with)
            if name is None:
                raise RuntimeError(
                    f"The checkpoint in {self.output_folder} was trained with another optimiser or learning rate "
                    f"({trained_with[0]}, initial lr and weight decay per parameter group {list(trained_with[1])}) "
                    f"than {type(self).__name__} trains with (recipe {self.recipe!r}) and than any registered "
                    f"recipe ({', '.join(RECIPES)}). Continue it with the trainer class that trained it; a checkpoint "
                    f"of nnUNetTrainerLightMedSeg from before its default recipe changed continues with "
                    f"nnUNetTrainerLightMedSeg_nnUNetSGD (move the fold folder into that trainer's results folder).")
            self.print_to_log_file(f"The checkpoint was trained with recipe {name!r}, not {self.recipe!r}: "
                                   f"continuing it with {name!r} ({RECIPES[name]})")
            self.recipe, self.training_recipe = name, RECIPES[name]
            self.initial_lr, self.weight_decay = self.training_recipe.learning_rate, self.training_recipe.weight_decay
            self.optimizer, self.lr_scheduler = self.configure_optimizers()
        super().load_checkpoint(filename_or_checkpoint)

    def _recipe_with_signature(self, signature: tuple) -> Optional[str]:
        network = unwrap(self.network)
        for name, recipe in RECIPES.items():
            made = recipe.make_optimizer(network, recipe.learning_rate, recipe.weight_decay)
            PolyLRScheduler(made, recipe.learning_rate, self.num_epochs)  # sets initial_lr as the real one does
            if optimizer_signature(made.state_dict()) == signature:
                return name
        return None
