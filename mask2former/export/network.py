"""The exported network: a normalized, padded image batch -> the last decoder layer's class and mask logits."""
import torch
from torch import nn

# Names of the exported graph's input and outputs.
INPUT_NAME = "images"
OUTPUT_NAMES = ("pred_logits", "pred_masks")


class MaskFormerNetwork(nn.Module):
    """
    The backbone and head of a ``MaskFormer`` in float32, without its pre- and post-processing: what an exported
    file computes. Pre-processing (normalization, padding) and post-processing run outside, in
    :class:`~mask2former.export.ExportedPredictor`, with the same functions as the model.
    """

    def __init__(self, model):
        super().__init__()
        self.backbone = model.backbone
        self.sem_seg_head = model.sem_seg_head

    def forward(self, images):
        """(N, 3, H, W) normalized images, H and W multiples of the size divisibility -> (N, Q, K+1), (N, Q, H/4, W/4)."""
        outputs = self.sem_seg_head(self.backbone(images))
        return outputs["pred_logits"], outputs["pred_masks"]
