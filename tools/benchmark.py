#!/usr/bin/env python
"""
Speed and memory of a Mask2Former config: inference latency and throughput (batch 1, with post-processing),
training iteration time and throughput, peak memory, the share of inference time in each stage, and FLOPs.

Prints a table and writes the same numbers as JSON. Weights are random (seed 0) unless ``--weights`` is given: the
timings depend on the shapes, not on the values, except post-processing's, through the number of instances and
segments found.

Example (--opts, if any, goes last):
    python tools/benchmark.py \
        --config-file configs/coco/panoptic-segmentation/swin/maskformer2_swin_tiny_bs16_50ep.yaml \
        --device cpu --input-size 800 1216 --skip-train --json bench.json \
        --opts MODEL.MASK_FORMER.TEST.AUTOCAST_DTYPE bfloat16

``--compare-autocast bfloat16`` adds float32 against bfloat16 autocast on the same model, in alternating pairs (the
ratio the CPU bfloat16 path is judged by), and the table names the CPU's bf16 matrix instructions.
"""
import argparse
import contextlib
import json
import platform
import re
import statistics
import time
import warnings
from contextlib import contextmanager
from pathlib import Path

import numpy as np
import torch
from detectron2.modeling import build_model
from detectron2.structures import BitMasks, Instances
from tabulate import tabulate

from mask2former import get_maskformer2_cfg
from mask2former.checkpoint import SafeCheckpointer
from mask2former.modeling.cpu_features import NATIVE_BF16_FLAGS, cpu_flags
from mask2former.ops.ms_deform_attn import kernels_for, reference_only

STAGES = ("preprocessing", "backbone", "pixel decoder", "transformer decoder", "post-processing")


def parse_args(argv=None):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--config-file", required=True, help="a Mask2Former config YAML")
    parser.add_argument("--weights", default="", help="checkpoint to load (default: random weights)")
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu", choices=["cpu", "cuda"])
    parser.add_argument("--threads", type=int, default=0, help="CPU threads (default: torch's choice)")
    parser.add_argument(
        "--input-size", type=int, nargs=2, default=[800, 1216], metavar=("H", "W"),
        help="inference image size (default 800x1216: a COCO image after the 800-pixel test resize)",
    )
    parser.add_argument("--image", default="", help="an image file to run on instead of random pixels (any size)")
    parser.add_argument("--warmup", type=int, default=2, help="untimed runs before each measurement")
    parser.add_argument("--iters", type=int, default=10, help="timed inference runs")
    parser.add_argument("--skip-train", action="store_true", help="do not measure training")
    parser.add_argument("--train-iters", type=int, default=5, help="timed training iterations")
    parser.add_argument(
        "--ims-per-batch", type=int, default=0,
        help="training images per device (default: SOLVER.IMS_PER_BATCH / --num-devices)",
    )
    parser.add_argument("--num-devices", type=int, default=1, help="devices SOLVER.IMS_PER_BATCH is split over")
    parser.add_argument(
        "--train-size", type=int, nargs=2, default=None, metavar=("H", "W"),
        help="training image size (default: the config's crop: INPUT.IMAGE_SIZE for LSJ, INPUT.CROP.SIZE otherwise)",
    )
    parser.add_argument("--num-targets", type=int, default=12, help="ground-truth segments per training image")
    parser.add_argument("--skip-flops", action="store_true", help="do not count FLOPs")
    parser.add_argument(
        "--op", default="kernels", choices=["kernels", "reference"],
        help="deformable attention: the compiled kernels, or the pure-PyTorch reference (the original's CPU path)",
    )
    parser.add_argument(
        "--compare-autocast", default="", choices=["bfloat16", "float16"],
        help="also time float32 inference against autocast in this dtype, alternating on the same model and input: "
        "each adjacent pair's ratio is free of the drift that a shared machine adds between separate runs",
    )
    parser.add_argument("--json", default="", help="where to write the results (default: print only)")
    parser.add_argument("--opts", nargs=argparse.REMAINDER, default=[], help="config overrides: KEY VALUE ...")
    return parser.parse_args(argv)


def setup_cfg(args):
    flags = [opt for opt in args.opts if opt.startswith("--")]
    if flags:
        raise SystemExit(
            f"--opts takes the rest of the command line as KEY VALUE pairs, but got {flags}: put --opts last"
        )
    cfg = get_maskformer2_cfg(args.config_file, args.opts)
    cfg.MODEL.DEVICE = args.device
    cfg.MODEL.WEIGHTS = args.weights
    cfg.freeze()
    return cfg


def default_train_size(cfg):
    if cfg.INPUT.DATASET_MAPPER_NAME.endswith("_lsj"):
        return cfg.INPUT.IMAGE_SIZE, cfg.INPUT.IMAGE_SIZE
    if cfg.INPUT.CROP.ENABLED and cfg.INPUT.CROP.TYPE == "absolute":
        return tuple(cfg.INPUT.CROP.SIZE)
    side = max(cfg.INPUT.MIN_SIZE_TRAIN)
    return side, side


class Memory:
    """Peak memory of a phase: allocated CUDA memory on GPU, the process's resident set on CPU."""

    def __init__(self, device):
        self.cuda = device.type == "cuda"

    def reset(self):
        if self.cuda:
            torch.cuda.synchronize()
            torch.cuda.reset_peak_memory_stats()
        else:
            # Writing 5 resets the process's peak RSS (VmHWM) to its current RSS (Linux >= 4.0).
            with open("/proc/self/clear_refs", "w") as f:
                f.write("5")

    def peak_mib(self):
        if self.cuda:
            return torch.cuda.max_memory_allocated() / 2**20
        status = Path("/proc/self/status").read_text()
        return int(re.search(r"VmHWM:\s+(\d+) kB", status).group(1)) / 1024


class Clock:
    """Wall-clock time that waits for queued GPU work."""

    def __init__(self, device):
        self.cuda = device.type == "cuda"

    def __call__(self):
        if self.cuda:
            torch.cuda.synchronize()
        return time.perf_counter()


@contextmanager
def stage_timestamps(model, clock, record):
    """
    Record in ``record`` when the backbone, the pixel decoder and the transformer decoder start and end, by wrapping
    their entry points on this model instance for the duration of the block.
    """
    head = model.sem_seg_head
    entry_points = [
        (model.backbone, "forward", "backbone"),
        (head.pixel_decoder, "forward_features", "pixel decoder"),
        (head.predictor, "forward", "transformer decoder"),
    ]

    def timed(fn, stage):
        def wrapper(*args, **kwargs):
            record[stage + " start"] = clock()
            out = fn(*args, **kwargs)
            record[stage + " end"] = clock()
            return out

        return wrapper

    for obj, name, stage in entry_points:
        setattr(obj, name, timed(getattr(obj, name), stage))
    try:
        yield
    finally:
        for obj, name, _ in entry_points:
            delattr(obj, name)


def inference_input(args, cfg):
    if args.image:
        from detectron2.data.detection_utils import read_image

        image = read_image(args.image, format=cfg.INPUT.FORMAT)
        image = torch.as_tensor(np.ascontiguousarray(image.transpose(2, 0, 1)))
    else:
        h, w = args.input_size
        image = torch.randint(0, 256, (3, h, w), dtype=torch.uint8, generator=torch.Generator().manual_seed(0))
    return {"image": image, "height": image.shape[1], "width": image.shape[2]}


def training_batch(cfg, batch_size, size, num_targets):
    """Random images, each with ``num_targets`` rectangular segments of random classes."""
    g = torch.Generator().manual_seed(0)
    h, w = size
    batch = []
    for _ in range(batch_size):
        masks = torch.zeros((num_targets, h, w), dtype=torch.bool)
        for m in masks:
            y0, x0 = (int(torch.randint(0, s // 2, (1,), generator=g)) for s in (h, w))
            y1, x1 = (int(torch.randint(s0 + 8, s, (1,), generator=g)) for s0, s in ((y0, h), (x0, w)))
            m[y0:y1, x0:x1] = True
        instances = Instances((h, w))
        instances.gt_classes = torch.randint(0, cfg.MODEL.SEM_SEG_HEAD.NUM_CLASSES, (num_targets,), generator=g)
        instances.gt_masks = BitMasks(masks)
        image = torch.randint(0, 256, (3, h, w), dtype=torch.uint8, generator=g)
        batch.append({"image": image, "instances": instances, "height": h, "width": w})
    return batch


def measure_inference(model, inputs, args, clock, memory):
    model.eval()
    with torch.no_grad():
        for _ in range(args.warmup):
            model([inputs])
        memory.reset()
        latencies = []
        for _ in range(args.iters):
            start = clock()
            model([inputs])
            latencies.append(clock() - start)
        peak = memory.peak_mib()

        # Stage shares from separate runs: the per-stage synchronization must not disturb the latency above.
        totals = dict.fromkeys(STAGES, 0.0)
        for _ in range(max(1, args.iters // 2)):
            record = {}
            with stage_timestamps(model, clock, record):
                start = clock()
                model([inputs])
                end = clock()
            totals["preprocessing"] += record["backbone start"] - start
            for stage in ("backbone", "pixel decoder", "transformer decoder"):
                totals[stage] += record[stage + " end"] - record[stage + " start"]
            totals["post-processing"] += end - record["transformer decoder end"]
    total = sum(totals.values())
    median = statistics.median(latencies)
    return {
        "latency_ms_median": 1000 * median,
        "latency_ms_min": 1000 * min(latencies),
        "images_per_s": 1 / median,
        "peak_memory_mib": peak,
        "stage_share": {k: v / total for k, v in totals.items()},
    }


def compare_autocast(model, inputs, args, clock, dtype):
    """
    Inference latencies in float32 and under ``dtype`` autocast (``MODEL.MASK_FORMER.TEST.AUTOCAST_DTYPE``) in
    ``args.iters`` adjacent pairs, the order swapped every pair, on one model and input: the ratio of each pair, and
    its median over pairs, compare the two precisions on the same state of the machine.
    """
    modes = {"float32": None, "autocast": getattr(torch, dtype)}
    configured = model.autocast_dtype
    times = {name: [] for name in modes}
    model.eval()
    try:
        with torch.no_grad():
            for mode in modes.values():
                model.autocast_dtype = mode
                for _ in range(args.warmup):
                    model([inputs])
            for i in range(args.iters):
                for name in list(modes)[:: 1 if i % 2 == 0 else -1]:
                    model.autocast_dtype = modes[name]
                    start = clock()
                    model([inputs])
                    times[name].append(clock() - start)
    finally:
        model.autocast_dtype = configured
    ratios = [a / f for f, a in zip(times["float32"], times["autocast"])]
    return {
        "dtype": dtype,
        "pairs": len(ratios),
        "float32_ms": [1000 * t for t in times["float32"]],
        "autocast_ms": [1000 * t for t in times["autocast"]],
        "float32_ms_median": 1000 * statistics.median(times["float32"]),
        "autocast_ms_median": 1000 * statistics.median(times["autocast"]),
        "ratio_median": statistics.median(ratios),
        "ratio_min": min(ratios),
        "ratio_max": max(ratios),
    }


def measure_training(model, cfg, args, device, clock, memory):
    batch_size = args.ims_per_batch or max(1, cfg.SOLVER.IMS_PER_BATCH // args.num_devices)
    size = tuple(args.train_size or default_train_size(cfg))
    batch = training_batch(cfg, batch_size, size, args.num_targets)
    amp = device.type == "cuda" and cfg.SOLVER.AMP.ENABLED
    # detectron2's AMPTrainer: float16 autocast with a gradient scaler.
    scaler = torch.amp.GradScaler("cuda", enabled=amp)
    optimizer = torch.optim.AdamW(model.parameters(), lr=cfg.SOLVER.BASE_LR, weight_decay=cfg.SOLVER.WEIGHT_DECAY)
    model.train()

    def step():
        with torch.autocast("cuda", dtype=torch.float16, enabled=amp):
            losses = model(batch)
        loss = sum(losses.values())
        optimizer.zero_grad()
        scaler.scale(loss).backward()
        scaler.step(optimizer)
        scaler.update()

    for _ in range(args.warmup):
        step()
    memory.reset()
    times = []
    for _ in range(args.train_iters):
        start = clock()
        step()
        times.append(clock() - start)
    model.eval()
    median = statistics.median(times)
    return {
        "ims_per_batch": batch_size,
        "image_size": list(size),
        "amp": amp,
        "iter_s_median": median,
        "images_per_s": batch_size / median,
        "peak_memory_mib": memory.peak_mib(),
    }


def ms_deform_attn_flop_jit(inputs, outputs):
    """
    FLOPs of the deformable-attention op, counted as fvcore counts its reference (``grid_sample``): 4 per
    bilinearly sampled value, i.e. 4 * N * Lq * heads * head_dim * levels * points.
    """
    from fvcore.nn.jit_handles import get_shape

    n, _, heads, head_dim = get_shape(inputs[0])
    _, lq, _, levels, points, _ = get_shape(inputs[3])
    return 4 * n * lq * heads * head_dim * levels * points


def baddbmm_flop_jit(inputs, outputs):
    """``baddbmm(bias, a, b)``: the batched matmul ``a @ b`` (torch's attention adds its mask this way)."""
    from fvcore.nn.jit_handles import get_shape

    n, rows, inner = get_shape(inputs[1])
    return n * rows * inner * get_shape(inputs[2])[-1]


def count_flops(model, inputs):
    """GFLOPs of one inference (fvcore, one fused multiply-add = 1 FLOP, as detectron2's analysis tools count)."""
    from detectron2.utils.analysis import FlopCountAnalysis

    model.eval()
    with warnings.catch_warnings(), torch.no_grad():
        warnings.simplefilter("ignore")
        flops = FlopCountAnalysis(model, [inputs])
        flops.set_op_handle(
            **{"prim::PythonOp.MSDeformAttnFunction": ms_deform_attn_flop_jit, "aten::baddbmm": baddbmm_flop_jit}
        )
        flops.unsupported_ops_warnings(False).uncalled_modules_warnings(False)
        by_module = flops.by_module()
        total = flops.total()
    prefix = "model." if "model.backbone" in by_module else ""
    parts = {
        "backbone": by_module.get(prefix + "backbone", 0),
        "pixel decoder": by_module.get(prefix + "sem_seg_head.pixel_decoder", 0),
        "transformer decoder": by_module.get(prefix + "sem_seg_head.predictor", 0),
    }
    result = {"total": total / 1e9}
    result.update({k: v / 1e9 for k, v in parts.items()})
    result["other"] = result["total"] - sum(result[k] for k in parts)
    return result


def environment(device):
    env = {
        "torch": torch.__version__,
        "device": torch.cuda.get_device_name(device) if device.type == "cuda" else platform.processor() or "cpu",
        "threads": torch.get_num_threads(),
    }
    if device.type == "cpu":
        model_name = re.search(r"model name\s*:\s*(.*)", Path("/proc/cpuinfo").read_text())
        env["device"] = model_name.group(1) if model_name else env["device"]
        # Without these, the model runs float32 under the bfloat16 switch (mask2former/modeling/cpu_features.py).
        env["bf16_matrix_flags"] = sorted(cpu_flags() & NATIVE_BF16_FLAGS)
    return env


def _op_name(results):
    if results["op"] != "kernels":
        return "pure-PyTorch reference"
    return f"compiled kernels ({results['op_cpu_isa']})" if "op_cpu_isa" in results else "compiled kernels"


def table(results):
    rows = [
        ["config", results["config"]],
        ["device", f"{results['env']['device']} ({results['env']['threads']} threads)"],
        ["parameters (M)", f"{results['parameters_m']:.2f}"],
    ]
    if "bf16_matrix_flags" in results["env"]:
        flags = results["env"]["bf16_matrix_flags"]
        rows += [["CPU bf16 matrix instructions", ", ".join(flags) if flags else "none (bfloat16 runs float32)"]]
    rows += [
        ["inference precision", f"autocast {results['autocast_dtype']}" if results["autocast_dtype"] else "float32"],
        ["deformable attention", _op_name(results)],
    ]
    inf = results["inference"]
    size = "x".join(map(str, results["inference_size"]))
    rows += [
        [f"inference latency, median (ms), {size}, batch 1", f"{inf['latency_ms_median']:.1f}"],
        ["inference images/s", f"{inf['images_per_s']:.2f}"],
        ["inference peak memory (MiB)", f"{inf['peak_memory_mib']:.0f}"],
    ]
    rows += [[f"inference time share: {k}", f"{100 * v:.1f} %"] for k, v in inf["stage_share"].items()]
    if "autocast_comparison" in results:
        cmp = results["autocast_comparison"]
        rows += [
            [
                f"float32 / autocast {cmp['dtype']}, {cmp['pairs']} alternating pairs, median (ms)",
                f"{cmp['float32_ms_median']:.1f} / {cmp['autocast_ms_median']:.1f}",
            ],
            [
                f"autocast {cmp['dtype']} / float32 time, median of pairs (range)",
                f"{cmp['ratio_median']:.3f} ({cmp['ratio_min']:.3f}-{cmp['ratio_max']:.3f})",
            ],
        ]
    if "training" in results:
        tr = results["training"]
        rows += [
            [
                f"training iteration, median (s), {tr['ims_per_batch']} x {tr['image_size'][0]}x{tr['image_size'][1]}"
                + (", AMP fp16" if tr["amp"] else ""),
                f"{tr['iter_s_median']:.3f}",
            ],
            ["training images/s", f"{tr['images_per_s']:.2f}"],
            ["training peak memory (MiB)", f"{tr['peak_memory_mib']:.0f}"],
        ]
    if "gflops" in results:
        rows += [[f"GFLOPs, {size}", f"{results['gflops']['total']:.4g}"]]
        rows += [[f"GFLOPs: {k}", f"{v:.4g}"] for k, v in results["gflops"].items() if k != "total"]
    return tabulate(rows, headers=["metric", "value"], tablefmt="github")


def main(argv=None):
    args = parse_args(argv)
    if args.device == "cuda" and not torch.cuda.is_available():
        raise SystemExit("--device cuda: no CUDA device is available; use --device cpu")
    if args.threads:
        torch.set_num_threads(args.threads)
    cfg = setup_cfg(args)
    device = torch.device(args.device)
    # Seeded, so that runs of one config (e.g. float32 against bfloat16) time the same model: post-processing's
    # work depends on the predictions.
    torch.manual_seed(0)
    model = build_model(cfg)
    if args.weights:
        SafeCheckpointer(model, verify_md5=cfg.MODEL.WEIGHTS_MD5_CHECK).load(args.weights)
    clock, memory = Clock(device), Memory(device)
    inputs = inference_input(args, cfg)

    results = {
        "config": args.config_file,
        "opts": args.opts,
        "weights": args.weights or "random",
        "env": environment(device),
        "parameters_m": sum(p.numel() for p in model.parameters()) / 1e6,
        "inference_size": list(inputs["image"].shape[1:]),
        # As the model parsed MODEL.MASK_FORMER.TEST.AUTOCAST_DTYPE ("" when off).
        "autocast_dtype": str(model.autocast_dtype or "").removeprefix("torch."),
        "op": args.op,
    }
    if args.op == "kernels" and device.type == "cpu" and kernels_for("cpu") is not None:
        results["op_cpu_isa"] = kernels_for("cpu").cpu_isa()
    with reference_only() if args.op == "reference" else contextlib.nullcontext():
        results["inference"] = measure_inference(model, inputs, args, clock, memory)
        if args.compare_autocast:
            results["autocast_comparison"] = compare_autocast(model, inputs, args, clock, args.compare_autocast)
        if not args.skip_train:
            results["training"] = measure_training(model, cfg, args, device, clock, memory)
    if not args.skip_flops:
        results["gflops"] = count_flops(model, inputs)

    print(table(results))
    if args.json:
        Path(args.json).write_text(json.dumps(results, indent=2))
    return results


if __name__ == "__main__":
    main()
