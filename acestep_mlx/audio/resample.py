"""torchaudio `Resample` (sinc_interp_hann, lowpass width 6, rolloff 0.99) reproduced exactly (6.6).

Rates are reduced by their gcd (44100 -> 48000 becomes 147 -> 160). For output phase p and tap n:
`t = (-p/new + n/orig) * base` (base = min(orig, new) * rolloff), clamped to +-width_zeros; the
kernel is `sinc(pi t) * cos(pi t / (2 width_zeros))^2 * base / orig`. Applying it: pad `width`
zeros on the left and `width + orig` on the right, a strided correlation with stride `orig` (one
output per phase), interleave the phases, keep `ceil(new * N / orig)` samples.

Precision modes of the kernel (`kernel_dtype`), matching how the original builds it:
* "float64": `Resample(a, b)` without dtype (the decode path and the encode path in float32
  mode): taps in float64, but the phase term `p / new` is a float32 division (torch divides an
  int64 arange by an int), then the kernel is cast to float32.
* "float32" / "bfloat16": `Resample(a, b, dtype=...)` (the overlapped decode): every op in that
  dtype.
`dtype` is the precision of the data and of the correlation ("bfloat16": input, kernel and output
rounded to bfloat16, accumulation in float32, as torch's CPU bf16 conv). Quirk kept: the output
length is `ceil(float32(new * N / orig))` because torch converts the Python float to a float32
tensor before `ceil`, which loses the fraction above ~4.2 M output samples.
"""

from __future__ import annotations

import functools
import math

import numpy as np

_FRAMES_PER_BLOCK = 32768  # bounds the temporary framed copy (frames x taps floats)


def _to_bf16(x: np.ndarray) -> np.ndarray:
    """Round float32 values to bfloat16 (round to nearest even), kept in a float32 array."""
    b = np.ascontiguousarray(x, dtype=np.float32).view(np.uint32)
    rounded = (b + np.uint32(0x7FFF) + ((b >> np.uint32(16)) & np.uint32(1))) & np.uint32(
        0xFFFF0000
    )
    out = rounded.view(np.float32)
    return np.where(np.isnan(x), x, out).astype(np.float32)


def _rounder(kind: str):
    if kind == "float64":
        return lambda a: np.asarray(a, np.float64)
    if kind == "float32":
        return lambda a: np.asarray(a, np.float64).astype(np.float32).astype(np.float64)
    if kind == "bfloat16":
        return lambda a: _to_bf16(np.asarray(a, np.float64).astype(np.float32)).astype(np.float64)
    raise ValueError(f"kernel_dtype must be float64, float32 or bfloat16, got {kind!r}")


@functools.lru_cache(maxsize=16)
def _kernel_cached(
    orig: int, new: int, lowpass_filter_width: int, rolloff: float, kernel_dtype: str
) -> tuple[np.ndarray, int]:
    base = min(orig, new) * rolloff
    width = math.ceil(lowpass_filter_width * orig / base)
    r = _rounder(kernel_dtype)  # every op of torch's code, rounded to the kernel dtype
    if kernel_dtype == "float64":
        idx = np.arange(-width, width + orig, dtype=np.float64) / orig
        phase = (-np.arange(new, dtype=np.float64) / new).astype(np.float32).astype(np.float64)
        t = phase[:, None] + idx[None, :]
    else:
        idx = r(r(np.arange(-width, width + orig, dtype=np.float64)) / orig)
        phase = r(r(-np.arange(new, dtype=np.float64)) / new)
        t = r(phase[:, None] + idx[None, :])
    t = r(t * r(base))
    lw = float(lowpass_filter_width)
    t = np.clip(t, -lw, lw)
    window = r(np.cos(r(r(r(t * r(math.pi)) / lw) / 2.0)))
    window = r(window * window)
    t = r(t * r(math.pi))
    safe = np.where(t == 0, 1.0, t)
    kernel = np.where(t == 0, 1.0, r(r(np.sin(safe)) / safe))
    scale = base / orig
    kernel = r(kernel * r(window * r(scale)))
    out = kernel.astype(np.float32)
    if kernel_dtype == "bfloat16":
        out = _to_bf16(out)
    out.setflags(write=False)
    return out, width


def sinc_resample_kernel(
    orig_sr: int,
    new_sr: int,
    lowpass_filter_width: int = 6,
    rolloff: float = 0.99,
    kernel_dtype: str = "float64",
) -> tuple[np.ndarray, int]:
    """(kernel [new, 2*width + orig] float32, width) for the gcd-reduced rates."""
    orig_sr, new_sr = _check_rates(orig_sr, new_sr)
    g = math.gcd(orig_sr, new_sr)
    return _kernel_cached(
        orig_sr // g, new_sr // g, int(lowpass_filter_width), float(rolloff), kernel_dtype
    )


def _check_rates(orig_sr, new_sr) -> tuple[int, int]:
    for name, v in (("orig_sr", orig_sr), ("new_sr", new_sr)):
        if int(v) != v or v <= 0:
            raise ValueError(f"{name} must be a positive integer sample rate, got {v!r}")
    return int(orig_sr), int(new_sr)


def output_length(n: int, orig_sr: int, new_sr: int) -> int:
    """Samples out of `resample` for `n` samples in (torch's float32 ceil included)."""
    orig_sr, new_sr = _check_rates(orig_sr, new_sr)
    if orig_sr == new_sr:
        return n
    g = math.gcd(orig_sr, new_sr)
    o, nw = orig_sr // g, new_sr // g
    return int(np.ceil(np.float32(nw * n / o)))


def resample(
    wave,
    orig_sr: int,
    new_sr: int,
    *,
    lowpass_filter_width: int = 6,
    rolloff: float = 0.99,
    kernel_dtype: str = "float64",
    dtype: str = "float32",
) -> np.ndarray:
    """Resample `wave` [..., N] (numpy or MLX) from `orig_sr` to `new_sr` -> float32 numpy.

    Identity (a float32 copy) when the rates are equal, like torchaudio.
    """
    if dtype not in ("float32", "bfloat16"):
        raise ValueError(f"dtype must be float32 or bfloat16, got {dtype!r}")
    orig_sr, new_sr = _check_rates(orig_sr, new_sr)
    x = np.asarray(wave, dtype=np.float32)
    if dtype == "bfloat16":
        x = _to_bf16(x)
    if orig_sr == new_sr:
        return x.copy()
    g = math.gcd(orig_sr, new_sr)
    o, nw = orig_sr // g, new_sr // g
    kernel, width = sinc_resample_kernel(
        orig_sr, new_sr, lowpass_filter_width, rolloff, kernel_dtype
    )
    if dtype == "bfloat16":
        kernel = _to_bf16(kernel)
    shape = x.shape
    n = shape[-1]
    x = x.reshape(-1, n)
    padded = np.zeros((x.shape[0], n + 2 * width + o), np.float32)
    padded[:, width : width + n] = x
    taps = kernel.shape[1]
    n_frames = (padded.shape[1] - taps) // o + 1
    out = np.empty((x.shape[0], n_frames, nw), np.float32)
    kt = np.ascontiguousarray(kernel.T)
    for row in range(x.shape[0]):
        frames = np.lib.stride_tricks.as_strided(
            padded[row],
            shape=(n_frames, taps),
            strides=(padded.strides[1] * o, padded.strides[1]),
            writeable=False,
        )
        for a in range(0, n_frames, _FRAMES_PER_BLOCK):
            b = min(n_frames, a + _FRAMES_PER_BLOCK)
            np.matmul(frames[a:b], kt, out=out[row, a:b])
    out = out.reshape(x.shape[0], -1)[:, : output_length(n, orig_sr, new_sr)]
    if dtype == "bfloat16":
        out = _to_bf16(out)
    return np.ascontiguousarray(out.reshape(shape[:-1] + out.shape[-1:]))
