"""A rough peak-memory estimate for a generation, printed before runs that may not fit.

Weights are exact (the converted files' sizes). Activations are approximations from the model
sizes: one DiT block's transient tensors for the batched guidance passes, the largest DCAE and
vocoder activations for a plain decode (bounded windows for the chunked decode).
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass
from pathlib import Path

import mlx.core as mx


@dataclass
class MemoryEstimate:
    weights_gb: float
    activations_gb: float
    available_gb: float | None

    @property
    def total_gb(self) -> float:
        return self.weights_gb + self.activations_gb

    @property
    def fits(self) -> bool:
        return self.available_gb is None or self.total_gb < 0.85 * self.available_gb

    def message(self) -> str:
        avail = f" of {self.available_gb:.1f} GB" if self.available_gb else ""
        text = (f"estimated peak memory ~{self.total_gb:.1f} GB{avail} (weights "
                f"{self.weights_gb:.1f} GB + activations {self.activations_gb:.1f} GB)")
        if not self.fits:
            text += ("\nWARNING: this run may not fit in memory. Try --low-memory (load each "
                     "stage only while it runs), --dtype bfloat16, --chunked-decode on, a "
                     "shorter --duration or a smaller --batch.")
        return text


def available_memory_gb() -> float | None:
    try:
        if mx.metal.is_available():
            return mx.metal.device_info()["memory_size"] / 1024**3
    except (AttributeError, KeyError, RuntimeError):
        pass
    try:
        return os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") / 1024**3
    except (ValueError, OSError, AttributeError):
        return None


def _file_gb(folder: Path) -> float:
    f = folder / "model.safetensors"
    return f.stat().st_size / 1024**3 if f.is_file() else 0.0


def estimate(pipe, duration_s: float, batch_size: int = 1, guided: bool = True,
             chunked: bool | None = None) -> MemoryEstimate:
    from .checkpoint import converted_component_dir

    bytes_per = 2 if pipe.dtype_name == "bfloat16" else 4
    folders = {name: converted_component_dir(pipe.checkpoint_dir, name, pipe.dtype_name,
                                             pipe.cache_dir)
               for name in ("text_encoder", "dit", "dcae", "vocoder")}
    sizes = {name: _file_gb(folder) for name, folder in folders.items()}
    cfg = json.loads((folders["dit"] / "config.json").read_text())
    width = int(cfg.get("num_attention_heads", 20)) * int(cfg.get("attention_head_dim", 128))
    frames = max(1, int(max(duration_s, 30.0 if duration_s <= 0 else duration_s)
                        * 44100 / 4096))
    passes = batch_size * (2 if guided else 1)
    # one block: q/k/v/out + 5x-wide GLUMBConv hidden (x2 for the gate) + norms, fp32 attention
    dit_act = passes * frames * width * 24 * bytes_per / 1024**3
    if chunked is None:
        chunked = frames * 4096 / 44100 > 48
    dec_frames = min(frames, 160) if chunked else frames
    # DCAE decoder at full resolution: 128 channels x 128 mel bins x 8T, a few live tensors;
    # vocoder: up to ~64 channels at the output rate
    dcae_act = 128 * 128 * 8 * dec_frames * 6 * bytes_per / 1024**3
    voc_act = 64 * 4096 * dec_frames * 4 * bytes_per / 1024**3
    act = max(dit_act, dcae_act + voc_act)
    if pipe.low_memory:
        weights = max(sizes["text_encoder"], sizes["dit"], sizes["dcae"] + sizes["vocoder"])
    else:
        weights = sum(sizes.values())
    return MemoryEstimate(weights, act, available_memory_gb())


def lyric_attention_gb(n_tokens: int, heads: int) -> float:
    """Peak of the Conformer lyric encoder's relative-position attention for one branch.

    Per head it holds the [L, L] content scores, the [L, 2L-1] position scores before the
    relative shift, the shifted copy, the summed scores and the float32 softmax: about 6 L^2
    float32 values. It grows with the square of the lyric length (the original has no limit).
    """
    return heads * 6.0 * float(n_tokens) ** 2 * 4 / 1024**3


def check_lyric_length(n_tokens: int, heads: int, available_gb: float | None = None) -> None:
    """Refuse, before any work, lyrics whose lyric-encoder attention cannot fit in memory."""
    available_gb = available_memory_gb() if available_gb is None else available_gb
    need = lyric_attention_gb(n_tokens, heads)
    if available_gb is not None and need > 0.85 * available_gb:
        limit = int((0.85 * available_gb * 1024**3 / (heads * 6.0 * 4)) ** 0.5)
        raise ValueError(
            f"the lyrics give {n_tokens} tokens; the lyric encoder's attention would need about "
            f"{need:.0f} GB (it grows with the square of the length) of {available_gb:.0f} GB: "
            f"shorten the lyrics (at most about {limit} tokens fit here; a 4-minute song's "
            "lyrics are typically 500-2000 tokens)")
