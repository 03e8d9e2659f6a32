"""The stock nnU-Net commands with nnUNetTrainerLightMedSeg on tiny generated data (CPU, subprocesses).

Covers: plan and preprocess, two folds, --c after a killed run, --val --npz, nnUNetv2_predict over two folds,
nnUNetv2_find_best_configuration, the nnUNetPredictor API, scoring with nnU-Net's own evaluation, and the clear
errors. Other datasets (anisotropic, region-based) are in test_nnunet_datasets.py, users' trainers in
test_user_trainers.py: apart, so that the test workers run them side by side.
"""
from __future__ import annotations

import json
import re
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import SimpleITK as sitk
import torch
from conftest import ISO
from conftest import ISO_TRAINER as TRAINER

import accuracy

BENCHMARKS = Path(__file__).resolve().parents[1] / "benchmarks"
PLUMBING = "nnUNetTrainerLightMedSeg_2epochs_10iters"  # for what needs no learning


def _mean_foreground_dice(summary: dict) -> float:
    return summary["foreground_mean"]["Dice"]


def test_two_folds_train_and_validate(iso):
    folder = iso.model_folder(ISO, TRAINER)
    for fold in (0, 1):
        assert (folder / f"fold_{fold}" / "checkpoint_final.pth").is_file()
        summary = json.loads((folder / f"fold_{fold}" / "validation" / "summary.json").read_text())
        assert set(summary["mean"]) == {"1", "2", "3"}
    checkpoint = torch.load(folder / "fold_0" / "checkpoint_final.pth", map_location="cpu", weights_only=False)
    assert checkpoint["trainer_name"] == TRAINER
    assert checkpoint["current_epoch"] == 5
    assert sum(v.numel() for k, v in checkpoint["network_weights"].items()) > 0
    # what benchmarks/accuracy.py reads from the text logs of folds copied back without their checkpoints
    for name, logged in (("train_loss", "train_losses"), ("val_loss", "val_losses")):
        assert accuracy.logged_per_epoch(folder / "fold_0", name) == pytest.approx(
            checkpoint["logging"][logged], abs=1e-4)  # the log rounds to 4 decimals


@pytest.mark.nnunet_behaviour
@pytest.mark.slow
def test_val_npz_reruns_validation(iso):
    folder = iso.model_folder(ISO, TRAINER) / "fold_0" / "validation"
    (folder / "summary.json").unlink()
    iso.run("nnUNetv2_train", "991", "3d_fullres", "0", "-tr", TRAINER, "-device", "cpu", "--val", "--npz")
    assert (folder / "summary.json").is_file()
    assert list(folder.glob("*.npz")), "--npz must write softmax outputs"


def test_predict_two_folds_scores_above_chance(iso, tmp_path):
    out = tmp_path / "pred"
    iso.run("nnUNetv2_predict", "-i", str(iso.raw / ISO / "imagesTs"), "-o", str(out), "-d", "991",
            "-c", "3d_fullres", "-tr", TRAINER, "-f", "0", "1", "-device", "cpu", "-npp", "1", "-nps", "1")
    labels = iso.raw / ISO / "labelsTs"
    assert sorted(p.name for p in out.glob("*.nii.gz")) == sorted(p.name for p in labels.iterdir())
    summary = iso.score(ISO, out)
    # an untrained network predicts background or noise (Dice ~0); a few iterations already beat that
    assert _mean_foreground_dice(summary) > 0.05, summary["mean"]


def test_find_best_configuration(iso):
    iso.run("nnUNetv2_find_best_configuration", "991", "-c", "3d_fullres", "-tr", TRAINER, "-f", "0", "1")
    instructions = (iso.results / ISO / "inference_instructions.txt").read_text()
    assert TRAINER in instructions and "nnUNetv2_predict" in instructions


@pytest.mark.nnunet_behaviour
@pytest.mark.slow
def test_predictor_api_matches_cli(iso, tmp_path):
    from nnunetv2.inference.predict_from_raw_data import nnUNetPredictor

    import nnunetv2_lightmedseg
    nnunetv2_lightmedseg.enable()
    predictor = nnUNetPredictor(tile_step_size=0.5, use_gaussian=True, use_mirroring=False,
                                device=torch.device("cpu"), verbose=False, allow_tqdm=False)
    predictor.initialize_from_trained_model_folder(str(iso.model_folder(ISO, TRAINER)), use_folds=(0,),
                                                   checkpoint_name="checkpoint_final.pth")
    api, cli = tmp_path / "api", tmp_path / "cli"
    predictor.predict_from_files(str(iso.raw / ISO / "imagesTs"), str(api), save_probabilities=False,
                                 overwrite=True, num_processes_preprocessing=1, num_processes_segmentation_export=1)
    iso.run("nnUNetv2_predict", "-i", str(iso.raw / ISO / "imagesTs"), "-o", str(cli), "-d", "991", "-c", "3d_fullres",
            "-tr", TRAINER, "-f", "0", "-device", "cpu", "--disable_tta", "-step_size", "0.5", "-npp", "1", "-nps", "1")
    # same fold, same settings: the same segmentation (how good a 150-iteration fold is, is not asked here)
    cases = sorted(p.name for p in cli.glob("*.nii.gz"))
    assert cases == sorted(p.name for p in api.glob("*.nii.gz")) and len(cases) == 2
    for case in cases:
        np.testing.assert_array_equal(sitk.GetArrayFromImage(sitk.ReadImage(str(api / case))),
                                      sitk.GetArrayFromImage(sitk.ReadImage(str(cli / case))))


@pytest.mark.slow  # accuracy.py's own processes and MONAI's import; the scoring functions have fast tests
def test_accuracy_scores_folds_copied_back_without_checkpoints(iso, tmp_path):
    """benchmarks/accuracy.py --score-only on two folds copied as a GPU machine's results come back (no checkpoints):
    MONAI's Dice equals nnU-Net's validation summary, epoch times are nnU-Net's, the device is its debug.json's."""
    work = tmp_path / "work"
    shutil.copytree(iso.model_folder(ISO, TRAINER),
                    work / "results_5epx30it" / ISO / f"{TRAINER}__nnUNetPlans__3d_fullres",
                    ignore=shutil.ignore_patterns("*.pth", "*.npz", "*.pkl"))
    trained_by = '{"command": "python benchmarks/accuracy.py --epochs 5 --iterations 30 ..."}'
    for fold in (0, 1):  # as accuracy.py leaves it in the folds it trains
        (work / "results_5epx30it" / ISO / f"{TRAINER}__nnUNetPlans__3d_fullres" / f"fold_{fold}" / "trained_by.json"
         ).write_text(trained_by)

    def score(epochs: str) -> subprocess.CompletedProcess:
        return subprocess.run([sys.executable, str(BENCHMARKS / "accuracy.py"), "--raw", str(iso.raw / ISO),
                               "--work", str(work), "--trainers", TRAINER, "--folds", "0", "1", "--epochs", epochs,
                               "--iterations", "30", "--processes", "1", "--score-only", "--name", "copied",
                               "--out", str(tmp_path)], env=iso.env, capture_output=True, text=True, timeout=600)

    proc = score("5")
    assert proc.returncode == 0, proc.stderr[-3000:]
    table = json.loads((tmp_path / "accuracy_copied.json").read_text())
    assert [row["fold"] for row in table["rows"]] == [0, 1]
    for row in table["rows"]:
        folder = iso.model_folder(ISO, TRAINER) / f"fold_{row['fold']}"
        summary = json.loads((folder / "validation" / "summary.json").read_text())
        assert row["mean_dice"] == pytest.approx(_mean_foreground_dice(summary), abs=1e-4)
        log = torch.load(folder / "checkpoint_final.pth", map_location="cpu", weights_only=False)["logging"]
        durations = np.subtract(log["epoch_end_timestamps"], log["epoch_start_timestamps"])
        assert row["seconds_per_epoch"] == pytest.approx(np.median(durations), abs=0.01)  # the log rounds to 0.01 s
    assert table["metadata"]["device"] == "cpu" and table["metadata"]["torch"] == torch.__version__
    assert "by `python benchmarks/accuracy.py --epochs 5 --iterations 30 ...`, copied back" in (
        tmp_path / "accuracy_copied.md").read_text()
    proc = score("10")  # another budget than the trainer's name says
    assert proc.returncode != 0 and f"{TRAINER} trains 5 epochs x 30 iterations, not 10 x 30" in proc.stderr


def test_resume_after_kill(iso):
    """SIGKILL in the middle of epoch 1, then --c: training ends at the same epoch count as an uninterrupted run."""
    fold_dir = iso.model_folder(ISO, PLUMBING) / "fold_2"
    argv, env = iso.command("nnUNetv2_train", "991", "3d_fullres", "2", "-tr", PLUMBING, "-device", "cpu")
    proc = subprocess.Popen(argv, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.time() + 300
    try:
        while time.time() < deadline and proc.poll() is None:
            logs = list(fold_dir.glob("training_log_*.txt"))
            if logs and re.search(r"Epoch 1\s*$", logs[0].read_text(), re.M):  # nnU-Net writes "Epoch 1 "
                break
            time.sleep(0.05)
        assert proc.poll() is None, "training ended before it could be interrupted"
        proc.send_signal(signal.SIGKILL)
        proc.wait()
    finally:
        if proc.poll() is None:
            proc.kill()
    assert (fold_dir / "checkpoint_latest.pth").is_file() and not (fold_dir / "checkpoint_final.pth").exists()
    resumed_from = torch.load(fold_dir / "checkpoint_latest.pth", map_location="cpu", weights_only=False)
    assert resumed_from["current_epoch"] == 1
    iso.run("nnUNetv2_train", "991", "3d_fullres", "2", "-tr", PLUMBING, "-device", "cpu", "--c")
    final = torch.load(fold_dir / "checkpoint_final.pth", map_location="cpu", weights_only=False)
    assert final["current_epoch"] == 2
    assert len(final["logging"]["train_losses"]) == 2, "epoch 0 kept, epoch 1 retrained: nothing else lost"


def test_missing_ext_trainer_says_what_to_set(iso):
    proc = iso.run("nnUNetv2_train", "991", "3d_fullres", "0", "-tr", PLUMBING, "-device", "cpu", check=False,
                   extra_env={"nnUNet_extTrainer": ""})
    assert proc.returncode != 0
    assert "nnUNet_extTrainer" in proc.stdout + proc.stderr


def test_undivisible_patch_gives_one_clear_error(iso):
    """A plan whose patch the network's strides do not divide (a plans file of its own: other workers read the
    shared one)."""
    plans = iso.plans(ISO)
    plans["plans_name"] = "nnUNetPlans_badpatch"
    plans["configurations"]["3d_fullres"]["patch_size"] = [30, 32, 32]
    (iso.preprocessed / ISO / "nnUNetPlans_badpatch.json").write_text(json.dumps(plans, indent=2))
    proc = iso.run("nnUNetv2_train", "991", "3d_fullres", "0", "-tr", PLUMBING, "-p", "nnUNetPlans_badpatch",
                   "-device", "cpu", check=False)
    assert proc.returncode != 0
    assert "cannot take the plan's patch_size [30, 32, 32]" in proc.stderr and "multiple of [8, 8, 8]" in proc.stderr


def test_2d_configuration_gives_one_clear_error(iso):
    proc = iso.run("nnUNetv2_train", "991", "2d", "0", "-tr", PLUMBING, "-device", "cpu", check=False)
    assert proc.returncode != 0
    assert "Use 3d_fullres, 3d_lowres or 3d_cascade_fullres instead of 2d" in proc.stderr


@pytest.mark.nnunet_behaviour
@pytest.mark.slow
def test_volume_smaller_than_the_patch_is_padded(iso, tmp_path):
    """nnU-Net pads a case smaller than the patch (32^3 here) and crops the prediction back to the case."""
    images, out = tmp_path / "small", tmp_path / "pred"
    images.mkdir()
    image_file = sorted((iso.raw / ISO / "imagesTs").glob("*_0000.nii.gz"))[0]
    small = sitk.ReadImage(str(image_file))[4:20, 6:18, 8:28]  # x, y, z = 16 x 12 x 20 voxels
    sitk.WriteImage(small, str(images / "small_0000.nii.gz"))
    iso.run("nnUNetv2_predict", "-i", str(images), "-o", str(out), "-d", "991", "-c", "3d_fullres", "-tr",
            TRAINER, "-f", "0", "-device", "cpu")
    assert sitk.ReadImage(str(out / "small.nii.gz")).GetSize() == (16, 12, 20)
