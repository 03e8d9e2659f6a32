"""Bad input through the real nnU-Net commands: each gives one clear error that says what to do, or just works.

(Wrong channel count and volumes smaller than the patch at prediction, an undivisible patch, a 2d configuration and a
missing nnUNet_extTrainer are in test_nnunet_pipeline.py; the network's own checks in test_network.py.)
"""
from __future__ import annotations

import json
import shutil
import subprocess
import sys

import numpy as np
import pytest
import SimpleITK as sitk

from nnunetv2_lightmedseg.synthetic import make_dataset

PLUMBING = "nnUNetTrainerLightMedSeg_2epochs_10iters"


def _output(proc) -> str:
    return proc.stdout + proc.stderr


def _dataset_with(nnunet_env, dataset_id: int, name: str, value: float):
    """Generated cases whose first slices are ``value``, read with nnU-Net's NibabelIO: SimpleITK, nnU-Net's default
    reader, reads NaN and Inf in NIfTI files as 0, nibabel keeps them."""
    folder = make_dataset(nnunet_env.raw, dataset_id, name, num_train=5, shape=(32, 32, 32), seed=dataset_id)
    dataset_json = json.loads((folder / "dataset.json").read_text())
    (folder / "dataset.json").write_text(json.dumps({**dataset_json, "overwrite_image_reader_writer": "NibabelIO"}))
    for image_file in (folder / "imagesTr").glob("*.nii.gz"):
        image = sitk.ReadImage(str(image_file))
        array = sitk.GetArrayFromImage(image)
        array[:4] = value
        bad = sitk.GetImageFromArray(array)
        bad.CopyInformation(image)
        sitk.WriteImage(bad, str(image_file))
    return folder


@pytest.mark.nnunet_behaviour
@pytest.mark.slow
def test_nan_in_images_stops_nnunet_preprocessing_with_its_message(nnunet_env):
    _dataset_with(nnunet_env, 981, "NaN", np.nan)
    for extra in (["--verify_dataset_integrity"], []):
        proc = nnunet_env.run("nnUNetv2_plan_and_preprocess", "-d", "981", "-c", "3d_fullres", "-np", "1", *extra,
                              check=False)
        assert proc.returncode != 0 and "NaN" in _output(proc)


@pytest.fixture(scope="module")
def planned_bad_inputs(nnunet_env):
    """The datasets of the bad-input errors at training, planned in one nnU-Net command (each command is seconds of
    imports on a 2-core machine): 986 with Inf in its images, 982 with three cases."""
    _dataset_with(nnunet_env, 986, "Inf", np.inf)
    make_dataset(nnunet_env.raw, 982, "ThreeCases", num_train=3, shape=(32, 32, 32), seed=22)
    nnunet_env.run("nnUNetv2_plan_and_preprocess", "-d", "986", "982", "-c", "3d_fullres", "-np", "1")
    return nnunet_env


def test_inf_in_images_is_one_clear_error_at_training(planned_bad_inputs):
    train = planned_bad_inputs.run("nnUNetv2_train", "986", "3d_fullres", "0", "-tr", PLUMBING, "-device", "cpu",
                                   check=False)
    assert train.returncode != 0
    assert "contains NaN or Inf voxels" in _output(train) and "--verify_dataset_integrity" in _output(train)


def test_fewer_than_five_cases_without_splits(planned_bad_inputs):
    fold0 = planned_bad_inputs.run("nnUNetv2_train", "982", "3d_fullres", "0", "-tr", PLUMBING, "-device", "cpu",
                                   check=False)
    assert fold0.returncode != 0 and "Only 3 training case(s)" in _output(fold0) and "fold 'all'" in _output(fold0)


@pytest.mark.slow
def test_fewer_than_five_cases_train_fold_all(nnunet_env):
    """The advice of the error above works: fold 'all' trains on three cases."""
    make_dataset(nnunet_env.raw, 978, "ThreeCasesAll", num_train=3, shape=(32, 32, 32), seed=22)
    nnunet_env.run("nnUNetv2_plan_and_preprocess", "-d", "978", "-c", "3d_fullres", "-np", "1")
    nnunet_env.run("nnUNetv2_train", "978", "3d_fullres", "all", "-tr", PLUMBING, "-device", "cpu")
    assert (nnunet_env.model_folder("Dataset978_ThreeCasesAll", PLUMBING) / "fold_all" / "checkpoint_final.pth"
            ).is_file()


@pytest.mark.nnunet_behaviour
@pytest.mark.slow
def test_label_absent_from_every_case_trains_and_predicts(nnunet_env, tmp_path):
    folder = make_dataset(nnunet_env.raw, 983, "Absent", num_train=5, num_test=1, shape=(32, 32, 32), seed=23)
    dataset_json = json.loads((folder / "dataset.json").read_text())
    dataset_json["labels"]["absent"] = max(dataset_json["labels"].values()) + 1
    (folder / "dataset.json").write_text(json.dumps(dataset_json, indent=2))
    nnunet_env.run("nnUNetv2_plan_and_preprocess", "-d", "983", "-c", "3d_fullres", "-np", "1")
    nnunet_env.run("nnUNetv2_train", "983", "3d_fullres", "0", "-tr", PLUMBING, "-device", "cpu")
    out = tmp_path / "pred"
    nnunet_env.run("nnUNetv2_predict", "-i", str(folder / "imagesTs"), "-o", str(out), "-d", "983", "-c",
                   "3d_fullres", "-tr", PLUMBING, "-f", "0", "-device", "cpu", "--disable_tta")
    assert len(list(out.glob("*.nii.gz"))) == 1


@pytest.mark.nnunet_behaviour
@pytest.mark.slow
def test_extra_channel_files_at_training_are_named_by_nnunet_verification(nnunet_env):
    """dataset.json names one channel but every case has two image files. nnU-Net's preprocessing alone would stop
    with an IndexError; its --verify_dataset_integrity (which the README's workflow runs) says what is wrong."""
    folder = make_dataset(nnunet_env.raw, 984, "ExtraChannel", num_train=5, shape=(32, 32, 32), seed=24)
    for image_file in list((folder / "imagesTr").glob("*_0000.nii.gz")):
        shutil.copy(image_file, str(image_file).replace("_0000.nii.gz", "_0001.nii.gz"))
    proc = nnunet_env.run("nnUNetv2_plan_and_preprocess", "-d", "984", "-c", "3d_fullres", "-np", "1",
                          "--verify_dataset_integrity", check=False)
    assert proc.returncode != 0 and "Unexpected number of modalities" in _output(proc)


FIRST_LOSSES = """
import json, random, sys
import numpy as np, torch
from nnunetv2.run.run_training import get_trainer_from_args

def first_losses(seed, steps=3):
    torch.manual_seed(seed); np.random.seed(seed); random.seed(seed)
    trainer = get_trainer_from_args("985", "3d_fullres", 0, sys.argv[1], device=torch.device("cpu"))
    trainer.on_train_start()
    losses = [float(trainer.train_step(next(trainer.dataloader_train))["loss"]) for _ in range(steps)]
    trainer.on_train_end()
    return losses

print(json.dumps([first_losses(seed) for seed in (0, 0, 1)]))
"""


@pytest.mark.slow
def test_same_seed_same_first_losses_on_cpu(nnunet_env):
    make_dataset(nnunet_env.raw, 985, "Seed", num_train=5, shape=(32, 32, 32), seed=25)
    nnunet_env.run("nnUNetv2_plan_and_preprocess", "-d", "985", "-c", "3d_fullres", "-np", "1")
    # augmentation in the training process (nnUNet_n_proc_DA=0), drawn from the seeded generators
    env = {**nnunet_env.env, "nnUNet_n_proc_DA": "0"}
    proc = subprocess.run([sys.executable, "-c", FIRST_LOSSES, PLUMBING], env=env, capture_output=True, text=True,
                          timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    first, again, other = json.loads(proc.stdout.strip().splitlines()[-1])
    assert first == again, (first, again)
    assert first != other  # the seed matters: the check is not vacuous
