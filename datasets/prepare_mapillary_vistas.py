#!/usr/bin/env python
"""
Put Mapillary Vistas in the layout of ``mapillary_vistas_{sem_seg,panoptic}_*`` and check it: the registrations
read the release's v1.2 ``labels/`` and ``panoptic/`` as they are; a v2.0 download's ``v1.2/`` folders are linked
into place. Reports each split's image count, or the first missing or malformed file.

    python datasets/prepare_mapillary_vistas.py            # $DETECTRON2_DATASETS/mapillary_vistas
    python datasets/prepare_mapillary_vistas.py --root /data/mapillary_vistas
"""
import sys

from mask2former.data.preparation.common import command_line
from mask2former.data.preparation.mapillary_vistas import prepare_mapillary_vistas


def main(argv=None):
    def run(root, _):
        counts = prepare_mapillary_vistas(root)
        return f"{root} is ready: " + ", ".join(f"{split} {n} images" for split, n in counts.items())

    return command_line(argv, doc=__doc__, folder="mapillary_vistas", run=run, workers=False)


if __name__ == "__main__":
    sys.exit(main())
