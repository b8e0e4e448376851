"""UMT5 text encoder (encoder only), as used by ACE-Step v1 for the prompt ("tags").

Matches `transformers.UMT5EncoderModel` in eval mode (dropout inactive):

* pre-norm T5 blocks: T5 RMSNorm (no mean, no bias; variance in float32), self-attention without
  1/sqrt(d) scaling and with a relative position bias table in EVERY layer (UMT5, unlike T5), then
  a gated-GELU feed-forward `wo(gelu_tanh(wi_0 x) * wi_1 x)`; `final_layer_norm` at the end;
* padding enters as an additive bias `(1 - mask) * finfo(dtype).min`, softmax in float32;
* no embedding scaling.

The computation dtype is the dtype of the loaded weights (float32 or bfloat16). In bfloat16 the
activations stay bfloat16 except where the original upcasts: RMSNorm variance and normalisation in
float32 (then cast back) and the softmax in float32 (then cast back).

Module paths equal the PyTorch state-dict names (`shared`,
`encoder.block.3.layer.0.SelfAttention.q`, ...), so the conversion table is the identity.
`encoder.embed_tokens` is tied to `shared` and is not a separate parameter.

ERG ("null" text embedding for the guidance's unconditional branch) is an explicit option of
`__call__`: the query projections of the chosen blocks are multiplied by `erg_tau`.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

import mlx.core as mx
import mlx.nn as nn
import numpy as np

from acestep_mlx.configs import ConfigError, config_from_dict

ERG_LAYERS = (8, 9)  # encoder blocks whose query is scaled for the ERG "null" embedding
ERG_TAU = 0.01


@dataclass(frozen=True)
class UMT5Config:
    """The fields of `umt5-base/config.json` the encoder needs."""

    vocab_size: int
    d_model: int
    d_kv: int
    d_ff: int
    num_layers: int
    num_heads: int
    relative_attention_num_buckets: int = 32
    relative_attention_max_distance: int = 128
    layer_norm_epsilon: float = 1e-6
    feed_forward_proj: str = "gated-gelu"

    def __post_init__(self) -> None:
        if self.feed_forward_proj != "gated-gelu":
            raise ConfigError(
                f"umt5-base/config.json: feed_forward_proj={self.feed_forward_proj!r} is not "
                "supported; the ACE-Step text encoder (google/umt5-base) uses 'gated-gelu'"
            )
        for name in ("vocab_size", "d_model", "d_kv", "d_ff", "num_layers", "num_heads"):
            if int(getattr(self, name)) <= 0:
                raise ConfigError(f"umt5-base/config.json: {name} must be positive")

    @classmethod
    def from_dict(cls, data: dict, source: str = "umt5-base/config.json") -> UMT5Config:
        return config_from_dict(cls, data, source)


def relative_position_buckets(
    query_length: int, key_length: int, num_buckets: int, max_distance: int
) -> np.ndarray:
    """Bidirectional T5 buckets of (key position - query position), shape [q, k] int32.

    Half the buckets per direction (positive offsets get `+num_buckets // 2`); exact buckets for
    |r| < num_buckets // 4, log-spaced buckets up to `max_distance`, capped at the last one.
    The log is taken in float64: it agrees with the original float32 computation at every offset
    (exactly at the bucket boundaries r = 16, 32, 64 of the default configuration, see tests).
    """
    rel = np.arange(key_length)[None, :] - np.arange(query_length)[:, None]
    half = num_buckets // 2
    buckets = (rel > 0).astype(np.int64) * half
    dist = np.abs(rel)
    max_exact = half // 2
    with np.errstate(divide="ignore"):
        log_ratio = np.log(np.maximum(dist, 1) / max_exact) / math.log(max_distance / max_exact)
    large = max_exact + (log_ratio * (half - max_exact)).astype(np.int64)
    large = np.minimum(large, half - 1)
    buckets += np.where(dist < max_exact, dist, large)
    return buckets.astype(np.int32)


def gelu_new(x: mx.array) -> mx.array:
    """tanh-approximated GELU (transformers' `gelu_new`)."""
    return 0.5 * x * (1.0 + mx.tanh(math.sqrt(2.0 / math.pi) * (x + 0.044715 * (x * x * x))))


class UMT5LayerNorm(nn.Module):
    """T5 RMSNorm: `weight * x / sqrt(mean(x^2) + eps)`, statistics in float32."""

    def __init__(self, dims: int, eps: float = 1e-6):
        super().__init__()
        self.weight = mx.ones((dims,))
        self.eps = eps

    def __call__(self, x: mx.array) -> mx.array:
        variance = mx.mean(mx.square(x.astype(mx.float32)), axis=-1, keepdims=True)
        y = x.astype(mx.float32) * mx.rsqrt(variance + self.eps)
        return self.weight * y.astype(self.weight.dtype)


class UMT5Attention(nn.Module):
    """Self-attention with its own relative position bias table; no 1/sqrt(d) scaling."""

    def __init__(self, cfg: UMT5Config):
        super().__init__()
        inner = cfg.num_heads * cfg.d_kv
        self.n_heads = cfg.num_heads
        self.d_kv = cfg.d_kv
        self.q = nn.Linear(cfg.d_model, inner, bias=False)
        self.k = nn.Linear(cfg.d_model, inner, bias=False)
        self.v = nn.Linear(cfg.d_model, inner, bias=False)
        self.o = nn.Linear(inner, cfg.d_model, bias=False)
        self.relative_attention_bias = nn.Embedding(
            cfg.relative_attention_num_buckets, cfg.num_heads
        )

    def _heads(self, x: mx.array) -> mx.array:
        b, n, _ = x.shape
        return x.reshape(b, n, self.n_heads, self.d_kv).transpose(0, 2, 1, 3)

    def __call__(
        self, x: mx.array, buckets: mx.array, mask_bias: mx.array, q_scale: float | None = None
    ) -> mx.array:
        b, n, _ = x.shape
        q = self.q(x)
        if q_scale is not None:
            q = q * q_scale  # ERG: the original scales the projection output in place
        q, k, v = self._heads(q), self._heads(self.k(x)), self._heads(self.v(x))
        scores = q @ k.transpose(0, 1, 3, 2)  # [B, H, N, N]
        bias = self.relative_attention_bias(buckets).transpose(2, 0, 1)[None]  # [1, H, N, N]
        scores = scores + (bias + mask_bias)
        weights = mx.softmax(scores.astype(mx.float32), axis=-1).astype(scores.dtype)
        out = (weights @ v).transpose(0, 2, 1, 3).reshape(b, n, -1)
        return self.o(out)


class UMT5LayerSelfAttention(nn.Module):
    def __init__(self, cfg: UMT5Config):
        super().__init__()
        self.SelfAttention = UMT5Attention(cfg)
        self.layer_norm = UMT5LayerNorm(cfg.d_model, cfg.layer_norm_epsilon)

    def __call__(
        self, x: mx.array, buckets: mx.array, mask_bias: mx.array, q_scale: float | None = None
    ) -> mx.array:
        return x + self.SelfAttention(self.layer_norm(x), buckets, mask_bias, q_scale)


class UMT5DenseGatedActDense(nn.Module):
    def __init__(self, cfg: UMT5Config):
        super().__init__()
        self.wi_0 = nn.Linear(cfg.d_model, cfg.d_ff, bias=False)
        self.wi_1 = nn.Linear(cfg.d_model, cfg.d_ff, bias=False)
        self.wo = nn.Linear(cfg.d_ff, cfg.d_model, bias=False)

    def __call__(self, x: mx.array) -> mx.array:
        h = gelu_new(self.wi_0(x)) * self.wi_1(x)
        return self.wo(h.astype(self.wo.weight.dtype))


class UMT5LayerFF(nn.Module):
    def __init__(self, cfg: UMT5Config):
        super().__init__()
        self.DenseReluDense = UMT5DenseGatedActDense(cfg)
        self.layer_norm = UMT5LayerNorm(cfg.d_model, cfg.layer_norm_epsilon)

    def __call__(self, x: mx.array) -> mx.array:
        return x + self.DenseReluDense(self.layer_norm(x))


class UMT5Block(nn.Module):
    def __init__(self, cfg: UMT5Config):
        super().__init__()
        self.layer = [UMT5LayerSelfAttention(cfg), UMT5LayerFF(cfg)]

    def __call__(
        self, x: mx.array, buckets: mx.array, mask_bias: mx.array, q_scale: float | None = None
    ) -> mx.array:
        x = self.layer[0](x, buckets, mask_bias, q_scale)
        return self.layer[1](x)


class UMT5Stack(nn.Module):
    """`encoder.*`: the blocks and the final norm (the token embedding lives in `shared`)."""

    def __init__(self, cfg: UMT5Config):
        super().__init__()
        self.block = [UMT5Block(cfg) for _ in range(cfg.num_layers)]
        self.final_layer_norm = UMT5LayerNorm(cfg.d_model, cfg.layer_norm_epsilon)


class UMT5Encoder(nn.Module):
    """`UMT5EncoderModel`: token ids [B, L] + mask [B, L] -> last_hidden_state [B, L, d_model]."""

    def __init__(self, cfg: UMT5Config):
        super().__init__()
        self.config = cfg
        self.shared = nn.Embedding(cfg.vocab_size, cfg.d_model)
        self.encoder = UMT5Stack(cfg)

    @property
    def dtype(self) -> mx.Dtype:
        """The computation dtype (that of the loaded weights)."""
        return self.shared.weight.dtype

    def _check_inputs(self, input_ids, attention_mask) -> tuple[mx.array, mx.array]:
        ids = mx.array(input_ids) if not isinstance(input_ids, mx.array) else input_ids
        if ids.ndim != 2:
            raise ValueError(
                f"input_ids must have shape [batch, length], got {tuple(ids.shape)}; "
                "pass a batch of token ids (e.g. from PromptTokenizer)"
            )
        if not mx.issubdtype(ids.dtype, mx.integer):
            raise TypeError(f"input_ids must be integer token ids, got dtype {ids.dtype}")
        if ids.size == 0:
            raise ValueError("input_ids is empty; tokenize at least one prompt")
        lo, hi = mx.min(ids).item(), mx.max(ids).item()
        if lo < 0 or hi >= self.config.vocab_size:
            raise ValueError(
                f"input_ids hold values in [{lo}, {hi}] but the vocabulary has "
                f"{self.config.vocab_size} entries; use the tokenizer of this checkpoint"
            )
        if attention_mask is None:
            mask = mx.ones(ids.shape, dtype=self.dtype)
        else:
            mask = (
                attention_mask
                if isinstance(attention_mask, mx.array)
                else mx.array(np.asarray(attention_mask))
            )
            if tuple(mask.shape) != tuple(ids.shape):
                raise ValueError(
                    f"attention_mask shape {tuple(mask.shape)} does not match input_ids shape "
                    f"{tuple(ids.shape)}; pass the mask returned with the ids"
                )
        return ids.astype(mx.int32), mask

    def _erg_scales(
        self, erg: bool, erg_layers: Sequence[int], erg_tau: float
    ) -> list[float | None]:
        scales: list[float | None] = [None] * len(self.encoder.block)
        if not erg:
            return scales
        for i in erg_layers:
            if not 0 <= int(i) < len(scales):
                raise ValueError(
                    f"ERG layer {i} does not exist: the encoder has {len(scales)} blocks "
                    f"(valid indices 0..{len(scales) - 1})"
                )
            scales[int(i)] = float(erg_tau)
        return scales

    def __call__(
        self,
        input_ids,
        attention_mask=None,
        erg: bool = False,
        erg_layers: Sequence[int] = ERG_LAYERS,
        erg_tau: float = ERG_TAU,
    ) -> mx.array:
        """Encode token ids.

        Args:
            input_ids: [B, L] integer ids (numpy or MLX).
            attention_mask: [B, L], 1 = token, 0 = padding (default: all ones).
            erg: compute the ERG "null" embedding: the query projections of the blocks in
                `erg_layers` (0-based) are multiplied by `erg_tau` (ACE-Step's
                `get_text_embeddings_null`, defaults blocks 8 and 9 and tau 0.01).
        Returns:
            last_hidden_state [B, L, d_model] in the weights' dtype.
        """
        ids, mask = self._check_inputs(input_ids, attention_mask)
        scales = self._erg_scales(erg, erg_layers, erg_tau)
        dtype = self.dtype
        n = ids.shape[1]
        cfg = self.config
        buckets = mx.array(
            relative_position_buckets(
                n, n, cfg.relative_attention_num_buckets, cfg.relative_attention_max_distance
            )
        )
        mask_bias = ((1.0 - mask.astype(dtype)) * mx.finfo(dtype).min)[:, None, None, :]
        x = self.shared(ids)
        for block, scale in zip(self.encoder.block, scales, strict=True):
            x = block(x, buckets, mask_bias, scale)
        return self.encoder.final_layer_norm(x)


def build_umt5(config: dict) -> UMT5Encoder:
    """The encoder from the original `umt5-base/config.json` dict (parameters not evaluated)."""
    return UMT5Encoder(UMT5Config.from_dict(config))
