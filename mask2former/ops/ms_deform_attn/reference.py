"""Multi-scale deformable attention in plain PyTorch (bilinear ``grid_sample``): the ground truth for the kernels."""
import torch
import torch.nn.functional as F


def level_shapes(spatial_shapes):
    """
    The (H_l, W_l) of each level of an (L, 2) ``spatial_shapes``: Python ints, or, while tracing for export, 0-dim
    tensors that keep the traced graph valid for other input sizes.
    """
    if torch.jit.is_tracing():
        return [(spatial_shapes[lvl, 0], spatial_shapes[lvl, 1]) for lvl in range(spatial_shapes.shape[0])]
    return [(int(h), int(w)) for h, w in spatial_shapes.tolist()]


def level_starts(spatial_shapes):
    """(L,) offset of each level in the flattened, concatenated levels of an (L, 2) ``spatial_shapes``."""
    sizes = spatial_shapes.prod(1)
    return torch.cat([sizes.new_zeros(1), sizes.cumsum(0)[:-1]])


def ms_deform_attn_reference(value, spatial_shapes, level_start_index, sampling_locations, attention_weights):
    """
    Args:
        value: (N, S, M, D) values of all levels, flattened and concatenated; S = sum of H_l * W_l.
        spatial_shapes: (L, 2) int64, (H_l, W_l) of each level.
        level_start_index: (L,) int64, offset of each level in S (unused here, part of the common signature).
        sampling_locations: (N, Lq, M, L, P, 2) normalized (x, y) in [0, 1]; outside is zero padding.
        attention_weights: (N, Lq, M, L, P) weights of the L * P samples of each head.

    Returns:
        (N, Lq, M * D)
    """
    n, _, m, d = value.shape
    _, lq, _, num_levels, p, _ = sampling_locations.shape
    shapes = level_shapes(spatial_shapes)
    value_levels = value.split([h * w for h, w in shapes], dim=1)
    # grid_sample works on [-1, 1] with align_corners=False: pixel centres at (i + 0.5) / W.
    grids = 2 * sampling_locations - 1
    sampled = []
    for lvl, (h, w) in enumerate(shapes):
        v = value_levels[lvl].flatten(2).transpose(1, 2).reshape(n * m, d, h, w)
        g = grids[:, :, :, lvl].transpose(1, 2).flatten(0, 1)  # (N*M, Lq, P, 2)
        sampled.append(F.grid_sample(v, g, mode="bilinear", padding_mode="zeros", align_corners=False))
    # (N*M, D, Lq, L, P) weighted over the last two dims
    sampled = torch.stack(sampled, dim=-2).flatten(-2)
    weights = attention_weights.transpose(1, 2).reshape(n * m, 1, lq, num_levels * p)
    out = (sampled * weights).sum(-1).view(n, m * d, lq)
    return out.transpose(1, 2).contiguous()
