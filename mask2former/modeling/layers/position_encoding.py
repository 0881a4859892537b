"""Fixed 2-D sine/cosine position embedding (DETR style), used by the pixel decoder and the transformer decoder."""
import math

import torch
from torch import nn


class PositionEmbeddingSine(nn.Module):
    """
    Embeds each pixel's (y, x) position with sines and cosines of ``num_pos_feats`` frequencies per axis.

    The embedding depends only on the feature map's size, not on its values: an (N, C, H, W) input gives an
    (N, 2 * num_pos_feats, H, W) embedding, y features first. With ``normalize``, positions are scaled to
    (0, ``scale``] so the embedding is resolution independent.
    """

    def __init__(self, num_pos_feats=64, temperature=10000, normalize=False, scale=None):
        super().__init__()
        if scale is not None and not normalize:
            raise ValueError("PositionEmbeddingSine: 'scale' is only used with normalize=True")
        self.num_pos_feats = num_pos_feats
        self.temperature = temperature
        self.normalize = normalize
        self.scale = 2 * math.pi if scale is None else scale

    def forward(self, x, mask=None):
        n, _, h, w = x.shape
        if mask is None:
            # Without padding all rows share their y positions and all columns their x positions: embed one column
            # and one row, then broadcast (the same values for a fraction of the sines and cosines).
            not_mask_y = torch.ones((1, h, 1), device=x.device, dtype=torch.bool)
            not_mask_x = torch.ones((1, 1, w), device=x.device, dtype=torch.bool)
        else:
            not_mask_y = not_mask_x = ~mask
        y_embed = not_mask_y.cumsum(1, dtype=torch.float32)
        x_embed = not_mask_x.cumsum(2, dtype=torch.float32)
        if self.normalize:
            eps = 1e-6
            y_embed = y_embed / (y_embed[:, -1:, :] + eps) * self.scale
            x_embed = x_embed / (x_embed[:, :, -1:] + eps) * self.scale

        dim_t = torch.arange(self.num_pos_feats, dtype=torch.float32, device=x.device)
        dim_t = self.temperature ** (2 * torch.div(dim_t, 2, rounding_mode="floor") / self.num_pos_feats)
        pos_x = x_embed[:, :, :, None] / dim_t
        pos_y = y_embed[:, :, :, None] / dim_t
        # Interleave sin (even frequencies) and cos (odd frequencies).
        pos_x = torch.stack((pos_x[..., 0::2].sin(), pos_x[..., 1::2].cos()), dim=4).flatten(3)
        pos_y = torch.stack((pos_y[..., 0::2].sin(), pos_y[..., 1::2].cos()), dim=4).flatten(3)
        return torch.cat((pos_y.expand(n, h, w, -1), pos_x.expand(n, h, w, -1)), dim=3).permute(0, 3, 1, 2)
