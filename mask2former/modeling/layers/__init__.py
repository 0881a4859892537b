"""Pieces shared by more than one stage of the model (backbone, pixel decoder, transformer decoder)."""
from .chunked import CHUNK_TOKENS, apply_by_token_chunks, inference_chunks
from .position_encoding import PositionEmbeddingSine

# Multi-scale features the pixel decoder hands to the transformer decoder (strides 32, 16, 8), which the decoder's
# layers visit round-robin.
NUM_DECODER_FEATURE_LEVELS = 3

__all__ = [
    "CHUNK_TOKENS",
    "NUM_DECODER_FEATURE_LEVELS",
    "PositionEmbeddingSine",
    "apply_by_token_chunks",
    "inference_chunks",
]
