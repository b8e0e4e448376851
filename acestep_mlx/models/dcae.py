"""The DCAE mel autoencoder (diffusers `AutoencoderDC`, 0.33 semantics) in MLX.

ACE-Step calls only `AutoencoderDC.encoder` and `.decoder` (no latent scaling, that is the
MusicDCAE wrapper's job). Module paths equal the diffusers state-dict names, so the key table in
`convert/dcae.py` is the identity apart from the conv layout. Activations are channel-last (NHWC)
inside; `encode_nchw` / `decode_nchw` take and return PyTorch's NCHW layout.

Precision follows upstream: in bfloat16 mode the weights and activations are bf16, the RMSNorm
statistics and product are fp32 (cast back before the affine part), and the linear attention
core runs in fp32.
"""

from __future__ import annotations

from dataclasses import dataclass

import mlx.core as mx
import mlx.nn as nn

from acestep_mlx.configs import ConfigError, config_from_dict

BLOCK_TYPES = ("ResBlock", "EfficientViTBlock")
ACTIVATIONS = {"silu": nn.silu, "relu": nn.relu, "relu6": nn.relu6}


@dataclass
class DCAEConfig:
    """`music_dcae_f8c8/config.json` (diffusers AutoencoderDC)."""

    in_channels: int
    latent_channels: int
    attention_head_dim: int
    encoder_block_types: str | tuple[str, ...]
    decoder_block_types: str | tuple[str, ...]
    encoder_block_out_channels: tuple[int, ...]
    decoder_block_out_channels: tuple[int, ...]
    encoder_layers_per_block: tuple[int, ...]
    decoder_layers_per_block: tuple[int, ...]
    encoder_qkv_multiscales: tuple[tuple[int, ...], ...]
    decoder_qkv_multiscales: tuple[tuple[int, ...], ...]
    downsample_block_type: str
    upsample_block_type: str
    decoder_norm_types: str | tuple[str, ...]
    decoder_act_fns: str | tuple[str, ...]
    scaling_factor: float = 1.0  # read for completeness; ACE-Step never uses it
    encoder_out_shortcut: bool = True
    decoder_in_shortcut: bool = True
    decoder_conv_act_fn: str = "relu"

    def __post_init__(self) -> None:
        n = len(self.encoder_block_out_channels)
        for name in ("encoder_layers_per_block", "encoder_qkv_multiscales"):
            if len(getattr(self, name)) != n:
                raise ConfigError(
                    f"DCAE config: {name} must have {n} entries "
                    "(one per encoder_block_out_channels)"
                )
        m = len(self.decoder_block_out_channels)
        for name in ("decoder_layers_per_block", "decoder_qkv_multiscales"):
            if len(getattr(self, name)) != m:
                raise ConfigError(
                    f"DCAE config: {name} must have {m} entries "
                    "(one per decoder_block_out_channels)"
                )
        if 0 in self.encoder_layers_per_block or 0 in self.decoder_layers_per_block:
            raise ConfigError(
                "DCAE config: stages without layers (layers_per_block 0) are not "
                "supported (ACE-Step's music_dcae_f8c8 has none)"
            )
        for t in per_stage(self.encoder_block_types, n) + per_stage(self.decoder_block_types, m):
            if t not in BLOCK_TYPES:
                raise ConfigError(
                    f"DCAE config: block type {t!r} unknown; expected one of "
                    f"{', '.join(BLOCK_TYPES)}"
                )
        for t in per_stage(self.decoder_norm_types, m):
            if t != "rms_norm":
                raise ConfigError(
                    f"DCAE config: decoder norm type {t!r} is not supported "
                    "(only 'rms_norm', as in ACE-Step)"
                )
        for a in per_stage(self.decoder_act_fns, m) + (self.decoder_conv_act_fn,):
            if a not in ACTIVATIONS:
                raise ConfigError(
                    f"DCAE config: activation {a!r} unknown; expected one of "
                    f"{', '.join(ACTIVATIONS)}"
                )
        if self.downsample_block_type not in ("Conv", "pixel_unshuffle"):
            raise ConfigError(
                f"DCAE config: downsample_block_type "
                f"{self.downsample_block_type!r} must be 'Conv' or 'pixel_unshuffle'"
            )
        if self.upsample_block_type not in ("interpolate", "pixel_shuffle"):
            raise ConfigError(
                f"DCAE config: upsample_block_type {self.upsample_block_type!r} "
                "must be 'interpolate' or 'pixel_shuffle'"
            )

    @classmethod
    def from_dict(cls, data: dict, source: str = "music_dcae_f8c8/config.json") -> DCAEConfig:
        return config_from_dict(cls, data, source)


def per_stage(value: str | tuple, n: int) -> tuple:
    """A config entry given once (str) or per stage (list) -> a tuple of n entries."""
    return (value,) * n if isinstance(value, str) else tuple(value)


# --------------------------------------------------------------------------------------------
# Layout helpers (NHWC, with PyTorch's channel orders)


def pixel_unshuffle(x: mx.array, r: int = 2) -> mx.array:
    """[B, H, W, C] -> [B, H/r, W/r, C*r*r], channel c*r*r + dy*r + dx (torch order)."""
    b, h, w, c = x.shape
    x = x.reshape(b, h // r, r, w // r, r, c)
    return x.transpose(0, 1, 3, 5, 2, 4).reshape(b, h // r, w // r, c * r * r)


def pixel_shuffle(x: mx.array, r: int = 2) -> mx.array:
    """[B, H, W, C*r*r] -> [B, H*r, W*r, C]: out[.., h*r+dy, w*r+dx, c] = in[.., c*r*r+dy*r+dx]."""
    b, h, w, c = x.shape
    x = x.reshape(b, h, w, c // (r * r), r, r)
    return x.transpose(0, 1, 4, 2, 5, 3).reshape(b, h * r, w * r, c // (r * r))


def group_mean(x: mx.array, group: int) -> mx.array:
    """Average consecutive channel groups of size `group` (fp32 accumulation, like torch)."""
    *lead, c = x.shape
    y = x.astype(mx.float32).reshape(*lead, c // group, group).mean(axis=-1)
    return y.astype(x.dtype)


def upsample_nearest2x(x: mx.array) -> mx.array:
    b, h, w, c = x.shape
    x = mx.broadcast_to(x[:, :, None, :, None, :], (b, h, 2, w, 2, c))
    return x.reshape(b, 2 * h, 2 * w, c)


# --------------------------------------------------------------------------------------------
# Building blocks


class RMSNorm(nn.Module):
    """diffusers RMSNorm with weight and bias over the last (channel) axis."""

    def __init__(self, dims: int, eps: float = 1e-5):
        super().__init__()
        self.eps = eps
        self.weight = mx.ones((dims,))
        self.bias = mx.zeros((dims,))

    def __call__(self, x: mx.array) -> mx.array:
        xf = x.astype(mx.float32)
        y = xf * mx.rsqrt(mx.mean(xf * xf, axis=-1, keepdims=True) + self.eps)
        if self.weight.dtype in (mx.bfloat16, mx.float16):
            y = y.astype(self.weight.dtype)
        return y * self.weight + self.bias


class ResBlock(nn.Module):
    """x + RMSNorm(conv2(act(conv1(x))))."""

    def __init__(self, channels: int, act: str = "silu"):
        super().__init__()
        self.conv1 = nn.Conv2d(channels, channels, 3, padding=1)
        self.conv2 = nn.Conv2d(channels, channels, 3, padding=1, bias=False)
        self.norm = RMSNorm(channels)
        self._act = ACTIVATIONS[act]

    def __call__(self, x: mx.array) -> mx.array:
        return self.norm(self.conv2(self._act(self.conv1(x)))) + x


class MultiscaleProjection(nn.Module):
    """Depthwise k x k conv then a grouped 1x1 conv (one group per head of q, k and v)."""

    def __init__(self, channels: int, heads: int, kernel_size: int):
        super().__init__()
        self.proj_in = nn.Conv2d(
            channels, channels, kernel_size, padding=kernel_size // 2, groups=channels, bias=False
        )
        self.proj_out = nn.Conv2d(channels, channels, 1, groups=3 * heads, bias=False)

    def __call__(self, x: mx.array) -> mx.array:
        return self.proj_out(self.proj_in(x))


def linear_attention(q: mx.array, k: mx.array, v: mx.array, eps: float) -> mx.array:
    """ReLU linear attention, [B, G, d, N] each: (v;1) k^T q, divided by its ones row."""
    ones = mx.ones((*v.shape[:2], 1, v.shape[3]), dtype=v.dtype)
    v = mx.concatenate([v, ones], axis=2)
    y = (v @ k.swapaxes(-1, -2)) @ q
    y = y.astype(mx.float32)
    return y[:, :, :-1] / (y[:, :, -1:] + eps)


def quadratic_attention(q: mx.array, k: mx.array, v: mx.array, eps: float) -> mx.array:
    """Small-input fallback: scores k^T q normalised over the keys, [B, G, d, N] each."""
    s = (k.swapaxes(-1, -2) @ q).astype(mx.float32)
    s = s / (mx.sum(s, axis=2, keepdims=True) + eps)
    return v @ s.astype(v.dtype)


class SanaMultiscaleLinearAttention(nn.Module):
    """EfficientViT multiscale ReLU linear attention with RMSNorm output and residual."""

    def __init__(
        self, channels: int, head_dim: int, kernel_sizes: tuple[int, ...], eps: float = 1e-15
    ):
        super().__init__()
        heads = channels // head_dim
        inner = heads * head_dim
        self.head_dim = head_dim
        self.eps = eps
        self.to_q = nn.Linear(channels, inner, bias=False)
        self.to_k = nn.Linear(channels, inner, bias=False)
        self.to_v = nn.Linear(channels, inner, bias=False)
        self.to_qkv_multiscale = [MultiscaleProjection(3 * inner, heads, k) for k in kernel_sizes]
        self.to_out = nn.Linear(inner * (1 + len(kernel_sizes)), channels, bias=False)
        self.norm_out = RMSNorm(channels)

    def __call__(self, x: mx.array) -> mx.array:
        b, h, w, _ = x.shape
        n = h * w
        use_linear = n > self.head_dim
        qkv = mx.concatenate([self.to_q(x), self.to_k(x), self.to_v(x)], axis=-1)
        y = mx.concatenate([qkv] + [blk(qkv) for blk in self.to_qkv_multiscale], axis=-1)
        if use_linear:
            y = y.astype(mx.float32)
        d = self.head_dim
        # torch reshapes [B, C', H, W] -> [B, C'/(3d), 3d, HW]: consecutive 3d-channel groups,
        # each split into its own (q, k, v)
        y = y.reshape(b, n, -1, 3 * d).transpose(0, 2, 3, 1)
        q, k, v = nn.relu(y[:, :, :d]), nn.relu(y[:, :, d : 2 * d]), y[:, :, 2 * d :]
        if use_linear:
            y = linear_attention(q, k, v, self.eps).astype(x.dtype)
        else:
            y = quadratic_attention(q, k, v, self.eps)
        y = y.transpose(0, 3, 1, 2).reshape(b, h, w, -1)
        return self.norm_out(self.to_out(y)) + x


class GLUMBConv(nn.Module):
    """1x1 expand (x2 for the gate) -> SiLU -> depthwise 3x3 -> GLU -> 1x1 -> RMSNorm, residual."""

    def __init__(self, channels: int, expand_ratio: int = 4):
        super().__init__()
        hidden = expand_ratio * channels
        self.conv_inverted = nn.Conv2d(channels, 2 * hidden, 1)
        self.conv_depth = nn.Conv2d(2 * hidden, 2 * hidden, 3, padding=1, groups=2 * hidden)
        self.conv_point = nn.Conv2d(hidden, channels, 1, bias=False)
        self.norm = RMSNorm(channels)

    def __call__(self, x: mx.array) -> mx.array:
        y = self.conv_depth(nn.silu(self.conv_inverted(x)))
        a, g = mx.split(y, 2, axis=-1)
        return self.norm(self.conv_point(a * nn.silu(g))) + x


class EfficientViTBlock(nn.Module):
    def __init__(self, channels: int, head_dim: int, kernel_sizes: tuple[int, ...]):
        super().__init__()
        self.attn = SanaMultiscaleLinearAttention(channels, head_dim, kernel_sizes)
        self.conv_out = GLUMBConv(channels)

    def __call__(self, x: mx.array) -> mx.array:
        return self.conv_out(self.attn(x))


class DCDownBlock2d(nn.Module):
    """Stride-2 conv (or conv + pixel_unshuffle) plus the space-to-channel averaged shortcut."""

    def __init__(self, cin: int, cout: int, pixel_unshuffle_type: bool):
        super().__init__()
        self._unshuffle = pixel_unshuffle_type
        self._group = cin * 4 // cout
        if pixel_unshuffle_type:
            self.conv = nn.Conv2d(cin, cout // 4, 3, stride=1, padding=1)
        else:
            self.conv = nn.Conv2d(cin, cout, 3, stride=2, padding=1)

    def __call__(self, x: mx.array) -> mx.array:
        y = self.conv(x)
        if self._unshuffle:
            y = pixel_unshuffle(y)
        return y + group_mean(pixel_unshuffle(x), self._group)


class DCUpBlock2d(nn.Module):
    """Nearest x2 + conv (or conv + pixel_shuffle) plus the channel-to-space repeated shortcut."""

    def __init__(self, cin: int, cout: int, interpolate: bool):
        super().__init__()
        self._interpolate = interpolate
        self._repeats = cout * 4 // cin
        self.conv = nn.Conv2d(cin, cout if interpolate else cout * 4, 3, padding=1)

    def __call__(self, x: mx.array) -> mx.array:
        if self._interpolate:
            y = self.conv(upsample_nearest2x(x))
        else:
            y = pixel_shuffle(self.conv(x))
        return y + pixel_shuffle(mx.repeat(x, self._repeats, axis=-1))


def make_block(
    kind: str, channels: int, head_dim: int, kernel_sizes: tuple[int, ...], act: str
) -> nn.Module:
    if kind == "ResBlock":
        return ResBlock(channels, act)
    return EfficientViTBlock(channels, head_dim, tuple(kernel_sizes))


# --------------------------------------------------------------------------------------------
# Encoder / decoder


class Encoder(nn.Module):
    """mel [B, H, W, C_in] -> latent [B, H/2^s, W/2^s, latent] (s = number of stages - 1)."""

    def __init__(self, cfg: DCAEConfig):
        super().__init__()
        chans = cfg.encoder_block_out_channels
        kinds = per_stage(cfg.encoder_block_types, len(chans))
        self.conv_in = nn.Conv2d(cfg.in_channels, chans[0], 3, padding=1)
        self.down_blocks = []
        for i, (c, n) in enumerate(zip(chans, cfg.encoder_layers_per_block, strict=True)):
            stage = [
                make_block(
                    kinds[i], c, cfg.attention_head_dim, cfg.encoder_qkv_multiscales[i], "silu"
                )
                for _ in range(n)
            ]
            if i < len(chans) - 1:
                stage.append(
                    DCDownBlock2d(c, chans[i + 1], cfg.downsample_block_type == "pixel_unshuffle")
                )
            self.down_blocks.append(stage)
        self.conv_out = nn.Conv2d(chans[-1], cfg.latent_channels, 3, padding=1)
        self._out_group = chans[-1] // cfg.latent_channels if cfg.encoder_out_shortcut else 0

    def __call__(self, x: mx.array) -> mx.array:
        x = self.conv_in(x)
        for stage in self.down_blocks:
            for layer in stage:
                x = layer(x)
        if self._out_group:
            return self.conv_out(x) + group_mean(x, self._out_group)
        return self.conv_out(x)


class Decoder(nn.Module):
    """latent [B, h, w, latent] -> mel [B, h*2^s, w*2^s, C_in]."""

    def __init__(self, cfg: DCAEConfig):
        super().__init__()
        chans = cfg.decoder_block_out_channels
        m = len(chans)
        kinds = per_stage(cfg.decoder_block_types, m)
        acts = per_stage(cfg.decoder_act_fns, m)
        self.conv_in = nn.Conv2d(cfg.latent_channels, chans[-1], 3, padding=1)
        self._in_repeats = chans[-1] // cfg.latent_channels if cfg.decoder_in_shortcut else 0
        self.up_blocks = []
        for i, (c, n) in enumerate(zip(chans, cfg.decoder_layers_per_block, strict=True)):
            stage = []
            if i < m - 1:
                stage.append(DCUpBlock2d(chans[i + 1], c, cfg.upsample_block_type == "interpolate"))
            stage += [
                make_block(
                    kinds[i], c, cfg.attention_head_dim, cfg.decoder_qkv_multiscales[i], acts[i]
                )
                for _ in range(n)
            ]
            self.up_blocks.append(stage)
        self.norm_out = RMSNorm(chans[0])
        self._act = ACTIVATIONS[cfg.decoder_conv_act_fn]
        self.conv_out = nn.Conv2d(chans[0], cfg.in_channels, 3, padding=1)

    def __call__(self, z: mx.array, eval_steps: bool = False) -> mx.array:
        """`eval_steps`: evaluate after every layer (same numbers; the lazy graph otherwise
        keeps every layer's full-resolution intermediates alive at once: measured at the real
        size, 32 latent frames, float32: 1.61 GB transient without, 0.43 GB with)."""
        x = self.conv_in(z)
        if self._in_repeats:
            x = x + mx.repeat(z, self._in_repeats, axis=-1)
        for stage in reversed(self.up_blocks):
            for layer in stage:
                if eval_steps:
                    mx.eval(x)
                x = layer(x)
        if eval_steps:
            mx.eval(x)
        return self.conv_out(self._act(self.norm_out(x)))


class AutoencoderDC(nn.Module):
    """`encoder` and `decoder` of diffusers AutoencoderDC; no latent scaling here."""

    def __init__(self, cfg: DCAEConfig):
        super().__init__()
        self.config = cfg
        self.encoder = Encoder(cfg)
        self.decoder = Decoder(cfg)

    @property
    def dtype(self) -> mx.Dtype:
        """Compute dtype = the weights' dtype (float32 or bfloat16)."""
        return self.encoder.conv_in.weight.dtype

    @property
    def spatial_factor(self) -> int:
        return 2 ** (len(self.config.encoder_block_out_channels) - 1)

    def encode_nchw(self, mel: mx.array) -> mx.array:
        """`AutoencoderDC.encoder(mel)`: [B, C_in, H, W] -> [B, latent, H/8, W/8] (NCHW).

        The input is cast to the model dtype; the output has the model dtype.
        """
        f = self.spatial_factor
        if mel.ndim != 4 or mel.shape[1] != self.config.in_channels:
            raise ValueError(
                f"DCAE encoder expects [B, {self.config.in_channels}, H, W] "
                f"(NCHW), got shape {tuple(mel.shape)}"
            )
        if mel.shape[2] % f or mel.shape[3] % f:
            raise ValueError(
                f"DCAE encoder input height and width must be multiples of {f}, "
                f"got {tuple(mel.shape[2:])}; pad the mel frames first"
            )
        x = mel.astype(self.dtype).transpose(0, 2, 3, 1)
        return self.encoder(x).transpose(0, 3, 1, 2)

    def decode_nchw(self, z: mx.array) -> mx.array:
        """`AutoencoderDC.decoder(z)`: [B, latent, h, w] -> [B, C_in, 8h, 8w] (NCHW).

        The input is cast to the model dtype; the output has the model dtype.
        """
        if z.ndim != 4 or z.shape[1] != self.config.latent_channels:
            raise ValueError(
                f"DCAE decoder expects [B, {self.config.latent_channels}, h, w] "
                f"(NCHW), got shape {tuple(z.shape)}"
            )
        x = z.astype(self.dtype).transpose(0, 2, 3, 1)
        return self.decoder(x, eval_steps=True).transpose(0, 3, 1, 2)


def build_model(config: dict) -> AutoencoderDC:
    """Build the (unevaluated) MLX model from the original config.json dict."""
    return AutoencoderDC(DCAEConfig.from_dict(config))
