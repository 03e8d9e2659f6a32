"""benchmarks/accuracy.py's table and benchmarks/plots.py on a results table of the shape accuracy.py writes; the
whole accuracy pipeline (plan, fractions, train, validate, ensemble, MONAI metrics) on tiny data is marked slow."""
from __future__ import annotations

import json
import subprocess
import sys
from types import SimpleNamespace

import matplotlib.image
import numpy as np
import pytest

import accuracy
import head_ceiling
import plots
import readme_tables
import utilization
from common import RESULTS
from nnunetv2_lightmedseg.synthetic import make_dataset

BENCHMARKS = RESULTS.parent


def _row(trainer: str, fold: int, dice: float, fraction: float = 1.0) -> dict:
    return {"trainer": trainer, "kind": "cross-validation", "fold": fold, "fold_number": fold,
            "train_fraction": fraction, "params": 480_000 if "Light" in trainer else 31_000_000,
            "gflops": 9.9 if "Light" in trainer else 345.2, "seconds_per_epoch": 12.0, "num_cases": 32,
            **{c: {"dice": dice, "hd95": 3.0, "hd95_undefined_cases": 0} for c in ("RV", "MYO", "LV")},
            "mean_dice": dice}


TABLE = {"metadata": {"dataset": "Dataset027_ACDC", "budget": {"epochs": 10, "iterations_per_epoch": 100},
                      "date": "2026-11-26", "device": "test", "command": "test", "torch": "x", "nnunetv2": "y"},
         "classes": ["RV", "MYO", "LV"],
         "rows": [_row("nnUNetTrainerLightMedSeg", 0, 0.80), _row("nnUNetTrainerLightMedSeg", 1, 0.90),
                  _row("nnUNetTrainer", 0, 0.90), _row("nnUNetTrainerLightMedSeg", 0, 0.5, fraction=0.25)]}


def test_table_has_mean_and_spread_over_folds():
    markdown = accuracy.to_markdown(TABLE)
    line = next(row for row in markdown.splitlines()
                if row.startswith("| nnUNetTrainerLightMedSeg | 0.480 | 9.9 | 1 |"))
    assert "0.850 +- 0.050" in line and "| 0,1 |" in line


def test_smoke_tests_are_labelled_and_left_out_of_the_plot():
    smoke = {**TABLE, "metadata": {**TABLE["metadata"], "smoke_test": True}}
    assert "not an accuracy claim" in accuracy.to_markdown(smoke)
    assert "not an accuracy claim" not in accuracy.to_markdown(TABLE)
    assert plots.points([TABLE, smoke]) == plots.points([TABLE])


def test_plot_has_one_point_per_trainer_and_the_stated_size(tmp_path):
    points = plots.points([TABLE])
    assert {(p["trainer"], p["folds"]) for p in points} == {("nnUNetTrainerLightMedSeg", 2), ("nnUNetTrainer", 1)}
    out = plots.plot(points, tmp_path / "plot.png", width_px=1000)
    assert matplotlib.image.imread(out).shape[:2] == (400, 1000)


def test_a_trainer_in_several_tables_is_drawn_from_the_one_with_most_folds():
    """The ablation table repeats LightMedSeg on fold 0 (another run): the plot keeps the 2-fold point and adds the
    variant, it does not pool folds of different runs."""
    ablation = {**TABLE, "rows": [_row("nnUNetTrainerLightMedSeg", 0, 0.60),
                                  _row("nnUNetTrainerLightMedSeg_noFiLM", 0, 0.70)]}
    points = {p["trainer"]: p for p in plots.points([ablation, TABLE])}
    reference = points["nnUNetTrainerLightMedSeg"]
    assert reference["folds"] == 2 and reference["dice"] == pytest.approx(0.85)
    assert points["nnUNetTrainerLightMedSeg_noFiLM"]["folds"] == 1


def test_run_to_run_names_each_repeated_training_once():
    def table(dice: float, log: str) -> dict:
        return {**TABLE, "rows": [{**_row("nnUNetTrainerLightMedSeg", 0, dice), "training_logs": [log]}]}
    first = table(0.68, "training_log_2026_11_27_04_59_39.txt")
    again = table(0.72, "training_log_2026_11_27_07_52_10.txt")
    sentence = readme_tables.run_to_run({"acdc": first, "acdc_ablation": again, "acdc_data_efficiency": again})
    assert "nnUNetTrainerLightMedSeg fold 0: 0.680 (`acdc`), 0.720 (`acdc_ablation`), a spread of 0.040" in sentence
    assert readme_tables.run_to_run({"acdc_ablation": again, "acdc_data_efficiency": again}) == ""


def test_recipe_sweep_has_one_row_per_recipe_and_table_beside_nnunet_default():
    adamw = {"name": "adamw", "optimizer": "adamw", "learning_rate": 2e-3}

    def fit(train_loss: float, val_loss: float) -> dict:
        return {"train_loss_last_epoch": train_loss, "val_loss_last_epoch": val_loss}
    recorded = {**TABLE, "rows": [{**_row("nnUNetTrainerLightMedSeg_20epochs", 0, 0.88), "recipe": adamw},
                                  {**_row("nnUNetTrainerLightMedSeg_20epochs", 1, 0.86), "recipe": adamw},
                                  {**_row("nnUNetTrainer_20epochs", 0, 0.90), **fit(-0.91, -0.86)},
                                  {**_row("nnUNetTrainer_20epochs", 1, 0.90), **fit(-0.91, -0.87)},
                                  _row("nnUNetTrainerLightMedSeg_nnUNetSGD_20epochs", 0, 0.84),
                                  _row("nnUNetTrainerLightMedSeg_noFiLM_20epochs", 0, 0.87),
                                  {**_row("nnUNetTrainerLightMedSeg_batch2x_20epochs", 0, 0.89), "recipe": adamw,
                                   **fit(-0.90, -0.84)},
                                  {**_row("nnUNetTrainerLightMedSeg_batch2x_20epochs", 1, 0.89), "recipe": adamw,
                                   **fit(-0.89, -0.85)},
                                  {**_row("nnUNetTrainerLightMedSeg_small_20epochs", 0, 0.85), "recipe": adamw},
                                  {**_row("nnUNetTrainerLightMedSeg_refinedHead_20epochs", 0, 0.86), "recipe": adamw}]}
    shared = {**TABLE, "rows": [{**_row("nnUNetTrainerLightMedSeg", 0, 0.80), "training_logs": ["a.txt"]}]}
    again = {**shared, "rows": shared["rows"] + [_row("nnUNetTrainer", 0, 0.82)]}
    tables = {"old": TABLE, "new": recorded, "shared": shared, "again": again}
    lines = [line.replace(" | Dataset027_ACDC | ", " | ") for line in
             readme_tables.recipe_sweep(tables).splitlines()[2:]]
    assert lines == [
        # written before recipes were recorded: nnU-Net's SGD; fold 1 has no nnU-Net default row to compare with in
        # the same run, so the comparison is with every training of the budget (fold 0: three, its own among them;
        # fold 1: one)
        "| nnUNetSGD | 0.480 | `old` | 10 x 100 | 0,1 | RV 0.850, MYO 0.850, LV 0.850 | 0.850 |  |  | "
        "0.887 (3+1 trainings): -0.037 |  |  |",
        # losses where both folds of a row recorded them
        "| adamw | 0.480 | `new` | 10 x 100 | 0,1 | RV 0.870, MYO 0.870, LV 0.870 | 0.870 | 0.900 | -0.030 |  |  | "
        "-0.910 / -0.865 |",
        "| nnUNetSGD | 0.480 | `new` | 10 x 100 | 0 | RV 0.840, MYO 0.840, LV 0.840 | 0.840 | 0.900 | -0.060 |  |  | "
        "-0.910 / -0.860 |",
        # a variant that changes how the paper network trains, named after its recipe; ablations are not
        "| adamw + batch2x | 0.480 | `new` | 10 x 100 | 0,1 | RV 0.890, MYO 0.890, LV 0.890 | 0.890 | 0.900 | -0.010 | "
        " | -0.895 / -0.845 | -0.910 / -0.865 |",
        # another preset (its widths) is tried for the recipe too
        "| adamw + small | 0.480 | `new` | 10 x 100 | 0 | RV 0.850, MYO 0.850, LV 0.850 | 0.850 | 0.900 | -0.050 | "
        " |  | -0.910 / -0.860 |",
        # and so is an extension (it adds what the paper leaves off)
        "| adamw + refinedHead | 0.480 | `new` | 10 x 100 | 0 | RV 0.860, MYO 0.860, LV 0.860 | 0.860 | 0.900 | "
        "-0.040 |  |  | -0.910 / -0.860 |",
        # one training in two tables: one row, compared where a table has nnU-Net default
        "| nnUNetSGD | 0.480 | `shared`, `again` | 10 x 100 | 0 | RV 0.800, MYO 0.800, LV 0.800 | 0.800 | 0.820 | "
        "-0.020 |  |  |  |",
    ]


def test_recipe_gap_compares_the_networks_case_by_case_on_the_same_validation_cases():
    def scored(trainer: str, fold: int, per_case: dict[str, tuple[float, float, float]], over: float = 0.0) -> dict:
        cases = [{"case": f"{name}.nii.gz", **dict(zip(("RV", "MYO", "LV"), dice))} for name, dice in per_case.items()]
        # false positives `over` in every class, false negatives what the Dice lost (an empty RV on case c: None)
        errors = [{"case": c["case"], **{n: {"false_positive": over, "false_negative": 1 - c[n]}
                                         for n in ("RV", "MYO", "LV")}} for c in cases]
        if per_case.keys() == {"c"}:
            errors[0]["RV"] = {"false_positive": None, "false_negative": None}
        return {**_row(trainer, fold, 0.0), "recipe": {"name": "adamw"}, "case_dice": cases, "case_errors": errors}
    light = [scored("nnUNetTrainerLightMedSeg_20epochs", 0, {"a": (0.8, 0.8, 0.8), "b": (0.9, 0.45, 0.9)}, 0.1),
             scored("nnUNetTrainerLightMedSeg_20epochs", 1, {"c": (0.9, 0.9, 0.9)}, 0.1)]
    default = [scored("nnUNetTrainer_20epochs", 0, {"a": (0.9, 0.9, 0.9), "b": (0.9, 0.9, 0.9)}),
               scored("nnUNetTrainer_20epochs", 1, {"c": (0.6, 0.9, 0.9)})]
    extension = [scored("nnUNetTrainerLightMedSeg_refinedHead_20epochs", 0, {"a": (0.9, 0.9, 0.9)})]
    table = {**TABLE, "rows": light + default + extension}
    unscored = {**TABLE, "rows": [_row("nnUNetTrainerLightMedSeg", 0, 0.8), _row("nnUNetTrainer", 0, 0.9)]}
    lines = readme_tables.recipe_gap({"run": table, "old": unscored}, worst=2).splitlines()
    # per case (mean over classes): a -0.1, b -0.15, c +0.1; per class: RV (-0.1 + 0 + 0.3) / 3,
    # MYO (-0.1 - 0.45 + 0) / 3, LV (-0.1 + 0 + 0) / 3
    # false positives +0.1 in every class; false negatives the Dice difference negated, RV over cases a and b only
    assert lines[2:] == ["| `run` | nnUNetTrainerLightMedSeg_20epochs (adamw) | 0,1 | 3 | RV +0.067, MYO -0.183, "
                         "LV -0.033 | -0.050 | 2 of 3 | -0.100 | 100% | b -0.150, a -0.100 | RV +0.100 / +0.050, "
                         "MYO +0.100 / +0.183, LV +0.100 / +0.033 |",
                         # an extension is compared case by case too
                         "| `run` | nnUNetTrainerLightMedSeg_refinedHead_20epochs (adamw + refinedHead) | 0 | 1 | "
                         "RV +0.000, MYO +0.000, LV +0.000 | +0.000 | 0 of 1 | +0.000 |  | a +0.000 | "
                         "RV +0.000 / +0.000, MYO +0.000 / +0.000, LV +0.000 / +0.000 |"]
    assert readme_tables.recipe_gap({"old": unscored}) == ""


def test_fraction_folds_are_appended_once_and_keep_patients_whole(tmp_path):
    cases = [f"patient{p:03d}_frame{f:02d}" for p in range(1, 21) for f in (1, 12)]
    splits = [{"train": [c for c in cases if int(c[7:10]) % 5 != k], "val": [c for c in cases if int(c[7:10]) % 5 == k]}
              for k in range(5)]
    ws = SimpleNamespace(splits_file=tmp_path / "splits_final.json")
    ws.splits_file.write_text(json.dumps(splits))
    first = accuracy.add_fraction_folds(ws, [0], [0.25, 0.5, 1.0])
    again = accuracy.add_fraction_folds(ws, [0], [0.25, 0.5, 1.0])
    stored = json.loads(ws.splits_file.read_text())
    assert first == again == {(0, 1.0): 0, (0, 0.25): 5, (0, 0.5): 6} and len(stored) == 7
    for number, fraction in ((5, 0.25), (6, 0.5)):
        patients = {accuracy.patient_of(c) for c in stored[number]["train"]}
        assert len(patients) == round(fraction * 16) and len(stored[number]["train"]) == 2 * len(patients)
        assert stored[number]["val"] == splits[0]["val"]


def test_score_only_fractions_without_the_runs_splits_file_says_what_to_copy(tmp_path):
    raw = tmp_path / "raw" / "Dataset901_Copied"
    raw.mkdir(parents=True)
    proc = subprocess.run([sys.executable, str(BENCHMARKS / "accuracy.py"), "--raw", str(raw), "--work",
                           str(tmp_path / "work"), "--trainers", "nnUNetTrainerLightMedSeg", "--folds", "0",
                           "--epochs", "10", "--iterations", "100", "--train-fractions", "0.5", "1", "--score-only",
                           "--name", "copied", "--out", str(tmp_path)], capture_output=True, text=True, timeout=300)
    assert proc.returncode == 2
    assert "preprocessed/Dataset901_Copied/splits_final.json" in proc.stderr


def test_a_run_without_monai_stops_before_planning(tmp_path, monkeypatch, capsys):
    monkeypatch.setitem(sys.modules, "monai", None)  # as if not installed: find_spec gives None
    raw = tmp_path / "raw" / "Dataset901_Copied"
    raw.mkdir(parents=True)
    with pytest.raises(SystemExit) as exit_info:
        accuracy.main(["--raw", str(raw), "--work", str(tmp_path / "work"), "--trainers", "nnUNetTrainerLightMedSeg",
                       "--folds", "0", "--epochs", "1", "--iterations", "1", "--name", "nomonai",
                       "--out", str(tmp_path)])
    assert exit_info.value.code == 2
    assert "needs MONAI" in capsys.readouterr().err
    assert not (tmp_path / "work").exists()


@pytest.mark.slow
def test_accuracy_pipeline_end_to_end(nnunet_env, tmp_path):
    raw = make_dataset(nnunet_env.raw, 987, "Accuracy", num_train=6, num_test=2, shape=(32, 32, 32), seed=27)
    out = tmp_path / "results"
    argv, env = nnunet_env.command("nnUNetv2_train")
    proc = subprocess.run([sys.executable, str(BENCHMARKS / "accuracy.py"), "--raw", str(raw), "--work",
                           str(tmp_path / "work"), "--trainers", "nnUNetTrainerLightMedSeg", "--folds", "0",
                           "--epochs", "1", "--iterations", "5", "--processes", "2", "--train-fractions", "0.5", "1",
                           "--test", str(raw), "--name", "tiny", "--out", str(out)],
                          env={**env, "nnUNet_n_proc_DA": "1"}, capture_output=True, text=True, timeout=900)
    assert proc.returncode == 0, proc.stderr[-3000:]
    table = json.loads((out / "accuracy_tiny.json").read_text())
    kinds = [(r["kind"], r.get("train_fraction")) for r in table["rows"]]
    assert kinds == [("cross-validation", 0.5), ("cross-validation", 1.0), ("test ensemble", None)]
    assert table["rows"][-1]["cases"] == sorted(p.name for p in (raw / "labelsTs").iterdir())
    [budget_trainer] = accuracy.budget_trainers(["nnUNetTrainerLightMedSeg"], 1, 5)
    trained = tmp_path / "work" / "results_1epx5it" / raw.name / f"{budget_trainer}__nnUNetPlans__3d_fullres"
    assert "--name tiny" in json.loads((trained / "fold_0" / "trained_by.json").read_text())["command"]
    for row in table["rows"]:  # the mean over the classes, each scored (not NaN: an empty class scores 1 or 0)
        assert row["mean_dice"] == pytest.approx(np.mean([row[c]["dice"] for c in table["classes"]]))
        assert "gflops" not in row or row["gflops"] > 0
    validation = table["rows"][1]["case_dice"]
    assert len(validation) == table["rows"][1]["num_cases"] and set(validation[0]) == {"case", *table["classes"]}
    errors = table["rows"][1]["case_errors"]
    assert [c["case"] for c in errors] == [c["case"] for c in validation]
    assert set(errors[0][table["classes"][0]]) == {"false_positive", "false_negative"}


def test_region_scores_on_a_real_brats_label(shared_dataset, tmp_path):
    """Region-based datasets are scored per region (WT = 1,2,3; TC = 2,3; ET = 3) on nnU-Net's label maps: a
    prediction that calls the enhancing tumour necrosis keeps WT and TC exact and loses ET."""
    import SimpleITK as sitk
    raw = shared_dataset("Dataset137_BraTSmini")
    label_file = sorted((raw / "labelsTr").glob("*.nii.gz"))[0]
    label = sitk.ReadImage(str(label_file))
    array = sitk.GetArrayFromImage(label)
    assert (array == 3).any()
    prediction = sitk.GetImageFromArray(np.where(array == 3, 2, array).astype(array.dtype))
    prediction.CopyInformation(label)
    (tmp_path / "pred").mkdir()
    sitk.WriteImage(prediction, str(tmp_path / "pred" / label_file.name))
    with accuracy.scoring_pool(1) as pool:
        dataset_json = json.loads((raw / "dataset.json").read_text())
        [row] = accuracy.score_folder(tmp_path / "pred", raw / "labelsTr", dataset_json, pool)
    exact = {"dice": 1.0, "hd95": 0.0, "false_positive_fraction": 0.0, "false_negative_fraction": 0.0}
    assert row["whole tumor"] == exact and row["tumor core"] == exact
    enhancing = row["enhancing tumor"]
    assert enhancing["dice"] == 0.0 and np.isnan(enhancing["hd95"])
    # all of it missed (under-segmented), nothing else called enhancing
    assert enhancing["false_negative_fraction"] == 1.0 and enhancing["false_positive_fraction"] == 0.0


def test_utilization_counts_the_samples_of_the_training_window(tmp_path):
    samples = tmp_path / "utilization.txt"
    samples.write_text("time load_1min gpu_util_% gpu_mem_MiB\n10:00:00 0.5 0 0\n10:00:15 4.0 70 6000\n"
                       "10:00:30 5.0 95 6000\n10:00:45 6.0 100 6000\n10:01:00 1.0\n10:01:15 0.2 100 10\n")
    logs = []
    for fold, (start, end) in enumerate([("10:00:10", "10:00:40"), ("10:00:12", "10:00:50")]):
        log = tmp_path / f"training_log_{fold}.txt"
        log.write_text(f"2026-12-02 {start}.123: Epoch 0 \n2026-12-02 10:00:20.1: Epoch 1 \n"
                       f"2026-12-02 {end}.5: Training done. \n")
        logs.append(log)
    assert utilization.training_window(logs) == ("2026-12-02", "10:00:10", "10:00:50")
    summary = utilization.summarize(utilization.read_samples(samples), "10:00:10", "10:00:50")
    # the sample after training (100 %) counts in all samples only; the one without a GPU reading in none
    assert summary["samples"] == 6 and summary["samples_at_100_percent"] == 2
    assert summary["training_samples"] == 3 and summary["training_samples_at_90_percent_or_more"] == 2
    assert summary["training_median_gpu_util_percent"] == 95 and summary["training_median_load_1min"] == 5.0
    unfinished = tmp_path / "unfinished.txt"
    unfinished.write_text("2026-12-02 10:00:10.1: Epoch 0 \n")
    with pytest.raises(ValueError, match="did training end"):
        utilization.training_window([unfinished])


def test_head_ceiling_scores_labels_through_blocks(tmp_path):
    """Labels aligned with the blocks come back whole either way; a boundary inside the blocks does not, nearest."""
    import SimpleITK as sitk
    labels = tmp_path / "labelsTr"
    labels.mkdir()
    (tmp_path / "dataset.json").write_text(json.dumps({"labels": {"background": 0, "a": 1}}))
    aligned = np.zeros((2, 8, 8), np.uint8)
    aligned[:, 2:6, 2:6] = 1
    inside = np.zeros((2, 8, 8), np.uint8)
    inside[:, 1:6, 1:6] = 1  # edges at odd indices: inside 2 x 2 blocks
    for name, array in (("aligned", aligned), ("inside", inside)):
        sitk.WriteImage(sitk.GetImageFromArray(array), str(labels / f"{name}.nii.gz"))
    rows = head_ceiling.main(["--labels", str(labels), "--block", "1", "2", "2", "--name", "t", "--out",
                              str(tmp_path), "--predictions", f"copy={labels}"])
    by = {(r["labels"], r["through_blocks"]): r for r in rows}
    assert by[("copy", "as is")]["mean_dice"] == 1.0
    assert by[("reference", "nearest")]["mean_dice"] < 1.0
    assert (tmp_path / "head_ceiling_t.md").read_text().count("| reference |") == 2
