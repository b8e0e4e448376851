"""Log-mel front end of the vocoder (`LogMelSpectrogram` of the original, spec 6.2).

wave [C, N] -> log-mel [C, n_mels, frames]: reflect pad ((win-hop)//2, (win-hop+1)//2), float32
STFT (n_fft, hop, center=False, periodic Hann window, onesided), magnitude sqrt(re^2 + im^2 + 1e-6),
Slaney mel filterbank (torchaudio `melscale_fbanks(norm="slaney", mel_scale="slaney")`),
log(clamp(x, 1e-5)).

Window and filterbank: COMPUTED here from the vocoder config (not read from the checkpoint's
`mel_transform.*` buffers, which the converter drops). They are built with the same float32
arithmetic as torch/torchaudio. Explicit `window=` / `filterbank=` arrays can be passed instead
(e.g. the stored buffers); the tests check both against the reference. Note: the published
checkpoint stores these buffers in bfloat16, and the original loads them over its computed
float32 ones, so with the real weights the original's encoder input is computed with
bfloat16-rounded buffers; pass `stored_mel_buffers(...)` to reproduce that exactly.

STFT in numpy (float32 pocketfft); the mel projection and log run in MLX in the requested dtype
(bfloat16 mode: magnitude, mel and log in bfloat16, the STFT in float32, as in the original).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path

import mlx.core as mx
import numpy as np


def torch_linspace_f32(start: float, end: float, steps: int) -> np.ndarray:
    """`torch.linspace(start, end, steps)` in float32, with torch's two-sided formula."""
    if steps == 1:
        return np.array([start], np.float32)
    s, e = np.float32(start), np.float32(end)
    step = (e - s) / np.float32(steps - 1)
    idx = np.arange(steps)
    half = steps // 2
    lo = s + step * idx[:half].astype(np.float32)
    hi = e - step * (steps - idx[half:] - 1).astype(np.float32)
    return np.concatenate([lo, hi]).astype(np.float32)


def hann_window(win_length: int) -> np.ndarray:
    """Periodic Hann window (`torch.hann_window(win_length)`), float32.

    torch computes `cos(n * (2 pi / N)) * -0.5 + 0.5` in float32 (periodic: N = win_length).
    """
    arg = np.arange(win_length, dtype=np.float32) * np.float32(2.0 * math.pi / win_length)
    cos = np.cos(arg.astype(np.float64)).astype(np.float32)
    return (cos * np.float32(-0.5) + np.float32(0.5)).astype(np.float32)


def _hz_to_mel_slaney(freq: float) -> float:
    f_sp = 200.0 / 3
    if freq >= 1000.0:
        return 1000.0 / f_sp + math.log(freq / 1000.0) / (math.log(6.4) / 27.0)
    return freq / f_sp


def _mel_to_hz_slaney(mels: np.ndarray) -> np.ndarray:
    f_sp = np.float32(200.0 / 3)
    min_log_mel = 1000.0 / (200.0 / 3)
    logstep = np.float32(math.log(6.4) / 27.0)
    freqs = (np.float32(0.0) + f_sp * mels).astype(np.float32)
    log_t = mels >= min_log_mel
    arg = (logstep * (mels[log_t] - np.float32(min_log_mel))).astype(np.float32)
    freqs[log_t] = np.float32(1000.0) * np.exp(arg.astype(np.float64)).astype(np.float32)
    return freqs


def mel_filterbank(
    n_freqs: int, f_min: float, f_max: float, n_mels: int, sample_rate: int
) -> np.ndarray:
    """torchaudio `melscale_fbanks(..., norm="slaney", mel_scale="slaney")` -> [n_freqs, n_mels].

    Same float32 arithmetic as torchaudio (float32 linspace, triangles, area normalisation).
    """
    all_freqs = torch_linspace_f32(0, sample_rate // 2, n_freqs)
    m_pts = torch_linspace_f32(_hz_to_mel_slaney(f_min), _hz_to_mel_slaney(f_max), n_mels + 2)
    f_pts = _mel_to_hz_slaney(m_pts)
    f_diff = f_pts[1:] - f_pts[:-1]
    slopes = f_pts[None, :] - all_freqs[:, None]
    down = (np.float32(-1.0) * slopes[:, :-2]) / f_diff[:-1]
    up = slopes[:, 2:] / f_diff[1:]
    fb = np.maximum(np.float32(0.0), np.minimum(down, up))
    enorm = np.float32(2.0) / (f_pts[2 : n_mels + 2] - f_pts[:n_mels])
    return (fb * enorm[None, :]).astype(np.float32)


@dataclass(frozen=True)
class MelConfig:
    sample_rate: int = 44100
    n_fft: int = 2048
    win_length: int = 2048
    hop_length: int = 512
    n_mels: int = 128
    f_min: float = 40.0
    f_max: float = 16000.0

    @classmethod
    def from_vocoder(cls, cfg) -> MelConfig:
        """From a `VocoderConfig` (or the vocoder config.json dict)."""
        get = cfg.get if isinstance(cfg, dict) else lambda k: getattr(cfg, k)
        f_max = get("f_max") or get("sampling_rate") // 2
        return cls(
            int(get("sampling_rate")),
            int(get("n_fft")),
            int(get("win_length")),
            int(get("hop_length")),
            int(get("n_mels")),
            float(get("f_min")),
            float(f_max),
        )


def stored_mel_buffers(vocoder_weights: str | Path) -> tuple[np.ndarray, np.ndarray]:
    """(window, filterbank) as stored in an original `music_vocoder` safetensors file (float32)."""
    from convert.safetensors_io import SafetensorsReader

    with SafetensorsReader(vocoder_weights) as r:
        window = np.asarray(r.get("mel_transform.spectrogram.window"), np.float32)
        fb = np.asarray(r.get("mel_transform.mel_scale.fb"), np.float32)
    return window, fb


def _bf16_round(x: np.ndarray) -> np.ndarray:
    return np.array(mx.array(x).astype(mx.bfloat16).astype(mx.float32))


class LogMelSpectrogram:
    """The log-mel front end. Call with a wave [C, N] (numpy or mx) -> mx.array [C, n_mels, F]."""

    def __init__(
        self,
        cfg: MelConfig = MelConfig(),
        window: np.ndarray | None = None,
        filterbank: np.ndarray | None = None,
    ):
        self.cfg = cfg
        n_freqs = cfg.n_fft // 2 + 1
        if cfg.win_length != cfg.n_fft:
            raise ValueError("win_length != n_fft is not supported (the original uses 2048/2048)")
        self.window = (
            hann_window(cfg.win_length)
            if window is None
            else np.asarray(window, np.float32).reshape(-1)
        )
        self.filterbank = (
            mel_filterbank(n_freqs, cfg.f_min, cfg.f_max, cfg.n_mels, cfg.sample_rate)
            if filterbank is None
            else np.asarray(filterbank, np.float32)
        )
        if self.window.shape != (cfg.win_length,):
            raise ValueError(f"window must have {cfg.win_length} values, got {self.window.shape}")
        if self.filterbank.shape != (n_freqs, cfg.n_mels):
            raise ValueError(
                f"filterbank must be [{n_freqs}, {cfg.n_mels}], got {list(self.filterbank.shape)}"
            )

    def num_frames(self, n_samples: int) -> int:
        pad = self.cfg.win_length - self.cfg.hop_length
        return (n_samples + pad - self.cfg.n_fft) // self.cfg.hop_length + 1

    def linear(self, wave, dtype: mx.Dtype = mx.float32) -> np.ndarray:
        """Magnitude STFT [C, n_fft//2+1, frames] (float32; bfloat16-rounded in bf16 mode)."""
        y = np.asarray(wave)
        if y.ndim == 1:
            y = y[None]
        if y.ndim != 2:
            raise ValueError(f"log-mel input must be [channels, samples], got {list(y.shape)}")
        c = self.cfg
        left = (c.win_length - c.hop_length) // 2
        right = (c.win_length - c.hop_length + 1) // 2
        if y.shape[-1] <= max(left, right):
            raise ValueError(
                f"audio too short for the log-mel front end: {y.shape[-1]} samples "
                f"(needs more than {max(left, right)})"
            )
        if dtype == mx.bfloat16:
            y = _bf16_round(y.astype(np.float32))  # the original pads in bf16, STFT in fp32
        y = np.pad(y.astype(np.float32), ((0, 0), (left, right)), mode="reflect")
        window = self.window if dtype != mx.bfloat16 else _bf16_round(self.window)
        n = self.num_frames(y.shape[-1] - left - right)
        frames = np.lib.stride_tricks.as_strided(
            y,
            shape=(y.shape[0], n, c.n_fft),
            strides=(y.strides[0], y.strides[1] * c.hop_length, y.strides[1]),
            writeable=False,
        )
        spec = np.fft.rfft(frames * window, n=c.n_fft, axis=-1)  # complex64 for float32 input
        re = spec.real.astype(np.float32)
        im = spec.imag.astype(np.float32)
        mag = np.sqrt(re * re + im * im + np.float32(1e-6)).astype(np.float32)
        if dtype == mx.bfloat16:
            mag = _bf16_round(mag)
        return np.ascontiguousarray(mag.transpose(0, 2, 1))

    def __call__(self, wave, dtype: mx.Dtype = mx.float32) -> mx.array:
        mag = mx.array(self.linear(wave, dtype)).astype(dtype)  # [C, freq, frames]
        fb = mx.array(self.filterbank).astype(dtype)
        mel = mx.matmul(mx.transpose(mag, (0, 2, 1)), fb)  # [C, frames, n_mels]
        mel = mx.log(mx.maximum(mel, mx.array(1e-5, dtype)))
        return mx.transpose(mel, (0, 2, 1))
