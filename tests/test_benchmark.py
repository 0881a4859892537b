"""tools/benchmark.py runs every measurement on a tiny model and counts the compiled op's FLOPs as its reference's."""
import json

import pytest
import torch

from conftest import CONFIGS, ROOT, load_script, split_overrides
from test_reference_tiny import REF, build_reference_model, read_input

SPEC = json.loads((REF / "tiny_r50_overrides.json").read_text())


@pytest.fixture(scope="module")
def benchmark():
    return load_script(ROOT / "tools" / "benchmark.py")


def tiny_args(*extra):
    return [
        "--config-file", str(CONFIGS.parent / SPEC["config"]), "--device", "cpu",
        "--input-size", "64", "96", "--warmup", "0", "--iters", "2",
        "--train-iters", "1", "--ims-per-batch", "2", "--train-size", "64", "64", "--num-targets", "3",
        *extra,
        "--opts", *split_overrides(SPEC["overrides"]),
    ]


def test_reports_every_measurement(benchmark, tmp_path, capsys):
    out = tmp_path / "bench.json"
    results = benchmark.main(tiny_args("--json", str(out)))
    assert json.loads(out.read_text()) == json.loads(json.dumps(results))
    assert "inference latency" in capsys.readouterr().out

    inference = results["inference"]
    assert inference["latency_ms_median"] > 0 and inference["peak_memory_mib"] > 0
    assert inference["images_per_s"] == pytest.approx(1000 / inference["latency_ms_median"])
    assert set(inference["stage_share"]) == set(benchmark.STAGES)
    assert sum(inference["stage_share"].values()) == pytest.approx(1.0)
    assert all(share > 0 for share in inference["stage_share"].values())

    training = results["training"]
    assert training["ims_per_batch"] == 2 and training["image_size"] == [64, 64] and not training["amp"]
    assert training["images_per_s"] == pytest.approx(2 / training["iter_s_median"])

    flops = results["gflops"]
    parts = ("backbone", "pixel decoder", "transformer decoder")
    assert all(flops[part] > 0 for part in parts)
    assert flops["total"] == pytest.approx(sum(flops[part] for part in parts) + flops["other"])


def test_compiled_op_counts_as_its_reference(benchmark, monkeypatch):
    import mask2former.modeling.pixel_decoder.msdeformattn as pixel_decoder
    from mask2former.ops.ms_deform_attn import ms_deform_attn_reference

    model = build_reference_model("tiny_r50")
    inputs = read_input("B")
    compiled = benchmark.count_flops(model, inputs)
    # fvcore counts the reference's grid_sample itself.
    monkeypatch.setattr(pixel_decoder, "ms_deform_attn", ms_deform_attn_reference)
    reference = benchmark.count_flops(model, inputs)
    assert compiled == pytest.approx(reference, rel=1e-9)


def test_opts_must_come_last(benchmark):
    with pytest.raises(SystemExit, match="put --opts last"):
        benchmark.main(["--config-file", str(CONFIGS.parent / SPEC["config"]), "--opts", "--json", "x.json"])


def test_cuda_without_a_gpu_is_a_clear_error(benchmark, monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    with pytest.raises(SystemExit, match="no CUDA device"):
        benchmark.main(["--config-file", str(CONFIGS.parent / SPEC["config"]), "--device", "cuda"])
