#!/usr/bin/env python
"""
Write ADE20K's instance annotations (``ade20k_instance_*``, and the mask-AP ground truth of
``ade20k_panoptic_*``) from annotations_instance.tar: ``ADEChallengeData2016/ade20k_instance_{train,val}.json``
in the COCO format (RLE masks), the 100 thing classes with their SceneParse150 ids.

    python datasets/prepare_ade20k_ins_seg.py              # $DETECTRON2_DATASETS/ADEChallengeData2016
    python datasets/prepare_ade20k_ins_seg.py --root /data/ADEChallengeData2016 --workers 16
"""
import sys

from mask2former.data.preparation.ade20k import prepare_ade20k_ins_seg
from mask2former.data.preparation.common import command_line


def main(argv=None):
    return command_line(
        argv,
        doc=__doc__,
        folder="ADEChallengeData2016",
        run=lambda root, workers: "wrote " + ", ".join(prepare_ade20k_ins_seg(root, workers=workers)),
    )


if __name__ == "__main__":
    sys.exit(main())
