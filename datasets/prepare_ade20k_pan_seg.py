#!/usr/bin/env python
"""
Write ADE20K's panoptic annotations (``ade20k_panoptic_*``) from the semantic annotations and the instance
annotations (annotations_instance.tar): ``ADEChallengeData2016/ade20k_panoptic_{train,val}/*.png`` and
``ade20k_panoptic_{train,val}.json`` in the COCO panoptic format, category ids 0..149 (SceneParse150 order).
``ade20k_panoptic_*`` also needs prepare_ade20k_sem_seg.py (mIoU) and prepare_ade20k_ins_seg.py (mask AP).

    python datasets/prepare_ade20k_pan_seg.py              # $DETECTRON2_DATASETS/ADEChallengeData2016
    python datasets/prepare_ade20k_pan_seg.py --root /data/ADEChallengeData2016 --workers 16
"""
import sys

from mask2former.data.preparation.ade20k import prepare_ade20k_pan_seg
from mask2former.data.preparation.common import command_line


def main(argv=None):
    return command_line(
        argv,
        doc=__doc__,
        folder="ADEChallengeData2016",
        run=lambda root, workers: "wrote " + ", ".join(prepare_ade20k_pan_seg(root, workers=workers)),
    )


if __name__ == "__main__":
    sys.exit(main())
