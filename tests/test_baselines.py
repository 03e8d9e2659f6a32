"""Baseline trainers (nnU-Net default, UNETR, SwinUNETR, Primus V3-S) through nnU-Net's own commands, on the CPU.

Fast (unmarked): the patch rounding (on the committed ACDC plan too), the variants' training lengths, lazy MONAI, the
committed complexity table. Slow (``-m slow``): for every baseline on an isotropic and an ACDC-like anisotropic
generated plan, the trainer's __init__ writes the rounded patch into the plans it saves, and the network built by the
trainer's build_network_architecture takes one forward/backward pass at it; ``nnUNetv2_train`` of each
``_2epochs_10iters`` variant on both plans, the saved checkpoint and plans, ``nnUNetv2_predict``; ``--c`` and
``--val`` of the Primus subclass (nnU-Net 2.8.1's own fail on torch >= 2.6).
The transformers have 60-90M parameters: each slow training takes minutes on two cores.
"""
from __future__ import annotations

import copy
import json
import subprocess
import sys

import pytest
import SimpleITK as sitk
import torch
from nnunetv2.utilities.plans_handling.plans_handler import PlansManager

import nnunetv2_lightmedseg.trainers as trainers
from nnunetv2_lightmedseg.synthetic import make_dataset
from nnunetv2_lightmedseg.trainers import baselines

ISO, ANISO = "Dataset994_BaselineIso", "Dataset995_BaselineAniso"
DATASET_IDS = {ISO: "994", ANISO: "995"}
#: the patches nnU-Net 2.8.1 plans for the two generated datasets
PLANNED = {ISO: [32, 32, 32], ANISO: [10, 48, 40]}
NNUNET, UNETR, SWIN, PRIMUS = ("nnUNetTrainer_2epochs_10iters", "nnUNetTrainerUNETR_2epochs_10iters",
                               "nnUNetTrainerSwinUNETR_2epochs_10iters", "nnUNetTrainerPrimusV3S_2epochs_10iters")
TEST_TRAINERS = [NNUNET, UNETR, SWIN, PRIMUS]
#: the patch each trainer trains on (nearest multiple of 16 / 32 / 8; SwinUNETR's 32^3 gets 64 on its last axis,
#: since its 1/32 stage needs more than one voxel for instance norm)
EXPECTED_PATCH = {
    (NNUNET, ISO): [32, 32, 32], (UNETR, ISO): [32, 32, 32], (SWIN, ISO): [32, 32, 64], (PRIMUS, ISO): [32, 32, 32],
    (NNUNET, ANISO): [10, 48, 40], (UNETR, ANISO): [16, 48, 48], (SWIN, ANISO): [32, 64, 32],
    (PRIMUS, ANISO): [8, 48, 40],
}
NUM_OUTPUTS = 4  # background + 3 labels


def _configuration(patch_size: list[int], batch_size: int) -> dict:
    """A plan's configuration as far as the rounding reads it (nnU-Net requires an architecture entry)."""
    return {"patch_size": patch_size, "batch_size": batch_size,
            "architecture": {"network_class_name": "unused", "arch_kwargs": {}, "_kw_requires_import": []}}


def _fold0(env, trainer: str, dataset: str):
    return env.model_folder(dataset, trainer) / "fold_0"


@pytest.fixture(scope="module")
def planned(nnunet_env):
    """Two generated datasets, fingerprinted and planned (not preprocessed): 32^3 isotropic, and 10 x 48 x 40 at
    6 x 1 x 1 mm (in-plane pooling first, an odd number of slices, like ACDC's [10, 256, 224])."""
    make_dataset(nnunet_env.raw, 994, "BaselineIso", num_train=5, num_test=1, shape=(32, 32, 32), seed=11)
    make_dataset(nnunet_env.raw, 995, "BaselineAniso", num_train=5, num_test=1, shape=(10, 48, 40),
                 spacing=(6.0, 1.0, 1.0), seed=12)
    nnunet_env.run("nnUNetv2_plan_and_preprocess", "-d", "994", "995", "-c", "3d_fullres", "-np", "1", "--no_pp")
    for dataset, patch in PLANNED.items():
        assert nnunet_env.plans(dataset)["configurations"]["3d_fullres"]["patch_size"] == patch
    return nnunet_env


@pytest.fixture(scope="module")
def preprocessed(planned):
    planned.run("nnUNetv2_preprocess", "-d", "994", "995", "-c", "3d_fullres", "-np", "1")
    yield planned
    for checkpoint in planned.results.glob("Dataset99[45]_*/*/fold_*/*.pth"):  # 0.3-1.1 GB each
        checkpoint.unlink()


def _train(env, trainer: str, dataset: str, *extra: str) -> None:
    """Train fold 0 (once per session: a finished fold is reused)."""
    if not extra and (_fold0(env, trainer, dataset) / "checkpoint_final.pth").is_file():
        return
    env.run("nnUNetv2_train", DATASET_IDS[dataset], "3d_fullres", "0", "-tr", trainer, "-device", "cpu", *extra,
            timeout=1800)


# ------------------------------------------------------------------------------------------------------------ fast
def test_rounding_on_the_acdc_plan():
    acdc = {"configurations": {"3d_fullres": _configuration([10, 256, 224], 7)}}
    expected = {  # patch, batch: a batch never holds more voxels than the plan's 7 x [10, 256, 224]
        trainers.nnUNetTrainerUNETR: ([16, 256, 224], 4),
        trainers.nnUNetTrainerSwinUNETR: ([32, 256, 224], 2),
        trainers.nnUNetTrainerPrimusV3S: ([8, 256, 224], 7),
    }
    for cls, (patch, batch) in expected.items():
        plans = copy.deepcopy(acdc)
        assert "[10, 256, 224] -> " in cls.adapt_plans(plans, "3d_fullres")
        configuration = plans["configurations"]["3d_fullres"]
        assert [configuration["patch_size"], configuration["batch_size"]] == [patch, batch], cls.__name__
        assert cls.adapt_plans(plans, "3d_fullres") is None, "rounding must be idempotent (--c, --val, predictor)"
    assert [baselines.round_to_multiple(v, 16) for v in (1, 8, 23, 24, 40, 128)] == [16, 16, 16, 32, 48, 128]


def test_rounding_writes_into_an_inheriting_configuration():
    plans = {"configurations": {"3d_fullres": _configuration([40, 56, 40], 2),
                                "3d_custom": {"inherits_from": "3d_fullres"}}}
    trainers.nnUNetTrainerSwinUNETR.adapt_plans(plans, "3d_custom")
    assert PlansManager(plans).get_configuration("3d_custom").patch_size == [32, 64, 32]
    assert plans["configurations"]["3d_fullres"]["patch_size"] == [40, 56, 40], "the parent stays as planned"


def test_2d_configuration_gives_one_clear_error():
    plans = {"configurations": {"2d": _configuration([256, 224], 12)}}
    for cls in (trainers.nnUNetTrainerUNETR, trainers.nnUNetTrainerSwinUNETR, trainers.nnUNetTrainerPrimusV3S):
        with pytest.raises(ValueError, match="Use 3d_fullres, 3d_lowres or 3d_cascade_fullres instead of 2d"):
            cls.adapt_plans(plans, "2d")


def test_variants_match_lightmedseg_and_nnunet_names():
    import nnunetv2
    from nnunetv2.utilities.find_class_by_name import recursive_find_python_class
    attrs = ("epochs", "iterations_per_epoch", "val_iterations_per_epoch", "checkpoint_every")
    for suffix in ("2epochs_10iters", "5epochs", "50epochs", "100epochs", "250epochs"):
        reference = getattr(trainers, f"nnUNetTrainerLightMedSeg_{suffix}")
        for base in ("nnUNetTrainerUNETR", "nnUNetTrainerSwinUNETR", "nnUNetTrainerPrimusV3S"):
            variant = getattr(trainers, f"{base}_{suffix}")
            assert issubclass(variant, getattr(trainers, base))
            assert [getattr(variant, a) for a in attrs] == [getattr(reference, a) for a in attrs], variant.__name__
    assert [getattr(trainers.nnUNetTrainer_2epochs_10iters, a) for a in attrs] == \
        [getattr(trainers.nnUNetTrainerLightMedSeg_2epochs_10iters, a) for a in attrs]
    # nnU-Net's built-ins cover its default network's longer variants; none of ours is shadowed by a built-in
    builtin_folder = f"{nnunetv2.__path__[0]}/training/nnUNetTrainer"
    for epochs in (5, 50, 100, 250):
        assert recursive_find_python_class(builtin_folder, f"nnUNetTrainer_{epochs}epochs",
                                           "nnunetv2.training.nnUNetTrainer") is not None
    for name in trainers.__all__:
        assert recursive_find_python_class(builtin_folder, name, "nnunetv2.training.nnUNetTrainer") is None, name
    defined = {n for n, v in vars(baselines).items() if isinstance(v, type) and n.startswith("nnUNetTrainer")
               and v.__module__ == baselines.__name__}
    assert defined <= set(trainers.__all__), "every baseline trainer must be exported for the ext_trainers shim"


def test_importing_trainers_does_not_import_monai():
    code = "import sys, nnunetv2_lightmedseg.trainers; sys.exit(int('monai' in sys.modules))"
    assert subprocess.run([sys.executable, "-c", code], capture_output=True).returncode == 0


def test_missing_monai_says_how_to_install(monkeypatch):
    monkeypatch.setitem(sys.modules, "monai", None)
    monkeypatch.setitem(sys.modules, "monai.networks", None)
    for cls in (trainers.nnUNetTrainerUNETR, trainers.nnUNetTrainerSwinUNETR):
        with pytest.raises(ImportError, match=r'pip install "nnunetv2-lightmedseg\[baselines\]"'):
            cls.make_network((32, 32, 32), 1, 2)


@pytest.mark.slow  # planning the two datasets and a step of each 60-90M-parameter network: minutes on 2 cores
@pytest.mark.parametrize("dataset", [ISO, ANISO])
@pytest.mark.parametrize("trainer", TEST_TRAINERS)
def test_trainer_rounds_patch_and_network_trains_at_it(planned, monkeypatch, trainer, dataset):
    """The trainer's __init__ (as nnUNetv2_train runs it) leaves the rounded patch in the plans that on_train_start
    saves as results/.../plans.json; the network built from them takes a forward/backward pass at that patch, and
    the predictor's build (deep supervision off) has the same parameters, so its strict load works."""
    for key in ("nnUNet_raw", "nnUNet_preprocessed", "nnUNet_results"):
        monkeypatch.setenv(key, planned.env[key])
    torch.manual_seed(0)
    cls = getattr(trainers, trainer)
    plans = {**planned.plans(dataset), "continue_training": False}
    dataset_json = json.loads((planned.preprocessed / dataset / "dataset.json").read_text())
    instance = cls(plans, "3d_fullres", 0, dataset_json, torch.device("cpu"))
    patch = EXPECTED_PATCH[(trainer, dataset)]
    assert instance.plans_manager.plans["configurations"]["3d_fullres"]["patch_size"] == patch
    assert list(instance.configuration_manager.patch_size) == patch
    assert instance.enable_deep_supervision == (trainer == NNUNET)

    network = cls.build_network_architecture(instance.plans_manager, instance.configuration_manager, 1, NUM_OUTPUTS,
                                             instance.enable_deep_supervision)
    outputs = network(torch.randn(1, 1, *patch))
    outputs = list(outputs) if instance.enable_deep_supervision else [outputs]
    assert tuple(outputs[0].shape) == (1, NUM_OUTPUTS, *patch)
    sum(o.float().square().mean() for o in outputs).backward()
    parameters = list(network.parameters())
    assert parameters[0].grad is not None and parameters[-1].grad is not None, "gradient reaches input and output"
    # (MONAI's transformer blocks hold an unused norm_cross_attn: those parameters get no gradient)
    assert all(torch.isfinite(p.grad).all() for p in parameters if p.grad is not None)

    saved_plans = PlansManager(copy.deepcopy(instance.plans_manager.plans))  # what the predictor reads back
    predictor_network = cls.build_network_architecture(saved_plans, saved_plans.get_configuration("3d_fullres"), 1,
                                                       NUM_OUTPUTS, enable_deep_supervision=False)
    assert {k: v.shape for k, v in predictor_network.state_dict().items()} == \
        {k: v.shape for k, v in network.state_dict().items()}


def test_committed_complexity_table_has_the_baselines_at_their_training_patch():
    """benchmarks/results/complexity.json: every baseline measured on both settings, at the patch its trainer
    trains on (ACDC's [10, 256, 224] rounded), with the parameters of the network its trainer builds."""
    import complexity
    from common import RESULTS
    table = json.loads((RESULTS / "complexity.json").read_text())
    rows = {(r["model"], r["setting"]): r for r in table["rows"]}
    acdc_patch = {"nnU-Net default (PlainConvUNet)": [10, 256, 224], "UNETR (MONAI)": [16, 256, 224],
                  "SwinUNETR (MONAI, feature 48)": [32, 256, 224], "Primus V3-S (nnU-Net)": [8, 256, 224]}
    assert set(acdc_patch) == set(complexity.BASELINES)
    settings = {s.name: s for s in complexity.SETTINGS}
    for model, patch in acdc_patch.items():
        for setting, expected in (("acdc", [1, 1, *patch]), ("iso128", [1, 4, 128, 128, 128])):
            row = rows[(model, setting)]
            assert row["source"] == "measured" and row["input_shape"] == expected, (model, setting)
            assert row["flops"] == 2 * row["macs"] > 0
        built = complexity.MODELS[model](settings["acdc"])
        assert list(built.patch_size) == patch
        assert rows[(model, "acdc")]["params"] == sum(p.numel() for p in built.model.parameters()), model


# ------------------------------------------------------------------------------------------------------------ slow
@pytest.mark.slow
@pytest.mark.parametrize("dataset", [ISO, ANISO])
@pytest.mark.parametrize("trainer", TEST_TRAINERS)
def test_train_checkpoint_predict(preprocessed, tmp_path, trainer, dataset):
    _train(preprocessed, trainer, dataset)
    folder = preprocessed.model_folder(dataset, trainer)
    checkpoint = torch.load(folder / "fold_0" / "checkpoint_final.pth", map_location="cpu", weights_only=False)
    assert checkpoint["trainer_name"] == trainer and checkpoint["current_epoch"] == 2
    saved = json.loads((folder / "plans.json").read_text())["configurations"]["3d_fullres"]
    assert saved["patch_size"] == EXPECTED_PATCH[(trainer, dataset)], "the predictor rebuilds from this file"
    assert (folder / "fold_0" / "validation" / "summary.json").is_file()

    out = tmp_path / "pred"
    preprocessed.run("nnUNetv2_predict", "-i", str(preprocessed.raw / dataset / "imagesTs"), "-o", str(out),
                     "-d", DATASET_IDS[dataset], "-c", "3d_fullres", "-tr", trainer, "-f", "0", "-device", "cpu",
                     "--disable_tta", "-npp", "1", "-nps", "1", timeout=900)
    predictions = sorted(out.glob("*.nii.gz"))
    labels = sorted((preprocessed.raw / dataset / "labelsTs").glob("*.nii.gz"))
    assert [p.name for p in predictions] == [p.name for p in labels]
    for prediction, label in zip(predictions, labels):  # padded patches are cropped back to the image
        assert sitk.ReadImage(str(prediction)).GetSize() == sitk.ReadImage(str(label)).GetSize()


@pytest.mark.slow
def test_primus_continue_and_validation_only(preprocessed):
    """nnU-Net 2.8.1's nnUNetTrainer_warmup.load_checkpoint fails here (torch.load without weights_only=False)."""
    _train(preprocessed, PRIMUS, ISO)
    fold = _fold0(preprocessed, PRIMUS, ISO)
    (fold / "validation" / "summary.json").unlink()
    preprocessed.run("nnUNetv2_train", "994", "3d_fullres", "0", "-tr", PRIMUS, "-device", "cpu", "--val",
                     timeout=900)
    assert (fold / "validation" / "summary.json").is_file()
    proc = preprocessed.run("nnUNetv2_train", "994", "3d_fullres", "0", "-tr", PRIMUS, "-device", "cpu", "--c",
                            timeout=900)
    assert "Initialized train optimizer and lr_scheduler at epoch 2" in proc.stdout, "decay stage after warm-up"
    checkpoint = torch.load(fold / "checkpoint_final.pth", map_location="cpu", weights_only=False)
    assert checkpoint["current_epoch"] == 2 and len(checkpoint["logging"]["train_losses"]) == 2
