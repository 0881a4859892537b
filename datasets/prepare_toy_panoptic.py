#!/usr/bin/env python
"""
Generate the project's toy panoptic dataset in COCO panoptic layout (see mask2former/toy/panoptic.py).

    python datasets/prepare_toy_panoptic.py                 # -> $DETECTRON2_DATASETS/toy_panoptic
    python datasets/prepare_toy_panoptic.py --root /tmp/toy --num-train 50 --num-val 10 --seed 1
"""
import argparse
import shutil
import sys
import time

from mask2former.toy import default_root, generate_toy_panoptic, is_generated


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--root", default=default_root(), help="output folder (default: %(default)s)")
    parser.add_argument("--num-train", type=int, default=400, help="training images (default: %(default)s)")
    parser.add_argument("--num-val", type=int, default=50, help="validation images (default: %(default)s)")
    parser.add_argument("--seed", type=int, default=0, help="the dataset is a pure function of it")
    parser.add_argument("--force", action="store_true", help="delete and regenerate an existing dataset")
    args = parser.parse_args(argv)

    if is_generated(args.root) and not args.force:
        print(f"toy panoptic dataset already at {args.root} (use --force to regenerate)")
        return 0
    if args.force:
        shutil.rmtree(args.root, ignore_errors=True)
    start = time.perf_counter()
    try:
        generate_toy_panoptic(args.root, num_train=args.num_train, num_val=args.num_val, seed=args.seed)
    except (ValueError, FileExistsError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    print(
        f"wrote {args.num_train} train + {args.num_val} val images to {args.root} "
        f"in {time.perf_counter() - start:.1f} s"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
