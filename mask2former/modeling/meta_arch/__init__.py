from .mask_former_head import MaskFormerHead
