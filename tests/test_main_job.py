"""The main job end to end at toy scale: dataset generated, trained, evaluated, table, plot and visualizations."""
import json
import os
import re
import subprocess
import sys

from PIL import Image

from conftest import ROOT


def test_main_job_end_to_end(tmp_path):
    out = tmp_path / "out"
    cmd = [sys.executable, str(ROOT / "tools" / "main_job.py"), "--output", str(out)]
    cmd += ["--num-train", "4", "--num-val", "2", "--num-vis", "2"]
    cmd += ["--opts", "SOLVER.MAX_ITER", "2", "TEST.EVAL_PERIOD", "1", "SOLVER.IMS_PER_BATCH", "2"]
    cmd += ["INPUT.IMAGE_SIZE", "64", "DATALOADER.NUM_WORKERS", "0", "MODEL.DEVICE", "cpu"]
    env = dict(os.environ, DETECTRON2_DATASETS=str(tmp_path / "datasets"), OMP_NUM_THREADS="1")
    run = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=600)
    assert run.returncode == 0, run.stdout[-3000:] + run.stderr[-3000:]

    assert (tmp_path / "datasets" / "toy_panoptic" / "panoptic_val.json").is_file(), "dataset generated if missing"
    report = json.loads((out / "main_job.json").read_text())
    for key in ("PQ", "PQ_th", "PQ_st", "AP", "mIoU", "pACC"):
        assert 0.0 <= report["final"][key] <= 100.0, key
    assert [e["iteration"] for e in report["history"]] == [1, 2]
    assert set(report["timings"]) == {"dataset_s", "train_and_eval_s", "visualization_s", "total_s"}
    assert re.search(r"\|\s+PQ\s+\|.*\|\s+AP\s+\|.*\|\s+mIoU\s+\|", run.stdout), "the results table"
    assert re.search(r"iter\s+2: PQ", run.stdout), "the metrics over training"

    curves = Image.open(out / "training_curves.png")
    assert curves.size[0] > 500
    assert len(report["visualizations"]) == 2
    for path in report["visualizations"]:
        vis = Image.open(path)
        assert vis.size[0] > 2 * vis.size[1], "image, ground truth and prediction side by side"
    assert json.loads((out / "inference" / "results.json").read_text())["summary"]["PQ"] == report["final"]["PQ"]
