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


def stand_in_original(tmp_path):
    """A copy of this project's package where the original's goes, with a setup script for its op."""
    stand_in = tmp_path / "original"
    shutil.copytree(ROOT / "mask2former", stand_in / "mask2former", ignore=shutil.ignore_patterns("__pycache__"))
    ops = stand_in / "mask2former" / "modeling" / "pixel_decoder" / "ops"
    ops.mkdir(parents=True)
    # Stands in for the original's `setup.py build_ext --inplace`: writes the op module into the current folder.
    (ops / "setup.py").write_text(
        "import sys\n"
        "assert sys.argv[1:3] == ['build_ext', '--inplace'], sys.argv\n"
        "open('MultiScaleDeformableAttention.py', 'w').write('def ms_deform_attn_forward(*args):\\n    pass\\n')\n"
    )
    return stand_in


def run_tool(tool, tmp_path, *extra):
    out = tmp_path / "side_by_side.json"
    results = tool.main([
        "--original", str(stand_in_original(tmp_path)), "--config-file", str(CONFIGS.parent / SPEC["config"]),
        "--input-size", "64", "96", "--warmup", "0", "--json", str(out), *extra,
        "--opts", *split_overrides(SPEC["overrides"]),
    ])
    assert json.loads(out.read_text()) == json.loads(json.dumps(results))
    return results


def test_times_both_in_their_own_processes_and_compares_outputs(tool, tmp_path):
    results = run_tool(tool, tmp_path, "--iters", "2", "--rounds", "2")
    assert list(results["modes"]) == ["inference fp32"]
    entry = results["modes"]["inference fp32"]
    for name in ("this project", "original"):
        assert len(entry[name]["times_s"]) == 4 and entry[name]["median_s"] > 0
        assert entry[name]["peak_memory_mib"] > 0
    assert len(entry["round_ratios"]) == 2 and entry["median_ratio"] > 0
    assert not results["original_op_built"] and results["original_op_calls"] is None
    # The same code on the same weights and image: the same outputs.
    outputs = results["outputs"]
    assert outputs["sem_seg max abs diff (every 8th pixel)"] == 0
    assert outputs["sem_seg argmax agreement"] == outputs["panoptic_seg agreement"] == 1
    assert outputs["instance scores max abs diff"] == 0


def test_bf16_inference_training_and_the_originals_own_op(tool, tmp_path):
    results = run_tool(
        tool, tmp_path, "--iters", "1", "--rounds", "1", "--original-op", "build",
        "--modes", "inference bf16", "training", "--train-size", "64", "64",
    )
    assert list(results["modes"]) == ["inference bf16", "training"]
    for mode, entry in results["modes"].items():
        for name in ("this project", "original"):
            assert len(entry[name]["times_s"]) == 1 and entry[name]["median_s"] > 0, (mode, name)
    # The op module built by the original's setup script was importable in the original's process.
    assert results["original_op_built"] and results["original_op_calls"] == {"calls": 0, "failures": 0}


def test_names_the_folder_it_needs(tool, tmp_path):
    with pytest.raises(SystemExit, match="no mask2former/__init__.py there"):
        tool.main(["--original", str(tmp_path), "--config-file", str(CONFIGS.parent / SPEC["config"])])
