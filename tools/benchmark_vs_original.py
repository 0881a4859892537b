#!/usr/bin/env python
"""
Inference latency of this project side by side with the original Mask2Former: same config, same weights, same
image, same process settings, each implementation in its own process (both packages are named
``mask2former``), alternating between them for ``--rounds`` rounds so that a drift of the machine's speed affects
both alike; the ratio is taken per round.

The original is not part of this project: pass the folder that holds its ``mask2former`` package, e.g. a clone of
github.com/facebookresearch/Mask2Former or the unpacked sdist of its PyPI packaging ``maskformer2``. It runs
exactly as on a user's machine without its compiled op: on CPU its deformable attention falls back to its
pure-PyTorch path. Weights are random (this project's initialization, saved once and loaded into both) unless
``--weights`` is given. The outputs of both are compared too.

Example:
    python tools/benchmark_vs_original.py --original /tmp/maskformer2-0.1 \
        --config-file configs/coco/panoptic-segmentation/swin/maskformer2_swin_tiny_bs16_50ep.yaml
"""
import argparse
import json
import re
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
from tabulate import tabulate

IMPLEMENTATIONS = ("this project", "original")


def parse_args(argv=None):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--original", required=True, help="folder that holds the original's mask2former package")
    parser.add_argument("--config-file", required=True, help="a config YAML both implementations can read")
    parser.add_argument("--weights", default="", help="checkpoint for both (default: random weights)")
    parser.add_argument("--input-size", type=int, nargs=2, default=[800, 1216], metavar=("H", "W"))
    parser.add_argument("--warmup", type=int, default=1, help="untimed runs per process")
    parser.add_argument("--iters", type=int, default=3, help="timed runs per process")
    parser.add_argument("--rounds", type=int, default=2, help="processes per implementation, alternating")
    parser.add_argument("--threads", type=int, default=0, help="CPU threads (default: torch's choice)")
    parser.add_argument("--json", default="", help="where to write the results (default: print only)")
    parser.add_argument("--opts", nargs=argparse.REMAINDER, default=[], help="config overrides for both: KEY VALUE ...")
    parser.add_argument("--worker", choices=IMPLEMENTATIONS, help=argparse.SUPPRESS)
    parser.add_argument("--work-dir", default="", help=argparse.SUPPRESS)
    parser.add_argument("--round", type=int, default=0, help=argparse.SUPPRESS)
    return parser.parse_args(argv)


def build(args, original):
    """The model of one implementation, from the config; imports that implementation's ``mask2former``."""
    if original:
        sys.path.insert(0, str(Path(args.original).resolve()))
        # The original's evaluation module imports detectron2's compiled COCOeval at import time; the model does
        # not use it, and this environment's detectron2 ships no compiled ops.
        sys.modules.setdefault("detectron2._C", types.ModuleType("detectron2._C"))
    import mask2former

    where = Path(mask2former.__file__).resolve()
    if original != (Path(args.original).resolve() in where.parents):
        raise SystemExit(f"imported mask2former from {where}, not the {'original' if original else 'project'}")
    meta_arch = sys.modules.get("mask2former.maskformer_model")
    if original and meta_arch is not None:
        # Inference never uses the criterion; some packagings of the original changed its signature.
        meta_arch.SetCriterion = lambda *a, **k: None
    if args.threads:
        torch.set_num_threads(args.threads)
    cfg = get_cfg()
    add_deeplab_config(cfg)
    mask2former.add_maskformer2_config(cfg)
    cfg.merge_from_file(args.config_file)
    cfg.merge_from_list(args.opts)
    cfg.MODEL.DEVICE = "cpu"
    cfg.MODEL.WEIGHTS = ""
    cfg.freeze()
    torch.manual_seed(0)
    return build_model(cfg).eval()


def peak_rss_mib():
    return int(re.search(r"VmHWM:\s+(\d+) kB", Path("/proc/self/status").read_text()).group(1)) / 1024


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


def worker(args):
    """One process of one implementation: load the weights, time inference, write times and an output summary."""
    work = Path(args.work_dir)
    original = args.worker == "original"
    model = build(args, original)
    load_weights(model, work / "weights.pth", original)
    h, w = args.input_size
    image = torch.randint(0, 256, (3, h, w), dtype=torch.uint8, generator=torch.Generator().manual_seed(0))
    inputs = [{"image": image, "height": h, "width": w}]
    times = []
    with torch.no_grad():
        for i in range(args.warmup + args.iters):
            start = time.perf_counter()
            output = model(inputs)[0]
            if i >= args.warmup:
                times.append(time.perf_counter() - start)
    panoptic_seg, segments_info = output["panoptic_seg"]
    instances = output["instances"]
    summary = {
        "sem_seg_s8": output["sem_seg"][:, ::8, ::8].numpy(),
        "sem_seg_argmax": output["sem_seg"].argmax(0).numpy().astype(np.int16),
        "panoptic_seg": panoptic_seg.numpy(),
        "instance_scores": np.sort(instances.scores.numpy()),
    }
    tag = args.worker.replace(" ", "_")
    np.savez(work / f"{tag}_outputs.npz", **summary)
    result = {"times_s": times, "peak_rss_mib": peak_rss_mib(), "segments": segments_info, "instances": len(instances)}
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
    if args.worker:
        return worker(args)
    if not (Path(args.original) / "mask2former" / "__init__.py").is_file():
        raise SystemExit(
            f"--original {args.original}: no mask2former/__init__.py there; pass the folder that holds the original's "
            "mask2former package (a clone of facebookresearch/Mask2Former or an unpacked maskformer2 sdist)"
        )
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        model = build(args, original=False)
        if args.weights:
            load_weights(model, args.weights, original=False)
        torch.save({"model": model.state_dict()}, work / "weights.pth")
        del model
        forwarded = [
            "--original", args.original, "--config-file", args.config_file, "--warmup", str(args.warmup),
            "--iters", str(args.iters), "--threads", str(args.threads), "--work-dir", tmp,
            "--input-size", *map(str, args.input_size), "--opts", *args.opts,
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
        comparison = compare_outputs(work)

    results = {"config": args.config_file, "opts": args.opts, "input_size": args.input_size, "original": args.original}
    rows = []
    for name, worker_runs in runs.items():
        times = [t for run in worker_runs for t in run["times_s"]]
        results[name] = {
            "times_s": times,
            "median_s": statistics.median(times),
            "min_s": min(times),
            "peak_rss_mib": max(run["peak_rss_mib"] for run in worker_runs),
            "segments": len(worker_runs[0]["segments"]),
            "instances": worker_runs[0]["instances"],
        }
        r = results[name]
        rows.append([name, f"{r['median_s']:.2f}", f"{r['min_s']:.2f}", len(times), f"{r['peak_rss_mib']:.0f}"])
    # Paired by round: the two processes of a round ran back to back, under the same machine conditions.
    round_ratios = [
        statistics.median(ours["times_s"]) / statistics.median(theirs["times_s"])
        for ours, theirs in zip(*runs.values())
    ]
    results["round_ratios"] = round_ratios
    results["median_ratio"] = statistics.median(round_ratios)
    results["outputs"] = comparison
    print(tabulate(rows, headers=["implementation", "median s", "min s", "runs", "peak RSS MiB"], tablefmt="github"))
    print(
        f"\nthis project / original, median latency, per round: {' '.join(f'{r:.2f}' for r in round_ratios)}; "
        f"median {results['median_ratio']:.2f}"
    )
    for key, value in comparison.items():
        print(f"{key}: {value:.6g}")
    if args.json:
        Path(args.json).write_text(json.dumps(results, indent=2))
    return results


if __name__ == "__main__":
    main()
