"""
The masked-attention transformer decoder of Mask2Former.

Learnable queries attend, layer after layer and round-robin over the pixel decoder's three lowest-resolution
feature maps, only to the pixels inside the mask that the previous layer predicted for them. After the learnable
queries and after every layer, shared heads predict class logits and mask logits (dot products of a per-query
embedding with the per-pixel mask features); in training all of these predictions are returned for deep
supervision, in inference only the last.
"""
import fvcore.nn.weight_init as weight_init
import torch
from detectron2.config import configurable
from detectron2.layers import Conv2d
from detectron2.utils.registry import Registry
from torch import nn
from torch.nn import functional as F

from ..layers import NUM_DECODER_FEATURE_LEVELS, PositionEmbeddingSine

TRANSFORMER_DECODER_REGISTRY = Registry("TRANSFORMER_MODULE")
TRANSFORMER_DECODER_REGISTRY.__doc__ = """
Registry for the transformer decoder of MaskFormerHead, which turns multi-scale features and per-pixel mask
features into per-query class and mask predictions. Selected by MODEL.MASK_FORMER.TRANSFORMER_DECODER_NAME.
"""


def build_transformer_decoder(cfg, in_channels, mask_classification=True):
    """Build the transformer decoder named by ``cfg.MODEL.MASK_FORMER.TRANSFORMER_DECODER_NAME``."""
    name = cfg.MODEL.MASK_FORMER.TRANSFORMER_DECODER_NAME
    return TRANSFORMER_DECODER_REGISTRY.get(name)(cfg, in_channels, mask_classification)


def _with_pos(tensor, pos):
    return tensor if pos is None else tensor + pos


def _residual(tgt, fn, norm, dropout, normalize_before):
    """``tgt + fn(tgt)`` with LayerNorm ``norm`` applied before ``fn`` (pre-norm) or after the sum (post-norm)."""
    if normalize_before:
        return tgt + dropout(fn(norm(tgt)))
    return norm(tgt + dropout(fn(tgt)))


def _xavier_init(module):
    for p in module.parameters():
        if p.dim() > 1:
            nn.init.xavier_uniform_(p)


def _attention(attn, query, key, value, blocked=None):
    """
    What ``attn`` (an ``nn.MultiheadAttention``, sequence-first) computes, with its parameters (and so the released
    checkpoints' names), through ``F.scaled_dot_product_attention``: fused kernels that never materialize the
    (N x heads, L, S) attention weights, and one mask per image broadcast over the heads instead of a copy per head.

    Args:
        query: (L, N, E); key, value: (S, N, E).
        blocked: None, or bool (N, 1, L, S): True where a query must not attend (``nn.MultiheadAttention``'s
            convention); no row may be all True.

    Returns:
        (L, N, E).
    """
    q, k, v = (
        F.linear(x, w, b).unflatten(-1, (attn.num_heads, -1)).permute(1, 2, 0, 3)  # (N, heads, L or S, E / heads)
        for x, w, b in zip((query, key, value), attn.in_proj_weight.chunk(3), attn.in_proj_bias.chunk(3))
    )
    out = F.scaled_dot_product_attention(
        q, k, v, attn_mask=None if blocked is None else ~blocked, dropout_p=attn.dropout if attn.training else 0.0
    )
    return attn.out_proj(out.permute(2, 0, 1, 3).flatten(2))


class SelfAttentionLayer(nn.Module):
    """Self-attention among the queries; the query position embedding is added to queries and keys."""

    def __init__(self, d_model, nhead, dropout=0.0, normalize_before=False):
        super().__init__()
        self.self_attn = nn.MultiheadAttention(d_model, nhead, dropout=dropout)
        self.norm = nn.LayerNorm(d_model)
        self.dropout = nn.Dropout(dropout)
        self.normalize_before = normalize_before
        _xavier_init(self)

    def forward(self, tgt, query_pos=None):
        def attend(x):
            q = k = _with_pos(x, query_pos)
            return _attention(self.self_attn, q, k, x)

        return _residual(tgt, attend, self.norm, self.dropout, self.normalize_before)


class CrossAttentionLayer(nn.Module):
    """Attention from the queries to the pixels of one feature level, restricted by ``memory_mask``."""

    def __init__(self, d_model, nhead, dropout=0.0, normalize_before=False):
        super().__init__()
        self.multihead_attn = nn.MultiheadAttention(d_model, nhead, dropout=dropout)
        self.norm = nn.LayerNorm(d_model)
        self.dropout = nn.Dropout(dropout)
        self.normalize_before = normalize_before
        _xavier_init(self)

    def forward(self, tgt, memory, memory_mask=None, pos=None, query_pos=None):
        """``memory_mask``: bool (N, 1, L, S), True where a query must not attend; see :func:`_attention`."""
        def attend(x):
            return _attention(self.multihead_attn, _with_pos(x, query_pos), _with_pos(memory, pos), memory, memory_mask)

        return _residual(tgt, attend, self.norm, self.dropout, self.normalize_before)


class FFNLayer(nn.Module):
    """Two-layer ReLU feed-forward block with a residual connection and LayerNorm."""

    def __init__(self, d_model, dim_feedforward=2048, dropout=0.0, normalize_before=False):
        super().__init__()
        self.linear1 = nn.Linear(d_model, dim_feedforward)
        self.dropout = nn.Dropout(dropout)
        self.linear2 = nn.Linear(dim_feedforward, d_model)
        self.norm = nn.LayerNorm(d_model)
        self.normalize_before = normalize_before
        _xavier_init(self)

    def forward(self, tgt):
        def ffn(x):
            return self.linear2(self.dropout(F.relu(self.linear1(x))))

        return _residual(tgt, ffn, self.norm, self.dropout, self.normalize_before)


class MLP(nn.Module):
    """A stack of ``num_layers`` linear layers with ReLU in between (none after the last)."""

    def __init__(self, input_dim, hidden_dim, output_dim, num_layers):
        super().__init__()
        dims_in = [input_dim] + [hidden_dim] * (num_layers - 1)
        dims_out = [hidden_dim] * (num_layers - 1) + [output_dim]
        self.layers = nn.ModuleList(nn.Linear(i, o) for i, o in zip(dims_in, dims_out))

    def forward(self, x):
        for i, layer in enumerate(self.layers):
            x = layer(x)
            if i < len(self.layers) - 1:
                x = F.relu(x)
        return x


@TRANSFORMER_DECODER_REGISTRY.register()
class MultiScaleMaskedTransformerDecoder(nn.Module):
    """The Mask2Former decoder: masked cross-attention, then self-attention, then FFN, in each layer."""

    _version = 2
    num_feature_levels = NUM_DECODER_FEATURE_LEVELS

    @configurable
    def __init__(
        self,
        in_channels,
        mask_classification=True,
        *,
        num_classes: int,
        hidden_dim: int,
        num_queries: int,
        nheads: int,
        dim_feedforward: int,
        dec_layers: int,
        pre_norm: bool,
        mask_dim: int,
        enforce_input_project: bool,
    ):
        """
        Args:
            in_channels: channels of the multi-scale features from the pixel decoder.
            mask_classification: must be True (per-query classification is what Mask2Former is).
            num_classes: number of classes; the class head has one more output for "no object".
            hidden_dim: width of the queries and of the attention layers.
            num_queries: number of learnable queries.
            nheads: attention heads.
            dim_feedforward: hidden width of the FFN.
            dec_layers: number of decoder layers (the config's DEC_LAYERS minus one).
            pre_norm: LayerNorm before (True) or after (False) each sublayer.
            mask_dim: channels of the mask features; the mask embedding has the same width.
            enforce_input_project: add a 1x1 projection even when in_channels == hidden_dim.
        """
        super().__init__()
        if not mask_classification:
            raise ValueError("MultiScaleMaskedTransformerDecoder only supports mask classification")
        self.mask_classification = mask_classification
        self.pe_layer = PositionEmbeddingSine(hidden_dim // 2, normalize=True)

        self.num_heads = nheads
        self.num_layers = dec_layers
        self.transformer_self_attention_layers = nn.ModuleList(
            SelfAttentionLayer(hidden_dim, nheads, dropout=0.0, normalize_before=pre_norm) for _ in range(dec_layers)
        )
        self.transformer_cross_attention_layers = nn.ModuleList(
            CrossAttentionLayer(hidden_dim, nheads, dropout=0.0, normalize_before=pre_norm) for _ in range(dec_layers)
        )
        self.transformer_ffn_layers = nn.ModuleList(
            FFNLayer(hidden_dim, dim_feedforward, dropout=0.0, normalize_before=pre_norm) for _ in range(dec_layers)
        )
        self.decoder_norm = nn.LayerNorm(hidden_dim)

        self.num_queries = num_queries
        self.query_feat = nn.Embedding(num_queries, hidden_dim)
        self.query_embed = nn.Embedding(num_queries, hidden_dim)
        self.level_embed = nn.Embedding(self.num_feature_levels, hidden_dim)

        self.input_proj = nn.ModuleList()
        for _ in range(self.num_feature_levels):
            if in_channels != hidden_dim or enforce_input_project:
                proj = Conv2d(in_channels, hidden_dim, kernel_size=1)
                weight_init.c2_xavier_fill(proj)
                self.input_proj.append(proj)
            else:
                self.input_proj.append(nn.Sequential())

        self.class_embed = nn.Linear(hidden_dim, num_classes + 1)
        self.mask_embed = MLP(hidden_dim, hidden_dim, mask_dim, 3)

    @classmethod
    def from_config(cls, cfg, in_channels, mask_classification):
        mf = cfg.MODEL.MASK_FORMER
        if mf.DEC_LAYERS < 1:
            raise ValueError(
                f"MODEL.MASK_FORMER.DEC_LAYERS={mf.DEC_LAYERS}: it counts the prediction from the learnable "
                "queries plus the decoder layers, so it must be >= 2 (the zoo uses 10)"
            )
        return {
            "in_channels": in_channels,
            "mask_classification": mask_classification,
            "num_classes": cfg.MODEL.SEM_SEG_HEAD.NUM_CLASSES,
            "hidden_dim": mf.HIDDEN_DIM,
            "num_queries": mf.NUM_OBJECT_QUERIES,
            "nheads": mf.NHEADS,
            "dim_feedforward": mf.DIM_FEEDFORWARD,
            # DEC_LAYERS counts the prediction made from the learnable queries before any layer.
            "dec_layers": mf.DEC_LAYERS - 1,
            "pre_norm": mf.PRE_NORM,
            "mask_dim": cfg.MODEL.SEM_SEG_HEAD.MASK_DIM,
            "enforce_input_project": mf.ENFORCE_INPUT_PROJ,
        }

    def forward(self, x, mask_features, mask=None):
        """
        Args:
            x: the pixel decoder's multi-scale features, lowest resolution first, each (N, C, H_l, W_l).
            mask_features: (N, mask_dim, H, W) per-pixel embeddings at 1/4 resolution.
            mask: unused (no padding masks; images are zero-padded instead).

        Returns:
            dict with "pred_logits" (N, Q, K+1) and "pred_masks" (N, Q, H, W) of the last layer and, in training,
            "aux_outputs": the same pairs for every earlier prediction.
        """
        if len(x) != self.num_feature_levels:
            raise ValueError(f"expected {self.num_feature_levels} feature levels, got {len(x)}")
        if not self.training and mask_features.device.type == "cpu" and torch.is_autocast_enabled("cpu"):
            # CPU inference runs the decoder in float32: in bfloat16 it moved PQ on the toy val set by 0.3
            # (docs/benchmarks.md), for a small share of the time.
            with torch.autocast("cpu", enabled=False):
                return self._forward([feat.float() for feat in x], mask_features.float())
        return self._forward(x, mask_features)

    def _forward(self, x, mask_features):
        """``forward`` in the dtypes it is given."""
        srcs, poss, sizes = [], [], []
        for i, feat in enumerate(x):
            sizes.append(feat.shape[-2:])
            # (HW, N, C) sequences, as the original's nn.MultiheadAttention layers take them, made contiguous once:
            # every layer projects them, and 16-bit CPU matmuls of a view with strided channels broadcast the
            # weight to a batched matmul (one copy of it per pixel).
            poss.append(self.pe_layer(feat).flatten(2).permute(2, 0, 1).contiguous())
            src = self.input_proj[i](feat).flatten(2) + self.level_embed.weight[i][None, :, None]
            srcs.append(src.permute(2, 0, 1).contiguous())
        # Bilinear resizing commutes with the per-pixel dot product that makes mask logits: resizing the mask
        # features to each attention level once gives the attention masks without resizing every layer's
        # full-resolution masks, and inference needs only the last layer's full-resolution masks.
        level_mask_features = [
            F.interpolate(mask_features, size=size, mode="bilinear", align_corners=False) for size in sizes
        ]

        batch = srcs[0].shape[1]
        query_embed = self.query_embed.weight.unsqueeze(1).repeat(1, batch, 1)
        output = self.query_feat.weight.unsqueeze(1).repeat(1, batch, 1)

        predictions = []
        for i in range(self.num_layers + 1):
            if i > 0:
                level = (i - 1) % self.num_feature_levels
                # A query whose mask is empty at this level attends everywhere rather than nowhere.
                attn_mask = attn_mask & ~attn_mask.all(-1, keepdim=True)
                output = self.transformer_cross_attention_layers[i - 1](
                    output, srcs[level], memory_mask=attn_mask, pos=poss[level], query_pos=query_embed
                )
                output = self.transformer_self_attention_layers[i - 1](output, query_pos=query_embed)
                output = self.transformer_ffn_layers[i - 1](output)
            full_resolution = self.training or i == self.num_layers
            outputs_class, outputs_mask, attn_mask = self.forward_prediction_heads(
                output,
                mask_features if full_resolution else None,
                level_mask_features[i % self.num_feature_levels],
            )
            predictions.append({"pred_logits": outputs_class, "pred_masks": outputs_mask})

        result = dict(predictions[-1])
        if self.training:
            result["aux_outputs"] = predictions[:-1]
        return result

    def forward_prediction_heads(self, output, mask_features, level_mask_features):
        """
        Class logits, mask logits on ``mask_features`` (None when not given), and the boolean attention mask
        (True = blocked) for the next layer from the mask logits on ``level_mask_features``.
        """
        if self.training:
            return self._prediction_heads(output, mask_features, level_mask_features)
        # Inference runs the heads in float32 under autocast too: the next layer's attention masks threshold these
        # mask logits at 0, where 16-bit rounding flips pixels (it halves the bfloat16 path's PQ deviation,
        # docs/benchmarks.md), and the heads are a small share of the work. Training follows autocast, as the
        # original: its per-layer full-resolution masks are the decoder's largest activations.
        with torch.autocast(output.device.type, enabled=False):
            return self._prediction_heads(
                output.float(),
                None if mask_features is None else mask_features.float(),
                level_mask_features.float(),
            )

    def _prediction_heads(self, output, mask_features, level_mask_features):
        """``forward_prediction_heads`` in the dtypes it is given."""
        decoder_output = self.decoder_norm(output).transpose(0, 1)
        outputs_class = self.class_embed(decoder_output)
        mask_embed = self.mask_embed(decoder_output)
        outputs_mask = None
        if mask_features is not None:
            outputs_mask = torch.einsum("bqc,bchw->bqhw", mask_embed, mask_features)
        attn_mask = torch.einsum("bqc,bchw->bqhw", mask_embed, level_mask_features)
        # Pixels whose predicted foreground probability is below 0.5 are masked out, for every head.
        attn_mask = (attn_mask.sigmoid().flatten(2) < 0.5).unsqueeze(1).detach()  # (N, 1, Q, HW), for all heads
        return outputs_class, outputs_mask, attn_mask
