"""The main job end to end at toy scale, for each task: dataset generated, trained, evaluated, table, plot, visuals."""
import json
import os
import re
import subprocess
import sys

import pytest
import torch
from PIL import Image

from conftest import ROOT


def run_main_job(tmp_path, task, out_name="out", opts=()):
    out = tmp_path / out_name
    cmd = [sys.executable, str(ROOT / "tools" / "main_job.py"), "--task", task, "--output", str(out)]
    cmd += ["--num-train", "4", "--num-val", "2", "--num-vis", "2"]
    cmd += ["--opts", "SOLVER.MAX_ITER", "2", "TEST.EVAL_PERIOD", "1", "SOLVER.IMS_PER_BATCH", "2"]
    cmd += ["INPUT.IMAGE_SIZE", "64", "INPUT.CROP.SIZE", "(64, 64)", "INPUT.SIZE_DIVISIBILITY", "64"]
    cmd += ["DATALOADER.NUM_WORKERS", "0", "MODEL.DEVICE", "cpu", *opts]
    env = dict(os.environ, DETECTRON2_DATASETS=str(tmp_path / "datasets"), OMP_NUM_THREADS="1")
    run = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=600)
    assert run.returncode == 0, run.stdout[-3000:] + run.stderr[-3000:]
    assert (tmp_path / "datasets" / "toy_panoptic" / "panoptic_val.json").is_file(), "dataset generated if missing"
    report = json.loads((out / "main_job.json").read_text())
    assert report["task"] == task
    assert [e["iteration"] for e in report["history"]] == [1, 2]
    assert set(report["timings"]) == {"dataset_s", "train_and_eval_s", "visualization_s", "total_s"}
    assert Image.open(out / "training_curves.png").size[0] > 500
    assert len(report["visualizations"]) == 2
    for path in report["visualizations"]:
        vis = Image.open(path)
        assert vis.size[0] > 2 * vis.size[1], "image, ground truth and prediction side by side"
    results = json.loads((out / "inference" / "results.json").read_text())
    assert results["summary"] == report["final"]
    return run, report


def test_main_job_panoptic_by_default(tmp_path):
    # A previous run's records in the output folder (the trainer appends to metrics.json) are not this run's.
    (tmp_path / "out").mkdir()
    (tmp_path / "out" / "metrics.json").write_text(json.dumps({"iteration": 1, "panoptic_seg/PQ": 99.0}) + "\n")
    run, report = run_main_job(tmp_path, "panoptic")
    assert 99.0 not in [e["panoptic_seg/PQ"] for e in report["history"]]
    assert report["config"].endswith("configs/toy/maskformer2_R50_narrow_toy.yaml")
    for key in ("PQ", "PQ_th", "PQ_st", "AP", "mIoU", "pACC"):
        assert 0.0 <= report["final"][key] <= 100.0, key
    assert re.search(r"\|\s+PQ\s+\|.*\|\s+AP\s+\|.*\|\s+mIoU\s+\|", run.stdout), "the results table"
    assert re.search(r"iter\s+2: PQ", run.stdout), "the metrics over training"


@pytest.mark.parametrize(
    "task, metrics, absent",
    [
        ("semantic", ("mIoU", "fwIoU", "mACC", "pACC"), ("PQ", "AP")),
        ("instance", ("AP", "AP50", "AP75"), ("PQ", "mIoU")),
    ],
)
def test_main_job_other_tasks(tmp_path, task, metrics, absent):
    run, report = run_main_job(tmp_path, task)
    assert report["config"].endswith(f"configs/toy/maskformer2_R50_narrow_toy_{task}.yaml")
    assert report["max_iter"] == 2
    for key in metrics:
        assert 0.0 <= report["final"][key] <= 100.0, key
    assert not set(absent) & set(report["final"]), "only the task's own metrics"
    assert re.search(rf"\|\s+{metrics[0]}\s+\|", run.stdout), "the results table"
    assert re.search(rf"iter\s+2: {metrics[0]} ", run.stdout), "the metrics over training"


def test_main_job_with_a_seed_is_repeatable(tmp_path):
    weights = []
    for out_name in ("first", "second"):
        run_main_job(tmp_path, "panoptic", out_name, ["SEED", "3"])
        weights.append(torch.load(tmp_path / out_name / "model_final.pth", map_location="cpu")["model"])
    assert weights[0].keys() == weights[1].keys()
    assert all(torch.equal(weights[0][k], weights[1][k]) for k in weights[0])
