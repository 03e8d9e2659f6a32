"""The stock nnU-Net commands with LightMedSeg on generated datasets other than the shared 32^3 one: an anisotropic
plan and a region-based two-channel dataset, both slow (the regions' scoring on a real BraTS label and their passage
through the GPU augmentation are fast tests elsewhere)."""
from __future__ import annotations

import shutil

import pytest
import torch

from nnunetv2_lightmedseg.synthetic import make_dataset

PLUMBING = "nnUNetTrainerLightMedSeg_2epochs_10iters"
ANISO, REGIONS = "Dataset992_Aniso", "Dataset993_Regions"


@pytest.mark.slow  # the anisotropic ACDC plan is built on in test_real_data and trained on in test_gpu_augmentation
def test_anisotropic_plan(nnunet_env, tmp_path):
    """Few thick slices, many pixels: the plan's strides are anisotropic and the network follows them."""
    make_dataset(nnunet_env.raw, 992, "Aniso", num_train=6, num_test=1, shape=(8, 64, 48), spacing=(6.0, 1.0, 1.0),
                 seed=2)
    nnunet_env.run("nnUNetv2_plan_and_preprocess", "-d", "992", "-c", "3d_fullres", "-np", "1")
    config = nnunet_env.plans(ANISO)["configurations"]["3d_fullres"]
    strides = config["architecture"]["arch_kwargs"]["strides"]
    assert any(s[0] == 1 and s[1] == 2 for s in strides[1:]), f"expected in-plane-only pooling, plan has {strides}"
    nnunet_env.run("nnUNetv2_train", "992", "3d_fullres", "0", "-tr", PLUMBING, "-device", "cpu")
    out = tmp_path / "pred"
    nnunet_env.run("nnUNetv2_predict", "-i", str(nnunet_env.raw / ANISO / "imagesTs"), "-o", str(out), "-d", "992",
                   "-c", "3d_fullres", "-tr", PLUMBING, "-f", "0", "-device", "cpu", "--disable_tta")
    assert len(list(out.glob("*.nii.gz"))) == 1


@pytest.mark.slow  # four nnU-Net commands on a dataset of its own: minutes on 2 cores
def test_region_based_two_channels(nnunet_env, tmp_path):
    """BraTS-like: two channels, nested regions trained with sigmoid outputs, predicted back to labels."""
    make_dataset(nnunet_env.raw, 993, "Regions", num_train=6, num_test=1, shape=(32, 32, 32), regions=True, seed=3)
    nnunet_env.run("nnUNetv2_plan_and_preprocess", "-d", "993", "-c", "3d_fullres", "-np", "1")
    nnunet_env.run("nnUNetv2_train", "993", "3d_fullres", "0", "-tr", PLUMBING, "-device", "cpu")
    checkpoint = torch.load(nnunet_env.model_folder(REGIONS, PLUMBING) / "fold_0" / "checkpoint_final.pth",
                            map_location="cpu", weights_only=False)
    assert checkpoint["network_weights"]["stem.primary.weight"].shape[1] == 2, "two input channels"
    assert checkpoint["network_weights"]["head.logits.weight"].shape[0] == 3, "three region outputs"
    out = tmp_path / "pred"
    nnunet_env.run("nnUNetv2_predict", "-i", str(nnunet_env.raw / REGIONS / "imagesTs"), "-o", str(out), "-d", "993",
                   "-c", "3d_fullres", "-tr", PLUMBING, "-f", "0", "-device", "cpu", "--disable_tta")
    summary = nnunet_env.score(REGIONS, out)
    assert len(summary["mean"]) == 3
    # cases with one of the model's two channel files: one clear error that names the files a case needs
    # (extra channel files instead stop nnU-Net's own preprocessing with an IndexError, before the network)
    one_channel = tmp_path / "one_channel"
    one_channel.mkdir()
    for image_file in (nnunet_env.raw / REGIONS / "imagesTs").glob("*_0000.nii.gz"):
        shutil.copy(image_file, one_channel / image_file.name)
    proc = nnunet_env.run("nnUNetv2_predict", "-i", str(one_channel), "-o", str(tmp_path / "pred_one_channel"), "-d",
                          "993", "-c", "3d_fullres", "-tr", PLUMBING, "-f", "0", "-device", "cpu", "--disable_tta",
                          check=False)
    assert proc.returncode != 0
    assert "built for 2 input channel(s) but got 1" in proc.stdout + proc.stderr and "CASE_0001" in proc.stderr


