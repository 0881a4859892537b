#!/usr/bin/env python
"""
Convert an official Swin Transformer ImageNet checkpoint (``.pth``, ``{"model": state_dict}``) into the detectron2
weights file that the Swin configs' MODEL.WEIGHTS name, e.g.:

    python tools/convert-pretrained-swin-model-to-d2.py swin_tiny_patch4_window7_224.pth
    # -> swin_tiny_patch4_window7_224.pkl (or give the output path as the second argument)

The classifier (``head.*``) and the final norm (``norm.*``) are dropped: detection uses neither, and the final
norm's name would be ambiguous with the backbone's other norms under detectron2's name matching. The remaining
names are the backbone's own; detectron2 finds them under ``backbone.`` by its matching heuristics.
"""
import argparse
import os
import pickle
import sys

from mask2former.checkpoint import CorruptCheckpointError, UnsafeCheckpointError, load_torch_weights

_DROPPED_PREFIXES = ("head.", "norm.")


def convert_swin(state_dict):
    """Official Swin state dict -> {name: numpy array} without the classifier and the final norm."""
    return {k: v.detach().cpu().numpy() for k, v in state_dict.items() if not k.startswith(_DROPPED_PREFIXES)}


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("input", help="official Swin checkpoint (.pth)")
    parser.add_argument("output", nargs="?", help="output .pkl (default: the input's name with .pkl)")
    args = parser.parse_args(argv)
    output = args.output or os.path.splitext(args.input)[0] + ".pkl"

    try:  # weights-only loading: no code runs; a missing or damaged file is named
        checkpoint = load_torch_weights(args.input)
    except (FileNotFoundError, CorruptCheckpointError, UnsafeCheckpointError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    if not isinstance(checkpoint, dict) or not isinstance(checkpoint.get("model"), dict):
        print(
            f"error: {args.input} is not an official Swin checkpoint: expected a dict with the state dict under "
            "'model'",
            file=sys.stderr,
        )
        return 2
    weights = convert_swin(checkpoint["model"])
    with open(output, "wb") as f:
        pickle.dump({"model": weights, "__author__": "third_party", "matching_heuristics": True}, f)
    print(f"wrote {len(weights)} tensors to {output}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
