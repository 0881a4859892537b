#!/usr/bin/env python
"""
CPU speed of an exported network against PyTorch: the same random-weight model (timings depend on shapes, not
values) exported to ONNX, then ONNX Runtime and PyTorch (float32) each run the
network alone (normalized image -> pred_logits, pred_masks) on one image; medians of ``--iters`` runs after a
warm-up. Also the largest difference between the two runtimes' outputs, and with ``--profile-bf16-decoder`` the
``aten::copy_`` calls that lay out operands of the transformer decoder's batched matmuls under bfloat16 autocast.

    python tools/benchmark_export.py --threads 2 --input-size 800 1216 \\
        --config-file configs/coco/panoptic-segmentation/swin/maskformer2_swin_tiny_bs16_50ep.yaml \\
        configs/coco/panoptic-segmentation/maskformer2_R50_bs16_50ep.yaml
"""
import argparse
import os
import platform
import statistics
import tempfile
import time

import torch
from detectron2.modeling import build_model
from tabulate import tabulate

from mask2former import get_maskformer2_cfg
from mask2former.export import ExportedPredictor, MaskFormerNetwork, export_model
from mask2former.modeling.cpu_features import native_bf16_matmul


def parse_args(argv=None):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--config-file", nargs="+", required=True, help="Mask2Former config YAMLs")
    parser.add_argument("--input-size", type=int, nargs=2, default=[800, 1216], metavar=("H", "W"))
    parser.add_argument("--threads", type=int, default=2, help="CPU threads of both runtimes")
    parser.add_argument("--iters", type=int, default=3, help="timed runs (median reported)")
    parser.add_argument(
        "--profile-bf16-decoder", action="store_true",
        help="count the aten::copy_ calls that lay out operands of the decoder's bmm/baddbmm under bf16 autocast",
    )
    return parser.parse_args(argv)


def median_seconds(fn, iters):
    fn()  # warm-up
    times = []
    for _ in range(iters):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def decoder_bmm_copies(model, images):
    """
    (aten::copy_ calls that lay out operands inside bmm/baddbmm, all aten::copy_ calls) of the transformer decoder
    under bf16 autocast; casts of an operand to bf16 do not count as the former.
    """
    from torch.profiler import profile

    with torch.no_grad():
        mask_features, _, multi_scale = model.sem_seg_head.pixel_decoder.forward_features(model.backbone(images))
        with torch.autocast("cpu", dtype=torch.bfloat16), profile() as prof:
            model.sem_seg_head.predictor(multi_scale, mask_features)

    def lays_out_bmm_operand(event):
        if event.cpu_parent is None or event.cpu_parent.name == "aten::_to_copy":
            return False
        parent = event.cpu_parent
        while parent is not None:
            if parent.name in ("aten::bmm", "aten::baddbmm"):
                return True
            parent = parent.cpu_parent
        return False

    copies = [e for e in prof.events() if e.name == "aten::copy_"]
    return sum(map(lays_out_bmm_operand, copies)), len(copies)


def benchmark(config_file, args, folder):
    cfg = get_maskformer2_cfg(config_file, ["MODEL.WEIGHTS", "", "MODEL.DEVICE", "cpu"])
    model = build_model(cfg).eval()
    network = MaskFormerNetwork(model).eval()
    images = torch.randn(1, 3, *args.input_size)
    path = os.path.join(folder, os.path.basename(config_file) + ".onnx")
    start = time.perf_counter()
    export_model(model, cfg, path, "onnx")
    export_s = time.perf_counter() - start
    predictor = ExportedPredictor(path, cfg)
    with torch.no_grad():
        expected = network(images)
        actual = predictor.run(images)
        row = {
            "config": os.path.basename(config_file),
            "export (s)": round(export_s, 1),
            "PyTorch fp32 (s)": median_seconds(lambda: network(images), args.iters),
            "ONNX Runtime fp32 (s)": median_seconds(lambda: predictor.run(images), args.iters),
        }
    row["ORT/PyTorch"] = round(row["ONNX Runtime fp32 (s)"] / row["PyTorch fp32 (s)"], 2)
    row["max |diff| logits, masks"] = ", ".join(f"{(a - b).abs().max().item():.1e}" for a, b in zip(actual, expected))
    if args.profile_bf16_decoder:
        inside, total = decoder_bmm_copies(model, images)
        row["decoder copy_ in bmm / all (bf16)"] = f"{inside} / {total}"
    return row


def main(argv=None):
    args = parse_args(argv)
    torch.set_num_threads(args.threads)
    os.environ.setdefault("OMP_NUM_THREADS", str(args.threads))
    import onnxruntime

    print(f"{platform.processor() or platform.machine()}, {args.threads} threads, torch {torch.__version__}, "
          f"onnxruntime {onnxruntime.__version__}, native bf16 matmul: {native_bf16_matmul()}, "
          f"input {args.input_size[0]}x{args.input_size[1]}, median of {args.iters}")
    rows = []
    with tempfile.TemporaryDirectory() as folder:
        for config_file in args.config_file:
            rows.append(benchmark(config_file, args, folder))
            print(tabulate(rows, headers="keys", tablefmt="github", floatfmt=".2f"), flush=True)


if __name__ == "__main__":
    main()
