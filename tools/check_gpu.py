#!/usr/bin/env python
"""
One command for a CUDA machine: is this checkout right on its GPU, and how fast is it? Prints one table and, with
--json, writes the same rows as JSON:

  op correctness   the compiled deformable-attention kernels in fp32, fp16 and bf16 (fp64, fp32 and bf16 on CPU),
                   forward and backward, against the float64 reference, at 32, 64 and 160 channels per head (the
                   kernels' channel paths), with samples on and beyond the borders
  op speed         our kernels, the classic Deformable-DETR design and the pure-PyTorch reference
                   (tools/benchmark_msdeformattn.py) at the Swin-T pixel decoder's shapes
  Swin-T training  LSJ 1024, batch 2, AMP: iterations/s and peak memory (tools/benchmark.py)
  Swin-T inference 800x1216, fp32 and bf16, with post-processing: latency and peak memory (tools/benchmark.py)
  NCCL             an all-reduce in a one-process NCCL group
  train_net.py     --num-gpus 1: 20 iterations of the toy config on a small generated toy dataset, then evaluation
  vs original      with --original DIR: tools/benchmark_vs_original.py --device cuda (its own compiled op)

Exits with 1 when a correctness row fails (or a row could not run). Without a GPU it runs the CPU rows and lists
what it skipped. It needs no installation of this package: it puts the checkout first on ``sys.path`` and the op
is compiled on first use if ``pip install -e .`` did not build it (only torch, detectron2 and their dependencies
must be importable). Without --original it took 105 s on one H200 (docs/benchmarks.md), after the op's build.

Example:
    python tools/check_gpu.py --json check_gpu.json
    python tools/check_gpu.py --original /path/to/Mask2Former --json check_gpu.json
"""
import argparse
import importlib.util
import json
import os
import platform
import subprocess
import sys
import tempfile
import time
import traceback
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))  # this checkout's package, installed or not

import torch  # noqa: E402
from tabulate import tabulate  # noqa: E402

import mask2former  # noqa: E402
from mask2former.ops.ms_deform_attn import kernels_for, self_check  # noqa: E402

SWIN_T = ROOT / "configs/coco/panoptic-segmentation/swin/maskformer2_swin_tiny_bs16_50ep.yaml"
TOY = ROOT / "configs/toy/maskformer2_R50_narrow_toy.yaml"
# Untimed and timed runs of the whole model, training iterations and toy training iterations.
WARMUP, INFERENCE_ITERS, TRAIN_ITERS, TOY_ITERS = 3, 20, 10, 20
SECTIONS = ("op correctness", "op speed", "swin-t training", "swin-t inference", "nccl", "train_net", "vs original")
GPU_ONLY = SECTIONS[2:]


def load_tool(name):
    """A script of tools/ imported as a module (tools/ is not a package)."""
    spec = importlib.util.spec_from_file_location(f"check_gpu_{name}", ROOT / "tools" / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


class Table:
    """The rows of the report: section, item, result, status (ok / FAIL / ERROR / skipped)."""

    def __init__(self):
        self.rows = []

    def add(self, section, item, result, status="ok"):
        self.rows.append({"section": section, "item": item, "result": result, "status": status})
        print(f"[check_gpu] {section} | {item} | {result} | {status}", flush=True)

    def run(self, section, fn):
        """Runs one section; an exception becomes an ERROR row instead of ending the check."""
        try:
            fn()
        except Exception as e:  # noqa: BLE001 - reported in the table, the other sections still run
            traceback.print_exc()
            self.add(section, "(did not run)", f"{type(e).__name__}: {str(e).strip()[:300]}", "ERROR")

    def failed(self):
        return [row for row in self.rows if row["status"] in ("FAIL", "ERROR")]


def check_op(table, device):
    dtypes = [torch.float32, torch.float16, torch.bfloat16] if device.type == "cuda" else [
        torch.float64, torch.float32, torch.bfloat16
    ]
    module = kernels_for(device.type)
    for dtype in dtypes:
        item = f"{device.type} {str(dtype).replace('torch.', '')}, forward + backward vs float64"
        if module is None:
            table.add("op correctness", item, f"no compiled kernels for {device.type} (see the warning above)", "FAIL")
            continue
        tolerance = self_check.TOLERANCE[dtype]
        try:
            error, name, channels = self_check.largest_error(module, device, dtype)
        except Exception as e:  # noqa: BLE001 - a kernel that does not run is a failed row
            table.add("op correctness", item, f"{type(e).__name__}: {str(e).strip().splitlines()[0][:200]}", "FAIL")
            continue
        result = f"max error {error:.2e} of magnitude ({name}, D={channels}); tolerance {tolerance:g}"
        table.add("op correctness", item, result, "ok" if error <= tolerance else "FAIL")


def op_speed(table, device, repeats):
    bench = load_tool("benchmark_msdeformattn")
    dtypes = [torch.float32, torch.bfloat16] if device.type == "cuda" else [torch.float32]
    shapes = bench.SHAPES if device.type == "cuda" else {k: v for k, v in bench.SHAPES.items() if "inference" in k}
    for shape_name, (batch, height, width) in shapes.items():
        for dtype in dtypes:
            inputs = bench.make_inputs(batch, height, width, dtype, device)
            for impl, fn in bench.implementations(device, dtype).items():
                fwd, both = (bench.median_seconds(fn, inputs, bwd, repeats, device) for bwd in (False, True))
                item = f"{impl}, {shape_name}, {str(dtype).replace('torch.', '')}"
                table.add("op speed", item, f"forward {fwd * 1e3:.2f} ms, forward + backward {both * 1e3:.2f} ms")


def swin_t(table, device, train):
    from detectron2.modeling import build_model

    bench = load_tool("benchmark")
    common = ["--config-file", str(SWIN_T), "--device", device.type, "--skip-flops", "--warmup", str(WARMUP)]
    clock, memory = bench.Clock(device), bench.Memory(device)
    if train:
        train_args = ["--ims-per-batch", "2", "--train-iters", str(TRAIN_ITERS), "--opts", "SOLVER.AMP.ENABLED", "True"]
        args = bench.parse_args(common + train_args)
        cfg = bench.setup_cfg(args)
        torch.manual_seed(0)
        result = bench.measure_training(build_model(cfg), cfg, args, device, clock, memory)
        size = "x".join(map(str, result["image_size"]))
        table.add(
            "swin-t training",
            f"LSJ {size}, batch {result['ims_per_batch']}, {'AMP fp16' if result['amp'] else 'fp32'}",
            f"{1 / result['iter_s_median']:.2f} it/s, peak {result['peak_memory_mib']:.0f} MiB",
        )
        return
    for dtype in ("", "bfloat16"):
        autocast = ["MODEL.MASK_FORMER.TEST.AUTOCAST_DTYPE", dtype] if dtype else []
        args = bench.parse_args(common + ["--iters", str(INFERENCE_ITERS), "--skip-train", "--opts", *autocast])
        cfg = bench.setup_cfg(args)
        torch.manual_seed(0)
        model = build_model(cfg)
        result = bench.measure_inference(model, bench.inference_input(args, cfg), args, clock, memory)
        size = "x".join(map(str, args.input_size))
        table.add(
            "swin-t inference",
            f"{size}, batch 1, {dtype or 'float32'}, with post-processing",
            f"{result['latency_ms_median']:.1f} ms median, peak {result['peak_memory_mib']:.0f} MiB",
        )
        del model
        if device.type == "cuda":
            torch.cuda.empty_cache()


def nccl(table):
    import torch.distributed as dist

    with tempfile.TemporaryDirectory() as tmp:
        dist.init_process_group("nccl", init_method=f"file://{tmp}/rendezvous", rank=0, world_size=1)
        try:
            x = torch.arange(4.0, device="cuda")
            dist.all_reduce(x)
            torch.cuda.synchronize()
            ok = torch.equal(x.cpu(), torch.arange(4.0))
        finally:
            dist.destroy_process_group()
    version = ".".join(map(str, torch.cuda.nccl.version()))
    item = f"all_reduce, 1 process, NCCL {version}"
    table.add("nccl", item, "correct sum" if ok else "wrong sum", "ok" if ok else "FAIL")


def train_net(table, device):
    from mask2former.toy import generate_toy_panoptic

    with tempfile.TemporaryDirectory() as tmp:
        generate_toy_panoptic(Path(tmp) / "toy_panoptic", num_train=64, num_val=16, seed=0)
        path = os.pathsep.join(filter(None, [str(ROOT), os.environ.get("PYTHONPATH")]))
        env = dict(os.environ, DETECTRON2_DATASETS=tmp, PYTHONPATH=path)
        output = Path(tmp) / "output"
        command = [
            sys.executable, str(ROOT / "train_net.py"), "--num-gpus", "1", "--config-file", str(TOY),
            "SOLVER.MAX_ITER", str(TOY_ITERS), "TEST.EVAL_PERIOD", "0", "MODEL.DEVICE", device.type,
            "OUTPUT_DIR", str(output),
        ]
        start = time.perf_counter()
        run = subprocess.run(command, env=env, capture_output=True, text=True, timeout=300)
        seconds = time.perf_counter() - start
        if run.returncode != 0:
            tail = (run.stdout + run.stderr).strip().splitlines()[-3:]
            table.add("train_net", f"toy config, {TOY_ITERS} iterations + evaluation", " / ".join(tail)[:300], "FAIL")
            return
        results = output / "inference" / "results.json"
        metrics = json.loads(results.read_text()) if results.is_file() else {}
        pq = metrics.get("results", {}).get("panoptic_seg", {}).get("PQ")
        evaluated = f"PQ {pq:.1f}" if pq is not None else "evaluated (no PQ found)"
        item = f"--num-gpus 1, toy config, {TOY_ITERS} iterations + evaluation"
        table.add("train_net", item, f"{evaluated}, {seconds:.0f} s")


def vs_original(table, original):
    tool = load_tool("benchmark_vs_original")
    results = tool.main([
        "--original", original, "--device", "cuda", "--config-file", str(SWIN_T), "--rounds", "2", "--iters", "5",
        "--warmup", "2",
    ])
    for mode, entry in results["modes"].items():
        ours, theirs = entry["this project"], entry["original"]
        table.add(
            "vs original",
            f"{mode}: ours / original",
            f"{ours['median_s'] * 1e3:.1f} / {theirs['median_s'] * 1e3:.1f} ms (ratio per round "
            f"{', '.join(f'{r:.2f}' for r in entry['round_ratios'])}), peak {ours['peak_memory_mib']:.0f} / "
            f"{theirs['peak_memory_mib']:.0f} MiB",
        )
    calls = results["original_op_calls"]
    if calls is not None:
        table.add("vs original", "original's compiled op", f"{calls['calls']} calls, {calls['failures']} fell back")


def environment(device):
    env = {
        "python": platform.python_version(),
        "torch": torch.__version__,
        "torch cuda": torch.version.cuda,
        "torch archs": torch.cuda.get_arch_list(),
        "package": str(Path(mask2former.__file__).resolve().parent),
        "device": self_check.device_description(device),
    }
    module = kernels_for(device.type)
    env["op"] = getattr(module, "__name__", "none: the pure-PyTorch reference")
    env["op archs"] = [f"sm_{a // 10}" for a in getattr(module, "cuda_archs", [])]
    return env


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--json", default="", help="where to write the rows as JSON")
    parser.add_argument("--original", default="", help="folder with the original Mask2Former, for the side-by-side")
    parser.add_argument("--skip", nargs="+", default=[], choices=SECTIONS, help="sections not to run")
    parser.add_argument("--repeats", type=int, default=0, help="timed runs of the op (default: 20 CUDA, 2 CPU)")
    args = parser.parse_args(argv)
    cuda = torch.cuda.is_available()
    device = torch.device("cuda" if cuda else "cpu")
    table = Table()
    env = environment(device)
    skipped = {section: "--skip" for section in args.skip}
    if not cuda:
        skipped.update({section: "needs a CUDA GPU" for section in GPU_ONLY if section not in skipped})
    if not args.original:
        skipped.setdefault("vs original", "needs --original DIR")
    sections = {
        "op correctness": lambda: check_op(table, device),
        "op speed": lambda: op_speed(table, device, args.repeats or (20 if cuda else 2)),
        "swin-t training": lambda: swin_t(table, device, train=True),
        "swin-t inference": lambda: swin_t(table, device, train=False),
        "nccl": lambda: nccl(table),
        "train_net": lambda: train_net(table, device),
        "vs original": lambda: vs_original(table, args.original),
    }
    start = time.perf_counter()
    for section, fn in sections.items():
        if section not in skipped:
            table.run(section, fn)
    for section, reason in skipped.items():
        table.add(section, "(skipped)", reason, "skipped")

    print(f"\nmask2former check on {env['device']}: torch {env['torch']} (CUDA {env['torch cuda']}), Python "
          f"{env['python']}; op: {env['op']} {' '.join(env['op archs'])}; {time.perf_counter() - start:.0f} s")
    print(tabulate([list(row.values()) for row in table.rows], headers=["section", "item", "result", "status"],
                   tablefmt="github"))
    failed = table.failed()
    print(f"\n{len(failed)} row(s) failed" if failed else "\nall rows that ran passed")
    if args.json:
        Path(args.json).write_text(json.dumps({"env": env, "rows": table.rows, "ok": not failed}, indent=2))
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
