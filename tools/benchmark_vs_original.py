#!/usr/bin/env python
"""
Speed and peak memory of this project side by side with the original Mask2Former: same config, same weights, same
inputs, same process settings, each implementation in its own process (both packages are named ``mask2former``),
alternating between them for ``--rounds`` rounds so that a drift of the machine's speed affects both alike; the
ratio is taken per round. Modes: inference in fp32 and under bf16 autocast (batch 1, with post-processing), and a
training iteration (AMP fp16 on CUDA, as detectron2's AMPTrainer; the same random batch for both).

The original is not part of this project: pass the folder that holds its ``mask2former`` package, e.g. a clone of
github.com/facebookresearch/Mask2Former or the unpacked sdist of its PyPI packaging ``maskformer2``. On CPU it runs
exactly as on a user's machine without its compiled op: its deformable attention falls back to its pure-PyTorch
path. With ``--device cuda`` its own op is compiled first, with its own setup script
(``mask2former/modeling/pixel_decoder/ops/setup.py build_ext``) in a temporary copy of its ops folder, and the
table says how many of its op calls ran the compiled kernels. Weights are random (this project's initialization,
saved once and loaded into both) unless ``--weights`` is given. The fp32 inference outputs of both are compared.

Example:
    python tools/benchmark_vs_original.py --original /tmp/Mask2Former --device cuda \
        --config-file configs/coco/panoptic-segmentation/swin/maskformer2_swin_tiny_bs16_50ep.yaml
"""
import argparse
import contextlib
import json
import os
import re
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
import types
from pathlib import Path

import numpy as np
import torch
from detectron2.config import get_cfg
from detectron2.modeling import build_model
from detectron2.projects.deeplab import add_deeplab_config
from detectron2.structures import BitMasks, Instances
from tabulate import tabulate

IMPLEMENTATIONS = ("this project", "original")
MODES = ("inference fp32", "inference bf16", "training")
ORIGINAL_OPS = Path("mask2former/modeling/pixel_decoder/ops")
ORIGINAL_OP_MODULE = "MultiScaleDeformableAttention"


def parse_args(argv=None):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--original", required=True, help="folder that holds the original's mask2former package")
    parser.add_argument("--config-file", required=True, help="a config YAML both implementations can read")
    parser.add_argument("--weights", default="", help="checkpoint for both (default: random weights)")
    parser.add_argument("--device", default="cpu", choices=["cpu", "cuda"])
    parser.add_argument(
        "--modes", nargs="+", choices=MODES, default=None,
        help="what to time (default: inference fp32 on CPU; all three on CUDA)",
    )
    parser.add_argument(
        "--original-op", default="auto", choices=["auto", "build", "none"],
        help="compile the original's op with its setup script (auto: on CUDA only)",
    )
    parser.add_argument("--input-size", type=int, nargs=2, default=[800, 1216], metavar=("H", "W"))
    parser.add_argument("--train-size", type=int, nargs=2, default=[1024, 1024], metavar=("H", "W"))
    parser.add_argument("--ims-per-batch", type=int, default=2, help="training images per iteration")
    parser.add_argument("--warmup", type=int, default=1, help="untimed runs per process")
    parser.add_argument("--iters", type=int, default=3, help="timed runs per process")
    parser.add_argument("--rounds", type=int, default=2, help="processes per implementation, alternating")
    parser.add_argument("--threads", type=int, default=0, help="CPU threads (default: torch's choice)")
    parser.add_argument("--json", default="", help="where to write the results (default: print only)")
    parser.add_argument("--opts", nargs=argparse.REMAINDER, default=[], help="config overrides for both: KEY VALUE ...")
    parser.add_argument("--worker", choices=IMPLEMENTATIONS, help=argparse.SUPPRESS)
    parser.add_argument("--work-dir", default="", help=argparse.SUPPRESS)
    parser.add_argument("--op-dir", default="", help=argparse.SUPPRESS)
    parser.add_argument("--round", type=int, default=0, help=argparse.SUPPRESS)
    return parser.parse_args(argv)


def build(args, original, device):
    """The model of one implementation, from the config; imports that implementation's ``mask2former``."""
    if original:
        sys.path.insert(0, str(Path(args.original).resolve()))
        if args.op_dir:
            sys.path.insert(0, args.op_dir)
        # The original's evaluation module imports detectron2's compiled COCOeval at import time; the model does
        # not use it, and this environment's detectron2 ships no compiled ops.
        sys.modules.setdefault("detectron2._C", types.ModuleType("detectron2._C"))
    import mask2former

    where = Path(mask2former.__file__).resolve()
    if original != (Path(args.original).resolve() in where.parents):
        raise SystemExit(f"imported mask2former from {where}, not the {'original' if original else 'project'}")
    meta_arch = sys.modules.get("mask2former.maskformer_model")
    if original and meta_arch is not None and "training" not in args.modes:
        # Inference never uses the criterion; some packagings of the original changed its signature.
        meta_arch.SetCriterion = lambda *a, **k: None
    if args.threads:
        torch.set_num_threads(args.threads)
    cfg = get_cfg()
    add_deeplab_config(cfg)
    mask2former.add_maskformer2_config(cfg)
    cfg.merge_from_file(args.config_file)
    cfg.merge_from_list(args.opts)
    cfg.MODEL.DEVICE = device
    cfg.MODEL.WEIGHTS = ""
    cfg.freeze()
    torch.manual_seed(0)
    return build_model(cfg).eval()


def build_original_op(original, build_dir):
    """
    Compiles the original's op with its own setup script in a copy of its ops folder; returns the folder that holds
    the built module.
    """
    source = Path(original) / ORIGINAL_OPS
    if not (source / "setup.py").is_file():
        raise SystemExit(f"--original {original}: no {ORIGINAL_OPS / 'setup.py'} there to build the original's op with")
    ops = Path(build_dir) / "ops"
    shutil.copytree(source, ops)
    print(f"compiling the original's op: {ops / 'setup.py'} build_ext --inplace", flush=True)
    run = subprocess.run(
        [sys.executable, "setup.py", "build_ext", "--inplace", "--build-temp", str(Path(build_dir) / "temp")],
        cwd=ops, capture_output=True, text=True,
    )
    if run.returncode != 0:
        raise SystemExit(f"the original's op did not build:\n{(run.stdout + run.stderr)[-3000:]}")
    return ops


class PeakMemory:
    """
    Peak memory since ``reset``: allocated CUDA memory on GPU, the process's resident set on CPU (like
    tools/benchmark.py's, which the original's worker cannot import: it imports this project's package).
    """

    def __init__(self, device):
        self.cuda = device.type == "cuda"

    def reset(self):
        if self.cuda:
            torch.cuda.synchronize()
            torch.cuda.reset_peak_memory_stats()
        else:
            with open("/proc/self/clear_refs", "w") as f:  # 5: peak RSS (VmHWM) := current RSS
                f.write("5")

    def mib(self):
        if self.cuda:
            return torch.cuda.max_memory_allocated() / 2**20
        return int(re.search(r"VmHWM:\s+(\d+) kB", Path("/proc/self/status").read_text()).group(1)) / 1024


def count_original_op_calls():
    """Counts the calls of the original's compiled op and those that raised (then it falls back to PyTorch)."""
    counts = {"calls": 0, "failures": 0}
    try:
        op = __import__(ORIGINAL_OP_MODULE)
    except ImportError:
        return None
    forward = op.ms_deform_attn_forward

    def counted(*args):
        counts["calls"] += 1
        try:
            return forward(*args)
        except Exception:
            counts["failures"] += 1
            raise

    op.ms_deform_attn_forward = counted
    return counts


def save_training_batch(path, size, batch_size, num_classes, num_targets=12):
    """Random images with rectangular segments of random classes, as plain tensors (read back by both workers)."""
    g = torch.Generator().manual_seed(0)
    h, w = size
    images, masks = [], []
    for _ in range(batch_size):
        m = torch.zeros((num_targets, h, w), dtype=torch.bool)
        for target in m:
            y0, x0 = (int(torch.randint(0, s // 2, (1,), generator=g)) for s in (h, w))
            y1, x1 = (int(torch.randint(s0 + 8, s, (1,), generator=g)) for s0, s in ((y0, h), (x0, w)))
            target[y0:y1, x0:x1] = True
        masks.append(m)
        images.append(torch.randint(0, 256, (3, h, w), dtype=torch.uint8, generator=g))
    classes = torch.randint(0, num_classes, (batch_size, num_targets), generator=g)
    torch.save({"images": torch.stack(images), "masks": torch.stack(masks), "classes": classes}, path)


def load_training_batch(path):
    saved = torch.load(path, weights_only=True)
    batch = []
    for image, masks, classes in zip(saved["images"], saved["masks"], saved["classes"]):
        instances = Instances(tuple(image.shape[1:]))
        instances.gt_classes = classes
        instances.gt_masks = BitMasks(masks)
        batch.append({"image": image, "instances": instances, "height": image.shape[1], "width": image.shape[2]})
    return batch


def load_weights(model, path, original):
    """The shared weights: through SafeCheckpointer into this project's model, as plain tensors into the original."""
    if not original:
        from mask2former.checkpoint import SafeCheckpointer

        SafeCheckpointer(model).load(str(path))
        return
    state = torch.load(path, map_location="cpu", weights_only=True)["model"]
    incompatible = model.load_state_dict(state, strict=False)
    unexpected = [k for k in incompatible.unexpected_keys if not k.startswith("criterion.")]
    if incompatible.missing_keys or unexpected:
        raise SystemExit(f"the original's model does not take these weights: {incompatible}")


def timed(fn, args, device):
    """Seconds of each of ``args.iters`` runs of ``fn`` after ``args.warmup`` untimed ones, and the last result."""
    times = []
    for i in range(args.warmup + args.iters):
        if device.type == "cuda":
            torch.cuda.synchronize()
        start = time.perf_counter()
        result = fn()
        if device.type == "cuda":
            torch.cuda.synchronize()
        if i >= args.warmup:
            times.append(time.perf_counter() - start)
    return times, result


def training_step(model, batch, device):
    """One training iteration: AdamW, and on CUDA fp16 autocast with a gradient scaler (detectron2's AMPTrainer)."""
    amp = device.type == "cuda"
    scaler = torch.amp.GradScaler("cuda", enabled=amp)
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-4, weight_decay=0.05)

    def step():
        with torch.autocast(device.type, dtype=torch.float16, enabled=amp):
            losses = model(batch)
        loss = sum(losses.values())
        optimizer.zero_grad()
        scaler.scale(loss).backward()
        scaler.step(optimizer)
        scaler.update()

    return step


def summarize(output):
    panoptic_seg, segments_info = output["panoptic_seg"]
    instances = output["instances"]
    summary = {
        "sem_seg_s8": output["sem_seg"][:, ::8, ::8].float().cpu().numpy(),
        "sem_seg_argmax": output["sem_seg"].argmax(0).cpu().numpy().astype(np.int16),
        "panoptic_seg": panoptic_seg.cpu().numpy(),
        "instance_scores": np.sort(instances.scores.float().cpu().numpy()),
    }
    return summary, {"segments": len(segments_info), "instances": len(instances)}


def worker(args):
    """One process of one implementation: load the weights, time each mode, write times, memory and outputs."""
    work = Path(args.work_dir)
    original = args.worker == "original"
    device = torch.device(args.device)
    model = build(args, original, args.device)
    load_weights(model, work / "weights.pth", original)
    op_calls = count_original_op_calls() if original else None
    memory = PeakMemory(device)
    h, w = args.input_size
    image = torch.randint(0, 256, (3, h, w), dtype=torch.uint8, generator=torch.Generator().manual_seed(0))
    inputs = [{"image": image, "height": h, "width": w}]
    tag = args.worker.replace(" ", "_")
    result = {}
    for mode in args.modes:
        memory.reset()
        if mode == "training":
            model.train()
            times, _ = timed(training_step(model, load_training_batch(work / "batch.pth"), device), args, device)
            model.eval()
        else:
            bf16 = mode == "inference bf16"
            autocast = torch.autocast(device.type, dtype=torch.bfloat16) if bf16 else contextlib.nullcontext()
            with torch.no_grad(), autocast:
                times, outputs = timed(lambda: model(inputs)[0], args, device)
            summary, counts = summarize(outputs)
            if mode == "inference fp32":
                np.savez(work / f"{tag}_outputs.npz", **summary)
        result[mode] = {"times_s": times, "peak_memory_mib": memory.mib(), **(counts if mode != "training" else {})}
    if op_calls is not None:
        result["original op calls"] = op_calls
    (work / f"{tag}_{args.round}.json").write_text(json.dumps(result))


def compare_outputs(work):
    ours, theirs = (np.load(work / f"{name.replace(' ', '_')}_outputs.npz") for name in IMPLEMENTATIONS)
    return {
        "sem_seg max abs diff (every 8th pixel)": float(np.abs(ours["sem_seg_s8"] - theirs["sem_seg_s8"]).max()),
        "sem_seg argmax agreement": float((ours["sem_seg_argmax"] == theirs["sem_seg_argmax"]).mean()),
        "panoptic_seg agreement": float((ours["panoptic_seg"] == theirs["panoptic_seg"]).mean()),
        "instance scores max abs diff": float(np.abs(ours["instance_scores"] - theirs["instance_scores"]).max())
        if len(ours["instance_scores"]) == len(theirs["instance_scores"])
        else float("nan"),
    }


def main(argv=None):
    args = parse_args(argv)
    args.modes = args.modes or (list(MODES) if args.device == "cuda" else ["inference fp32"])
    if args.worker:
        return worker(args)
    if args.device == "cuda" and not torch.cuda.is_available():
        raise SystemExit("--device cuda: no CUDA device is available; use --device cpu")
    if not (Path(args.original) / "mask2former" / "__init__.py").is_file():
        raise SystemExit(
            f"--original {args.original}: no mask2former/__init__.py there; pass the folder that holds the original's "
            "mask2former package (a clone of facebookresearch/Mask2Former or an unpacked maskformer2 sdist)"
        )
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        model = build(args, original=False, device="cpu")
        if args.weights:
            load_weights(model, args.weights, original=False)
        torch.save({"model": model.state_dict()}, work / "weights.pth")
        if "training" in args.modes:
            num_classes = model.sem_seg_head.num_classes
            save_training_batch(work / "batch.pth", args.train_size, args.ims_per_batch, num_classes)
        del model
        build_op = args.original_op == "build" or (args.original_op == "auto" and args.device == "cuda")
        op_dir = str(build_original_op(args.original, work / "original_op")) if build_op else ""
        forwarded = [
            "--original", args.original, "--config-file", args.config_file, "--warmup", str(args.warmup),
            "--iters", str(args.iters), "--threads", str(args.threads), "--work-dir", tmp, "--op-dir", op_dir,
            "--device", args.device, "--modes", *args.modes, "--input-size", *map(str, args.input_size),
            "--train-size", *map(str, args.train_size), "--ims-per-batch", str(args.ims_per_batch),
            "--opts", *args.opts,
        ]
        for round_index in range(args.rounds):
            for name in IMPLEMENTATIONS:
                print(f"round {round_index + 1}/{args.rounds}: {name}", flush=True)
                worker_args = ["--worker", name, "--round", str(round_index), *forwarded]
                subprocess.run([sys.executable, __file__, *worker_args], check=True)
        runs = {
            name: [json.loads((work / f"{name.replace(' ', '_')}_{r}.json").read_text()) for r in range(args.rounds)]
            for name in IMPLEMENTATIONS
        }
        comparison = compare_outputs(work) if "inference fp32" in args.modes else {}

    results = {
        "config": args.config_file, "opts": args.opts, "device": args.device, "input_size": args.input_size,
        "train_size": args.train_size, "ims_per_batch": args.ims_per_batch, "original": args.original,
        "original_op_built": bool(op_dir), "modes": {},
    }
    op_calls = runs["original"][-1].get("original op calls")
    results["original_op_calls"] = op_calls
    rows = []
    for mode in args.modes:
        entry = results["modes"][mode] = {}
        for name, worker_runs in runs.items():
            times = [t for run in worker_runs for t in run[mode]["times_s"]]
            entry[name] = {
                "times_s": times,
                "median_s": statistics.median(times),
                "min_s": min(times),
                "peak_memory_mib": max(run[mode]["peak_memory_mib"] for run in worker_runs),
            }
            for key in ("segments", "instances"):
                if key in worker_runs[0][mode]:
                    entry[name][key] = worker_runs[0][mode][key]
        # Paired by round: the two processes of a round ran back to back, under the same machine conditions.
        entry["round_ratios"] = [
            statistics.median(ours[mode]["times_s"]) / statistics.median(theirs[mode]["times_s"])
            for ours, theirs in zip(*runs.values())
        ]
        entry["median_ratio"] = statistics.median(entry["round_ratios"])
        for name in IMPLEMENTATIONS:
            r = entry[name]
            row = [mode, name, f"{r['median_s']:.3f}", f"{r['min_s']:.3f}", len(r["times_s"])]
            row.append(f"{r['peak_memory_mib']:.0f}")
            row.append(" ".join(f"{x:.2f}" for x in entry["round_ratios"]) if name == "this project" else "")
            rows.append(row)
    results["outputs"] = comparison
    memory = "peak CUDA MiB" if args.device == "cuda" else "peak RSS MiB"
    headers = ["mode", "implementation", "median s", "min s", "runs", memory, "ours / original per round"]
    print(tabulate(rows, headers=headers, tablefmt="github"))
    if op_calls is not None:
        print(f"\noriginal's compiled op: {op_calls['calls']} calls, {op_calls['failures']} fell back to PyTorch")
    for key, value in comparison.items():
        print(f"{key}: {value:.6g}")
    if args.json:
        Path(args.json).write_text(json.dumps(results, indent=2))
    return results


if __name__ == "__main__":
    main()
