"""What every training mapper shares: training only, its augmentations and image format, and file reading."""
import logging

from .unreadable import TrainingFileReader

__all__ = ["TrainingDatasetMapper"]


class TrainingDatasetMapper:
    """
    Base of the training mappers: calling a mapper maps one dataset dict with ``map`` through its
    ``TrainingFileReader``, which stops training at an unreadable file or, when configured, skips the sample.
    Evaluation uses detectron2's ``DatasetMapper``.
    """

    def __init__(self, is_train, tfm_gens, image_format, file_reader=None):
        """
        Args:
            is_train: must be True.
            tfm_gens: augmentations, applied to the image and its targets alike.
            image_format: INPUT.FORMAT of the image tensor.
            file_reader: a ``TrainingFileReader``; by default unreadable files stop training.
        """
        if not is_train:
            raise ValueError(f"{type(self).__name__} is for training only; evaluate with detectron2's DatasetMapper")
        self.is_train = is_train
        self.tfm_gens = tfm_gens
        self.img_format = image_format
        self.file_reader = file_reader or TrainingFileReader()
        logging.getLogger(__name__).info(f"[{type(self).__name__}] augmentations: {tfm_gens}")

    @staticmethod
    def common_config(cfg, is_train):
        """The constructor arguments every training mapper takes from the config."""
        return {
            "is_train": is_train,
            "image_format": cfg.INPUT.FORMAT,
            "file_reader": TrainingFileReader.from_config(cfg),
        }

    def __call__(self, dataset_dict):
        return self.file_reader.map_or_skip(self.map, dataset_dict)

    def map(self, dataset_dict):
        """The training input of one dataset dict (unreadable files raise ``UnreadableFileError``)."""
        raise NotImplementedError
