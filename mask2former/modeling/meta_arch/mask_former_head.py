"""MaskFormerHead: the pixel decoder followed by the transformer decoder, as one detectron2 sem-seg head."""
import logging
from typing import Dict

from detectron2.config import configurable
from detectron2.layers import ShapeSpec
from detectron2.modeling import SEM_SEG_HEADS_REGISTRY
from torch import nn

from ..pixel_decoder.msdeformattn import build_pixel_decoder
from ..transformer_decoder.mask2former_transformer_decoder import build_transformer_decoder


@SEM_SEG_HEADS_REGISTRY.register()
class MaskFormerHead(nn.Module):
    """Runs ``pixel_decoder.forward_features`` then the ``predictor`` (transformer decoder) on its outputs."""

    _version = 2

    @configurable
    def __init__(
        self,
        input_shape: Dict[str, ShapeSpec],
        *,
        num_classes: int,
        pixel_decoder: nn.Module,
        loss_weight: float = 1.0,
        ignore_value: int = -1,
        transformer_predictor: nn.Module,
        transformer_in_feature: str,
    ):
        """
        Args:
            input_shape: shapes of the backbone features the head reads.
            num_classes: number of classes to predict.
            pixel_decoder: the pixel decoder module.
            loss_weight, ignore_value: kept for config compatibility (losses live in the criterion).
            transformer_predictor: the transformer decoder that makes the per-query predictions.
            transformer_in_feature: what the predictor reads; Mask2Former uses "multi_scale_pixel_decoder".
        """
        super().__init__()
        if transformer_in_feature != "multi_scale_pixel_decoder":
            raise ValueError(
                f"MODEL.MASK_FORMER.TRANSFORMER_IN_FEATURE={transformer_in_feature!r} is not supported: "
                "the masked-attention decoder reads the pixel decoder's multi-scale features; "
                "set it to 'multi_scale_pixel_decoder'"
            )
        self.in_features = [k for k, _ in sorted(input_shape.items(), key=lambda kv: kv[1].stride)]
        self.ignore_value = ignore_value
        self.common_stride = 4
        self.loss_weight = loss_weight
        self.pixel_decoder = pixel_decoder
        self.predictor = transformer_predictor
        self.transformer_in_feature = transformer_in_feature
        self.num_classes = num_classes

    @classmethod
    def from_config(cls, cfg, input_shape: Dict[str, ShapeSpec]):
        head = cfg.MODEL.SEM_SEG_HEAD
        missing = [k for k in head.IN_FEATURES if k not in input_shape]
        if missing:
            raise ValueError(
                f"MODEL.SEM_SEG_HEAD.IN_FEATURES asks for {missing}, which the backbone does not output "
                f"(it outputs {sorted(input_shape)})"
            )
        return {
            "input_shape": {k: v for k, v in input_shape.items() if k in head.IN_FEATURES},
            "ignore_value": head.IGNORE_VALUE,
            "num_classes": head.NUM_CLASSES,
            "pixel_decoder": build_pixel_decoder(cfg, input_shape),
            "loss_weight": head.LOSS_WEIGHT,
            "transformer_in_feature": cfg.MODEL.MASK_FORMER.TRANSFORMER_IN_FEATURE,
            "transformer_predictor": build_transformer_decoder(cfg, head.CONVS_DIM, mask_classification=True),
        }

    def forward(self, features, mask=None):
        mask_features, _, multi_scale_features = self.pixel_decoder.forward_features(features)
        return self.predictor(multi_scale_features, mask_features, mask)

    def _load_from_state_dict(self, state_dict, prefix, local_metadata, strict, missing_keys, unexpected_keys, error_msgs):
        """
        Accept checkpoints of the earlier head layout, in which the pixel decoder's weights sit directly under
        the head (``sem_seg_head.mask_features...`` instead of ``sem_seg_head.pixel_decoder.mask_features...``).

        The decision is made per key, not from the checkpoint's version metadata: a plain dict (no
        ``_metadata``) that already uses the current names is left as it is, and old names are moved once.
        """
        keep = (prefix + "predictor.", prefix + "pixel_decoder.")
        renamed = []
        for key in [k for k in state_dict if k.startswith(prefix) and not k.startswith(keep)]:
            new_key = prefix + "pixel_decoder." + key[len(prefix):]
            if new_key not in state_dict:
                state_dict[new_key] = state_dict.pop(key)
                renamed.append(key)
        if renamed:
            logging.getLogger(__name__).warning(
                f"Checkpoint uses the earlier MaskFormerHead layout: moved {len(renamed)} weights under "
                f"'{prefix}pixel_decoder.'"
            )
        super()._load_from_state_dict(
            state_dict, prefix, local_metadata, strict, missing_keys, unexpected_keys, error_msgs
        )
