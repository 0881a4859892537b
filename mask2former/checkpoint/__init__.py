"""Checkpoints that cannot run code, are checked against their md5 names, and survive a killed run."""
from .checkpointer import SafeCheckpointer
from .integrity import CorruptCheckpointError
from .restricted_pickle import UnsafeCheckpointError, load_restricted_pickle

__all__ = ["SafeCheckpointer", "CorruptCheckpointError", "UnsafeCheckpointError", "load_restricted_pickle"]
