from .mask2former_transformer_decoder import (
    TRANSFORMER_DECODER_REGISTRY,
    MultiScaleMaskedTransformerDecoder,
    build_transformer_decoder,
)
