#!/usr/bin/env python
"""
Write ADE20K's semantic labels in detectron2's convention (``ade20k_sem_seg_*``, and the semantic PNGs of
``ade20k_panoptic_*``): ``ADEChallengeData2016/annotations_detectron2/{training,validation}/*.png``, class 0..149
and 255 for void, from the release's ``annotations/`` (0 void, 1..150).

    python datasets/prepare_ade20k_sem_seg.py              # $DETECTRON2_DATASETS/ADEChallengeData2016
    python datasets/prepare_ade20k_sem_seg.py --root /data/ADEChallengeData2016 --workers 16
"""
import sys

from mask2former.data.preparation.ade20k import prepare_ade20k_sem_seg
from mask2former.data.preparation.common import command_line


def main(argv=None):
    return command_line(
        argv,
        doc=__doc__,
        folder="ADEChallengeData2016",
        run=lambda root, workers: "wrote " + ", ".join(prepare_ade20k_sem_seg(root, workers=workers)),
    )


if __name__ == "__main__":
    sys.exit(main())
