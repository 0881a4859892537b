#!/usr/bin/env python
"""
Export a Mask2Former network to ONNX or TorchScript, for dynamic batch and image sizes.

    python tools/export_model.py --config-file configs/coco/panoptic-segmentation/maskformer2_R50_bs16_50ep.yaml \\
        --weights model_final_94dc52.pkl --format onnx --output model.onnx --opts MODEL.DEVICE cpu

The file maps normalized images (N, 3, H, W), H and W multiples of the size divisibility, to ``pred_logits`` and
``pred_masks``; ``mask2former.export.ExportedPredictor(file, cfg)`` runs it with the model's pre- and
post-processing (``tools/demo.py --exported FILE``).
"""
import argparse
import sys

from detectron2.modeling import build_model
from detectron2.utils.logger import setup_logger

from mask2former import get_maskformer2_cfg
from mask2former.checkpoint import SafeCheckpointer
from mask2former.export import DEFAULT_OPSET, FORMATS, export_model


def get_parser():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--config-file", required=True, metavar="FILE")
    parser.add_argument("--weights", help="checkpoint (path or URL); default: the config's MODEL.WEIGHTS")
    parser.add_argument("--format", choices=FORMATS, default="onnx")
    parser.add_argument("--output", required=True, help="the file to write")
    parser.add_argument("--opset", type=int, default=DEFAULT_OPSET, help="ONNX opset (>= 16)")
    parser.add_argument("--sample-size", type=int, nargs=2, metavar=("H", "W"),
                        help="size of the image traced (multiples of the size divisibility); default 10x15 of it")
    parser.add_argument("--opts", nargs=argparse.REMAINDER, default=[], help="config overrides: KEY VALUE ...")
    return parser


def main(argv=None):
    args = get_parser().parse_args(argv)
    logger = setup_logger(name="export_model")
    cfg = get_maskformer2_cfg(args.config_file, args.opts)
    if args.weights:
        cfg.MODEL.WEIGHTS = args.weights
    cfg.freeze()
    model = build_model(cfg).eval()
    SafeCheckpointer(model, verify_md5=cfg.MODEL.WEIGHTS_MD5_CHECK).load(cfg.MODEL.WEIGHTS)
    try:
        export_model(model, cfg, args.output, args.format, args.opset, args.sample_size)
    except ValueError as e:
        logger.error(str(e))
        return 2
    logger.info(f"wrote {args.output} ({args.format})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
