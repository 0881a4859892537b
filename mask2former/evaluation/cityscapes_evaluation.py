"""
detectron2's Cityscapes evaluators (the official cityscapesscripts metrics) made to run under NumPy 2: ``np.in1d``,
which cityscapesscripts 2.3.0 calls, is gone from NumPy 2.4, and its JSON dumps fail on NumPy 2's integer counts.
"""
import functools
import importlib
import json
import os
import types

import numpy as np
from detectron2.evaluation import cityscapes_evaluation

__all__ = ["CityscapesInstanceEvaluator", "CityscapesSemSegEvaluator"]


class _NumpyWithIn1d(types.ModuleType):
    """NumPy, plus ``in1d`` as NumPy < 2.4 defined it: membership of the flattened input."""

    def __getattr__(self, name):
        return getattr(np, name)

    @staticmethod
    def in1d(ar1, ar2, assume_unique=False, invert=False):
        return np.isin(np.ravel(ar1), ar2, assume_unique=assume_unique, invert=invert)


def _write_json(obj, path, folder):
    """cityscapesscripts' ``writeDict2JSON``, with NumPy scalars as numbers and relative paths under ``folder``."""
    with open(os.path.join(folder, path), "w") as f:
        json.dump(obj, f, default=lambda o: o.item() if isinstance(o, np.generic) else o.__dict__, indent=4)


def _cityscapes_script(name, work_dir):
    """
    ``cityscapesscripts.evaluation.<name>``, given a NumPy with ``in1d`` when this NumPy has none, and writing its
    JSON files (the instance evaluation also dumps a ``matches.json`` into the current directory) under ``work_dir``.
    """
    module = importlib.import_module(f"cityscapesscripts.evaluation.{name}")
    if not hasattr(np, "in1d"):
        module.np = _NumpyWithIn1d("numpy")
    module.writeDict2JSON = functools.partial(_write_json, folder=work_dir)
    return module


class CityscapesInstanceEvaluator(cityscapes_evaluation.CityscapesInstanceEvaluator):
    """Mask AP / AP50 of Cityscapes' instance-level evaluation; one machine only (see detectron2's class)."""

    def evaluate(self):
        _cityscapes_script("evalInstanceLevelSemanticLabeling", self._temp_dir)
        return super().evaluate()


class CityscapesSemSegEvaluator(cityscapes_evaluation.CityscapesSemSegEvaluator):
    """Class and category IoU / iIoU of Cityscapes' pixel-level evaluation; one machine only (see detectron2's)."""

    def evaluate(self):
        _cityscapes_script("evalPixelLevelSemanticLabeling", self._temp_dir)
        return super().evaluate()
