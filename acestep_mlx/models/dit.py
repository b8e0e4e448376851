"""The ACE-Step v1 DiT (`ACEStepTransformer2DModel`, spec section 2) in MLX.

`encode` turns the conditions (UMT5 text states, speaker embedding, lyric ids) into encoder
states once per generation; `decode` is one velocity prediction on latents [B, 8, 16, T] (PyTorch
layout) and is what the sampler calls every step. Module paths equal the PyTorch state-dict names
(`transformer_blocks.{i}.attn.to_q`, `...cross_attn.to_out.0`, `t_block.1`,
`proj_in.early_conv_layers.0`, `final_layer.linear`, `projectors.{k}.{0,2,4}`,
`lyric_encoder.encoders.{j}.self_attn.linear_q`, ...), so the converter's key table is mostly the
identity and LoRA keys map directly.

Numerics follow the original, quirks included: the timestep sinusoid is cos-first and computed in
float32; the patch embedding's GroupNorm normalises over the whole clip; RoPE pairs adjacent
elements but indexes its frequencies half-split (`rope_apply`); the linear self-attention runs in
float32 with a 1e-15 denominator; the cross-attention sees the un-normalised residual stream and
applies RoPE to queries (latent positions) and keys (encoder positions); the final layer is
modulated by the timestep embedding, not by `t_block`'s output.

Precision: the model computes in the dtype of its weights (float32, or bfloat16 for the
pipeline's default mode, spec section 12). RoPE tables are computed in float32 and rounded to that
dtype; RMS/Group norm statistics, the RoPE products and the linear-attention core are float32.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import mlx.core as mx
import mlx.nn as nn
import numpy as np

from acestep_mlx.configs import ConfigError, config_from_dict
from acestep_mlx.models.lyric_encoder import (
    ConformerEncoder,
    LyricEncoderConfig,
    scale_like_torch,
)

# ERG ("entropy rectifying guidance") hooks of the original pipeline (spec 8.5)
ERG_TAU = 0.01
ERG_LYRIC_LAYERS = (4, 5)  # lyric_encoder.encoders[4..5].self_attn.linear_q
ERG_DIFFUSION_BLOCKS = (15, 16, 17, 18, 19)  # transformer_blocks[15..19].{attn,cross_attn}.to_q

LINEAR_ATTN_EPS = 1e-15
NORM_EPS = 1e-6
GROUP_NORM_GROUPS = 32
TIME_PROJ_CHANNELS = 256


@dataclass(frozen=True)
class DiTConfig:
    """`ace_step_transformer/config.json`. `inner_dim` is ignored (width = heads * head_dim)."""

    num_layers: int
    num_attention_heads: int
    attention_head_dim: int
    in_channels: int
    out_channels: int
    mlp_ratio: float
    patch_size: tuple[int, int]
    speaker_embedding_dim: int
    text_embedding_dim: int
    lyric_encoder_vocab_size: int
    lyric_hidden_size: int
    ssl_encoder_depths: tuple[int, ...]
    ssl_latent_dims: tuple[int, ...]
    ssl_names: tuple[str, ...] = ("mert", "m-hubert")
    rope_theta: float = 1000000.0
    max_position: int = 32768
    max_height: int = 16
    max_width: int = 4096
    # not in the real config.json (upstream hard-codes them); the tiny fixture sets them
    lyric_encoder_attention_heads: int = 16
    lyric_encoder_linear_units: int = 4096
    lyric_encoder_num_blocks: int = 6

    @property
    def width(self) -> int:
        return self.num_attention_heads * self.attention_head_dim

    @property
    def ff_hidden(self) -> int:
        return int(self.width * self.mlp_ratio)

    def lyric_encoder_config(self) -> LyricEncoderConfig:
        return LyricEncoderConfig(
            input_size=self.lyric_hidden_size,
            output_size=self.lyric_hidden_size,
            attention_heads=self.lyric_encoder_attention_heads,
            linear_units=self.lyric_encoder_linear_units,
            num_blocks=self.lyric_encoder_num_blocks,
        )

    def validate(self, source: str = "config.json") -> None:
        if len(self.patch_size) != 2 or self.patch_size[1] != 1:
            raise ConfigError(
                f"{source}: patch_size {list(self.patch_size)} is not supported; "
                "ACE-Step v1 uses [16, 1] (one token per latent frame)"
            )
        if (self.in_channels * 256) % GROUP_NORM_GROUPS:
            raise ConfigError(f"{source}: in_channels * 256 must be divisible by 32 (GroupNorm)")
        if self.attention_head_dim % 2:
            raise ConfigError(f"{source}: attention_head_dim must be even for RoPE")
        if not (len(self.ssl_latent_dims) == len(self.ssl_names)):
            raise ConfigError(f"{source}: ssl_latent_dims and ssl_names differ in length")


def dit_config_from_dict(data: dict, source: str = "ace_step_transformer/config.json") -> DiTConfig:
    cfg = config_from_dict(DiTConfig, data, source)
    cfg.validate(source)
    return cfg


# ---------------------------------------------------------------------------------------------
# small numerics helpers


def timestep_frequencies(channels: int = TIME_PROJ_CHANNELS) -> np.ndarray:
    """`exp(-ln(10000) k / (channels/2))` in float32, k = 0..channels/2-1.

    The exponent is formed in float32 as the original does; the exponential is evaluated in
    float64 and rounded (correctly rounded, like PyTorch's CPU exp; MLX's float32 exp is off by an
    ulp for most entries, which at t ~ 1000 moves the angle by ~6e-5).
    """
    half = channels // 2
    exponent = (np.float32(-math.log(10000)) * np.arange(half, dtype=np.float32)) / np.float32(half)
    return np.exp(exponent.astype(np.float64)).astype(np.float32)


def timestep_sinusoid(timestep: mx.array, freqs: mx.array) -> mx.array:
    """diffusers `Timesteps(256, flip_sin_to_cos=True, downscale_freq_shift=0)`, float32:
    `concat(cos(t f), sin(t f))` (cos first), `f` from `timestep_frequencies`."""
    args = timestep.astype(mx.float32)[:, None] * freqs[None, :]
    return mx.concatenate([mx.cos(args), mx.sin(args)], axis=-1)


def rope_inv_freq(dim: int, base: float) -> np.ndarray:
    """`1 / base^(2j/dim)`, j = 0..dim/2-1, float32 (Qwen2RotaryEmbedding); the power is
    evaluated in float64 and rounded, the exponent and the reciprocal are float32 as upstream."""
    exps = np.arange(0, dim, 2, dtype=np.int64).astype(np.float32) / np.float32(dim)
    powed = np.power(np.float64(np.float32(base)), exps.astype(np.float64)).astype(np.float32)
    return (np.float32(1.0) / powed).astype(np.float32)


def rope_tables(length: int, inv_freq: mx.array, dtype: mx.Dtype) -> tuple[mx.array, mx.array]:
    """(cos, sin) [length, dim]: angles `p * inv_freq` in float32, half-split `concat(a, a)`,
    rounded to `dtype` (the original's buffers are cast with the model)."""
    ang = mx.arange(length, dtype=mx.float32)[:, None] * inv_freq[None, :]
    emb = mx.concatenate([ang, ang], axis=-1)
    return mx.cos(emb).astype(dtype), mx.sin(emb).astype(dtype)


@mx.compile
def rope_apply(x: mx.array, cos: mx.array, sin: mx.array) -> mx.array:
    """The original's MIXED RoPE on x [..., S, D] with tables [S, D] (spec 2.6).

    `rot(x) = [-x1, x0, -x3, x2, ...]` pairs ADJACENT elements, while the tables are half-split,
    so element d uses angle index d mod D/2. Products in float32, result in x's dtype.
    """
    pairs = x.reshape(*x.shape[:-1], -1, 2)
    rotated = mx.stack([-pairs[..., 1], pairs[..., 0]], axis=-1).reshape(x.shape)
    out = x.astype(mx.float32) * cos + rotated.astype(mx.float32) * sin
    return out.astype(x.dtype)


def rms_norm(x: mx.array, eps: float = NORM_EPS) -> mx.array:
    """Non-affine RMSNorm: statistics and product in float32, result in x's dtype
    (`mx.fast.rms_norm` accumulates in float32 and rounds once, like the original)."""
    return mx.fast.rms_norm(x, None, eps)


@mx.compile
def modulate(x: mx.array, scale: mx.array, shift: mx.array) -> mx.array:
    """adaLN: `rms_norm(x) * (1 + scale) + shift` (one fused kernel)."""
    return rms_norm(x) * (1 + scale) + shift


@mx.compile
def gated_residual(x: mx.array, gate: mx.array, y: mx.array) -> mx.array:
    """`x + gate * y` (one fused kernel)."""
    return x + gate * y


@mx.compile
def linear_attention_core(q: mx.array, k: mx.array, v: mx.array, m: mx.array) -> mx.array:
    """ReLU linear attention on [B, H, T, Dh] (RoPE already applied), mask m [B, 1, T, 1]:
    float32 `relu(q) (relu(k)^T [v | 1])`, then divided by the last column + 1e-15."""
    q = nn.relu(q * m).astype(mx.float32)
    k = nn.relu(k * m).astype(mx.float32)
    v = (v * m).astype(mx.float32)
    ones = mx.ones((*v.shape[:-1], 1), dtype=mx.float32)
    v_aug = mx.concatenate([v, ones], axis=-1)  # [B, H, T, Dh+1]
    kv = k.transpose(0, 1, 3, 2) @ v_aug  # [B, H, Dh, Dh+1]
    y = q @ kv  # [B, H, T, Dh+1]
    return y[..., :-1] / (y[..., -1:] + LINEAR_ATTN_EPS)


@mx.compile
def glu_depthwise(x: mx.array, weight: mx.array, bias: mx.array) -> mx.array:
    """GLUMBConv middle: silu -> depthwise conv (k taps, zero padding, along T) -> `a * silu(g)`.

    x [B, T, 2H] (the inverted conv output), weight [2H, k, 1], bias [2H] -> [B, T, H]."""
    x = nn.silu(x)
    K = weight.shape[1]
    T = x.shape[1]
    pad = K // 2
    xp = mx.pad(x, [(0, 0), (pad, pad), (0, 0)])
    w = weight[:, :, 0].T  # [K, C]
    y = xp[:, 0:T] * w[0]
    for j in range(1, K):
        y = y + xp[:, j : j + T] * w[j]
    y = y + bias
    hidden = y.shape[-1] // 2
    return y[..., :hidden] * nn.silu(y[..., hidden:])


def linear_interpolate_indices(n_in: int, n_out: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """`F.interpolate(mode="linear", align_corners=False)` source indices and weights."""
    scale = np.float32(n_in) / np.float32(n_out)
    src = (np.arange(n_out, dtype=np.float32) + np.float32(0.5)) * scale - np.float32(0.5)
    src = np.maximum(src, np.float32(0.0))
    i0 = np.minimum(src.astype(np.int64), n_in - 1)
    lam = np.clip(src - i0.astype(np.float32), 0.0, 1.0).astype(np.float32)
    i1 = np.where(i0 < n_in - 1, i0 + 1, i0)
    return i0, i1, lam


def l2_normalize(x: mx.array, eps: float = 1e-12) -> mx.array:
    """`F.normalize(x, dim=-1)`."""
    norm = mx.sqrt(mx.sum(x * x, axis=-1, keepdims=True))
    return x / mx.maximum(norm, eps)


def cosine_embedding_loss(a: mx.array, b: mx.array) -> mx.array:
    """`CosineEmbeddingLoss(margin=0)` with target +1: mean over rows of `1 - cos(a, b)`."""
    eps = 1e-12
    prod = mx.sum(a * b, axis=-1)
    mag = (mx.sum(a * a, axis=-1) + eps) * (mx.sum(b * b, axis=-1) + eps)
    return mx.mean(1 - prod / mx.sqrt(mag))


def _as_array(x) -> mx.array:
    """numpy arrays, lists and scalars -> mx.array (mx arrays pass through)."""
    return x if isinstance(x, mx.array) else mx.array(np.asarray(x))


def _per_item_scale(erg: bool | mx.array, batch: int, tau: float) -> float | mx.array | None:
    """ERG switch -> None (off), tau (all items) or a float32 [B] factor (tau where set, else 1)."""
    if isinstance(erg, (np.ndarray, list, tuple)):
        erg = mx.array(np.asarray(erg, dtype=bool))
    if isinstance(erg, mx.array):
        if erg.shape != (batch,):
            raise ValueError(
                f"per-item ERG switch must have shape [{batch}], got {list(erg.shape)}"
            )
        return mx.where(erg.astype(mx.bool_), mx.array(tau, mx.float32), mx.array(1.0, mx.float32))
    return tau if erg else None


# ---------------------------------------------------------------------------------------------
# modules


class TimestepEmbedding(nn.Module):
    def __init__(self, in_channels: int, dim: int):
        super().__init__()
        self.linear_1 = nn.Linear(in_channels, dim)
        self.linear_2 = nn.Linear(dim, dim)

    def __call__(self, x: mx.array) -> mx.array:
        return self.linear_2(nn.silu(self.linear_1(x)))


class PatchConv(nn.Module):
    """Conv2d with kernel = stride = (p, 1) over a height-p input: one matmul per frame.

    Weight in MLX layout [O, p, 1, Cin]; also used for the 1x1 conv (p = 1).
    """

    def __init__(self, in_channels: int, out_channels: int, height: int):
        super().__init__()
        scale = 1.0 / math.sqrt(in_channels * height)
        self.weight = mx.random.uniform(-scale, scale, (out_channels, height, 1, in_channels))
        self.bias = mx.zeros((out_channels,))

    def __call__(self, x: mx.array) -> mx.array:
        """x [B, T, p * Cin] (index h * Cin + c) -> [B, T, O]."""
        w = self.weight.reshape(self.weight.shape[0], -1)
        return mx.addmm(self.bias, x, w.T)


class GroupNorm(nn.Module):
    """torch GroupNorm (affine, contiguous channel groups) on [B, T, C]: statistics over the whole
    time axis, computed in float32."""

    def __init__(self, groups: int, channels: int, eps: float = NORM_EPS):
        super().__init__()
        self.groups = groups
        self.eps = eps
        self.weight = mx.ones((channels,))
        self.bias = mx.zeros((channels,))

    def __call__(self, x: mx.array) -> mx.array:
        B, T, C = x.shape
        g = x.astype(mx.float32).reshape(B, T, self.groups, C // self.groups)
        mean = mx.mean(g, axis=(1, 3), keepdims=True)
        var = mx.var(g, axis=(1, 3), keepdims=True)
        y = ((g - mean) * mx.rsqrt(var + self.eps)).reshape(B, T, C)
        y = y * self.weight.astype(mx.float32) + self.bias.astype(mx.float32)
        return y.astype(x.dtype)


class PatchEmbed(nn.Module):
    """`proj_in`: Conv2d(8 -> 2048, (16, 1), stride (16, 1)) -> GroupNorm(32) -> Conv2d 1x1."""

    def __init__(self, in_channels: int, dim: int, patch_height: int):
        super().__init__()
        hidden = in_channels * 256
        self.patch_height = patch_height
        self.early_conv_layers = [
            PatchConv(in_channels, hidden, patch_height),
            GroupNorm(GROUP_NORM_GROUPS, hidden),
            PatchConv(hidden, dim, 1),
        ]

    def __call__(self, latents: mx.array) -> mx.array:
        """latents [B, C, H=p, T] -> tokens [B, T, D]."""
        B, C, H, T = latents.shape
        x = latents.transpose(0, 3, 2, 1).reshape(B, T, H * C)
        x = self.early_conv_layers[0](x)
        x = self.early_conv_layers[1](x)
        return self.early_conv_layers[2](x)


class Conv1x1(nn.Module):
    """Conv1d(kernel 1) as a matmul; weight in MLX layout [O, 1, I]."""

    def __init__(self, in_dim: int, out_dim: int, bias: bool):
        super().__init__()
        scale = 1.0 / math.sqrt(in_dim)
        self.weight = mx.random.uniform(-scale, scale, (out_dim, 1, in_dim))
        if bias:
            self.bias = mx.zeros((out_dim,))

    def __call__(self, x: mx.array) -> mx.array:
        w = self.weight.reshape(self.weight.shape[0], -1)
        if "bias" in self:
            return mx.addmm(self.bias, x, w.T)
        return x @ w.T


class DepthwiseConv1d(nn.Module):
    """Conv1d(C, C, kernel 3, padding 1 (zeros), groups C) along time; weight [C, 3, 1]."""

    def __init__(self, channels: int, kernel_size: int = 3):
        super().__init__()
        scale = 1.0 / math.sqrt(kernel_size)
        self.weight = mx.random.uniform(-scale, scale, (channels, kernel_size, 1))
        self.bias = mx.zeros((channels,))

    def __call__(self, x: mx.array) -> mx.array:
        """x [B, T, C]."""
        K = self.weight.shape[1]
        T = x.shape[1]
        pad = K // 2
        xp = mx.pad(x, [(0, 0), (pad, pad), (0, 0)])
        w = self.weight[:, :, 0].T  # [K, C]
        y = xp[:, 0:T] * w[0]
        for k in range(1, K):
            y = y + xp[:, k : k + T] * w[k]
        return y + self.bias


class ConvLayer(nn.Module):
    """Holder giving the `.conv` path of the original's ConvLayer."""

    def __init__(self, conv: nn.Module):
        super().__init__()
        self.conv = conv

    def __call__(self, x: mx.array) -> mx.array:
        return self.conv(x)


class GLUMBConv(nn.Module):
    """Feed-forward: 1x1 conv (D -> 2H) + SiLU, depthwise conv k3, `a * silu(g)`, 1x1 conv
    (H -> D)."""

    def __init__(self, dim: int, hidden: int):
        super().__init__()
        self.hidden = hidden
        self.inverted_conv = ConvLayer(Conv1x1(dim, 2 * hidden, bias=True))
        self.depth_conv = ConvLayer(DepthwiseConv1d(2 * hidden))
        self.point_conv = ConvLayer(Conv1x1(hidden, dim, bias=False))

    def __call__(self, x: mx.array) -> mx.array:
        dw = self.depth_conv.conv
        h = glu_depthwise(self.inverted_conv(x), dw.weight, dw.bias)
        return self.point_conv(h)


def _split_heads(x: mx.array, heads: int) -> mx.array:
    B, S, C = x.shape
    return x.reshape(B, S, heads, C // heads).transpose(0, 2, 1, 3)  # [B, H, S, Dh]


def _merge_heads(x: mx.array) -> mx.array:
    B, H, S, Dh = x.shape
    return x.transpose(0, 2, 1, 3).reshape(B, S, H * Dh)


class LinearSelfAttention(nn.Module):
    """`attn`: ReLU linear attention ("LiteLA") with RoPE on q and k (spec 2.8)."""

    def __init__(self, dim: int, heads: int):
        super().__init__()
        self.heads = heads
        self.to_q = nn.Linear(dim, dim)
        self.to_k = nn.Linear(dim, dim)
        self.to_v = nn.Linear(dim, dim)
        self.to_out = [nn.Linear(dim, dim)]

    def __call__(
        self,
        h: mx.array,
        mask: mx.array,
        rope: tuple[mx.array, mx.array],
        q_scale: float | mx.array | None = None,
    ) -> mx.array:
        """h [B, T, D]; mask [B, T] in h's dtype (multiplies q, k, v per position)."""
        dtype = h.dtype
        q = self.to_q(h)
        if q_scale is not None:
            q = scale_like_torch(q, q_scale)
        q = rope_apply(_split_heads(q, self.heads), *rope)
        k = rope_apply(_split_heads(self.to_k(h), self.heads), *rope)
        v = _split_heads(self.to_v(h), self.heads)
        out = linear_attention_core(q, k, v, mask[:, None, :, None])
        return self.to_out[0](_merge_heads(out).astype(dtype))


class CrossAttention(nn.Module):
    """`cross_attn`: softmax attention, RoPE on q (latent grid) and k (encoder grid) (spec 2.9).

    The original module also owns `add_{q,k,v}_proj` and `to_add_out`, which it never uses; they are
    dropped at conversion.
    """

    def __init__(self, dim: int, heads: int):
        super().__init__()
        self.heads = heads
        self.to_q = nn.Linear(dim, dim)
        self.to_k = nn.Linear(dim, dim)
        self.to_v = nn.Linear(dim, dim)
        self.to_out = [nn.Linear(dim, dim)]

    def project_context(
        self, context: mx.array, rope_k: tuple[mx.array, mx.array]
    ) -> tuple[mx.array, mx.array]:
        """Keys (with RoPE on the encoder grid) and values [B, H, L, Dh] of the encoder states;
        they do not depend on the latents, so a sampler can compute them once per generation."""
        k = rope_apply(_split_heads(self.to_k(context), self.heads), *rope_k)
        v = _split_heads(self.to_v(context), self.heads)
        return k, v

    def __call__(
        self,
        x: mx.array,
        context_kv: tuple[mx.array, mx.array],
        mask: mx.array,
        rope_q: tuple[mx.array, mx.array],
        q_scale: float | mx.array | None = None,
    ) -> mx.array:
        """x [B, T, D], context_kv from `project_context`, mask [B, 1, T, L] additive
        (0 = attend, -inf = not)."""
        q = self.to_q(x)
        if q_scale is not None:
            q = scale_like_torch(q, q_scale)
        q = rope_apply(_split_heads(q, self.heads), *rope_q)
        k, v = context_kv
        scale = 1.0 / math.sqrt(q.shape[-1])
        out = mx.fast.scaled_dot_product_attention(q, k, v, scale=scale, mask=mask)
        return self.to_out[0](_merge_heads(out).astype(q.dtype))


class LinearTransformerBlock(nn.Module):
    """adaLN-single block: linear self-attn (gated), cross-attn (no norm, no gate), GLUMBConv."""

    def __init__(self, dim: int, heads: int, ff_hidden: int):
        super().__init__()
        self.scale_shift_table = mx.random.normal((6, dim)) / math.sqrt(dim)
        self.attn = LinearSelfAttention(dim, heads)
        self.cross_attn = CrossAttention(dim, heads)
        self.ff = GLUMBConv(dim, ff_hidden)

    def __call__(
        self,
        x: mx.array,
        temb: mx.array,
        mask: mx.array,
        context_kv: tuple[mx.array, mx.array],
        cross_mask: mx.array,
        rope_x: tuple[mx.array, mx.array],
        q_scale: float | mx.array | None = None,
    ) -> mx.array:
        B, _, D = x.shape
        mods = self.scale_shift_table[None] + temb.reshape(B, 6, D)
        shift_msa, scale_msa, gate_msa, shift_mlp, scale_mlp, gate_mlp = (
            mods[:, i : i + 1] for i in range(6)
        )
        h = modulate(x, scale_msa, shift_msa)
        x = gated_residual(x, gate_msa, self.attn(h, mask, rope_x, q_scale))
        x = self.cross_attn(x, context_kv, cross_mask, rope_x, q_scale) + x
        h = modulate(x, scale_mlp, shift_mlp)
        return gated_residual(x, gate_mlp, self.ff(h))


class T2IFinalLayer(nn.Module):
    """RMSNorm -> modulate with the timestep EMBEDDING -> Linear(D -> p*C) -> unpatchify."""

    def __init__(self, dim: int, patch_height: int, out_channels: int):
        super().__init__()
        self.patch_height = patch_height
        self.out_channels = out_channels
        self.linear = nn.Linear(dim, patch_height * out_channels)
        self.scale_shift_table = mx.random.normal((2, dim)) / math.sqrt(dim)

    def __call__(self, x: mx.array, emb: mx.array, output_length: int) -> mx.array:
        """x [B, T, D], emb [B, D] -> [B, C, p, output_length] (index p * C + c of the linear)."""
        mods = self.scale_shift_table[None] + emb[:, None]
        shift, scale = mods[:, 0:1], mods[:, 1:2]
        x = self.linear(modulate(x, scale, shift))
        B, T, _ = x.shape
        out = x.reshape(B, T, self.patch_height, self.out_channels).transpose(0, 3, 2, 1)
        if output_length > T:
            out = mx.pad(out, [(0, 0), (0, 0), (0, 0), (0, output_length - T)])
        elif output_length < T:
            out = out[..., :output_length]
        return out


@dataclass
class DecodeOutput:
    """`decode(..., ssl_hidden_states=..., return_intermediates=True)` result."""

    sample: mx.array
    proj_losses: list[tuple[str, mx.array]]
    intermediates: dict[str, mx.array]


class ACEStepTransformer(nn.Module):
    """`ACEStepTransformer2DModel`: `encode` (conditions) + `decode` (one velocity prediction)."""

    def __init__(self, config: DiTConfig):
        super().__init__()
        config.validate()
        self.config = config
        D = config.width
        p = config.patch_size[0]
        self.transformer_blocks = [
            LinearTransformerBlock(D, config.num_attention_heads, config.ff_hidden)
            for _ in range(config.num_layers)
        ]
        self.timestep_embedder = TimestepEmbedding(TIME_PROJ_CHANNELS, D)
        self.t_block = [nn.SiLU(), nn.Linear(D, 6 * D)]
        self.speaker_embedder = nn.Linear(config.speaker_embedding_dim, D)
        self.genre_embedder = nn.Linear(config.text_embedding_dim, D)
        self.lyric_embs = nn.Embedding(config.lyric_encoder_vocab_size, config.lyric_hidden_size)
        self.lyric_encoder = ConformerEncoder(config.lyric_encoder_config())
        self.lyric_proj = nn.Linear(config.lyric_hidden_size, D)
        self.projectors = [
            [
                nn.Linear(D, 2 * D),
                nn.SiLU(),
                nn.Linear(2 * D, 2 * D),
                nn.SiLU(),
                nn.Linear(2 * D, ssl_dim),
            ]
            for ssl_dim in config.ssl_latent_dims
        ]
        self.proj_in = PatchEmbed(config.in_channels, D, p)
        self.final_layer = T2IFinalLayer(D, p, config.out_channels)
        self._inv_freq = mx.array(rope_inv_freq(config.attention_head_dim, config.rope_theta))
        self._time_freqs = mx.array(timestep_frequencies(TIME_PROJ_CHANNELS))

    # -- helpers --------------------------------------------------------------------------

    @property
    def dtype(self) -> mx.Dtype:
        """The compute dtype (that of the weights)."""
        return self.final_layer.linear.weight.dtype

    def rope(self, length: int) -> tuple[mx.array, mx.array]:
        """(cos, sin) [length, head_dim] in the compute dtype."""
        return rope_tables(length, self._inv_freq, self.dtype)

    # -- conditions -----------------------------------------------------------------------

    def _lyric_states(
        self, lyric_token_idx, lyric_mask, erg_lyric: bool | mx.array
    ) -> tuple[mx.array, mx.array, mx.array]:
        """-> (lyric_embs, conformer output, lyric_proj output)."""
        ids = _as_array(lyric_token_idx)
        mask = _as_array(lyric_mask)
        if ids.ndim != 2 or mask.shape != ids.shape:
            raise ValueError(
                f"lyric_token_idx and lyric_mask must both be [B, L], got "
                f"{list(ids.shape)} and {list(mask.shape)}"
            )
        if not mx.issubdtype(ids.dtype, mx.integer):
            raise ValueError(f"lyric_token_idx must hold integer token ids, got {ids.dtype}")
        tau = _per_item_scale(erg_lyric, ids.shape[0], ERG_TAU)
        erg_layers = ERG_LYRIC_LAYERS if tau is not None else ()
        if erg_layers and len(self.lyric_encoder.encoders) <= max(erg_layers):
            raise ValueError(
                f"ERG on the lyric encoder needs layers {ERG_LYRIC_LAYERS}; this "
                f"model has {len(self.lyric_encoder.encoders)}"
            )
        embs = self.lyric_embs(ids)
        enc, _ = self.lyric_encoder(embs, mask, erg_layers, 1.0 if tau is None else tau)
        return embs, enc, self.lyric_proj(enc)

    def forward_lyric_encoder(
        self, lyric_token_idx: mx.array, lyric_mask: mx.array, erg_lyric: bool | mx.array = False
    ) -> mx.array:
        """lyric ids [B, Ll] + mask -> lyric states [B, Ll, D] (`lyric_embs` -> Conformer ->
        `lyric_proj`). `erg_lyric`: ERG on lyric-encoder layers 4, 5 (bool, or [B] per item)."""
        return self._lyric_states(lyric_token_idx, lyric_mask, erg_lyric)[2]

    def encode(
        self,
        encoder_text_hidden_states: mx.array,
        text_attention_mask: mx.array,
        speaker_embeds: mx.array,
        lyric_token_idx: mx.array,
        lyric_mask: mx.array,
        erg_lyric: bool | mx.array = False,
        return_intermediates: bool = False,
    ):
        """-> (encoder states [B, 1+Lt+Ll, D], mask [B, 1+Lt+Ll] float32).

        Computed once per generation and reused by every `decode` step. `erg_lyric` applies
        the ERG hook on lyric-encoder layers 4 and 5 (True, or a bool array [B] per item).
        With `return_intermediates` a third element, a dict of the parts, is returned.
        """
        dtype = self.dtype
        text = _as_array(encoder_text_hidden_states)
        text_mask = _as_array(text_attention_mask)
        spk_in = _as_array(speaker_embeds)
        if text.ndim != 3 or text_mask.shape != text.shape[:2]:
            raise ValueError(
                "encoder_text_hidden_states must be [B, Lt, text_embedding_dim] and "
                f"text_attention_mask [B, Lt]; got {list(text.shape)} and "
                f"{list(text_mask.shape)}"
            )
        B = text.shape[0]
        if spk_in.shape != (B, self.config.speaker_embedding_dim):
            raise ValueError(
                f"speaker_embeds must be [B, {self.config.speaker_embedding_dim}] "
                f"with B = {B}, got {list(spk_in.shape)}"
            )
        spk = self.speaker_embedder(spk_in.astype(dtype))
        txt = self.genre_embedder(text.astype(dtype))
        lyric_embs, lyr_enc, lyr = self._lyric_states(lyric_token_idx, lyric_mask, erg_lyric)
        if lyr.shape[0] != B:
            raise ValueError(f"lyric batch {lyr.shape[0]} differs from the text batch {B}")
        states = mx.concatenate([spk[:, None], txt, lyr], axis=1)
        mask = mx.concatenate(
            [
                mx.ones((B, 1), mx.float32),
                text_mask.astype(mx.float32),
                _as_array(lyric_mask).astype(mx.float32),
            ],
            axis=1,
        )
        if return_intermediates:
            parts = {
                "speaker_embedder": spk,
                "genre_embedder": txt,
                "lyric_embs": lyric_embs,
                "lyric_encoder_out": lyr_enc,
                "lyric_proj": lyr,
            }
            return states, mask, parts
        return states, mask

    # -- one step -------------------------------------------------------------------------

    def decode(
        self,
        hidden_states: mx.array,
        attention_mask: mx.array,
        encoder_hidden_states: mx.array,
        encoder_hidden_mask: mx.array,
        timestep: mx.array | float,
        erg_diffusion: bool | mx.array = False,
        ssl_hidden_states: list | None = None,
        output_length: int | None = None,
        return_intermediates: bool = False,
        encoder_kv: list[tuple[mx.array, mx.array]] | None = None,
    ) -> mx.array | DecodeOutput:
        """One velocity prediction.

        hidden_states [B, 8, 16, T] (PyTorch layout), attention_mask [B, T] (1 = frame),
        encoder_hidden_states/mask from `encode`, timestep [B] (or a scalar) in [0, 1000].
        `erg_diffusion`: scale `to_q` of attn and cross_attn by 0.01 in blocks 15..19 (True, or a
        bool array [B] to apply it to some batch items only, e.g. the unconditional half).
        `ssl_hidden_states`: per projector a list of per-item SSL features [T_ssl, d] (or None)
        for the REPA losses. Returns the sample [B, 8, 16, output_length (default T)], or a
        `DecodeOutput` when `ssl_hidden_states` is given or `return_intermediates` is set.
        `encoder_kv`: `precompute_encoder_kv(encoder_hidden_states)`, reused across steps (the
        same numbers as recomputing them here).
        """
        cfg = self.config
        dtype = self.dtype
        x = _as_array(hidden_states)
        if x.ndim != 4 or x.shape[1] != cfg.in_channels or x.shape[2] != cfg.patch_size[0]:
            raise ValueError(
                f"hidden_states must be [B, {cfg.in_channels}, {cfg.patch_size[0]}, T] (PyTorch "
                f"layout), got {list(x.shape)}"
            )
        B, _, _, T = x.shape
        x = x.astype(dtype)
        attention_mask = _as_array(attention_mask)
        if attention_mask.shape != (B, T):
            raise ValueError(
                f"attention_mask must be [B, T] = [{B}, {T}], got {list(attention_mask.shape)}"
            )
        context = _as_array(encoder_hidden_states).astype(dtype)
        enc_mask = _as_array(encoder_hidden_mask)
        if context.ndim != 3 or context.shape[0] != B or enc_mask.shape != context.shape[:2]:
            raise ValueError(
                f"encoder_hidden_states [B, L, D] and encoder_hidden_mask [B, L] must match the "
                f"batch {B}; got {list(context.shape)} and {list(enc_mask.shape)}"
            )
        t = _as_array(timestep).astype(mx.float32)
        t = mx.broadcast_to(t.reshape(-1), (B,)) if t.size in (1, B) else t
        if t.shape != (B,):
            raise ValueError(f"timestep must be a scalar or [B] = [{B}], got {list(t.shape)}")
        q_scale = _per_item_scale(erg_diffusion, B, ERG_TAU)
        if q_scale is not None and cfg.num_layers <= max(ERG_DIFFUSION_BLOCKS):
            raise ValueError(
                f"ERG diffusion needs blocks {ERG_DIFFUSION_BLOCKS}; this model has "
                f"{cfg.num_layers}"
            )

        inter: dict[str, mx.array] = {}
        time_proj = timestep_sinusoid(t, self._time_freqs)
        emb = self.timestep_embedder(time_proj.astype(dtype))
        temb = self.t_block[1](self.t_block[0](emb))
        h = self.proj_in(x)
        if return_intermediates:
            inter.update(time_proj=time_proj, timestep_embedder=emb, t_block=temb, proj_in=h)

        rope_x = self.rope(T)
        if encoder_kv is None:
            encoder_kv = self.precompute_encoder_kv(context)
        elif len(encoder_kv) != len(self.transformer_blocks):
            raise ValueError(
                f"encoder_kv has {len(encoder_kv)} entries, the model {cfg.num_layers} blocks; "
                "make it with precompute_encoder_kv"
            )
        mask = attention_mask.astype(dtype)
        combined = (
            attention_mask.astype(mx.float32)[:, :, None] * enc_mask.astype(mx.float32)[:, None, :]
        )
        # additive 0 / -inf like the original: a row with no allowed key gives NaN there too
        cross_mask = mx.where(combined == 1, 0.0, -mx.inf).astype(dtype)[:, None]  # [B,1,T,L]

        saved: list[mx.array] = []
        for i, block in enumerate(self.transformer_blocks):
            scale = q_scale if i in ERG_DIFFUSION_BLOCKS else None
            h = block(h, temb, mask, encoder_kv[i], cross_mask, rope_x, scale)
            if return_intermediates:
                inter[f"transformer_blocks.{i}"] = h
            saved.extend(h for depth in cfg.ssl_encoder_depths if depth == i)

        proj_losses: list[tuple[str, mx.array]] = []
        if saved and ssl_hidden_states:
            proj_losses = self.repa_losses(saved, ssl_hidden_states)

        out = self.final_layer(h, emb, T if output_length is None else output_length)
        if return_intermediates:
            inter["final_layer"] = out
        if ssl_hidden_states is None and not return_intermediates:
            return out
        return DecodeOutput(out, proj_losses, inter)

    def precompute_encoder_kv(
        self, encoder_hidden_states: mx.array
    ) -> list[tuple[mx.array, mx.array]]:
        """Per block, the cross-attention keys/values of the encoder states (lazy arrays).

        Pass the result as `decode(..., encoder_kv=...)` to skip recomputing them every step.
        """
        context = _as_array(encoder_hidden_states).astype(self.dtype)
        rope_enc = self.rope(context.shape[1])
        return [
            blk.cross_attn.project_context(context, rope_enc) for blk in self.transformer_blocks
        ]

    def repa_losses(
        self, inner: list[mx.array], ssl_hidden_states: list
    ) -> list[tuple[str, mx.array]]:
        """REPA: project block outputs, interpolate to each SSL length, mean(1 - cos) (spec
        10.5). Losses are summed over items and divided by B."""
        losses = []
        for state, projector, ssl, name in zip(
            inner, self.projectors, ssl_hidden_states, self.config.ssl_names, strict=False
        ):
            if ssl is None:
                continue
            z_hat = state
            for layer in projector:
                z_hat = layer(z_hat)
            B = state.shape[0]
            total = mx.array(0.0, mx.float32)
            for b, z in enumerate(ssl):
                z = _as_array(z)
                i0, i1, lam = linear_interpolate_indices(z_hat.shape[1], z.shape[0])
                lam = mx.array(lam)[:, None].astype(z_hat.dtype)
                zt = z_hat[b]
                zt = (1 - lam) * zt[mx.array(i0)] + lam * zt[mx.array(i1)]
                total = total + cosine_embedding_loss(
                    l2_normalize(z.astype(zt.dtype)), l2_normalize(zt)
                )
            losses.append((name, total / B))
        return losses

    def __call__(
        self,
        hidden_states: mx.array,
        attention_mask: mx.array,
        encoder_text_hidden_states: mx.array,
        text_attention_mask: mx.array,
        speaker_embeds: mx.array,
        lyric_token_idx: mx.array,
        lyric_mask: mx.array,
        timestep: mx.array | float,
        ssl_hidden_states: list | None = None,
        erg_lyric: bool | mx.array = False,
        erg_diffusion: bool | mx.array = False,
    ) -> mx.array | DecodeOutput:
        """`forward` = `encode` + `decode(output_length=T)`."""
        states, mask = self.encode(
            encoder_text_hidden_states,
            text_attention_mask,
            speaker_embeds,
            lyric_token_idx,
            lyric_mask,
            erg_lyric,
        )
        return self.decode(
            hidden_states,
            attention_mask,
            states,
            mask,
            timestep,
            erg_diffusion=erg_diffusion,
            ssl_hidden_states=ssl_hidden_states,
            output_length=hidden_states.shape[-1],
        )


def build_dit(config: dict) -> ACEStepTransformer:
    """Build (without evaluating parameters) from the original config.json dict."""
    return ACEStepTransformer(dit_config_from_dict(config))
