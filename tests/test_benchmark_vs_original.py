"""tools/benchmark_vs_original.py on a tiny model, with a copy of this project standing in for the original."""
import json
import shutil

import pytest

from conftest import CONFIGS, ROOT, load_script, split_overrides
from test_reference_tiny import REF

SPEC = json.loads((REF / "tiny_r50_overrides.json").read_text())


@pytest.fixture(scope="module")
def tool():
    return load_script(ROOT / "tools" / "benchmark_vs_original.py")


def test_times_both_in_their_own_processes_and_compares_outputs(tool, tmp_path):
    stand_in = tmp_path / "original"
    shutil.copytree(ROOT / "mask2former", stand_in / "mask2former", ignore=shutil.ignore_patterns("__pycache__"))
    out = tmp_path / "side_by_side.json"
    results = tool.main([
        "--original", str(stand_in), "--config-file", str(CONFIGS.parent / SPEC["config"]),
        "--input-size", "64", "96", "--warmup", "0", "--iters", "2", "--rounds", "2", "--json", str(out),
        "--opts", *split_overrides(SPEC["overrides"]),
    ])
    assert json.loads(out.read_text()) == json.loads(json.dumps(results))
    for name in ("this project", "original"):
        assert len(results[name]["times_s"]) == 4 and results[name]["median_s"] > 0
        assert results[name]["peak_rss_mib"] > 0
    assert len(results["round_ratios"]) == 2 and results["median_ratio"] > 0
    # The same code on the same weights and image: the same outputs.
    outputs = results["outputs"]
    assert outputs["sem_seg max abs diff (every 8th pixel)"] == 0
    assert outputs["sem_seg argmax agreement"] == outputs["panoptic_seg agreement"] == 1
    assert outputs["instance scores max abs diff"] == 0


def test_names_the_folder_it_needs(tool, tmp_path):
    with pytest.raises(SystemExit, match="no mask2former/__init__.py there"):
        tool.main(["--original", str(tmp_path), "--config-file", str(CONFIGS.parent / SPEC["config"])])
