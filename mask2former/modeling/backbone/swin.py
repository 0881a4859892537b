"""
Swin Transformer backbone (Liu et al., 2021) for dense prediction.

A 4x4 patch embedding is followed by four stages of transformer blocks that attend within non-overlapping
windows; every other block cyclically shifts the feature map by half a window so that information crosses
window borders, with an attention mask keeping the wrapped-around regions apart. Between stages a patch merging
layer halves the resolution and doubles the width. Any input size works: the image is padded to the patch size,
each block pads its map to a multiple of the window size (and crops back), and patch merging pads odd sizes.

The module and parameter names are those of the released Mask2Former checkpoints (``patch_embed``,
``layers.I.blocks.J``, ``layers.I.downsample``, per-output norms ``norm0..norm3``).
"""
from typing import List, Optional

import torch
from detectron2.config import configurable
from detectron2.modeling import BACKBONE_REGISTRY, Backbone
from torch import nn
from torch.nn import functional as F
from torch.utils.checkpoint import checkpoint
from torchvision.ops import StochasticDepth

from ..layers import CHUNK_TOKENS, apply_by_token_chunks, inference_chunks

# Added to the attention logits between tokens that come from different regions of a shifted map.
_SHIFT_MASK_VALUE = -100.0


def window_partition(x, window_size):
    """(B, H, W, C) with H, W multiples of ``window_size`` -> (B * num_windows, window_size**2, C), row-major."""
    B, H, W, C = x.shape
    x = x.view(B, H // window_size, window_size, W // window_size, window_size, C)
    return x.permute(0, 1, 3, 2, 4, 5).reshape(-1, window_size * window_size, C)


def window_reverse(windows, window_size, H, W):
    """Inverse of :func:`window_partition`: (B * num_windows, window_size**2, C) -> (B, H, W, C)."""
    C = windows.shape[-1]
    x = windows.view(-1, H // window_size, W // window_size, window_size, window_size, C)
    return x.permute(0, 1, 3, 2, 4, 5).reshape(-1, H, W, C)


def relative_position_index(window_size):
    """
    (N, N) index, N = window_size**2, of each (query, key) pair's relative offset (dy, dx) in the
    (2 * window_size - 1)**2 bias table, row-major in (dy, dx).
    """
    ys, xs = torch.meshgrid(torch.arange(window_size), torch.arange(window_size), indexing="ij")
    ys, xs = ys.flatten(), xs.flatten()
    dy = ys[:, None] - ys[None, :] + window_size - 1
    dx = xs[:, None] - xs[None, :] + window_size - 1
    return dy * (2 * window_size - 1) + dx


def shifted_window_mask(H, W, window_size, shift_size, device=None):
    """
    Attention mask (num_windows, N, N) for a (H, W) map, multiples of the window size, rolled back by
    ``shift_size``: 0 between tokens of the same original region, a large negative value otherwise. Along each
    axis the last window and the last ``shift_size`` positions are the regions that the roll brought together.
    """

    def regions(size):
        pos = torch.arange(size, device=device)
        return (pos >= size - window_size).long() + (pos >= size - shift_size).long()

    labels = regions(H)[:, None] * 3 + regions(W)[None, :]
    labels = window_partition(labels.view(1, H, W, 1), window_size).squeeze(-1)
    same = labels[:, :, None] == labels[:, None, :]
    mask = torch.zeros(same.shape, device=device)
    return mask.masked_fill_(~same, _SHIFT_MASK_VALUE)


class PatchEmbed(nn.Module):
    """Non-overlapping patches -> linear embedding (a strided convolution), optionally layer-normalized."""

    def __init__(self, patch_size, in_channels, embed_dim, norm):
        super().__init__()
        self.patch_size = patch_size
        self.proj = nn.Conv2d(in_channels, embed_dim, kernel_size=patch_size, stride=patch_size)
        self.norm = nn.LayerNorm(embed_dim) if norm else None

    def forward(self, x):
        """(B, C_in, H, W) -> (B, embed_dim, ceil(H / patch), ceil(W / patch)); pads bottom/right with zeros."""
        H, W = x.shape[-2:]
        x = F.pad(x, (0, -W % self.patch_size, 0, -H % self.patch_size))
        x = self.proj(x)
        if self.norm is not None:
            x = self.norm(x.permute(0, 2, 3, 1)).permute(0, 3, 1, 2)
        return x


class WindowAttention(nn.Module):
    """Multi-head self-attention inside each window, with a learned bias per relative position and head."""

    def __init__(self, dim, window_size, num_heads, qkv_bias, qk_scale, attn_drop, proj_drop):
        super().__init__()
        self.num_heads = num_heads
        self.scale = qk_scale or (dim // num_heads) ** -0.5
        self.attn_drop = nn.Dropout(attn_drop)
        self.relative_position_bias_table = nn.Parameter(torch.zeros((2 * window_size - 1) ** 2, num_heads))
        self.register_buffer("relative_position_index", relative_position_index(window_size))
        self.qkv = nn.Linear(dim, dim * 3, bias=qkv_bias)
        self.proj = nn.Linear(dim, dim)
        self.proj_drop = nn.Dropout(proj_drop)
        nn.init.trunc_normal_(self.relative_position_bias_table, std=0.02)

    def forward(self, x, mask: Optional[torch.Tensor] = None):
        """
        Args:
            x: (B * num_windows, N, C) tokens, windows of one image consecutive.
            mask: (num_windows, N, N) additive mask of a shifted map, or None.
        """
        chunks = inference_chunks(x.shape[0], x.device, max(1, CHUNK_TOKENS // x.shape[1]))
        if chunks is None:
            return self._attention(x, mask)
        out = torch.empty_like(x)
        window = torch.arange(x.shape[0]) % mask.shape[0] if mask is not None else None
        for start, end in chunks:
            out[start:end] = self._attention(x[start:end], None if mask is None else mask[window[start:end]])
        return out

    def _attention(self, x, mask):
        """Attention within each window of ``x``; ``mask`` holds one (N, N) mask per window of an image or of ``x``."""
        Bw, N, C = x.shape
        head_dim = C // self.num_heads
        q, k, v = self.qkv(x).view(Bw, N, 3, self.num_heads, head_dim).permute(2, 0, 3, 1, 4).unbind(0)
        # Explicit attention in the released model's order of operations, so float32 results match it exactly.
        # The additions go in place into the fresh product, which backward does not need: no extra copies of the
        # (windows x heads x N x N) scores.
        attn = (q * self.scale) @ k.transpose(-2, -1)
        bias = self.relative_position_bias_table[self.relative_position_index.view(-1)]
        attn += bias.view(N, N, self.num_heads).permute(2, 0, 1).unsqueeze(0)
        if mask is not None:
            num_windows = mask.shape[0]
            # In place, through the result rather than the view's side effect, which export (tracing) would drop.
            attn = attn.view(Bw // num_windows, num_windows, self.num_heads, N, N).add_(mask[None, :, None])
            attn = attn.view(Bw, self.num_heads, N, N)
        attn = self.attn_drop(attn.softmax(dim=-1))
        x = (attn @ v).transpose(1, 2).reshape(Bw, N, C)
        return self.proj_drop(self.proj(x))


class Mlp(nn.Module):
    """The block's feed-forward network: Linear - GELU - Linear, with dropout after each."""

    def __init__(self, dim, hidden_dim, drop):
        super().__init__()
        self.fc1 = nn.Linear(dim, hidden_dim)
        self.act = nn.GELU()
        self.fc2 = nn.Linear(hidden_dim, dim)
        self.drop = nn.Dropout(drop)

    def forward(self, x):
        return apply_by_token_chunks(self._mlp, x)

    def _mlp(self, x):
        return self.drop(self.fc2(self.drop(self.act(self.fc1(x)))))


class SwinBlock(nn.Module):
    """Pre-norm transformer block with (shifted) window attention and stochastic depth on both branches."""

    def __init__(self, dim, num_heads, window_size, shift_size, mlp_ratio, qkv_bias, qk_scale, drop, attn_drop,
                 drop_path):
        super().__init__()
        self.window_size = window_size
        self.shift_size = shift_size
        self.norm1 = nn.LayerNorm(dim)
        self.attn = WindowAttention(dim, window_size, num_heads, qkv_bias, qk_scale, attn_drop, drop)
        self.drop_path = StochasticDepth(drop_path, "row")
        self.norm2 = nn.LayerNorm(dim)
        self.mlp = Mlp(dim, int(dim * mlp_ratio), drop)

    def forward(self, x, H: int, W: int, shift_mask: Optional[torch.Tensor]):
        """
        Args:
            x: (B, H * W, C) tokens of a (H, W) map.
            shift_mask: the stage's :func:`shifted_window_mask`; used by shifted blocks only.
        """
        B, L, C = x.shape
        ws, shift = self.window_size, self.shift_size
        y = self.norm1(x).view(B, H, W, C)
        # Zero tokens complete the last windows; they take part in attention, as in the original.
        y = F.pad(y, (0, 0, 0, -W % ws, 0, -H % ws))
        Hp, Wp = y.shape[1:3]
        if shift:
            y = torch.roll(y, shifts=(-shift, -shift), dims=(1, 2))
        y = self.attn(window_partition(y, ws), shift_mask if shift else None)
        y = window_reverse(y, ws, Hp, Wp)
        if shift:
            y = torch.roll(y, shifts=(shift, shift), dims=(1, 2))
        y = y[:, :H, :W].reshape(B, L, C)
        x = self.drop_path(y).add_(x)
        return self.drop_path(self.mlp(self.norm2(x))).add_(x)


class PatchMerging(nn.Module):
    """Each 2x2 neighbourhood -> one token: concatenate (4C), layer-normalize, project to 2C."""

    def __init__(self, dim):
        super().__init__()
        self.reduction = nn.Linear(4 * dim, 2 * dim, bias=False)
        self.norm = nn.LayerNorm(4 * dim)

    def forward(self, x, H: int, W: int):
        """(B, H * W, C) -> (B, ceil(H / 2) * ceil(W / 2), 2C); odd sizes are zero-padded bottom/right."""
        B, _, C = x.shape
        x = F.pad(x.view(B, H, W, C), (0, 0, 0, W % 2, 0, H % 2))
        # Channel order of the concatenation, fixed by the pretrained weights: (even row, even column),
        # (odd, even), (even, odd), (odd, odd).
        x = torch.cat([x[:, 0::2, 0::2], x[:, 1::2, 0::2], x[:, 0::2, 1::2], x[:, 1::2, 1::2]], dim=-1)
        return self.reduction(self.norm(x.view(B, -1, 4 * C)))


class SwinStage(nn.Module):
    """``depth`` blocks alternating regular and shifted windows, then optional patch merging."""

    def __init__(self, dim, depth, num_heads, window_size, drop_path: List[float], downsample, use_checkpoint,
                 **block_kwargs):
        super().__init__()
        self.window_size = window_size
        self.shift_size = window_size // 2
        self.use_checkpoint = use_checkpoint
        self.blocks = nn.ModuleList(
            SwinBlock(dim, num_heads, window_size, 0 if i % 2 == 0 else self.shift_size, drop_path=drop_path[i],
                      **block_kwargs)
            for i in range(depth)
        )
        self.downsample = PatchMerging(dim) if downsample else None

    def forward(self, x, H: int, W: int):
        """(B, H * W, C) -> (the blocks' output, its patch merging or None)."""
        shift_mask = None
        if self.shift_size and len(self.blocks) > 1:
            ws = self.window_size
            # Integer arithmetic: it stays symbolic when the sizes are traced (export).
            Hp, Wp = (H + ws - 1) // ws * ws, (W + ws - 1) // ws * ws
            shift_mask = shifted_window_mask(Hp, Wp, ws, self.shift_size, x.device).to(x.dtype)
        for block in self.blocks:
            if self.use_checkpoint and self.training:
                x = checkpoint(block, x, H, W, shift_mask, use_reentrant=False)
            else:
                x = block(x, H, W, shift_mask)
        if self.downsample is None:
            return x, None
        return x, self.downsample(x, H, W)


@BACKBONE_REGISTRY.register()
class D2SwinTransformer(Backbone):
    """
    Swin Transformer as a detectron2 backbone: stage i (0-based) outputs ``res{i+2}`` at stride
    ``patch_size * 2**i`` with ``embed_dim * 2**i`` channels, each normalized by its own LayerNorm ``norm{i}``.
    """

    @configurable
    def __init__(
        self,
        *,
        in_channels: int = 3,
        patch_size: int = 4,
        embed_dim: int = 96,
        depths=(2, 2, 6, 2),
        num_heads=(3, 6, 12, 24),
        window_size: int = 7,
        mlp_ratio: float = 4.0,
        qkv_bias: bool = True,
        qk_scale: Optional[float] = None,
        drop_rate: float = 0.0,
        attn_drop_rate: float = 0.0,
        drop_path_rate: float = 0.2,
        ape: bool = False,
        pretrain_img_size: int = 224,
        patch_norm: bool = True,
        out_features=("res2", "res3", "res4", "res5"),
        use_checkpoint: bool = False,
    ):
        """
        Args:
            in_channels: image channels.
            patch_size: side of the square patches embedded as tokens (the stride of the first stage).
            embed_dim: token width of the first stage; it doubles at every stage.
            depths, num_heads: number of blocks and attention heads of each stage.
            window_size: side of the square attention windows.
            mlp_ratio: hidden width of the feed-forward networks, relative to the token width.
            qkv_bias, qk_scale: bias of the query/key/value projection; attention scale (None: head_dim**-0.5).
            drop_rate, attn_drop_rate: dropout of projections/MLPs/embedding, and of attention probabilities.
            drop_path_rate: stochastic depth of the last block, increasing linearly from 0 over all blocks.
            ape: add a learned absolute position embedding, defined at ``pretrain_img_size`` and resized
                bicubically to the input.
            pretrain_img_size: image size of the absolute position embedding.
            patch_norm: layer-normalize the patch embedding.
            out_features: the stages to return, among ``res2`` ... ``res{len(depths)+1}``.
            use_checkpoint: recompute each block's activations in backward (gradient checkpointing) when training.
        """
        super().__init__()
        if len(depths) != len(num_heads):
            raise ValueError(
                f"MODEL.SWIN.DEPTHS {list(depths)} and NUM_HEADS {list(num_heads)} must list one value per stage"
            )
        num_stages = len(depths)
        dims = [embed_dim * 2**i for i in range(num_stages)]
        for dim, heads in zip(dims, num_heads):
            if dim % heads:
                raise ValueError(f"stage width {dim} is not divisible by its number of heads {heads}: "
                                 "choose MODEL.SWIN.EMBED_DIM and NUM_HEADS so that every stage divides")
        names = [f"res{i + 2}" for i in range(num_stages)]
        unknown = [name for name in out_features if name not in names]
        if unknown:
            raise ValueError(f"MODEL.SWIN.OUT_FEATURES has {unknown}; this Swin has stages {names}")

        self.patch_embed = PatchEmbed(patch_size, in_channels, embed_dim, patch_norm)
        if ape:
            grid = pretrain_img_size // patch_size
            self.absolute_pos_embed = nn.Parameter(torch.zeros(1, embed_dim, grid, grid))
            nn.init.trunc_normal_(self.absolute_pos_embed, std=0.02)
        else:
            self.absolute_pos_embed = None
        self.pos_drop = nn.Dropout(drop_rate)

        # Plain floats, computed on the CPU whatever the default device (the meta device holds no values).
        rates = torch.linspace(0, drop_path_rate, sum(depths), device="cpu").tolist()
        self.layers = nn.ModuleList(
            SwinStage(
                dims[i],
                depths[i],
                num_heads[i],
                window_size,
                drop_path=rates[sum(depths[:i]) : sum(depths[: i + 1])],
                downsample=i < num_stages - 1,
                use_checkpoint=use_checkpoint,
                mlp_ratio=mlp_ratio,
                qkv_bias=qkv_bias,
                qk_scale=qk_scale,
                drop=drop_rate,
                attn_drop=attn_drop_rate,
            )
            for i in range(num_stages)
        )
        for i, dim in enumerate(dims):
            self.add_module(f"norm{i}", nn.LayerNorm(dim))
        self.apply(self._init_linear)

        self._out_features = list(out_features)
        self._out_feature_channels = dict(zip(names, dims))
        self._out_feature_strides = {name: patch_size * 2**i for i, name in enumerate(names)}
        self._size_divisibility = patch_size * 2 ** (num_stages - 1)

    @staticmethod
    def _init_linear(module):
        if isinstance(module, nn.Linear):
            nn.init.trunc_normal_(module.weight, std=0.02)
            if module.bias is not None:
                nn.init.zeros_(module.bias)

    @classmethod
    def from_config(cls, cfg, input_shape):
        sw = cfg.MODEL.SWIN
        return {
            "in_channels": input_shape.channels,
            "patch_size": sw.PATCH_SIZE,
            "embed_dim": sw.EMBED_DIM,
            "depths": sw.DEPTHS,
            "num_heads": sw.NUM_HEADS,
            "window_size": sw.WINDOW_SIZE,
            "mlp_ratio": sw.MLP_RATIO,
            "qkv_bias": sw.QKV_BIAS,
            "qk_scale": sw.QK_SCALE,
            "drop_rate": sw.DROP_RATE,
            "attn_drop_rate": sw.ATTN_DROP_RATE,
            "drop_path_rate": sw.DROP_PATH_RATE,
            "ape": sw.APE,
            "pretrain_img_size": sw.PRETRAIN_IMG_SIZE,
            "patch_norm": sw.PATCH_NORM,
            "out_features": sw.OUT_FEATURES,
            "use_checkpoint": sw.USE_CHECKPOINT,
        }

    @property
    def size_divisibility(self):
        """Inputs padded to a multiple of the deepest stride (32) need no padding inside the network."""
        return self._size_divisibility

    def forward(self, x):
        """(N, C, H, W) normalized images -> {name: (N, C_i, ceil(H / stride_i), ceil(W / stride_i))}."""
        if x.dim() != 4:
            raise ValueError(f"D2SwinTransformer takes a batch of images (N, C, H, W); got shape {tuple(x.shape)}")
        x = self.patch_embed(x)
        H, W = x.shape[-2:]
        if self.absolute_pos_embed is not None:
            x = x + F.interpolate(self.absolute_pos_embed, size=(H, W), mode="bicubic")
        x = self.pos_drop(x.flatten(2).transpose(1, 2))
        outputs = {}
        for i, stage in enumerate(self.layers):
            features, x = stage(x, H, W)
            name = f"res{i + 2}"
            if name in self._out_features:
                features = getattr(self, f"norm{i}")(features)
                outputs[name] = features.view(-1, H, W, features.shape[-1]).permute(0, 3, 1, 2).contiguous()
            H, W = (H + 1) // 2, (W + 1) // 2
        return outputs
