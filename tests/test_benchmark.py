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



def test_compares_float32_and_autocast_in_alternating_pairs(benchmark, monkeypatch, capsys):
    from mask2former.modeling.meta_arch.maskformer_model import MaskFormer

    precisions = []
    inference_autocast = MaskFormer._inference_autocast

    def recorded(self):
        precisions.append(self.autocast_dtype)
        return inference_autocast(self)

    monkeypatch.setattr(MaskFormer, "_inference_autocast", recorded)
    args = tiny_args("--skip-train", "--skip-flops", "--iters", "3", "--compare-autocast", "bfloat16")
    results = benchmark.main(args)
    # The configured precision (float32) for the plain measurement, then the pairs (--warmup 0), the order swapped
    # every pair.
    bf16 = torch.bfloat16
    assert all(p is None for p in precisions[:-6])
    assert precisions[-6:] == [None, bf16, bf16, None, None, bf16]

    cmp = results["autocast_comparison"]
    assert cmp["dtype"] == "bfloat16" and cmp["pairs"] == 3
    ratios = [a / f for f, a in zip(cmp["float32_ms"], cmp["autocast_ms"])]
    assert cmp["ratio_median"] == pytest.approx(sorted(ratios)[1])
    assert (cmp["ratio_min"], cmp["ratio_max"]) == pytest.approx((min(ratios), max(ratios)))
    assert cmp["float32_ms_median"] == pytest.approx(sorted(cmp["float32_ms"])[1])
    assert "alternating pairs" in capsys.readouterr().out
    assert isinstance(results["env"]["bf16_matrix_flags"], list)


def test_the_comparison_leaves_the_model_in_its_configured_precision(benchmark):
    model = build_reference_model("tiny_r50")
    model.autocast_dtype = torch.bfloat16
    args = benchmark.parse_args(tiny_args("--warmup", "1", "--iters", "2"))
    cmp = benchmark.compare_autocast(model, read_input("B"), args, benchmark.Clock(torch.device("cpu")), "float16")
    assert cmp["pairs"] == 2 and model.autocast_dtype == torch.bfloat16
