"""
Inference on CPU a chunk of rows at a time, for computations whose rows are independent.

An MLP with a wide hidden layer (Swin's 4x MLP, the pixel decoder's 1024-wide FFN) or Swin's window attention on all
tokens of an 800x1216 image makes temporaries of tens to hundreds of MB: each is a fresh allocation that the OS must
fault in, and the next operation reads it back from memory. On chunks of rows the temporaries stay cache-sized and
their memory is reused. Each output row depends only on its own input rows, so the result is the same; measured on
2 CPU cores it is bit-identical and 1.3-2x faster for those layers.
"""
import torch

# Rows (tokens) per chunk: hidden activations of 1.5 MB for Swin-T's first stage, 4 MB for the pixel decoder's FFN.
CHUNK_TOKENS = 1024


def inference_chunks(num_rows, device, rows_per_chunk=CHUNK_TOKENS):
    """
    (start, end) row ranges to compute separately in CPU inference; None to compute all rows in one call (also while
    tracing for export, where the ranges would be fixed to the traced size).
    """
    if torch.is_grad_enabled() or torch.jit.is_tracing() or device.type != "cpu" or num_rows <= rows_per_chunk:
        return None
    return [(start, min(start + rows_per_chunk, num_rows)) for start in range(0, num_rows, rows_per_chunk)]


def apply_by_token_chunks(fn, x):
    """``fn(x)`` for a position-wise ``fn`` and ``x`` of shape (..., C), by chunks of tokens in CPU inference."""
    tokens = x.reshape(-1, x.shape[-1])
    chunks = inference_chunks(tokens.shape[0], x.device)
    if chunks is None:
        return fn(x)
    out = None
    for start, end in chunks:
        y = fn(tokens[start:end])
        if out is None:
            out = y.new_empty((tokens.shape[0], y.shape[-1]))
        out[start:end] = y
    return out.view(*x.shape[:-1], out.shape[-1])
