"""The music vocoder `ADaMoSHiFiGANV1`: a ConvNeXt backbone and a HiFi-GAN head (spec 6.5).

mel [B, n_mels, F] (PyTorch layout) -> waveform [B, hop * F] at 44.1 kHz. Inside, every tensor is
channel-last [B, L, C] (MLX convolutions). Module paths equal the PyTorch state-dict names
(`backbone.channel_layers.0.0`, `backbone.stages.{s}.{b}.dwconv`, `head.ups.{i}`,
`head.resblocks.{r}.convs1.{m}`, ...). Weight norm is folded at conversion (convert/vocoder.py).

Precision (spec 12, quirk 18): in bfloat16 mode every op runs in bfloat16, including the
hand-written channels-first LayerNorm (no upcast), as the original does after `.to(bfloat16)`.
The log-mel front end (`mel_transform` of the original) lives in `acestep_mlx.audio.mel`.

Speed/memory on MLX's CPU backend: dilated and transposed convolutions are rewritten as plain
convolutions (same sums; MLX runs those through GEMM, ~40x faster than its direct path), and
`decode` evaluates the head convolution by convolution (`eval_steps`, ~5x less peak memory).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import mlx.core as mx
import mlx.nn as nn
import numpy as np

from acestep_mlx.configs import ConfigError, config_from_dict


@dataclass
class VocoderConfig:
    """`music_vocoder/config.json` (class defaults of the original = the published config)."""

    input_channels: int
    depths: tuple[int, ...]
    dims: tuple[int, ...]
    kernel_sizes: tuple[int, ...]
    upsample_rates: tuple[int, ...]
    upsample_kernel_sizes: tuple[int, ...]
    resblock_kernel_sizes: tuple[int, ...]
    resblock_dilation_sizes: tuple[tuple[int, ...], ...]
    num_mels: int
    upsample_initial_channel: int
    pre_conv_kernel_size: int
    post_conv_kernel_size: int
    sampling_rate: int
    n_fft: int
    win_length: int
    hop_length: int
    f_min: float
    f_max: float
    n_mels: int
    use_template: bool = False
    drop_path_rate: float = 0.0

    def __post_init__(self) -> None:
        problems = []
        if len(self.depths) != len(self.dims):
            problems.append(
                f"depths {list(self.depths)} and dims {list(self.dims)} differ in length"
            )
        if self.num_mels != self.dims[-1]:
            problems.append(f"num_mels ({self.num_mels}) must equal dims[-1] ({self.dims[-1]})")
        if math.prod(self.upsample_rates) != self.hop_length:
            problems.append(
                f"the product of upsample_rates {list(self.upsample_rates)} must equal "
                f"hop_length ({self.hop_length})"
            )
        if len(self.upsample_rates) != len(self.upsample_kernel_sizes):
            problems.append("upsample_rates and upsample_kernel_sizes differ in length")
        if len(self.resblock_kernel_sizes) != len(self.resblock_dilation_sizes):
            problems.append("resblock_kernel_sizes and resblock_dilation_sizes differ in length")
        if any(len(d) != 3 for d in self.resblock_dilation_sizes):
            problems.append("every resblock_dilation_sizes entry needs 3 dilations (ResBlock1)")
        if self.upsample_initial_channel % (2 ** len(self.upsample_rates)):
            problems.append("upsample_initial_channel must be divisible by 2**len(upsample_rates)")
        pairs = zip(self.upsample_kernel_sizes, self.upsample_rates, strict=False)
        if any((k - u) % 2 for k, u in pairs):
            problems.append("each upsample kernel minus its rate must be even (exact length)")
        if self.use_template:
            problems.append(
                "use_template=true (noise template convs) is not supported: the "
                "original's decode() passes no template either"
            )
        if problems:
            raise ConfigError("music_vocoder/config.json: " + "; ".join(problems))


def vocoder_config(config: dict) -> VocoderConfig:
    return config_from_dict(VocoderConfig, config, "music_vocoder/config.json")


class ChannelsFirstLayerNorm(nn.Module):
    """The original's hand-written `LayerNorm(data_format="channels_first")` on [B, L, C].

    Mean and biased variance over C, `(x - u) / sqrt(s + eps)`, then `weight * x + bias`; computed
    in the input dtype (no float32 upcast in bfloat16 mode, quirk 18).
    """

    def __init__(self, dims: int, eps: float = 1e-6):
        super().__init__()
        self.weight = mx.ones((dims,))
        self.bias = mx.zeros((dims,))
        self.eps = eps

    def __call__(self, x: mx.array) -> mx.array:
        u = mx.mean(x, axis=-1, keepdims=True)
        d = x - u
        s = mx.mean(d * d, axis=-1, keepdims=True)
        x = d / mx.sqrt(s + self.eps)
        return self.weight * x + self.bias


class ReplicatePadConv1d(nn.Conv1d):
    """Conv1d with `padding_mode="replicate"` (the backbone stem)."""

    def __init__(self, in_channels: int, out_channels: int, kernel_size: int, pad: int):
        super().__init__(in_channels, out_channels, kernel_size, padding=0)
        self._pad = pad

    def __call__(self, x: mx.array) -> mx.array:
        p = self._pad
        if p:
            left = mx.repeat(x[:, :1], p, axis=1)
            right = mx.repeat(x[:, -1:], p, axis=1)
            x = mx.concatenate([left, x, right], axis=1)
        return super().__call__(x)


class DilatedConv1d(nn.Conv1d):
    """Conv1d with dilation computed as an undilated conv on the `dilation` interleaved phases.

    Same sums as `mx.conv1d(..., dilation=d)`; it only changes the algorithm, because MLX's CPU
    backend runs dilated convolutions on a slow direct path while undilated ones use GEMM.
    """

    def __init__(
        self, in_channels: int, out_channels: int, kernel_size: int, dilation: int, padding: int
    ):
        super().__init__(in_channels, out_channels, kernel_size)
        self._dil = dilation
        self._pad = padding

    def __call__(self, x: mx.array) -> mx.array:
        d, p = self._dil, self._pad
        if d == 1:
            y = mx.conv1d(x, self.weight, padding=p)
        else:
            b, length, c = x.shape
            k, o = self.weight.shape[1], self.weight.shape[0]
            padded = length + 2 * p
            n = -(-padded // d)
            x = mx.pad(x, [(0, 0), (p, p + n * d - padded), (0, 0)])
            x = x.reshape(b, n, d, c).transpose(0, 2, 1, 3).reshape(b * d, n, c)
            y = mx.conv1d(x, self.weight)  # [b * d, n - k + 1, o]
            m = n - k + 1
            y = y.reshape(b, d, m, o).transpose(0, 2, 1, 3).reshape(b, m * d, o)
            y = y[:, : padded - (k - 1) * d]
        return y + self.bias if "bias" in self else y


class PolyphaseConvTranspose1d(nn.ConvTranspose1d):
    """ConvTranspose1d (PyTorch semantics, weight [O, K, I]) as one undilated conv.

    Output sample j = m * stride + r only meets kernel taps k = r + padding - s * stride; the
    taps of all `stride` phases are gathered into a conv with stride * O output channels whose
    outputs are interleaved. Same sums as `mx.conv_transpose1d`, computed by GEMM (see
    DilatedConv1d).
    """

    def __init__(
        self, in_channels: int, out_channels: int, kernel_size: int, stride: int, padding: int
    ):
        super().__init__(in_channels, out_channels, kernel_size, stride=stride, padding=padding)
        u, k, p = stride, kernel_size, padding
        if not 0 <= p <= k - 1:
            raise ValueError(f"unsupported transposed-conv padding {p} for kernel {k}")
        s_min = -((k - 1 - p) // u)  # ceil((p - k + 1) / u)
        s_max = (u - 1 + p) // u
        span = s_max - s_min + 1
        taps = np.arange(u)[:, None] + p - (np.arange(span)[None, :] + s_min) * u  # [u, span]
        self._taps = mx.array(np.clip(taps, 0, k - 1).reshape(-1))
        self._valid = mx.array(((taps >= 0) & (taps < k)).astype(np.float32))
        self._geom = (u, span, -s_min, s_max)

    def __call__(self, x: mx.array) -> mx.array:
        u, span, left, right = self._geom
        w = self.weight  # [O, K, I]
        o, i = w.shape[0], w.shape[2]
        wp = mx.take(w, self._taps, axis=1).reshape(o, u, span, i)
        wp = wp * self._valid.astype(w.dtype)[None, :, :, None]
        wp = wp.transpose(1, 0, 2, 3).reshape(u * o, span, i)
        b, length, _ = x.shape
        y = mx.conv1d(mx.pad(x, [(0, 0), (left, right), (0, 0)]), wp)  # [B, L, u * O]
        y = y.reshape(b, length * u, o)
        return y + self.bias if "bias" in self else y


class ConvNeXtBlock(nn.Module):
    """dwconv -> LayerNorm(eps 1e-6) -> Linear x4 -> exact GELU -> Linear -> * gamma (+ input)."""

    def __init__(self, dim: int, kernel_size: int = 7, mlp_ratio: float = 4.0):
        super().__init__()
        self.dwconv = nn.Conv1d(dim, dim, kernel_size, padding=(kernel_size - 1) // 2, groups=dim)
        self.norm = nn.LayerNorm(dim, eps=1e-6)
        self.pwconv1 = nn.Linear(dim, int(mlp_ratio * dim))
        self.pwconv2 = nn.Linear(int(mlp_ratio * dim), dim)
        self.gamma = mx.full((dim,), 1e-6)

    def __call__(self, x: mx.array, apply_residual: bool = True) -> mx.array:
        y = self.dwconv(x)
        y = self.norm(y)
        y = self.pwconv2(nn.gelu(self.pwconv1(y)))
        y = self.gamma * y
        return x + y if apply_residual else y


class ParallelConvNeXtBlock(nn.Module):
    """One ConvNeXt block per kernel size, summed with the input (len(kernel_sizes) > 1)."""

    def __init__(self, dim: int, kernel_sizes: tuple[int, ...]):
        super().__init__()
        self.blocks = [ConvNeXtBlock(dim, k) for k in kernel_sizes]

    def __call__(self, x: mx.array) -> mx.array:
        out = None
        for block in self.blocks:
            y = block(x, apply_residual=False)
            out = y if out is None else out + y
        return out + x


class ConvNeXtEncoder(nn.Module):
    def __init__(self, cfg: VocoderConfig):
        super().__init__()
        dims = cfg.dims
        # stem kernel is fixed at 7 in the original (kernel_sizes only sets the ConvNeXt blocks)
        stem = [
            ReplicatePadConv1d(cfg.input_channels, dims[0], 7, pad=3),
            ChannelsFirstLayerNorm(dims[0]),
        ]
        self.channel_layers = [stem] + [
            [ChannelsFirstLayerNorm(dims[i]), nn.Conv1d(dims[i], dims[i + 1], 1)]
            for i in range(len(dims) - 1)
        ]

        def block(dim: int) -> nn.Module:
            if len(cfg.kernel_sizes) == 1:
                return ConvNeXtBlock(dim, cfg.kernel_sizes[0])
            return ParallelConvNeXtBlock(dim, tuple(cfg.kernel_sizes))

        self.stages = [[block(d) for _ in range(n)] for d, n in zip(dims, cfg.depths, strict=True)]
        self.norm = ChannelsFirstLayerNorm(dims[-1])

    def __call__(self, x: mx.array) -> mx.array:
        for layers, stage in zip(self.channel_layers, self.stages, strict=True):
            for layer in layers:
                x = layer(x)
            for blk in stage:
                x = blk(x)
        return self.norm(x)


class ResBlock1(nn.Module):
    """Three times `x + c2(silu(c1(silu(x))))`, c1 dilated (d_m), c2 undilated."""

    def __init__(self, channels: int, kernel_size: int, dilations: tuple[int, ...]):
        super().__init__()
        self.convs1 = [
            DilatedConv1d(
                channels, channels, kernel_size, dilation=d, padding=(kernel_size * d - d) // 2
            )
            for d in dilations
        ]
        self.convs2 = [
            nn.Conv1d(channels, channels, kernel_size, padding=(kernel_size - 1) // 2)
            for _ in dilations
        ]

    def __call__(self, x: mx.array, eval_steps: bool = False) -> mx.array:
        for c1, c2 in zip(self.convs1, self.convs2, strict=True):
            xt = c1(nn.silu(x))
            if eval_steps:
                mx.eval(xt)
            xt = c2(nn.silu(xt))
            x = xt + x
            if eval_steps:
                mx.eval(x)
        return x


class HiFiGANGenerator(nn.Module):
    def __init__(self, cfg: VocoderConfig):
        super().__init__()
        c0 = cfg.upsample_initial_channel
        self.conv_pre = nn.Conv1d(
            cfg.num_mels, c0, cfg.pre_conv_kernel_size, padding=(cfg.pre_conv_kernel_size - 1) // 2
        )
        ups = zip(cfg.upsample_rates, cfg.upsample_kernel_sizes, strict=True)
        self.ups = [
            PolyphaseConvTranspose1d(
                c0 // 2**i, c0 // 2 ** (i + 1), k, stride=u, padding=(k - u) // 2
            )
            for i, (u, k) in enumerate(ups)
        ]
        self.resblocks = [
            ResBlock1(c0 // 2 ** (i + 1), k, tuple(d))
            for i in range(len(self.ups))
            for k, d in zip(cfg.resblock_kernel_sizes, cfg.resblock_dilation_sizes, strict=True)
        ]
        ch = c0 // 2 ** len(self.ups)
        self.conv_post = nn.Conv1d(
            ch, 1, cfg.post_conv_kernel_size, padding=(cfg.post_conv_kernel_size - 1) // 2
        )
        self._num_kernels = len(cfg.resblock_kernel_sizes)

    def __call__(self, x: mx.array, eval_steps: bool = False) -> mx.array:
        """`eval_steps=True` evaluates after every convolution: same numbers, but MLX then holds
        one convolution's temporaries at a time instead of a whole stage's (about 5x less peak
        memory on the CPU backend). Not usable inside `mx.compile` / gradient transforms."""
        x = self.conv_pre(x)
        nk = self._num_kernels
        for i, up in enumerate(self.ups):
            x = up(nn.silu(x))
            if eval_steps:
                mx.eval(x)
            xs = self.resblocks[i * nk](x, eval_steps)
            for j in range(1, nk):
                xs = xs + self.resblocks[i * nk + j](x, eval_steps)
            x = xs / nk
        x = self.conv_post(nn.silu(x))
        return mx.tanh(x)


class ADaMoSHiFiGAN(nn.Module):
    """The vocoder network. `decode(mel [B, n_mels, F]) -> wav [B, hop * F]`."""

    def __init__(self, cfg: VocoderConfig):
        super().__init__()
        self.config = cfg
        self.backbone = ConvNeXtEncoder(cfg)
        self.head = HiFiGANGenerator(cfg)

    @property
    def dtype(self) -> mx.Dtype:
        return self.head.conv_pre.weight.dtype

    def decode_nlc(self, mel: mx.array, eval_steps: bool = True) -> mx.array:
        """Channel-last mel [B, F, n_mels] -> waveform [B, hop * F].

        `eval_steps` (default) evaluates the head convolution by convolution to bound memory;
        pass False to keep the whole computation lazy (e.g. inside mx.compile).
        """
        x = self.backbone(mel.astype(self.dtype))
        if eval_steps:
            mx.eval(x)
        return self.head(x, eval_steps)[..., 0]

    def decode(self, mel: mx.array, eval_steps: bool = True) -> mx.array:
        """mel [B, n_mels, F] (PyTorch layout) -> waveform [B, hop * F] (tanh output)."""
        if mel.ndim != 3 or mel.shape[1] != self.config.input_channels:
            raise ValueError(
                f"vocoder input must be [B, {self.config.input_channels}, frames], "
                f"got {list(mel.shape)}"
            )
        return self.decode_nlc(mx.transpose(mel, (0, 2, 1)), eval_steps)

    def receptive_field(self) -> int:
        """Mel frames of context on each side that can influence one output sample.

        Everything in the vocoder is local (convolutions and per-frame normalisation), so decoding
        a window with at least this much real context on each side reproduces the full decode in
        the window's centre (used by the bounded-memory chunked decode).
        """
        cfg = self.config
        frames = 3 + sum(cfg.depths) * max((k - 1) // 2 for k in cfg.kernel_sizes)
        samples_per_frame = cfg.hop_length
        # reach in output samples, stage by stage
        samples = float((cfg.pre_conv_kernel_size - 1) // 2 * samples_per_frame)
        rate = 1
        for u, k in zip(cfg.upsample_rates, cfg.upsample_kernel_sizes, strict=True):
            rate *= u
            step = samples_per_frame / rate  # output samples per sample at this stage
            samples += math.ceil(k / u) * step * u  # transposed conv reach (generous)
            # the resblocks of a stage run in parallel (mean): the widest one counts
            kernels = zip(cfg.resblock_kernel_sizes, cfg.resblock_dilation_sizes, strict=True)
            reach = max(sum((kr * d - d) // 2 + (kr - 1) // 2 for d in dl) for kr, dl in kernels)
            samples += reach * step
        samples += (cfg.post_conv_kernel_size - 1) // 2
        return frames + math.ceil(samples / samples_per_frame)


def build_vocoder(config: dict) -> ADaMoSHiFiGAN:
    """Build from the original config.json dict (parameters are not evaluated)."""
    return ADaMoSHiFiGAN(vocoder_config(config))
