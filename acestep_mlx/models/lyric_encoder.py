"""The lyric encoder of ACE-Step v1: a WeNet/CosyVoice-style Conformer (spec section 3).

Only the parts the released model uses exist: a "LinearEmbed" input layer (Linear -> LayerNorm ->
times sqrt(width)), ESPnet relative positional encodings, and pre-norm layers made of relative
position multi-head self-attention and a SiLU feed-forward (no convolution module, no macaron
feed-forward), followed by `after_norm`. Module paths equal the PyTorch state-dict names
(`embed.out.0`, `encoders.{j}.self_attn.linear_q`, `encoders.{j}.feed_forward.w_1`, ...).

Dropout is not implemented: the port runs the encoder in eval mode.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import mlx.core as mx
import mlx.nn as nn
import numpy as np


@dataclass(frozen=True)
class LyricEncoderConfig:
    """Sizes of the Conformer. Upstream fixes 1024 / 16 heads / 4096 / 6 blocks in code."""

    input_size: int
    output_size: int = 1024
    attention_heads: int = 16
    linear_units: int = 4096
    num_blocks: int = 6
    layer_norm_eps: float = 1e-5

    def __post_init__(self) -> None:
        if self.output_size % self.attention_heads:
            raise ValueError(
                f"lyric encoder width {self.output_size} is not divisible by its "
                f"{self.attention_heads} attention heads; fix lyric_hidden_size or "
                "lyric_encoder_attention_heads in config.json"
            )


def scale_like_torch(x: mx.array, factor: float | mx.array) -> mx.array:
    """`x * factor` computed in float32 and cast back, as PyTorch does for a Python scalar.

    (MLX would round a Python scalar to x's dtype first; in bfloat16 that changes the factor.)
    A per-item factor of shape [B] is broadcast over the remaining axes.
    """
    if isinstance(factor, mx.array) and factor.ndim == 1:
        factor = factor.reshape((-1,) + (1,) * (x.ndim - 1))
    if x.dtype == mx.float32:
        return x * factor
    return (x.astype(mx.float32) * factor).astype(x.dtype)


def espnet_div_term(width: int) -> np.ndarray:
    """`exp(-2i ln(10000) / width)` in float32 (exponent float32 as upstream, exp correctly
    rounded via float64; MLX's float32 exp is an ulp off, which long sequences amplify)."""
    exponent = np.arange(0, width, 2, dtype=np.float32) * np.float32(-(math.log(10000.0) / width))
    return np.exp(exponent.astype(np.float64)).astype(np.float32)


def espnet_rel_positional_encoding(length: int, div_term: mx.array) -> mx.array:
    """ESPnet "new style" relative PE, [1, 2L-1, width] in float32.

    Row j holds relative position r = L-1-j (from +(L-1) down to -(L-1)):
    `PE(r)[2i] = sin(r * w_i)`, `PE(r)[2i+1] = cos(r * w_i)`, `w_i = div_term[i]`.
    """
    rel = mx.arange(length - 1, -length, -1, dtype=mx.float32)
    ang = rel[:, None] * div_term[None, :]
    pe = mx.stack([mx.sin(ang), mx.cos(ang)], axis=-1).reshape(2 * length - 1, -1)
    return pe[None]


def rel_shift_indices(length: int) -> mx.array:
    """Column of the 2L-1 wide score row that holds relative position i - j for query i, key j."""
    i = mx.arange(length)[:, None]
    j = mx.arange(length)[None, :]
    return (length - 1) - i + j


class LinearEmbed(nn.Module):
    """`out.0` Linear -> `out.1` LayerNorm -> (dropout) -> times sqrt(width)."""

    def __init__(self, idim: int, odim: int, eps: float = 1e-5):
        super().__init__()
        self.out = [nn.Linear(idim, odim), nn.LayerNorm(odim, eps=eps)]
        self._xscale = math.sqrt(odim)

    def __call__(self, x: mx.array) -> mx.array:
        x = self.out[1](self.out[0](x))
        return scale_like_torch(x, self._xscale)


class RelPositionMultiHeadedAttention(nn.Module):
    """Transformer-XL style attention with learned biases u/v and relative positions."""

    def __init__(self, n_head: int, n_feat: int):
        super().__init__()
        self.h = n_head
        self.d_k = n_feat // n_head
        self.linear_q = nn.Linear(n_feat, n_feat)
        self.linear_k = nn.Linear(n_feat, n_feat)
        self.linear_v = nn.Linear(n_feat, n_feat)
        self.linear_out = nn.Linear(n_feat, n_feat)
        self.linear_pos = nn.Linear(n_feat, n_feat, bias=False)
        scale = math.sqrt(6.0 / (n_head + self.d_k))  # xavier uniform, replaced by checkpoint
        self.pos_bias_u = mx.random.uniform(-scale, scale, (n_head, self.d_k))
        self.pos_bias_v = mx.random.uniform(-scale, scale, (n_head, self.d_k))

    def __call__(
        self,
        x: mx.array,
        key_mask: mx.array,
        pos_emb: mx.array,
        q_scale: float | mx.array | None = None,
    ) -> mx.array:
        """x [B, L, D], key_mask [B, L] bool (False = padding), pos_emb [1, 2L-1, D].

        `q_scale` multiplies the linear_q output before the u/v biases are added (ERG).
        """
        B, L, _ = x.shape
        h, d_k = self.h, self.d_k
        q = self.linear_q(x)
        if q_scale is not None:
            q = scale_like_torch(q, q_scale)
        q = q.reshape(B, L, h, d_k)
        k = self.linear_k(x).reshape(B, L, h, d_k).transpose(0, 2, 1, 3)
        v = self.linear_v(x).reshape(B, L, h, d_k).transpose(0, 2, 1, 3)
        p = self.linear_pos(pos_emb).reshape(pos_emb.shape[0], -1, h, d_k).transpose(0, 2, 1, 3)

        q_u = (q + self.pos_bias_u).transpose(0, 2, 1, 3)
        q_v = (q + self.pos_bias_v).transpose(0, 2, 1, 3)
        matrix_ac = q_u @ k.transpose(0, 1, 3, 2)  # [B, h, L, L]
        matrix_bd = q_v @ p.transpose(0, 1, 3, 2)  # [B, h, L, 2L-1]
        if matrix_bd.shape[-1] != L:
            idx = rel_shift_indices(L)[None, None]
            matrix_bd = mx.take_along_axis(
                matrix_bd, mx.broadcast_to(idx, matrix_ac.shape), axis=-1
            )
        scores = (matrix_ac + matrix_bd) / math.sqrt(d_k)

        keep = key_mask[:, None, None, :]
        scores = mx.where(keep, scores, mx.array(-mx.inf, scores.dtype))
        # rows whose keys are all padding: finite scores, so neither the forward softmax nor its
        # gradient produces NaN (their weights are zeroed just below, as in the original)
        scores = mx.where(mx.any(keep, axis=-1, keepdims=True), scores,
                          mx.array(0, scores.dtype))
        attn = mx.softmax(scores, axis=-1, precise=True)
        attn = mx.where(keep, attn, mx.array(0, attn.dtype))  # all-masked rows: 0, not NaN
        out = (attn @ v).transpose(0, 2, 1, 3).reshape(B, L, h * d_k)
        return self.linear_out(out)


class PositionwiseFeedForward(nn.Module):
    def __init__(self, idim: int, hidden_units: int):
        super().__init__()
        self.w_1 = nn.Linear(idim, hidden_units)
        self.w_2 = nn.Linear(hidden_units, idim)

    def __call__(self, x: mx.array) -> mx.array:
        return self.w_2(nn.silu(self.w_1(x)))


class ConformerEncoderLayer(nn.Module):
    """Pre-norm: x += MHA(norm_mha(x)); x += FFN(norm_ff(x))."""

    def __init__(self, size: int, heads: int, linear_units: int, eps: float):
        super().__init__()
        self.self_attn = RelPositionMultiHeadedAttention(heads, size)
        self.feed_forward = PositionwiseFeedForward(size, linear_units)
        self.norm_ff = nn.LayerNorm(size, eps=eps)
        self.norm_mha = nn.LayerNorm(size, eps=eps)

    def __call__(
        self,
        x: mx.array,
        key_mask: mx.array,
        pos_emb: mx.array,
        q_scale: float | mx.array | None = None,
    ) -> mx.array:
        x = x + self.self_attn(self.norm_mha(x), key_mask, pos_emb, q_scale)
        return x + self.feed_forward(self.norm_ff(x))


class ConformerEncoder(nn.Module):
    """`ConformerEncoder(input_size, static_chunk_size=0)` at inference (full context)."""

    def __init__(self, config: LyricEncoderConfig):
        super().__init__()
        self.config = config
        d = config.output_size
        self.embed = LinearEmbed(config.input_size, d, config.layer_norm_eps)
        self.encoders = [
            ConformerEncoderLayer(
                d, config.attention_heads, config.linear_units, config.layer_norm_eps
            )
            for _ in range(config.num_blocks)
        ]
        self.after_norm = nn.LayerNorm(d, eps=config.layer_norm_eps)
        self._div_term = mx.array(espnet_div_term(d))

    def __call__(
        self,
        xs: mx.array,
        pad_mask: mx.array,
        erg_layers: tuple[int, ...] = (),
        erg_tau: float | mx.array = 0.01,
    ) -> tuple[mx.array, mx.array]:
        """xs [B, L, input_size], pad_mask [B, L] (nonzero = token) -> (ys [B, L, D],
        mask [B, 1, L]).

        `erg_layers`: indices of the layers whose linear_q output is multiplied by `erg_tau`
        (ERG, upstream uses layers 4 and 5 with tau 0.01). `erg_tau` may be an array [B] to scale
        some batch items only (1.0 leaves an item unchanged, bit for bit).
        """
        if xs.ndim != 3 or pad_mask.shape != xs.shape[:2]:
            raise ValueError(
                f"lyric encoder expects xs [B, L, D] and pad_mask [B, L], got {list(xs.shape)} "
                f"and {list(pad_mask.shape)}"
            )
        bad = [i for i in erg_layers if not 0 <= i < len(self.encoders)]
        if bad:
            raise ValueError(
                f"ERG layer index {bad} out of range: the lyric encoder has "
                f"{len(self.encoders)} layers"
            )
        key_mask = pad_mask.astype(mx.bool_)
        L = xs.shape[1]
        x = self.embed(xs)
        pos_emb = espnet_rel_positional_encoding(L, self._div_term).astype(x.dtype)
        for j, layer in enumerate(self.encoders):
            x = layer(x, key_mask, pos_emb, erg_tau if j in erg_layers else None)
        return self.after_norm(x), key_mask[:, None, :]
