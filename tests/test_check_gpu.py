"""
tools/check_gpu.py without a GPU: it runs the CPU rows from a plain checkout (no PYTHONPATH), prints one table,
writes the JSON, lists the GPU rows it skipped, and exits non-zero when a correctness row fails.
"""
import json
import os
import subprocess
import sys
import types

import pytest
import torch

from conftest import ROOT, load_script

pytestmark = pytest.mark.skipif(torch.cuda.is_available(), reason="checks the CPU-only behaviour (GPU rows skipped)")


@pytest.fixture(scope="module")
def tool():
    return load_script(ROOT / "tools" / "check_gpu.py")


def test_runs_the_cpu_rows_from_a_checkout_and_lists_the_skipped_ones(tmp_path):
    out = tmp_path / "check.json"
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    run = subprocess.run(
        [sys.executable, str(ROOT / "tools" / "check_gpu.py"), "--skip", "op speed", "--json", str(out)],
        cwd=tmp_path, env=env, capture_output=True, text=True, timeout=600,
    )
    assert run.returncode == 0, run.stdout[-2000:] + run.stderr[-2000:]
    report = json.loads(out.read_text())
    assert report["ok"] and report["env"]["package"] == str(ROOT / "mask2former")
    rows = {(row["section"], row["item"]): row for row in report["rows"]}
    for dtype in ("float64", "float32", "bfloat16"):
        row = rows[("op correctness", f"cpu {dtype}, forward + backward vs float64")]
        assert row["status"] == "ok" and "max error" in row["result"]
    skipped = {row["section"]: row["result"] for row in report["rows"] if row["status"] == "skipped"}
    assert skipped == {
        "op speed": "--skip",
        "swin-t training": "needs a CUDA GPU",
        "swin-t inference": "needs a CUDA GPU",
        "nccl": "needs a CUDA GPU",
        "train_net": "needs a CUDA GPU",
        "vs original": "needs a CUDA GPU",
    }
    # One table, with every row of the JSON.
    table = run.stdout[run.stdout.index("| section"):]
    assert all(row["result"] in table for row in report["rows"])


def test_a_wrong_kernel_fails_its_row_and_the_exit_code(tool, tmp_path, monkeypatch):
    real = tool.kernels_for("cpu")
    wrong = types.ModuleType("wrong_C")
    wrong.forward = lambda *args: real.forward(*args) * 1.05
    wrong.backward = real.backward
    monkeypatch.setattr(tool, "kernels_for", lambda device_type: wrong)
    out = tmp_path / "check.json"
    assert tool.main(["--skip", "op speed", "--json", str(out)]) == 1
    report = json.loads(out.read_text())
    statuses = {row["item"]: row["status"] for row in report["rows"] if row["section"] == "op correctness"}
    assert set(statuses.values()) == {"FAIL"} and len(statuses) == 3
    assert not report["ok"]
