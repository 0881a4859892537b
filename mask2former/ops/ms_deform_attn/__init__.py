"""Multi-scale deformable attention: the one entry point the pixel decoder calls."""
from .reference import ms_deform_attn_reference

__all__ = ["ms_deform_attn", "ms_deform_attn_reference"]


def ms_deform_attn(value, spatial_shapes, level_start_index, sampling_locations, attention_weights):
    """See :func:`ms_deform_attn_reference` for shapes; returns (N, Lq, M * D)."""
    return ms_deform_attn_reference(value, spatial_shapes, level_start_index, sampling_locations, attention_weights)
