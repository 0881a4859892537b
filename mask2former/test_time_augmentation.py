"""Multi-scale and flip test-time augmentation of semantic segmentation (the zoo's "mIoU (ms+flip)")."""
import copy

import numpy as np
import torch
from detectron2.data.detection_utils import read_image
from detectron2.modeling import DatasetMapperTTA
from fvcore.transforms import HFlipTransform
from torch import nn
from torch.nn.parallel import DistributedDataParallel

__all__ = ["SemanticSegmentorWithTTA"]


class SemanticSegmentorWithTTA(nn.Module):
    """
    A semantic segmentation model with test-time augmentation: each image is resized so that its short side is
    each of TEST.AUG.MIN_SIZES (long side at most TEST.AUG.MAX_SIZE), also flipped horizontally when TEST.AUG.FLIP;
    the model's "sem_seg" scores of every version, at the output size and flipped back, are averaged. Called like
    the model, it returns ``[{"sem_seg": (K, H, W)}]``.
    """

    def __init__(self, cfg, model, tta_mapper=None, batch_size=1):
        """
        Args:
            cfg: the config (TEST.AUG, INPUT.FORMAT, MODEL.MASK_FORMER.TEST.SEMANTIC_ON).
            model: a MaskFormer (or its DistributedDataParallel) with semantic outputs.
            tta_mapper: maps a dataset dict with "image" to its augmented versions, each with "transforms";
                default ``DatasetMapperTTA(cfg)``.
            batch_size: augmented versions run through the model together. 1 (the default) runs each alone, as
                the original does: in a batch, smaller versions are padded, which changes their outputs slightly.
        """
        super().__init__()
        if not cfg.MODEL.MASK_FORMER.TEST.SEMANTIC_ON:
            raise ValueError(
                "test-time augmentation averages semantic outputs: set MODEL.MASK_FORMER.TEST.SEMANTIC_ON True"
            )
        if batch_size < 1:
            raise ValueError(f"batch_size={batch_size} must be >= 1")
        if isinstance(model, DistributedDataParallel):
            model = model.module
        self.cfg = cfg.clone()
        self.model = model
        self.tta_mapper = tta_mapper if tta_mapper is not None else DatasetMapperTTA(cfg)
        self.batch_size = batch_size

    def __call__(self, batched_inputs):
        return [self._inference_one_image(self._with_image(x)) for x in batched_inputs]

    def _with_image(self, dataset_dict):
        """``dataset_dict`` with "image" (read from "file_name" when missing) and the output "height"/"width"."""
        ret = copy.copy(dataset_dict)
        if "image" not in ret:
            image = read_image(ret.pop("file_name"), self.cfg.INPUT.FORMAT)
            ret["image"] = torch.from_numpy(np.ascontiguousarray(image.transpose(2, 0, 1)))
        ret.setdefault("height", ret["image"].shape[1])
        ret.setdefault("width", ret["image"].shape[2])
        return ret

    @torch.no_grad()
    def _inference_one_image(self, dataset_dict):
        augmented = self.tta_mapper(dataset_dict)
        flipped = [any(isinstance(t, HFlipTransform) for t in x.pop("transforms").transforms) for x in augmented]
        total = None
        for start in range(0, len(augmented), self.batch_size):
            outputs = self.model(augmented[start : start + self.batch_size])
            for output, flip in zip(outputs, flipped[start : start + self.batch_size]):
                sem_seg = output["sem_seg"].flip(dims=[2]) if flip else output["sem_seg"]
                total = sem_seg if total is None else total + sem_seg
        return {"sem_seg": total / len(augmented)}
