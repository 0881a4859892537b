"""
Reading semantic label PNGs in detectron2's ``SemSegEvaluator`` under NumPy 2. Its default reader calls
``np.array(image, copy=False)``, which NumPy 2 refuses for a PIL image; importing this module makes
:func:`read_sem_seg_labels` the default, so every ``SemSegEvaluator`` works, the ones a user's script (e.g. the
original's ``train_net.py``) builds itself included.
"""
import numpy as np
from detectron2.evaluation import SemSegEvaluator
from detectron2.utils.file_io import PathManager
from PIL import Image

__all__ = ["read_sem_seg_labels"]


def read_sem_seg_labels(filename, dtype=int):
    """A semantic label PNG as an array of ``dtype``."""
    with PathManager.open(filename, "rb") as f:
        return np.asarray(Image.open(f), dtype=dtype)


SemSegEvaluator.__init__.__kwdefaults__["sem_seg_loading_fn"] = read_sem_seg_labels
