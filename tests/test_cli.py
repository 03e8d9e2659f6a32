"""The ``lightmedseg`` command line: ``env`` (eval-able, respects what is set) and the help texts."""
from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch

import nnunetv2_lightmedseg
from nnunetv2_lightmedseg import cli, demo

NNUNET_VARS = ("nnUNet_raw", "nnUNet_preprocessed", "nnUNet_results", "nnUNet_extTrainer")


def _clean_env(**overrides: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if k not in NNUNET_VARS}
    env.update(overrides)
    return env


def _lightmedseg(*args: str, env: dict[str, str] | None = None, timeout: float = 120) -> subprocess.CompletedProcess:
    """The command as a user runs it (through ``python -m`` so that no PATH set-up is needed)."""
    return subprocess.run([sys.executable, "-m", "nnunetv2_lightmedseg.cli", *args], env=env, capture_output=True,
                          text=True, timeout=timeout)


def _eval_in_bash(script_output: str, env: dict[str, str], cwd: Path) -> dict[str, str]:
    """Run ``eval "$OUTPUT"`` in bash and return the nnU-Net variables it leaves exported."""
    probe = 'eval "$LMS_OUT" && for v in ' + " ".join(NNUNET_VARS) + '; do printf "%s=%s\\0" "$v" "${!v-}"; done'
    done = subprocess.run(["bash", "-c", probe], env={**env, "LMS_OUT": script_output}, cwd=cwd,
                          capture_output=True, text=True, check=True)
    return dict(item.split("=", 1) for item in done.stdout.split("\0") if item)


@pytest.mark.skipif(shutil.which("bash") is None, reason="needs bash")
def test_env_is_eval_able_and_sets_everything(tmp_path):
    root = tmp_path / "data with space"
    env = _clean_env()
    done = _lightmedseg("env", "--root", str(root), env=env)
    assert done.returncode == 0, done.stderr
    exported = _eval_in_bash(done.stdout, env, tmp_path)
    assert exported["nnUNet_extTrainer"] == nnunetv2_lightmedseg.EXT_TRAINER_DIR
    for name in ("nnUNet_raw", "nnUNet_preprocessed", "nnUNet_results"):
        assert exported[name] == str(root / name)
        assert (root / name).is_dir()  # the printed mkdir -p ran
    assert Path(exported["nnUNet_extTrainer"], "nnunetv2_lightmedseg_trainers.py").is_file()


@pytest.mark.skipif(shutil.which("bash") is None, reason="needs bash")
def test_env_respects_variables_already_set(tmp_path):
    other_trainers = str(tmp_path / "my_trainers")
    env = _clean_env(nnUNet_raw=str(tmp_path / "raw"), nnUNet_results=str(tmp_path / "results"),
                     nnUNet_extTrainer=other_trainers)
    done = _lightmedseg("env", "--root", str(tmp_path / "root"), env=env)
    assert done.returncode == 0, done.stderr
    assert "nnUNet_raw=" not in done.stdout and "nnUNet_results=" not in done.stdout
    exported = _eval_in_bash(done.stdout, env, tmp_path)
    assert exported["nnUNet_raw"] == str(tmp_path / "raw")
    assert exported["nnUNet_results"] == str(tmp_path / "results")
    assert exported["nnUNet_preprocessed"] == str(tmp_path / "root" / "nnUNet_preprocessed")
    assert exported["nnUNet_extTrainer"].split(os.pathsep) == [other_trainers, nnunetv2_lightmedseg.EXT_TRAINER_DIR]
    # printing it again with our folder already on the variable keeps it once
    again = _lightmedseg("env", env={**env, **exported})
    assert _eval_in_bash(again.stdout, {**env, **exported}, tmp_path)["nnUNet_extTrainer"] == \
        exported["nnUNet_extTrainer"]


def test_env_lines_only_exports_and_mkdir():
    lines = cli.env_lines("/data", environ={})
    assert lines[0].startswith("export nnUNet_extTrainer=")
    assert lines[1:4] == ["export nnUNet_raw=/data/nnUNet_raw", "export nnUNet_preprocessed=/data/nnUNet_preprocessed",
                          "export nnUNet_results=/data/nnUNet_results"]
    assert lines[4].startswith("mkdir -p ")
    set_already = {name: "/x" for name in demo.NNUNET_FOLDERS}
    assert len(cli.env_lines("/data", environ=set_already)) == 1


def test_help_texts():
    top = _lightmedseg("--help")
    assert top.returncode == 0 and "env" in top.stdout and "demo" in top.stdout
    demo = _lightmedseg("demo", "--help")
    assert demo.returncode == 0
    for option in ("--output", "--epochs", "--iterations", "--device", "--cases", "--seed"):
        assert option in demo.stdout
    env = _lightmedseg("env", "--help")
    assert env.returncode == 0 and "--root" in env.stdout


def test_console_script_main_in_process(capsys):
    with pytest.raises(SystemExit) as exit_info:
        cli.main(["--help"])
    assert exit_info.value.code == 0
    assert "lightmedseg" in capsys.readouterr().out
    assert cli.main(["env", "--root", "/tmp/x"]) == 0
    assert "export nnUNet_extTrainer=" in capsys.readouterr().out


def test_demo_rejects_too_few_cases():
    done = _lightmedseg("demo", "--cases", "3", "--output", "unused")
    assert done.returncode == 2 and "at least 5" in done.stderr


def test_demo_refuses_a_trainer_named_for_another_length(tmp_path):
    done = _lightmedseg("demo", "--trainer", "nnUNetTrainerLightMedSeg_5epochs", "--output", str(tmp_path / "demo"))
    assert done.returncode == 1 and "trains 5 epochs x 250 iterations, not 8 x 100" in done.stderr


def test_demo_end_to_end_tiny(tmp_path):
    """The whole demo on the smallest settings: every phase runs, the trainer named by its length trains, the
    summary is complete and says where it ran."""
    env = _clean_env(nnUNet_n_proc_DA="0")  # also checks that the demo's planning survives this setting
    out = tmp_path / "demo"
    done = _lightmedseg("demo", "--output", str(out), "--epochs", "2", "--iterations", "2", "--cases", "5",
                        "--test-cases", "1", "--size", "32", "--device", "cpu", env=env, timeout=600)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    summary = json.loads((out / "summary.json").read_text())
    trainer = "nnUNetTrainerLightMedSeg_2epochs_2iters"
    assert summary["trainer"] == trainer and summary["val_iterations_per_epoch"] == 1
    assert set(summary["dice"]) == {"core (1)", "wall (2)", "tube (3)"}
    assert summary["mean_foreground_dice"] == pytest.approx(sum(summary["dice"].values()) / 3)
    assert summary["parameters"] > 0 and summary["gflops"] > 0
    assert set(summary["seconds"]) == {"dataset", "plan_and_preprocess", "train", "predict", "evaluate", "total"}
    assert {"date", "command", "cpu", "cpu_count", "cpu_capability", "torch", "nnunetv2"} <= set(summary["metadata"])
    assert summary["metadata"]["command"].startswith("lightmedseg demo --output")
    assert "epoch 1/2 done, about" in done.stdout and "epoch 2/2 done" in done.stdout
    assert "mean foreground" in done.stdout
    fold = out / "nnUNet_results" / summary["dataset"] / f"{trainer}__nnUNetPlans__3d_fullres" / "fold_0"
    checkpoint = torch.load(fold / "checkpoint_final.pth", map_location="cpu", weights_only=False)
    assert checkpoint["trainer_name"] == trainer and checkpoint["current_epoch"] == 2
