"""The project's one checkpointer: every checkpoint load and save in train_net, demo and tools goes through it."""
import os
import pickle
import re
from urllib.parse import urlparse

import torch
from detectron2.checkpoint import DetectionCheckpointer

from .atomic import atomic_write
from .fine_tuning import log_skipped_tensors
from .integrity import CorruptCheckpointError, md5_check_enabled, verify_md5_prefix
from .restricted_pickle import UnsafeCheckpointError, load_restricted_pickle


class SafeCheckpointer(DetectionCheckpointer):
    """
    :class:`DetectionCheckpointer` that cannot be made to run code and does not use damaged files:

    * ``.pkl`` files (model zoo, detectron2's and Detectron1's conversions) are read by a restricted unpickler
      that admits only containers, strings, numbers and numpy arrays; ``.pth``/``.pyth`` files by
      ``torch.load(weights_only=True)``.
    * files named ``*_<6 hex>.pkl``/``.pth`` (local or downloaded from a URL into detectron2's cache) must have an
      md5 starting with those digits. ``verify_md5=False`` (``MODEL.WEIGHTS_MD5_CHECK False``) or
      ``$MASK2FORMER_MD5_CHECK=0`` turns this off.
    * checkpoints and ``last_checkpoint`` are written atomically, so a run killed at any moment leaves the
      previous checkpoint loadable; a checkpoint that ``weights_only`` could not read back is never written.
    * tensors whose shape differs from the model's (the class head and the queries when fine-tuning to other
      classes or queries) start fresh, each logged with both shapes and the reason (``fine_tuning.py``).
    """

    def __init__(self, model, save_dir="", *, save_to_disk=None, verify_md5=True, **checkpointables):
        super().__init__(model, save_dir, save_to_disk=save_to_disk, **checkpointables)
        self.verify_md5 = verify_md5 and md5_check_enabled()

    def load(self, path, *args, **kwargs):
        if path:
            local = urlparse(path)._replace(query="").geturl()
            if "://" not in local and not os.path.isfile(local):
                raise FileNotFoundError(
                    f"Checkpoint {local} not found. Check MODEL.WEIGHTS (a local file, an http(s):// URL or a "
                    "detectron2:// zoo path), or set MODEL.WEIGHTS '' to start from random weights."
                )
        return super().load(path, *args, **kwargs)

    def _load_file(self, filename):
        if self.verify_md5:
            verify_md5_prefix(filename, source=self._remote_source())
        if filename.endswith(".pkl"):
            return self._load_pickle(filename)
        if filename.endswith(".pyth"):
            data = self._torch_load(filename)
            state = {k: v for k, v in data["model_state"].items() if not k.endswith("num_batches_tracked")}
            return {"model": state, "__author__": "pycls", "matching_heuristics": True}
        return super()._load_file(filename)

    def _log_incompatible_keys(self, incompatible):
        log_skipped_tensors(self.logger, incompatible.incorrect_shapes, len(self.model.state_dict()))
        # Skipped tensors are also missing from the load: they are listed once, above.
        skipped = {name for name, *_ in incompatible.incorrect_shapes}
        super()._log_incompatible_keys(
            incompatible._replace(
                incorrect_shapes=[], missing_keys=[k for k in incompatible.missing_keys if k not in skipped]
            )
        )

    def _remote_source(self):
        parsed = self._parsed_url_during_load
        return parsed.geturl() if parsed is not None and parsed.scheme not in ("", "file") else None

    def _load_pickle(self, filename):
        try:
            data = load_restricted_pickle(filename)
        except UnsafeCheckpointError:
            raise
        except (EOFError, pickle.UnpicklingError, ValueError) as e:
            raise CorruptCheckpointError(
                f"Checkpoint {filename} is truncated or is not a pickle file ({type(e).__name__}: {e}). "
                "Download or copy it again."
            ) from e
        if not isinstance(data, dict):
            raise CorruptCheckpointError(
                f"Checkpoint {filename} holds a {type(data).__name__}, not a dict of weights."
            )
        if "model" in data and "__author__" in data:
            self.logger.info(f"Reading a file from '{data['__author__']}'")
            return data
        # Caffe2 / Detectron1 files: the weights dict itself, or under "blobs" for detection models.
        data = data.get("blobs", data)
        weights = {k: v for k, v in data.items() if not k.endswith("_momentum")}
        return {"model": weights, "__author__": "Caffe2", "matching_heuristics": True}

    def _torch_load(self, f):
        return load_torch_weights(f)

    def save(self, name, **kwargs):
        """Like :meth:`Checkpointer.save`, but the file appears complete or not at all."""
        if not self.save_dir or not self.save_to_disk:
            return
        data = {"model": self.model.state_dict()}
        data.update((key, obj.state_dict()) for key, obj in self.checkpointables.items())
        data.update(kwargs)
        basename = f"{name}.pth"
        save_file = os.path.join(self.save_dir, basename)
        self.logger.info(f"Saving checkpoint to {save_file}")
        with atomic_write(save_file, before_commit=lambda tmp: _require_weights_only_loadable(tmp, save_file)) as f:
            torch.save(data, f)
        self.tag_last_checkpoint(basename)

    def tag_last_checkpoint(self, last_filename_basename):
        with atomic_write(os.path.join(self.save_dir, "last_checkpoint")) as f:
            f.write(last_filename_basename.encode())


def _require_weights_only_loadable(tmp, save_file):
    """Fail at the first save, not at the first resume, when some state_dict() holds arbitrary objects."""
    unsafe = torch.serialization.get_unsafe_globals_in_checkpoint(tmp)
    if unsafe:
        raise TypeError(
            f"Not saving {save_file}: its state contains {', '.join(unsafe)}, which torch.load(weights_only=True) "
            "refuses, so resuming from it would fail. The state_dict() of the model, optimizer, scheduler and "
            "hooks must hold only tensors, numbers, strings and containers of them."
        )


def load_torch_weights(f):
    """
    ``torch.load(f, weights_only=True)`` on CPU, for ``.pth`` files: nothing in the file can run code. A missing,
    truncated or damaged file, and one holding anything but tensors, numbers, strings and containers of them, get
    an error that says which and what to do.
    """
    if not os.path.isfile(f):
        raise FileNotFoundError(f"{f} does not exist")
    try:
        return torch.load(f, map_location=torch.device("cpu"), weights_only=True)
    except pickle.UnpicklingError as e:
        message = str(e)
        if "Weights only load failed" not in message:
            raise CorruptCheckpointError(f"Checkpoint {f} is truncated or damaged ({message}).") from e
        found = re.search(r"GLOBAL ([\w.]+)", message) or re.search(r"WeightsUnpickler error: (.*)", message)
        what = f"the global '{found.group(1)}'" if found else "an object"
        raise UnsafeCheckpointError(
            f"Refusing to load {f}: it contains {what}, which torch.load(weights_only=True) does not admit "
            "because loading it could run code. Only tensors, numbers, strings and containers of them are "
            "admitted. If you trust the file, load it in a separate Python session and re-save its state dict."
        ) from None
    except PermissionError:
        raise
    except (RuntimeError, EOFError, OSError) as e:  # torch's zip reader fails on a cut file with any of these
        raise CorruptCheckpointError(
            f"Checkpoint {f} is truncated or damaged ({type(e).__name__}: {e}). Copy or download it again; "
            "if training was killed while saving, resume from the checkpoint named in last_checkpoint."
        ) from e
