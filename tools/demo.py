#!/usr/bin/env python
"""
Run a Mask2Former model on images and write PNG visualizations of its panoptic, instance or semantic output.

    python tools/demo.py --config-file configs/toy/maskformer2_R50_narrow_toy.yaml \\
        --weights output/main_job/model_final.pth --input img.jpg photos/*.png --output vis/ \\
        --mode panoptic --opts MODEL.DEVICE cpu

Any size and kind of image works: grayscale, RGBA, 16-bit, EXIF-rotated JPEG.
"""
import argparse
import glob
import os
import sys
import time

from detectron2.utils.logger import setup_logger
from PIL import Image

from mask2former import get_maskformer2_cfg
from mask2former.export import ExportedPredictor
from mask2former.visualization import MODES, Predictor, draw_prediction, metadata_of, read_image


def get_parser():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--config-file", required=True, metavar="FILE")
    parser.add_argument("--weights", help="checkpoint (path or URL); default: the config's MODEL.WEIGHTS")
    parser.add_argument("--input", nargs="+", required=True, help="image files, folders or glob patterns")
    parser.add_argument("--output", required=True, help="folder for the <image name>.png visualizations")
    parser.add_argument("--mode", choices=MODES, default="panoptic")
    parser.add_argument("--exported", metavar="FILE",
                        help="run this file of tools/export_model.py (ONNX or TorchScript) instead of the weights")
    parser.add_argument("--confidence-threshold", type=float, default=0.5, help="instance mode: minimum score")
    parser.add_argument("--opts", nargs=argparse.REMAINDER, default=[], help="config overrides: KEY VALUE ...")
    return parser


def setup_cfg(args):
    cfg = get_maskformer2_cfg(args.config_file, args.opts)
    if args.weights:
        cfg.MODEL.WEIGHTS = args.weights
    # The requested output must be computed; the others are skipped.
    for mode in MODES:
        setattr(cfg.MODEL.MASK_FORMER.TEST, f"{mode.upper()}_ON", mode == args.mode)
    cfg.freeze()
    return cfg


def expand_inputs(patterns):
    """Files named by ``patterns`` (files, folders, globs), in order, without repeats."""
    files = []
    for pattern in patterns:
        if os.path.isdir(pattern):
            matches = sorted(os.path.join(pattern, f) for f in os.listdir(pattern))
        else:
            matches = sorted(glob.glob(os.path.expanduser(pattern))) or [pattern]
        files += [f for f in matches if f not in files and not os.path.isdir(f)]
    return files


def main(argv=None):
    args = get_parser().parse_args(argv)
    logger = setup_logger(name="demo")
    cfg = setup_cfg(args)
    predictor = Predictor(cfg, ExportedPredictor(args.exported, cfg) if args.exported else None)
    metadata = metadata_of(cfg)
    os.makedirs(args.output, exist_ok=True)

    failed = 0
    for path in expand_inputs(args.input):
        try:
            rgb = read_image(path)
        except ValueError as e:
            logger.error(str(e))
            failed += 1
            continue
        start = time.perf_counter()
        outputs = predictor(rgb)
        vis = draw_prediction(rgb, outputs, metadata, args.mode, args.confidence_threshold)
        out_path = os.path.join(args.output, os.path.splitext(os.path.basename(path))[0] + ".png")
        Image.fromarray(vis).save(out_path)
        logger.info(f"{path} ({rgb.shape[1]}x{rgb.shape[0]}): {time.perf_counter() - start:.2f} s -> {out_path}")
    if failed:
        logger.error(f"{failed} input(s) could not be read")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
