from .mask_former_head import MaskFormerHead
from .maskformer_model import MaskFormer
