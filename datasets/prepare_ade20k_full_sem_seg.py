#!/usr/bin/env python
"""
Write ADE20K-full (847 classes, ``ade20k_full_sem_seg_*``) from the ADE20K 2021 release:
``ADE20K_2021_17_01/images_detectron2/{training,validation}/*.jpg`` (shorter side at most 512) and
``annotations_detectron2/{training,validation}/*.tif`` (16-bit training ids, 65535 ignored).

    python datasets/prepare_ade20k_full_sem_seg.py         # $DETECTRON2_DATASETS/ADE20K_2021_17_01
    python datasets/prepare_ade20k_full_sem_seg.py --root /data/ADE20K_2021_17_01 --workers 16
"""
import sys

from mask2former.data.preparation.ade20k_full import prepare_ade20k_full_sem_seg
from mask2former.data.preparation.common import command_line


def main(argv=None):
    return command_line(
        argv,
        doc=__doc__,
        folder="ADE20K_2021_17_01",
        run=lambda root, workers: f"wrote {prepare_ade20k_full_sem_seg(root, workers=workers)} images and labels",
    )


if __name__ == "__main__":
    sys.exit(main())
