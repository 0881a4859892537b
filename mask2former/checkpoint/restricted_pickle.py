"""
Reading ``.pkl`` checkpoints without running code from them.

A pickle may name any importable callable and call it while it loads (``os.system`` included). Checkpoint
pickles need only a handful: dicts, lists, tuples, strings and numbers are built by pickle's own opcodes, and
the globals below build numpy arrays, numpy scalars, their dtypes and the ``OrderedDict`` that carries a state
dict's ``_metadata``. Every other global is refused before anything that refers to it can run.
"""
import _compat_pickle
import codecs
import collections
import pickle

import numpy as np

try:  # numpy >= 2
    from numpy._core import multiarray, numeric
except ImportError:  # numpy 1.x
    from numpy.core import multiarray, numeric


def _both_numpy_spellings(submodule, name, obj):
    """numpy 2 pickles say ``numpy._core.*``, numpy 1 (and Python 2) pickles ``numpy.core.*``."""
    return {(f"numpy._core.{submodule}", name): obj, (f"numpy.core.{submodule}", name): obj}


ALLOWED_GLOBALS = {
    ("collections", "OrderedDict"): collections.OrderedDict,
    ("numpy", "ndarray"): np.ndarray,
    ("numpy", "dtype"): np.dtype,
    # Protocol-2 pickles written by Python 3 store bytes as ``_codecs.encode(latin1 text, "latin1")``.
    ("_codecs", "encode"): codecs.encode,
    **_both_numpy_spellings("multiarray", "_reconstruct", multiarray._reconstruct),
    **_both_numpy_spellings("multiarray", "scalar", multiarray.scalar),
    # Protocol-5 pickles of arrays.
    **_both_numpy_spellings("numeric", "_frombuffer", numeric._frombuffer),
}


def _python3_name(module, name):
    """Pickles of protocol < 3 spell some globals the Python 2 way (``__builtin__.exec``, ``commands.*``)."""
    module, name = _compat_pickle.NAME_MAPPING.get((module, name), (module, name))
    return f"{_compat_pickle.IMPORT_MAPPING.get(module, module)}.{name}"


class UnsafeCheckpointError(pickle.UnpicklingError):
    """A checkpoint asks to import something a file of weights never needs."""


class RestrictedUnpickler(pickle.Unpickler):
    """An unpickler that resolves only :data:`ALLOWED_GLOBALS`; ``source`` names the file in errors."""

    def __init__(self, file, source, **kwargs):
        super().__init__(file, **kwargs)
        self.source = source

    def find_class(self, module, name):
        try:
            return ALLOWED_GLOBALS[(module, name)]
        except KeyError:
            raise UnsafeCheckpointError(
                f"Refusing to load {self.source}: it refers to the global '{_python3_name(module, name)}', which a "
                "checkpoint of weights does not need and which could run code. Only dicts, lists, strings, numbers, "
                "numpy arrays and dtypes are admitted. If you trust the file, load it in a separate Python session "
                "and re-save its weights as numpy arrays or tensors."
            ) from None

    def persistent_load(self, pid):
        raise UnsafeCheckpointError(
            f"Refusing to load {self.source}: it uses pickle persistent ids, as torch.save files do. "
            "Give such a file the .pth extension so that it is read by torch.load(weights_only=True)."
        )


def load_restricted_pickle(path):
    """Unpickle ``path`` with :class:`RestrictedUnpickler` (latin1 decodes Python 2 pickles of Detectron1/Caffe2)."""
    with open(path, "rb") as f:
        return RestrictedUnpickler(f, str(path), encoding="latin1").load()
