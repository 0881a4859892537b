"""
The multi-scale deformable-attention pixel decoder of Mask2Former.

The three lowest-resolution backbone features (res3-res5 by default) are projected to a common width and refined
jointly by a stack of deformable-attention encoder layers, in which every pixel of every level attends to a few
learned sampling points on all levels. FPN-style top-down steps then add the higher-resolution levels down to the
common stride (1/4), whose output, after a 1x1 convolution, gives the per-pixel mask features.
"""
import math
from typing import Callable, Dict, List, Optional, Union

import fvcore.nn.weight_init as weight_init
import numpy as np
import torch
from detectron2.config import configurable
from detectron2.layers import Conv2d, ShapeSpec, get_norm
from detectron2.modeling import SEM_SEG_HEADS_REGISTRY
from torch import nn
from torch.nn import functional as F

from ...ops.ms_deform_attn import level_shapes, level_starts, ms_deform_attn
from ..layers import NUM_DECODER_FEATURE_LEVELS, PositionEmbeddingSine, apply_by_token_chunks


def build_pixel_decoder(cfg, input_shape):
    """
    Build the pixel decoder named by ``cfg.MODEL.SEM_SEG_HEAD.PIXEL_DECODER_NAME``.

    Pixel decoders are registered in detectron2's SEM_SEG_HEADS_REGISTRY, as in the original, so that users'
    own pixel decoders keep working; they must provide ``forward_features``.
    """
    name = cfg.MODEL.SEM_SEG_HEAD.PIXEL_DECODER_NAME
    model = SEM_SEG_HEADS_REGISTRY.get(name)(cfg, input_shape)
    if not callable(getattr(model, "forward_features", None)):
        raise ValueError(
            f"MODEL.SEM_SEG_HEAD.PIXEL_DECODER_NAME={name} has no forward_features(); "
            "only pixel decoders can be used by MaskFormerHead"
        )
    return model


class MSDeformAttn(nn.Module):
    """
    Multi-scale deformable attention (Zhu et al., Deformable DETR): each query predicts, per head and per level,
    ``n_points`` sampling offsets around its reference point and their attention weights.
    """

    def __init__(self, d_model=256, n_levels=4, n_heads=8, n_points=4):
        super().__init__()
        if d_model % n_heads != 0:
            raise ValueError(f"d_model ({d_model}) must be divisible by n_heads ({n_heads})")
        self.d_model = d_model
        self.n_levels = n_levels
        self.n_heads = n_heads
        self.n_points = n_points

        self.sampling_offsets = nn.Linear(d_model, n_heads * n_levels * n_points * 2)
        self.attention_weights = nn.Linear(d_model, n_heads * n_levels * n_points)
        self.value_proj = nn.Linear(d_model, d_model)
        self.output_proj = nn.Linear(d_model, d_model)
        self._reset_parameters()

    def _reset_parameters(self):
        # Initial sampling points: the k-th point of each head lies k steps away in the head's own direction.
        nn.init.constant_(self.sampling_offsets.weight, 0.0)
        angles = torch.arange(self.n_heads, dtype=torch.float32) * (2.0 * math.pi / self.n_heads)
        directions = torch.stack([angles.cos(), angles.sin()], -1)
        directions = directions / directions.abs().max(-1, keepdim=True)[0]
        steps = torch.arange(1, self.n_points + 1, dtype=torch.float32).view(1, 1, -1, 1)
        grid = directions.view(self.n_heads, 1, 1, 2).repeat(1, self.n_levels, self.n_points, 1) * steps
        with torch.no_grad():
            self.sampling_offsets.bias.copy_(grid.flatten())
        nn.init.constant_(self.attention_weights.weight, 0.0)
        nn.init.constant_(self.attention_weights.bias, 0.0)
        nn.init.xavier_uniform_(self.value_proj.weight)
        nn.init.constant_(self.value_proj.bias, 0.0)
        nn.init.xavier_uniform_(self.output_proj.weight)
        nn.init.constant_(self.output_proj.bias, 0.0)

    def forward(self, query, reference_points, input_flatten, spatial_shapes, level_start_index, padding_mask=None):
        """
        Args:
            query: (N, Lq, C).
            reference_points: (N, Lq, n_levels, 2) normalized (x, y) in [0, 1] on each level, or the same repeated
                over heads and points by :meth:`repeat_reference_points`, which is faster to add to the offsets.
            input_flatten: (N, S, C), all levels flattened and concatenated.
            spatial_shapes: (n_levels, 2) int64 (H, W); level_start_index: (n_levels,) int64.
            padding_mask: optional (N, S) bool, True where ``input_flatten`` is padding.

        Returns:
            (N, Lq, C)
        """
        n, lq, _ = query.shape
        s = input_flatten.shape[1]
        value = self.value_proj(input_flatten)
        if padding_mask is not None:
            value = value.masked_fill(padding_mask[..., None], 0.0)
        value = value.view(n, s, self.n_heads, self.d_model // self.n_heads)

        weights = self.attention_weights(query).view(n, lq, self.n_heads, self.n_levels * self.n_points)
        weights = weights.softmax(-1).view(n, lq, self.n_heads, self.n_levels, self.n_points)
        # Offsets are in pixels of each level: divide them by that level's (W, H), as one row of (M * L * P * 2)
        # divisors shared by all queries, then add the reference points. The sum takes the reference points' dtype
        # (float32 under autocast).
        normalizer = torch.stack([spatial_shapes[..., 1], spatial_shapes[..., 0]], -1)
        normalizer = normalizer[None, :, None, :].expand(self.n_heads, -1, self.n_points, -1).reshape(-1)
        offsets = (self.sampling_offsets(query) / normalizer).view(
            n, lq, self.n_heads, self.n_levels, self.n_points, 2
        )
        if reference_points.dim() == 4:
            reference_points = reference_points[:, :, None, :, None, :]
        locations = reference_points + offsets

        output = ms_deform_attn(value, spatial_shapes, level_start_index, locations, weights)
        return self.output_proj(output)

    def repeat_reference_points(self, reference_points):
        """
        (N, Lq, n_levels, 2) reference points repeated over heads and points, (N, Lq, M, L, P, 2) contiguous: the
        layout of the sampling locations. Adding them needs no broadcast, whose short inner loops make the sum
        several times slower on CPU; layers that share reference points share this tensor too.
        """
        return reference_points[:, :, None, :, None, :].expand(-1, -1, self.n_heads, -1, self.n_points, -1).contiguous()


class MSDeformAttnTransformerEncoderLayer(nn.Module):
    """Deformable self-attention over all levels, then a ReLU FFN; post-norm residuals."""

    def __init__(self, d_model=256, d_ffn=1024, dropout=0.1, n_levels=4, n_heads=8, n_points=4):
        super().__init__()
        self.self_attn = MSDeformAttn(d_model, n_levels, n_heads, n_points)
        self.dropout1 = nn.Dropout(dropout)
        self.norm1 = nn.LayerNorm(d_model)
        self.linear1 = nn.Linear(d_model, d_ffn)
        self.dropout2 = nn.Dropout(dropout)
        self.linear2 = nn.Linear(d_ffn, d_model)
        self.dropout3 = nn.Dropout(dropout)
        self.norm2 = nn.LayerNorm(d_model)

    def forward(self, src, pos, reference_points, spatial_shapes, level_start_index, padding_mask=None):
        attended = self.self_attn(src + pos, reference_points, src, spatial_shapes, level_start_index, padding_mask)
        # The in-place operations write into fresh outputs that backward does not need: no (pixels x channels)
        # buffer per residual, and no (pixels x d_ffn) buffer for the ReLU, the encoder's largest.
        src = self.norm1(self.dropout1(attended).add_(src))
        return self.norm2(self.dropout3(apply_by_token_chunks(self._ffn, src)).add_(src))

    def _ffn(self, x):
        return self.linear2(self.dropout2(F.relu(self.linear1(x), inplace=True)))


class MSDeformAttnTransformerEncoder(nn.Module):
    """A stack of deformable encoder layers sharing one set of reference points (the pixel centres)."""

    def __init__(self, encoder_layers: List[MSDeformAttnTransformerEncoderLayer]):
        super().__init__()
        self.layers = nn.ModuleList(encoder_layers)

    @staticmethod
    def get_reference_points(spatial_shapes, valid_ratios, device):
        """Normalized (x, y) centres of every pixel of every level, seen from every level: (N, S, L, 2)."""
        points = []
        for lvl, (h, w) in enumerate(spatial_shapes):
            ref_y, ref_x = torch.meshgrid(
                torch.arange(h, dtype=torch.float32, device=device) + 0.5,
                torch.arange(w, dtype=torch.float32, device=device) + 0.5,
                indexing="ij",
            )
            ref_y = ref_y.reshape(-1)[None] / (valid_ratios[:, None, lvl, 1] * h)
            ref_x = ref_x.reshape(-1)[None] / (valid_ratios[:, None, lvl, 0] * w)
            points.append(torch.stack((ref_x, ref_y), -1))
        reference_points = torch.cat(points, 1)
        return reference_points[:, :, None] * valid_ratios[:, None]

    def forward(self, src, spatial_shapes, level_start_index, valid_ratios, pos, padding_mask=None):
        reference_points = self.get_reference_points(level_shapes(spatial_shapes), valid_ratios, src.device)
        if len(self.layers):
            reference_points = self.layers[0].self_attn.repeat_reference_points(reference_points)
        for layer in self.layers:
            src = layer(src, pos, reference_points, spatial_shapes, level_start_index, padding_mask)
        return src


class MSDeformAttnTransformerEncoderOnly(nn.Module):
    """Flattens the levels, adds position and level embeddings, and runs the deformable encoder."""

    def __init__(
        self, d_model=256, nhead=8, num_encoder_layers=6, dim_feedforward=1024, dropout=0.1,
        num_feature_levels=4, enc_n_points=4,
    ):
        super().__init__()
        self.encoder = MSDeformAttnTransformerEncoder(
            [
                MSDeformAttnTransformerEncoderLayer(
                    d_model, dim_feedforward, dropout, num_feature_levels, nhead, enc_n_points
                )
                for _ in range(num_encoder_layers)
            ]
        )
        self.level_embed = nn.Parameter(torch.Tensor(num_feature_levels, d_model))
        self._reset_parameters()

    def _reset_parameters(self):
        for p in self.parameters():
            if p.dim() > 1:
                nn.init.xavier_uniform_(p)
        for m in self.modules():
            if isinstance(m, MSDeformAttn):
                m._reset_parameters()
        nn.init.normal_(self.level_embed)

    def forward(self, srcs, pos_embeds):
        """
        Args:
            srcs, pos_embeds: per level, (N, C, H_l, W_l) features and position embeddings.

        Returns:
            memory (N, S, C), spatial_shapes (L, 2) int64, level_start_index (L,) int64.
        """
        n = srcs[0].shape[0]
        shapes = [tuple(src.shape[-2:]) for src in srcs]
        src_flatten = torch.cat([src.flatten(2).transpose(1, 2) for src in srcs], 1)
        pos_flatten = torch.cat(
            [pos.flatten(2).transpose(1, 2) + self.level_embed[lvl].view(1, 1, -1) for lvl, pos in enumerate(pos_embeds)],
            1,
        )
        if torch.jit.is_tracing():
            # Traced sizes are 0-dim tensors: stacking them keeps the graph valid for other input sizes.
            spatial_shapes = torch.stack([torch.stack(shape) for shape in shapes]).to(src_flatten.device)
        else:
            spatial_shapes = torch.as_tensor(shapes, dtype=torch.long, device=src_flatten.device)
        level_start_index = level_starts(spatial_shapes)
        # Images are zero-padded, not masked: every pixel is valid on every level.
        valid_ratios = torch.ones((n, len(srcs), 2), dtype=torch.float32, device=src_flatten.device)
        memory = self.encoder(src_flatten, spatial_shapes, level_start_index, valid_ratios, pos_flatten)
        return memory, spatial_shapes, level_start_index


@SEM_SEG_HEADS_REGISTRY.register()
class MSDeformAttnPixelDecoder(nn.Module):
    """Deformable-attention encoder over res3-res5 plus an FPN-style path down to the common stride."""

    @configurable
    def __init__(
        self,
        input_shape: Dict[str, ShapeSpec],
        *,
        transformer_dropout: float,
        transformer_nheads: int,
        transformer_dim_feedforward: int,
        transformer_enc_layers: int,
        transformer_n_points: int,
        conv_dim: int,
        mask_dim: int,
        norm: Optional[Union[str, Callable]] = None,
        transformer_in_features: List[str],
        common_stride: int,
    ):
        """
        Args:
            input_shape: shapes of the backbone features the decoder uses.
            transformer_dropout / transformer_nheads / transformer_dim_feedforward / transformer_enc_layers /
                transformer_n_points: the deformable encoder's dropout, heads, FFN width, depth, sampling points.
            conv_dim: width of all pixel-decoder features.
            mask_dim: channels of the mask features.
            norm: normalization of the FPN convolutions.
            transformer_in_features: backbone features the deformable encoder refines.
            common_stride: stride of the mask features.
        """
        super().__init__()
        input_shape = sorted(input_shape.items(), key=lambda kv: kv[1].stride)
        self.in_features = [k for k, _ in input_shape]
        transformer_shape = [(k, v) for k, v in input_shape if k in transformer_in_features]
        self.transformer_in_features = [k for k, _ in transformer_shape]
        transformer_in_channels = [v.channels for _, v in transformer_shape]
        self.transformer_feature_strides = [v.stride for _, v in transformer_shape]
        self.transformer_num_feature_levels = len(self.transformer_in_features)

        # One 1x1 projection + GroupNorm per encoder level, lowest resolution first.
        self.input_proj = nn.ModuleList(
            nn.Sequential(nn.Conv2d(in_channels, conv_dim, kernel_size=1), nn.GroupNorm(32, conv_dim))
            for in_channels in transformer_in_channels[::-1]
        )
        for proj in self.input_proj:
            nn.init.xavier_uniform_(proj[0].weight, gain=1)
            nn.init.constant_(proj[0].bias, 0)

        self.transformer = MSDeformAttnTransformerEncoderOnly(
            d_model=conv_dim,
            dropout=transformer_dropout,
            nhead=transformer_nheads,
            dim_feedforward=transformer_dim_feedforward,
            num_encoder_layers=transformer_enc_layers,
            num_feature_levels=self.transformer_num_feature_levels,
            enc_n_points=transformer_n_points,
        )
        self.pe_layer = PositionEmbeddingSine(conv_dim // 2, normalize=True)

        self.mask_dim = mask_dim
        self.mask_features = Conv2d(conv_dim, mask_dim, kernel_size=1, stride=1, padding=0)
        weight_init.c2_xavier_fill(self.mask_features)
        # The transformer decoder uses this many of the decoder's outputs, lowest resolution first.
        self.maskformer_num_feature_levels = NUM_DECODER_FEATURE_LEVELS

        self.common_stride = common_stride
        min_stride = min(self.transformer_feature_strides)
        self.num_fpn_levels = int(np.log2(min_stride) - np.log2(self.common_stride))
        use_bias = norm == ""
        lateral_convs, output_convs = [], []
        for idx, in_channels in enumerate(v.channels for _, v in input_shape[: self.num_fpn_levels]):
            lateral_conv = Conv2d(in_channels, conv_dim, kernel_size=1, bias=use_bias, norm=get_norm(norm, conv_dim))
            output_conv = Conv2d(
                conv_dim, conv_dim, kernel_size=3, stride=1, padding=1, bias=use_bias,
                norm=get_norm(norm, conv_dim), activation=F.relu,
            )
            weight_init.c2_xavier_fill(lateral_conv)
            weight_init.c2_xavier_fill(output_conv)
            self.add_module(f"adapter_{idx + 1}", lateral_conv)
            self.add_module(f"layer_{idx + 1}", output_conv)
            lateral_convs.append(lateral_conv)
            output_convs.append(output_conv)
        # Top-down order: the level just above the encoder's highest resolution comes first.
        self.lateral_convs = lateral_convs[::-1]
        self.output_convs = output_convs[::-1]

    @classmethod
    def from_config(cls, cfg, input_shape: Dict[str, ShapeSpec]):
        head = cfg.MODEL.SEM_SEG_HEAD
        return {
            "input_shape": {k: v for k, v in input_shape.items() if k in head.IN_FEATURES},
            "conv_dim": head.CONVS_DIM,
            "mask_dim": head.MASK_DIM,
            "norm": head.NORM,
            "transformer_dropout": cfg.MODEL.MASK_FORMER.DROPOUT,
            # The released models use the decoder's head count for the encoder too.
            "transformer_nheads": cfg.MODEL.MASK_FORMER.NHEADS,
            # Fixed in the released models (not a config key).
            "transformer_dim_feedforward": 1024,
            "transformer_enc_layers": head.TRANSFORMER_ENC_LAYERS,
            "transformer_n_points": head.DEFORMABLE_TRANSFORMER_ENCODER_N_POINTS,
            "transformer_in_features": head.DEFORMABLE_TRANSFORMER_ENCODER_IN_FEATURES,
            "common_stride": head.COMMON_STRIDE,
        }

    def forward_features(self, features):
        """
        Returns:
            mask_features (N, mask_dim, H/4, W/4), the encoder's lowest-resolution output, and the
            ``maskformer_num_feature_levels`` multi-scale features for the transformer decoder, lowest resolution first.
        """
        srcs, pos = [], []
        for idx, name in enumerate(self.transformer_in_features[::-1]):
            x = features[name]
            srcs.append(self.input_proj[idx](x))
            pos.append(self.pe_layer(x))
        memory, spatial_shapes, _ = self.transformer(srcs, pos)

        n = memory.shape[0]
        shapes = level_shapes(spatial_shapes)
        # Contiguous NCHW maps: the strided views of ``memory`` would make the FPN's resize produce a channels-last
        # map at 1/4 scale, which every later convolution would convert again.
        out = [
            level.transpose(1, 2).reshape(n, -1, h, w).contiguous()
            for level, (h, w) in zip(memory.split([h * w for h, w in shapes], dim=1), shapes)
        ]
        for idx, name in enumerate(self.in_features[: self.num_fpn_levels][::-1]):
            lateral = self.lateral_convs[idx](features[name])
            top_down = F.interpolate(out[-1], size=lateral.shape[-2:], mode="bilinear", align_corners=False)
            out.append(self.output_convs[idx](lateral + top_down))

        return self.mask_features(out[-1]), out[0], out[: self.maskformer_num_feature_levels]
