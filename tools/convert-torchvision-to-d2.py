#!/usr/bin/env python
"""
Convert a torchvision ResNet checkpoint (a ``state_dict`` ``.pth``, e.g. ImageNet R-50) into detectron2's ResNet
naming, as ``detectron2://ImageNetPretrained/torchvision/R-50.pkl`` is:

    python tools/convert-torchvision-to-d2.py resnet50-0676ba61.pth R-50.pkl

Use it with ``MODEL.RESNETS.STRIDE_IN_1X1 False`` and ``MODEL.RESNETS.STEM_TYPE basic`` (torchvision's layout,
as in the Mask2Former R-50 configs) and ``INPUT.FORMAT RGB`` with torchvision's pixel mean and std.
"""
import argparse
import pickle
import re
import sys

from mask2former.checkpoint import CorruptCheckpointError, UnsafeCheckpointError, load_torch_weights

# (torchvision pattern, detectron2 replacement), applied in order to each name.
_RENAMES = [
    (r"^conv1\.", "stem.conv1."),
    (r"^bn1\.", "stem.conv1.norm."),
    (r"^layer(\d)\.", lambda m: f"res{int(m.group(1)) + 1}."),
    (r"\.bn(\d)\.", r".conv\1.norm."),
    (r"\.downsample\.0\.", ".shortcut."),
    (r"\.downsample\.1\.", ".shortcut.norm."),
]


def torchvision_to_d2_name(name):
    for pattern, replacement in _RENAMES:
        name = re.sub(pattern, replacement, name)
    return name


def convert_torchvision(state_dict):
    """torchvision ResNet state dict -> {detectron2 name: numpy array}, without the classifier and BN counters."""
    return {
        torchvision_to_d2_name(k): v.detach().cpu().numpy()
        for k, v in state_dict.items()
        if not k.startswith("fc.") and not k.endswith("num_batches_tracked")
    }


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("input", help="torchvision ResNet state dict (.pth)")
    parser.add_argument("output", help="detectron2 weights (.pkl)")
    args = parser.parse_args(argv)

    try:  # weights-only loading: no code runs; a missing or damaged file is named
        state_dict = load_torch_weights(args.input)
    except (FileNotFoundError, CorruptCheckpointError, UnsafeCheckpointError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    if not isinstance(state_dict, dict) or "conv1.weight" not in state_dict:
        print(f"error: {args.input} is not a torchvision ResNet state dict (no 'conv1.weight')", file=sys.stderr)
        return 2
    weights = convert_torchvision(state_dict)
    with open(args.output, "wb") as f:
        pickle.dump({"model": weights, "__author__": "torchvision", "matching_heuristics": True}, f)
    print(f"wrote {len(weights)} tensors to {args.output}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
