"""Real nnU-Net plans of ACDC and BraTS-mini: the trainer builds on them and trains.

The plans nnU-Net made for the shared datasets are committed (``benchmarks/plans``, which the benchmarks build on
too); the network is built on them in CI. Planning the shared datasets again (``../shared/data``, skipped with the
reason when it is absent: a user's clone) must give the committed plans, and training a few iterations on the real
data: both marked slow (fingerprinting every case takes most of a minute on a 2-core machine).
"""
from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
import torch
from nnunetv2.utilities.plans_handling.plans_handler import PlansManager

from nnunetv2_lightmedseg.architectures import total_stride
from nnunetv2_lightmedseg.trainers import nnUNetTrainerLightMedSeg

EXPECTED = {
    # dataset: (channels, outputs, LightMedSeg strides taken from the plan)
    "Dataset027_ACDC": (1, 4, [(1, 2, 2), (1, 2, 2), (2, 2, 2), (1, 2, 2)]),
    "Dataset137_BraTSmini": (2, 3, [(2, 2, 2), (2, 2, 2), (2, 2, 2), (2, 2, 2)]),
}


PLANS = Path(__file__).resolve().parents[1] / "benchmarks" / "plans"


def _committed_plans(name: str) -> dict:
    return json.loads((PLANS / f"{name}_nnUNetPlans.json").read_text())


@pytest.fixture(scope="module", params=sorted(EXPECTED))
def planned(request, nnunet_env, shared_dataset):
    """Fingerprint and plan the shared dataset with nnU-Net (a link to the read-only raw folder)."""
    name = request.param
    source = shared_dataset(name)
    raw = nnunet_env.raw / name
    if not raw.exists():
        raw.symlink_to(source, target_is_directory=True)
    dataset_id = name[len("Dataset"):len("Dataset") + 3]
    nnunet_env.run("nnUNetv2_extract_fingerprint", "-d", dataset_id, "-np", "1")
    nnunet_env.run("nnUNetv2_plan_experiment", "-d", dataset_id)
    return name, dataset_id, json.loads((nnunet_env.preprocessed / name / "nnUNetPlans.json").read_text())


@pytest.mark.parametrize("name", sorted(EXPECTED))
def test_trainer_builds_on_the_real_plan(name):
    plans = _committed_plans(name)
    channels, outputs, strides = EXPECTED[name]
    manager = PlansManager(plans)
    config = manager.get_configuration("3d_fullres")
    assert nnUNetTrainerLightMedSeg.network_strides(config) == strides
    network = nnUNetTrainerLightMedSeg.build_network_architecture(manager, config, channels, outputs, False).eval()
    patch = config.patch_size
    assert all(p % d == 0 for p, d in zip(patch, total_stride(strides)))
    with torch.no_grad():
        assert network(torch.randn(1, channels, *patch)).shape == (1, outputs, *patch)


@pytest.mark.slow
def test_nnunet_plans_the_shared_data_as_committed(planned):
    name, _, plans = planned
    configuration = plans["configurations"]["3d_fullres"]
    committed = _committed_plans(name)["configurations"]["3d_fullres"]
    for key in ("patch_size", "spacing", "batch_size", "architecture"):
        assert configuration[key] == committed[key], key


@pytest.mark.slow
def test_trainer_trains_a_few_iterations_on_real_data(planned, nnunet_env, shared_dataset):
    """Preprocess the real dataset and train 2 epochs x 10 iterations (minutes on a 2-core CPU)."""
    name, dataset_id, _ = planned
    nnunet_env.run("nnUNetv2_preprocess", "-d", dataset_id, "-c", "3d_fullres", "-np", "1")
    splits = shared_dataset(name) / "splits_final.json"
    if splits.is_file():
        shutil.copy(splits, nnunet_env.preprocessed / name / "splits_final.json")
    trainer = "nnUNetTrainerLightMedSeg_2epochs_10iters"
    nnunet_env.run("nnUNetv2_train", dataset_id, "3d_fullres", "0", "-tr", trainer, "-device", "cpu",
                   timeout=3600)
    folder = nnunet_env.model_folder(name, trainer) / "fold_0"
    assert (folder / "checkpoint_final.pth").is_file()
    assert (folder / "validation" / "summary.json").is_file()
