"""Checkpoints that cannot run code, are checked against their md5 names, and survive a killed run."""
from .checkpointer import SafeCheckpointer, load_torch_weights
from .integrity import CorruptCheckpointError
from .restricted_pickle import UnsafeCheckpointError, load_restricted_pickle

__all__ = [
    "SafeCheckpointer",
    "CorruptCheckpointError",
    "UnsafeCheckpointError",
    "load_restricted_pickle",
    "load_torch_weights",
]
