#!/usr/bin/env python
"""
Write COCO's semantic-segmentation PNGs from its panoptic annotations (used to evaluate mIoU).

For each split, reads ``coco/annotations/panoptic_<split>.json`` and ``coco/panoptic_<split>/*.png`` and writes
``coco/panoptic_semseg_<split>/<same name>.png``: one uint8 per pixel, the contiguous class id (0..132, things
then stuff, as in training) of its segment, 255 where the panoptic annotation is void. Crowd regions keep their
class. Images are converted in parallel processes, with a progress line.

    python datasets/prepare_coco_semantic_annos_from_panoptic_annos.py                  # $DETECTRON2_DATASETS/coco
    python datasets/prepare_coco_semantic_annos_from_panoptic_annos.py --root /data/coco --workers 16
"""
import argparse
import json
import os
import sys
import time
from concurrent.futures import ProcessPoolExecutor

import numpy as np
from panopticapi.utils import rgb2id
from PIL import Image

from mask2former.data.datasets import coco_panoptic_metadata

IGNORE_LABEL = 255
CONTIGUOUS_ID = coco_panoptic_metadata()["stuff_dataset_id_to_contiguous_id"]  # dataset id -> 0..132, all classes


def semantic_from_panoptic(segment_ids, segments_info, dataset_id_to_contiguous_id):
    """(H, W) uint8 semantic map from a panoptic id map and its segments; void and unknown ids -> 255."""
    semantic = np.full(segment_ids.shape, IGNORE_LABEL, dtype=np.uint8)
    if not segments_info:
        return semantic
    ids = np.array([s["id"] for s in segments_info], dtype=segment_ids.dtype)
    labels = np.array([dataset_id_to_contiguous_id[s["category_id"]] for s in segments_info], dtype=np.uint8)
    order = np.argsort(ids)
    ids, labels = ids[order], labels[order]
    position = np.clip(np.searchsorted(ids, segment_ids), 0, len(ids) - 1)
    found = ids[position] == segment_ids
    semantic[found] = labels[position[found]]
    return semantic


def convert_one(job):
    panoptic_png, semantic_png, segments_info = job
    segment_ids = rgb2id(np.asarray(Image.open(panoptic_png).convert("RGB"), dtype=np.uint32))
    Image.fromarray(semantic_from_panoptic(segment_ids, segments_info, CONTIGUOUS_ID)).save(semantic_png)


def convert_split(coco_root, split, workers):
    panoptic_json = os.path.join(coco_root, "annotations", f"panoptic_{split}.json")
    panoptic_root = os.path.join(coco_root, f"panoptic_{split}")
    for path in (panoptic_json, panoptic_root):
        if not os.path.exists(path):
            raise FileNotFoundError(f"{path} does not exist; lay out COCO as described in datasets/README.md")
    semantic_root = os.path.join(coco_root, f"panoptic_semseg_{split}")
    os.makedirs(semantic_root, exist_ok=True)
    with open(panoptic_json) as f:
        annotations = json.load(f)["annotations"]
    jobs = [
        (os.path.join(panoptic_root, a["file_name"]), os.path.join(semantic_root, a["file_name"]), a["segments_info"])
        for a in annotations
    ]
    chunksize = max(1, min(64, len(jobs) // (4 * workers)))
    start = time.perf_counter()
    with ProcessPoolExecutor(max_workers=workers) as pool:
        for done, _ in enumerate(pool.map(convert_one, jobs, chunksize=chunksize), 1):
            if done % 500 == 0 or done == len(jobs):
                elapsed = time.perf_counter() - start
                print(f"{split}: {done}/{len(jobs)} images, {elapsed:.0f} s", file=sys.stderr, flush=True)
    return semantic_root


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    default_root = os.path.join(os.path.expanduser(os.getenv("DETECTRON2_DATASETS", "datasets")), "coco")
    parser.add_argument("--root", default=default_root, help="the coco/ folder (default: %(default)s)")
    parser.add_argument("--splits", nargs="+", default=["train2017", "val2017"], help="(default: %(default)s)")
    parser.add_argument("--workers", type=int, default=os.cpu_count(), help="processes (default: %(default)s)")
    args = parser.parse_args(argv)
    try:
        for split in args.splits:
            print(f"wrote {convert_split(args.root, split, max(1, args.workers))}")
    except FileNotFoundError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
