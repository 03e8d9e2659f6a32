"""Trainers a user brings through nnU-Net's ``nnUNet_extTrainer``: a subclass of ours in the user's own folder works
with the stock commands; a second copy of our own modules is refused with one clear error."""
from __future__ import annotations

import os
from pathlib import Path

import torch
from conftest import ISO

USER_VARIANT = """
import torch
from nnunetv2_lightmedseg.trainers import nnUNetTrainerLightMedSeg_2epochs_10iters


class nnUNetTrainerLightMedSeg_myLR(nnUNetTrainerLightMedSeg_2epochs_10iters):
    epochs = {epochs}

    def __init__(self, plans, configuration, fold, dataset_json, device=torch.device("cuda")):
        super().__init__(plans, configuration, fold, dataset_json, device)
        self.initial_lr = 3e-3
"""


def test_user_subclass_in_own_folder_trains_resumes_and_predicts(iso, tmp_path):
    """A user's variant, subclassing ours in a module of the user's own folder on nnUNet_extTrainer beside ours
    (nnU-Net's way of adding trainers): nnUNetv2_train trains it, --c continues it, nnUNetv2_predict uses it."""
    folder = tmp_path / "my_trainers"
    folder.mkdir()
    ext = {"nnUNet_extTrainer": f"{folder}{os.pathsep}{iso.env['nnUNet_extTrainer']}"}
    trainer = "nnUNetTrainerLightMedSeg_myLR"
    fold_dir = iso.model_folder(ISO, trainer) / "fold_0"
    (folder / "my_variants.py").write_text(USER_VARIANT.format(epochs=1))
    iso.run("nnUNetv2_train", "991", "3d_fullres", "0", "-tr", trainer, "-device", "cpu", extra_env=ext)
    assert torch.load(fold_dir / "checkpoint_final.pth", map_location="cpu", weights_only=False)["current_epoch"] == 1
    (folder / "my_variants.py").write_text(USER_VARIANT.format(epochs=2))  # the user extends the training
    iso.run("nnUNetv2_train", "991", "3d_fullres", "0", "-tr", trainer, "-device", "cpu", "--c", extra_env=ext)
    final = torch.load(fold_dir / "checkpoint_final.pth", map_location="cpu", weights_only=False)
    assert final["current_epoch"] == 2 and len(final["logging"]["train_losses"]) == 2
    assert final["optimizer_state"]["param_groups"][0]["initial_lr"] == 3e-3
    out = tmp_path / "pred"
    iso.run("nnUNetv2_predict", "-i", str(iso.raw / ISO / "imagesTs"), "-o", str(out), "-d", "991", "-c",
            "3d_fullres", "-tr", trainer, "-f", "0", "-device", "cpu", "--disable_tta", extra_env=ext)
    assert len(list(out.glob("*.nii.gz"))) == 2


def test_second_copy_of_our_modules_is_refused(iso):
    """nnUNet_extTrainer at a folder inside the package (not its shim folder): one clear error naming the right one."""
    import nnunetv2_lightmedseg
    inside = str(Path(nnunetv2_lightmedseg.__file__).parent / "trainers")
    proc = iso.run("nnUNetv2_train", "991", "3d_fullres", "3", "-tr", "nnUNetTrainerLightMedSeg_tiny", "-device", "cpu",
                   check=False,
                   extra_env={"nnUNet_extTrainer": inside})
    assert proc.returncode != 0
    assert "second copy" in proc.stderr and nnunetv2_lightmedseg.EXT_TRAINER_DIR in proc.stderr


