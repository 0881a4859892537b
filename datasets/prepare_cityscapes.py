#!/usr/bin/env python
"""
Write the Cityscapes label files detectron2's ``cityscapes_fine_*`` datasets read, with the official
cityscapesscripts (pip install cityscapesscripts==2.3.0): ``gtFine/*/*/*_gtFine_labelTrainIds.png`` (its
createTrainIdLabelImgs, in parallel) and ``gtFine/cityscapes_panoptic_{train,val}/`` + ``.json`` (its
createPanopticImgs).

    python datasets/prepare_cityscapes.py                  # $DETECTRON2_DATASETS/cityscapes
    python datasets/prepare_cityscapes.py --root /data/cityscapes --workers 16
"""
import sys

from mask2former.data.preparation.cityscapes import create_panoptic_images, create_train_id_label_images
from mask2former.data.preparation.common import command_line


def main(argv=None):
    def run(root, workers):
        count = create_train_id_label_images(root, workers=workers)
        jsons = create_panoptic_images(root)
        return f"wrote {count} labelTrainIds PNGs and " + ", ".join(jsons)

    return command_line(argv, doc=__doc__, folder="cityscapes", run=run)


if __name__ == "__main__":
    sys.exit(main())
