"""Shared fixtures: nnU-Net folders on tiny generated datasets, the real nnU-Net commands in subprocesses, one
torch thread; and the benchmark scripts importable as modules (``import complexity``), as they import each other."""
from __future__ import annotations

import contextlib
import json
import os
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest
import torch
from filelock import FileLock  # a dependency of torch

import nnunetv2_lightmedseg
from nnunetv2_lightmedseg.synthetic import make_dataset

ROOT = Path(__file__).resolve().parents[1]
SHARED_DATA = ROOT.parent / "shared" / "data"
BIN = Path(sys.executable).parent
sys.path.insert(0, str(ROOT / "benchmarks"))

#: the README's test command runs pytest-xdist workers (one per core), which share the cores: OpenMP threads of two
#: processes spinning on one core make tiny 3D convolutions many times slower
WORKERS = int(os.environ.get("PYTEST_XDIST_WORKER_COUNT", "1"))
THREADS = max(1, (os.cpu_count() or 1) // WORKERS)
if WORKERS > 1:
    torch.set_num_threads(THREADS)


class NnUNetEnv:
    """nnU-Net's three folders under one temporary root, and a runner for ``nnUNetv2_*`` commands on the CPU."""

    def __init__(self, root: Path) -> None:
        self.root = root
        self.raw, self.preprocessed, self.results = root / "raw", root / "preprocessed", root / "results"
        for folder in (self.raw, self.preprocessed, self.results):
            folder.mkdir(parents=True, exist_ok=True)
        self.env = {
            **os.environ,
            "nnUNet_raw": str(self.raw), "nnUNet_preprocessed": str(self.preprocessed),
            "nnUNet_results": str(self.results),
            "nnUNet_extTrainer": nnunetv2_lightmedseg.ext_trainer_value(""),
            "nnUNet_compile": "f", "nnUNet_def_n_proc": "1", "OMP_NUM_THREADS": str(min(2, THREADS)),
            "PYTHONWARNINGS": "ignore",
        }

    def command(self, *args: str, extra_env: dict | None = None) -> tuple[list[str], dict]:
        """Argument list (the command from this interpreter's bin folder) and environment for an nnU-Net command."""
        env = {**self.env, **(extra_env or {})}
        if args[0] == "nnUNetv2_train":  # in-process augmentation: deterministic and as fast on 2 cores
            env.setdefault("nnUNet_n_proc_DA", "0")
        if args[0] == "nnUNetv2_predict":
            # one preprocessing and one export worker unless a test asks for more (nnU-Net starts 3 + 3): each
            # spawned worker imports torch and nnU-Net again, 10-12 s of CPU on a 2-core test machine
            args = (*args, *(f for flag in ("-npp", "-nps") if flag not in args for f in (flag, "1")))
        return [str(BIN / args[0]), *args[1:]], env

    def run(self, *args: str, check: bool = True, extra_env: dict | None = None,
            timeout: float = 600) -> subprocess.CompletedProcess:
        """Run an nnU-Net command to its end; on failure show its output."""
        argv, env = self.command(*args, extra_env=extra_env)
        proc = subprocess.run(argv, env=env, capture_output=True, text=True, timeout=timeout)
        if check and proc.returncode != 0:
            raise AssertionError(f"{' '.join(args)} failed ({proc.returncode}):\n{proc.stdout[-4000:]}\n"
                                 f"{proc.stderr[-4000:]}")
        return proc

    def model_folder(self, dataset: str, trainer: str, configuration: str = "3d_fullres") -> Path:
        return self.results / dataset / f"{trainer}__nnUNetPlans__{configuration}"

    def plans(self, dataset: str) -> dict:
        return json.loads((self.preprocessed / dataset / "nnUNetPlans.json").read_text())

    def score(self, dataset: str, predictions: Path) -> dict:
        """nnU-Net's own evaluation of a prediction folder against the dataset's labelsTs (labels or regions)."""
        from nnunetv2.evaluation.evaluate_predictions import compute_metrics_on_folder2, load_summary_json
        compute_metrics_on_folder2(str(self.raw / dataset / "labelsTs"), str(predictions),
                                   str(self.raw / dataset / "dataset.json"),
                                   str(self.preprocessed / dataset / "nnUNetPlans.json"), num_processes=1)
        return load_summary_json(str(predictions / "summary.json"))


@pytest.fixture(scope="session")
def nnunet_env(tmp_path_factory) -> NnUNetEnv:
    """One nnU-Net root for the session, shared by its xdist workers (each module uses datasets of its own ids)."""
    base = tmp_path_factory.getbasetemp()
    return NnUNetEnv((base.parent if os.environ.get("PYTEST_XDIST_WORKER") else base) / "nnunet")


@contextlib.contextmanager
def made_once(env: NnUNetEnv, name: str) -> Iterator[bool]:
    """Whether to make ``name`` in ``env``: true for the first worker that asks; the others wait until it is made."""
    with FileLock(env.root / f"{name}.lock"):
        done = env.root / f"{name}.done"
        make = not done.exists()
        yield make
        if make:
            done.touch()


#: the generated dataset that most nnU-Net command tests share (each plan costs most of a minute on 2 cores), and the
#: trainer of its two trained folds: it learns enough to beat chance on the generated data
ISO, ISO_TRAINER = "Dataset991_Iso", "nnUNetTrainerLightMedSeg_5epochs_30iters"


@pytest.fixture(scope="session")
def iso_planned(nnunet_env) -> NnUNetEnv:
    """10 training + 2 labelled test cases of 32^3, planned and preprocessed."""
    with made_once(nnunet_env, "iso_planned") as make:
        if make:
            make_dataset(nnunet_env.raw, 991, "Iso", num_train=10, num_test=2, shape=(32, 32, 32), seed=1)
            nnunet_env.run("nnUNetv2_plan_and_preprocess", "-d", "991", "-c", "3d_fullres", "-np", "1")
    return nnunet_env


@pytest.fixture(scope="session")
def iso(iso_planned) -> NnUNetEnv:
    """``iso_planned`` with folds 0 and 1 of ``ISO_TRAINER`` trained (--npz). Tests read these folders; one that
    changes a model folder works on a copy."""
    with made_once(iso_planned, "iso") as make:
        for fold in ("0", "1") if make else ():
            iso_planned.run("nnUNetv2_train", "991", "3d_fullres", fold, "-tr", ISO_TRAINER, "-device", "cpu", "--npz")
    return iso_planned


@pytest.fixture(scope="session")
def shared_dataset():
    """``shared_dataset(name)``: the shared raw dataset folder, or a skip that says why (a user's clone has no
    ../shared beside it)."""
    def get(name: str) -> Path:
        folder = SHARED_DATA / name
        if not folder.is_dir():
            pytest.skip(f"{folder} is absent: real-data checks need the ../shared folder beside the repository")
        return folder
    return get


@pytest.fixture(scope="module")
def one_thread() -> Iterator[None]:
    """One intra-op thread for a module's tests: on a shared, busy CPU, OpenMP threads spinning at barriers make
    tiny 3D convolutions many times slower; one thread is as fast when idle and steady when busy."""
    previous = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(previous)
