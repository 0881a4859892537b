"""
Reading a training sample's files, and what happens when one cannot be read.

By default a file that cannot be decoded (truncated JPEG, garbage PNG, missing file) stops training with an error
that names the file and its dataset. With DATALOADER.SKIP_UNREADABLE_SAMPLES the mapper returns ``None`` for such a
sample instead (detectron2's loader then draws another one), with one warning per file. Mappers run in data-loader
worker processes, so each worker reports the files it skipped along with its next sample (under
``SKIPPED_FILES_KEY``); ``SkippedFileCounter`` collects them in the main process, writes their number to the
trainer's EventStorage (``metrics.json``) and stops training once more than DATALOADER.MAX_UNREADABLE_SAMPLES
distinct files were skipped.
"""
import logging
import os

from detectron2.data import MetadataCatalog
from detectron2.data import detection_utils as utils
from detectron2.utils.events import get_event_storage

__all__ = ["SKIPPED_FILES_KEY", "SkippedFileCounter", "TrainingFileReader", "UnreadableFileError"]

logger = logging.getLogger(__name__)

# Key of a mapped sample that lists the files its worker skipped since its previous sample; absent when none.
SKIPPED_FILES_KEY = "unreadable_files_skipped"
# Metric (in metrics.json) of the number of distinct files skipped so far.
SKIPPED_FILES_METRIC = "data/unreadable_files_skipped"
# Metadata fields of a dataset that hold the folders of its files, to tell which dataset a file belongs to.
_ROOT_FIELDS = ("image_root", "panoptic_root", "sem_seg_root", "image_dir", "gt_dir")


class UnreadableFileError(OSError):
    """A file of a training sample cannot be read; the message names the file, its dataset and the fix."""

    def __init__(self, message, file_name=None, where=None):
        super().__init__(message)
        self.file_name = file_name
        self.where = where  # the file, its dataset and why it cannot be read


def _too_many_skipped(files, limit):
    return RuntimeError(
        f"{len(files)} training samples were skipped because a file could not be read, more than "
        f"DATALOADER.MAX_UNREADABLE_SAMPLES={limit}; repair or remove them (or raise the limit). "
        f"Files: {sorted(files)[:20]}{' ...' if len(files) > 20 else ''}"
    )


class TrainingFileReader:
    """Reads the image and label files of training samples for every training mapper (see the module docstring)."""

    def __init__(self, dataset_names=(), skip_unreadable=False, max_unreadable=0):
        """
        Args:
            dataset_names: the training datasets (DATASETS.TRAIN), to name the dataset of an unreadable file.
            skip_unreadable: skip samples with an unreadable file instead of stopping training.
            max_unreadable: with ``skip_unreadable``, stop once more than this many distinct files were skipped.
        """
        self.dataset_names = tuple(dataset_names)
        self.skip_unreadable = skip_unreadable
        self.max_unreadable = max_unreadable
        self._skipped = set()  # distinct files this process skipped
        self._unreported = []  # of those, the ones not yet sent with a sample

    @classmethod
    def from_config(cls, cfg):
        return cls(
            dataset_names=cfg.DATASETS.TRAIN,
            skip_unreadable=cfg.DATALOADER.SKIP_UNREADABLE_SAMPLES,
            max_unreadable=cfg.DATALOADER.MAX_UNREADABLE_SAMPLES,
        )

    def read_image(self, file_name, format=None):
        """``detectron2.data.detection_utils.read_image``, raising ``UnreadableFileError`` for a bad file."""
        try:
            return utils.read_image(file_name, format=format)
        except Exception as e:  # PIL reports bad data as OSError, SyntaxError, ValueError, zlib.error, ...
            where = f"{file_name} ({self.dataset_of(file_name)}): {type(e).__name__}: {e}"
            raise UnreadableFileError(
                f"cannot read {where}. Repair or remove the file, or set DATALOADER.SKIP_UNREADABLE_SAMPLES True to "
                "skip such samples during training",
                file_name,
                where,
            ) from e

    def dataset_of(self, file_name):
        """Words naming the training dataset(s) that ``file_name`` belongs to, found from their metadata roots."""
        path = os.path.abspath(file_name)
        owners = []
        for name in self.dataset_names:
            meta = MetadataCatalog.get(name)
            roots = [getattr(meta, field) for field in _ROOT_FIELDS if isinstance(getattr(meta, field, None), str)]
            if any(path.startswith(os.path.join(os.path.abspath(root), "")) for root in roots):
                owners.append(name)
        names = owners or list(self.dataset_names)
        if not names:
            return "dataset unknown"
        return ("dataset " if len(names) == 1 else "one of the datasets ") + ", ".join(map(repr, names))

    def map_or_skip(self, map_func, dataset_dict):
        """
        ``map_func(dataset_dict)``; when it meets an unreadable file, the error, or with skipping on ``None``.
        A sample that follows skipped ones carries their file names under ``SKIPPED_FILES_KEY``.
        """
        try:
            mapped = map_func(dataset_dict)
        except UnreadableFileError as e:
            if not self.skip_unreadable:
                raise
            file_name = e.file_name
            if file_name not in self._skipped:
                logger.warning(f"Skipping a training sample whose file cannot be read: {e.where}")
                self._skipped.add(file_name)
                self._unreported.append(file_name)
            if len(self._skipped) > self.max_unreadable:
                raise _too_many_skipped(self._skipped, self.max_unreadable) from e
            return None
        if mapped is not None and self._unreported:
            mapped[SKIPPED_FILES_KEY], self._unreported = self._unreported, []
        return mapped


class SkippedFileCounter:
    """
    Wraps a training data loader (batches of mapped samples): removes the skipped-file reports from the samples,
    writes the number of distinct skipped files to the current EventStorage, and raises once it exceeds ``limit``.
    """

    def __init__(self, data_loader, limit):
        self.data_loader = data_loader
        self.limit = limit
        self.skipped = set()

    def __iter__(self):
        for batch in self.data_loader:
            for sample in batch:
                new = [f for f in sample.pop(SKIPPED_FILES_KEY, ()) if f not in self.skipped]
                if new:
                    self.skipped.update(new)
                    logger.warning(f"{len(self.skipped)} unreadable training files skipped so far: {new} new")
            if len(self.skipped) > self.limit:
                raise _too_many_skipped(self.skipped, self.limit)
            get_event_storage().put_scalar(SKIPPED_FILES_METRIC, len(self.skipped), smoothing_hint=False)
            yield batch
