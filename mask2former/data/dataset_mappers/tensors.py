"""Conversions to tensors that the training mappers share."""
import numpy as np
import torch
from torch.nn import functional as F

__all__ = ["image_to_tensor", "masks_to_tensor", "pad_to_divisibility"]


def image_to_tensor(image):
    """An (H, W, C) array as a (C, H, W) tensor of the same dtype (tensors travel between processes cheaply)."""
    return torch.as_tensor(np.ascontiguousarray(image.transpose(2, 0, 1)))


def masks_to_tensor(masks, shape):
    """
    (H, W) boolean arrays or tensors as one (n, H, W) bool tensor; with none, a (0, H, W) float32 tensor (the
    original mappers' empty target).
    """
    if len(masks) == 0:
        return torch.zeros((0, *shape))
    return torch.stack([torch.from_numpy(np.array(m, dtype=bool)) for m in masks])


def pad_to_divisibility(tensor, size_divisibility, value):
    """
    ``tensor`` (..., H, W) padded at the bottom and right with ``value`` to the next multiple of
    ``size_divisibility`` in H and W; unchanged when ``size_divisibility`` <= 0. The zoo configs crop to
    INPUT.CROP.SIZE = INPUT.SIZE_DIVISIBILITY, so this pads every crop to exactly that size.
    """
    if size_divisibility <= 0:
        return tensor
    height, width = tensor.shape[-2:]
    pad_h = -height % size_divisibility
    pad_w = -width % size_divisibility
    if pad_h == 0 and pad_w == 0:
        return tensor
    return F.pad(tensor, [0, pad_w, 0, pad_h], value=value).contiguous()
