"""MusicDCAE: waveform <-> DCAE latent, as the original `MusicDCAE` (spec 6.1, 6.3, 6.7).

encode: wave [B, 2, N] at `sample_rate` -> resample to 44.1 kHz -> right-pad to a multiple of
        4096 samples -> log-mel per channel [B, 2, 128, F] -> (mel + 11) / 14, then (x - 0.5) / 0.5
        (no clamping) -> DCAE encoder -> (z + 1.9091) * 0.1786 -> latents [B, 8, 16, F/8].
decode: per item: z = latent / 0.1786 - 1.9091 -> DCAE decoder -> mel * 0.5 + 0.5, * 14 - 11 ->
        vocoder per stereo channel -> 44.1 kHz [2, 4096 T] -> resample to `sample_rate` (float32).

Three decoders:
* plain (default): the original `decode`, whole song at once.
* `overlapped=True`: the original `decode_overlap` (512-frame DCAE windows, 512-mel-frame vocoder
  windows with 128-sample cross-fades, final crop), reproduced exactly.
* `chunked=True`: bounded memory, for long songs on small machines. DCAE windows of at most
  `chunk_frames` latent frames (with `context_frames` of extra context on each inner side),
  cross-faded linearly over `crossfade_frames` mel frames around each boundary; the vocoder runs
  on mel windows with as much context as its receptive field, which makes that stage exact (it is
  purely local); `mx.clear_cache()` between windows. The only approximation is in the DCAE: its
  linear attention is global, so a window sees statistics of its own span only. Songs up to
  `chunk_frames` latent frames (default 128, 11.9 s) decode exactly as plain.

bfloat16 mode follows the original's precision map: scalar affine steps computed in float32 and
rounded per op (torch keeps Python scalars in float32 for bf16 tensors), the resampling of the
decoded audio in float32, the encode path's resampling kernel and data in bfloat16.
"""

from __future__ import annotations

import math
import os
from collections.abc import Sequence

import mlx.core as mx
import numpy as np

from acestep_mlx.audio.mel import (
    LogMelSpectrogram,
    MelConfig,
    stored_mel_buffers,
    torch_linspace_f32,
)
from acestep_mlx.audio.resample import resample

SCALE_FACTOR = 0.1786
SHIFT_FACTOR = -1.9091
MIN_MEL = -11.0
MAX_MEL = 3.0
LATENT_TO_MEL = 8  # mel frames per latent frame (time_dimention_multiple)
MODEL_SAMPLE_RATE = 44100

_DTYPES = {"float32": mx.float32, "bfloat16": mx.bfloat16, "float16": mx.float16}


def _op(x: mx.array, fn) -> mx.array:
    """One elementwise op with Python scalars, as torch does it: in float32 for 16-bit inputs
    (the scalar is not rounded to the input dtype), result rounded to the input dtype."""
    if x.dtype == mx.float32:
        return fn(x)
    return fn(x.astype(mx.float32)).astype(x.dtype)


def _np_dtype_name(dtype: mx.Dtype) -> str:
    return "bfloat16" if dtype == mx.bfloat16 else "float32"


class MusicDCAE:
    """Latent codec: the DCAE (`decode_nchw`/`encode_nchw`) plus the vocoder and the mel front end.

    `dcae` needs `encode_nchw(mel [B,2,128,F]) -> [B,8,16,F/8]` and
    `decode_nchw(z [B,8,16,T]) -> [B,2,128,8T]`; `vocoder` needs `decode(mel [B,128,F]) ->
    [B, 512 F]` (and `receptive_field()` for the chunked decode).
    """

    def __init__(
        self,
        dcae,
        vocoder,
        mel: LogMelSpectrogram | None = None,
        dtype: str | mx.Dtype | None = None,
    ):
        self.dcae = dcae
        self.vocoder = vocoder
        if mel is None:
            mel = LogMelSpectrogram(MelConfig.from_vocoder(vocoder.config))
        self.mel = mel
        if dtype is None:
            dtype = getattr(vocoder, "dtype", mx.float32)
        self.dtype = _DTYPES[dtype] if isinstance(dtype, str) else dtype
        self.hop_length = mel.cfg.hop_length
        self.model_sample_rate = mel.cfg.sample_rate

    # ------------------------------------------------------------------ loading
    @classmethod
    def from_checkpoint(
        cls,
        checkpoint: str | os.PathLike,
        dtype: str = "float32",
        cache_dir: str | os.PathLike | None = None,
        mel_buffers: str = "computed",
        verbose: bool = False,
    ) -> MusicDCAE:
        """Load `music_dcae_f8c8` and `music_vocoder` of a checkpoint folder (converted once).

        `mel_buffers`: "computed" (default) builds the Hann window and mel filterbank from the
        vocoder config; "checkpoint" uses the `mel_transform.*` buffers stored in the original
        vocoder file, which is what the original does (they are bfloat16 in the published
        checkpoint, so the encoder input then differs from "computed" by up to ~1e-2 in log-mel).
        """
        from acestep_mlx.checkpoint import load_component

        if mel_buffers not in ("computed", "checkpoint"):
            raise ValueError(f"mel_buffers must be 'computed' or 'checkpoint', got {mel_buffers!r}")
        dcae = load_component(checkpoint, "dcae", dtype, cache_dir=cache_dir, verbose=verbose)
        vocoder = load_component(checkpoint, "vocoder", dtype, cache_dir=cache_dir, verbose=verbose)
        cfg = MelConfig.from_vocoder(vocoder.config)
        if mel_buffers == "checkpoint":
            weights = os.path.join(
                checkpoint, "music_vocoder", "diffusion_pytorch_model.safetensors"
            )
            try:
                window, fb = stored_mel_buffers(weights)
            except (KeyError, OSError, ValueError) as e:
                raise ValueError(
                    f"mel_buffers='checkpoint': {weights} has no usable "
                    f"mel_transform buffers ({e}); use mel_buffers='computed'"
                ) from e
            mel = LogMelSpectrogram(cfg, window=window, filterbank=fb)
        else:
            mel = LogMelSpectrogram(cfg)
        return cls(dcae, vocoder, mel, dtype)

    @property
    def samples_per_latent(self) -> int:
        return self.hop_length * LATENT_TO_MEL

    # ------------------------------------------------------------------ encode
    def encode(self, wave, sample_rate: int = 48000, return_intermediates: bool = False):
        """wave [B, 2, N] or [2, N] (numpy or mx) at `sample_rate` -> (latents, latent_lengths).

        latents: mx.array [B, 8, 16, T] in the model dtype, T = ceil(N44 / 4096);
        latent_lengths: int64 numpy [B] = long(N / sr * 44100 / 512 / 8) in float32 arithmetic.
        With `return_intermediates=True` a third value, a dict of the intermediate arrays.
        """
        x = self._check_wave(wave, sample_rate)
        b, _, n = x.shape
        dt = _np_dtype_name(self.dtype)
        audio = resample(x, sample_rate, self.model_sample_rate, dtype=dt)  # kernel in dtype
        spl = self.samples_per_latent
        if audio.shape[-1] % spl:
            audio = np.pad(audio, ((0, 0), (0, 0), (0, spl - audio.shape[-1] % spl)))
        mels = mx.stack([self.mel(audio[i], self.dtype) for i in range(b)])  # [B, 2, 128, F]
        norm = _op(mels, lambda m: m - MIN_MEL)
        norm = _op(norm, lambda m: m / (MAX_MEL - MIN_MEL))
        norm = _op(norm, lambda m: m - 0.5)
        norm = _op(norm, lambda m: m / 0.5)
        z = mx.concatenate([self.dcae.encode_nchw(norm[i : i + 1]) for i in range(b)], axis=0)
        latents = _op(z, lambda v: v - SHIFT_FACTOR)
        latents = _op(latents, lambda v: v * SCALE_FACTOR)
        lengths = self.latent_lengths(np.full((b,), n, np.int64), sample_rate)
        if not return_intermediates:
            return latents, lengths
        inter = {
            "audio_44k_padded": audio,
            "log_mel": mels,
            "dcae_encoder_in": norm,
            "dcae_encoder_out": z,
        }
        return latents, lengths, inter

    def latent_lengths(self, audio_lengths: np.ndarray, sample_rate: int) -> np.ndarray:
        """The original's `(audio_lengths / sr * 44100 / 512 / 8).long()`, float32 like torch."""
        v = np.asarray(audio_lengths).astype(np.float32) / np.float32(sample_rate)
        v = v * np.float32(MODEL_SAMPLE_RATE) / np.float32(512) / np.float32(LATENT_TO_MEL)
        return np.trunc(v.astype(np.float32)).astype(np.int64)

    def _check_wave(self, wave, sample_rate) -> np.ndarray:
        if int(sample_rate) != sample_rate or sample_rate <= 0:
            raise ValueError(f"sample_rate must be a positive integer, got {sample_rate!r}")
        x = np.asarray(
            wave.astype(mx.float32) if isinstance(wave, mx.array) else wave, dtype=np.float32
        )
        if x.ndim == 2:
            x = x[None]
        if x.ndim != 3 or x.shape[1] != 2:
            raise ValueError(
                f"encode expects a stereo waveform [batch, 2, samples] or "
                f"[2, samples], got shape {list(np.shape(wave))}; duplicate a mono "
                "channel (acestep_mlx.audio.io.load_audio does)"
            )
        if x.shape[-1] == 0:
            raise ValueError("encode got an empty waveform (0 samples)")
        if not np.isfinite(x).all():
            raise ValueError("encode got a waveform with NaN or Inf samples")
        return x

    # ------------------------------------------------------------------ decode
    def decode(
        self,
        latents,
        sample_rate: int | None = 48000,
        *,
        overlapped: bool = False,
        chunked: bool = False,
        chunk_frames: int = 128,
        context_frames: int = 16,
        crossfade_frames: int | None = None,
        vocoder_chunk_frames: int = 1024,
        return_intermediates: bool = False,
    ):
        """latents [B, 8, 16, T] (mx or numpy) -> list of float32 numpy waveforms [2, N].

        N = ceil(4096 T * sr / 44100) (no trimming, no clipping) for the plain and chunked
        decoders; `overlapped=True` crops to int(4096 T * sr / 44100) like the original.
        `sample_rate=None` (or 44100) returns the vocoder's 44.1 kHz output.
        With `return_intermediates=True` (plain decoder only) returns (waves, list of dicts).

        Chunked decoder options: `chunk_frames` = most latent frames per DCAE window (context
        included); `context_frames` = latent frames decoded beyond each inner window edge and
        dropped; `crossfade_frames` = mel frames of linear cross-fade centred on each window
        boundary (default min(64, 16 * context_frames)); `vocoder_chunk_frames` = mel frames per
        vocoder window (plus the vocoder's receptive field on each side, so that stage is exact).
        """
        if overlapped and chunked:
            raise ValueError(
                "choose either overlapped=True (the original's overlapped decode) "
                "or chunked=True (bounded memory), not both"
            )
        if return_intermediates and (overlapped or chunked):
            raise ValueError("return_intermediates is only available for the plain decode")
        sr = self.model_sample_rate if sample_rate is None else int(sample_rate)
        if sr <= 0:
            raise ValueError(f"sample_rate must be positive, got {sample_rate!r}")
        z_all = self._check_latents(latents)
        waves, inters = [], []
        for i in range(z_all.shape[0]):
            z = _op(z_all[i : i + 1], lambda v: v / SCALE_FACTOR)
            z = _op(z, lambda v: v + SHIFT_FACTOR)
            if overlapped:
                waves.append(self._decode_overlapped(z, sr))
            elif chunked:
                waves.append(
                    self._decode_chunked(
                        z, sr, chunk_frames, context_frames, crossfade_frames, vocoder_chunk_frames
                    )
                )
            else:
                wave, inter = self._decode_plain(z, sr)
                waves.append(wave)
                inters.append(inter)
        return (waves, inters) if return_intermediates else waves

    def _check_latents(self, latents) -> mx.array:
        z = latents if isinstance(latents, mx.array) else mx.array(np.asarray(latents))
        if z.ndim == 3:
            z = z[None]
        if z.ndim != 4 or z.shape[-1] == 0:
            raise ValueError(f"decode expects latents [batch, 8, 16, frames], got {list(z.shape)}")
        return z.astype(self.dtype)

    def denormalize_mel(self, mel: mx.array) -> mx.array:
        mel = _op(mel, lambda m: m * 0.5)
        mel = _op(mel, lambda m: m + 0.5)
        mel = _op(mel, lambda m: m * (MAX_MEL - MIN_MEL))
        return _op(mel, lambda m: m + MIN_MEL)

    def _to_output_rate(
        self, wav44: np.ndarray, sr: int, kernel_dtype: str = "float64", dtype: str = "float32"
    ) -> np.ndarray:
        if sr == self.model_sample_rate:
            return wav44
        return resample(wav44, self.model_sample_rate, sr, kernel_dtype=kernel_dtype, dtype=dtype)

    def _decode_plain(self, z: mx.array, sr: int) -> tuple[np.ndarray, dict]:
        dec = self.dcae.decode_nchw(z)  # [1, 2, 128, 8T]
        mel = self.denormalize_mel(dec)
        chans = []
        for c in range(mel.shape[1]):
            w = self.vocoder.decode(mel[:, c])  # [1, 512 F]
            mx.eval(w)
            chans.append(np.array(w.astype(mx.float32))[0])
        wav44 = np.stack(chans)
        return self._to_output_rate(wav44, sr), {
            "dcae_decoder_out": dec,
            "vocoder_in_mel": mel,
            "vocoder_out_44k": wav44,
        }

    # --------------------------------------------------------- overlapped (original)
    def _decode_overlapped(self, z: mx.array, sr: int) -> np.ndarray:
        """The original `decode_overlap` for one item (z already unscaled, [1, 8, 16, T])."""
        t_len = z.shape[-1]
        win, offset, hop, overlap = 512, 128, 256, 1024  # latent window; mel overlap trimmed
        anchors = list(range(offset, t_len - offset, hop)) or [offset]
        segments = []
        for i, a in enumerate(anchors):
            s = max(0, a - offset)
            e = min(t_len, s + win)
            seg = z[..., s:e]
            if seg.shape[-1] == 0:
                continue
            full = self.dcae.decode_nchw(seg)
            first, last = i == 0, i == len(anchors) - 1
            if first and last:
                keep = full[..., : min(seg.shape[-1] * LATENT_TO_MEL, full.shape[-1])]
            elif first:
                keep = full[..., :-overlap]
            elif last:
                keep = full[..., overlap:]
            else:
                keep = full[..., overlap:-overlap]
            if keep.shape[-1] > 0:
                mx.eval(keep)
                segments.append(keep)
        mel = self.denormalize_mel(mx.concatenate(segments, axis=-1))[0]  # [2, 128, F]
        total_frames = mel.shape[-1]

        spf = self.hop_length
        win_audio, ov_audio, cf = 512 * 512, 1024, 128
        hop_audio = win_audio - 2 * ov_audio
        block = win_audio // spf
        tail_w = torch_linspace_f32(1, 0, cf)
        head_w = torch_linspace_f32(0, 1, cf)

        def vocode(m: mx.array) -> np.ndarray:
            if m.shape[-1] < block:
                m = mx.pad(m, [(0, 0), (0, 0), (0, block - m.shape[-1])])
            w = self.vocoder.decode(m)
            mx.eval(w)
            return np.array(w.astype(mx.float32))  # values of the model dtype

        out = vocode(mel[..., :block])[:, :-ov_audio]
        out_is_f32 = self.dtype == mx.float32
        p = hop_audio
        total_audio = total_frames * spf
        while p < total_audio:
            start = p // spf
            if start >= total_frames:
                break
            new = vocode(mel[..., start : min(start + block, total_frames)])
            n_cf = min(cf, out.shape[-1], new.shape[-1] - (ov_audio - cf))
            if n_cf > 0:
                tail = out[:, -n_cf:]
                head = new[:, ov_audio - n_cf : ov_audio]
                mixed = tail * tail_w[:n_cf] + head * head_w[:n_cf]  # float32 (type promotion)
                out = np.concatenate([out[:, :-n_cf], mixed], axis=-1)
                out_is_f32 = True
            final = p + hop_audio >= total_audio
            out = np.concatenate(
                [out, new[:, ov_audio:] if final else new[:, ov_audio:-ov_audio]], axis=-1
            )
            p += hop_audio
            mx.clear_cache()
        if sr != self.model_sample_rate:
            kd = "float32" if out_is_f32 else _np_dtype_name(self.dtype)
            out = resample(out, self.model_sample_rate, sr, kernel_dtype=kd, dtype=kd)
        max_len = int(t_len * LATENT_TO_MEL * spf * sr / self.model_sample_rate)
        return np.ascontiguousarray(out[:, : max(0, min(max_len, out.shape[-1]))])

    # --------------------------------------------------------- chunked (bounded memory)
    def _decode_chunked(
        self,
        z: mx.array,
        sr: int,
        chunk_frames: int,
        context_frames: int,
        crossfade_frames: int | None,
        vocoder_chunk_frames: int,
    ) -> np.ndarray:
        mel = self.decode_mel_chunked(z, chunk_frames, context_frames, crossfade_frames)
        wav44 = self.vocode_chunked(mel, vocoder_chunk_frames)
        return self._to_output_rate(wav44, sr)

    def decode_mel_chunked(
        self,
        z: mx.array,
        chunk_frames: int = 128,
        context_frames: int = 16,
        crossfade_frames: int | None = None,
    ) -> np.ndarray:
        """Unscaled latent [1, 8, 16, T] -> de-normalised mel [2, 128, 8T] (float32 numpy),
        decoding at most `chunk_frames` latent frames at a time."""
        t_len = z.shape[-1]
        ctx = int(context_frames)
        # default fade: 64 mel frames (0.74 s), at most what the context frames can cover
        xf = min(64, 2 * LATENT_TO_MEL * ctx) if crossfade_frames is None else int(crossfade_frames)
        if chunk_frames < 1 or ctx < 0 or xf < 0 or xf % 2:
            raise ValueError(
                "chunk_frames must be >= 1, context_frames >= 0 and crossfade_frames "
                "an even number >= 0"
            )
        if xf > 2 * LATENT_TO_MEL * ctx:
            raise ValueError(
                f"crossfade_frames ({xf}) must be at most 2 * 8 * context_frames "
                f"({2 * LATENT_TO_MEL * ctx}): the fade uses context frames"
            )
        core = chunk_frames - 2 * ctx
        if t_len > chunk_frames and core < 1:
            raise ValueError(
                f"chunk_frames ({chunk_frames}) must exceed 2 * context_frames ({2 * ctx})"
            )
        n_win = 1 if t_len <= chunk_frames else math.ceil(t_len / core)
        bounds = [round(k * t_len / n_win) for k in range(n_win + 1)]
        f_len = t_len * LATENT_TO_MEL
        half = xf // 2
        out = None
        for k in range(n_win):
            s = max(0, bounds[k] - ctx)
            e = min(t_len, bounds[k + 1] + ctx)
            dec = self.denormalize_mel(self.dcae.decode_nchw(z[..., s:e]))
            mx.eval(dec)
            piece = np.array(dec.astype(mx.float32))[0]  # [2, 128, 8 (e - s)]
            del dec
            if out is None:
                out = np.zeros(piece.shape[:2] + (f_len,), np.float32)
            # mel range this window contributes to, with linear fades around inner boundaries
            a = bounds[k] * LATENT_TO_MEL - (half if k > 0 else 0)
            b = bounds[k + 1] * LATENT_TO_MEL + (half if k < n_win - 1 else 0)
            seg = piece[..., a - s * LATENT_TO_MEL : b - s * LATENT_TO_MEL].copy()
            if k > 0 and half:
                seg[..., :xf] *= _ramp(xf)
            if k < n_win - 1 and half:
                seg[..., -xf:] *= 1.0 - _ramp(xf)
            out[..., a:b] += seg
            mx.clear_cache()
        return out

    def vocode_chunked(self, mel: np.ndarray, chunk_frames: int = 1024) -> np.ndarray:
        """De-normalised mel [2, 128, F] -> 44.1 kHz waveform [2, 512 F], `chunk_frames` mel
        frames at a time with receptive-field context on both sides (same result as one pass,
        up to float rounding)."""
        if chunk_frames < 1:
            raise ValueError("vocoder_chunk_frames must be >= 1")
        ctx = int(self.vocoder.receptive_field())
        f_len = mel.shape[-1]
        spf = self.hop_length
        out = np.empty((mel.shape[0], f_len * spf), np.float32)
        for a in range(0, f_len, chunk_frames):
            b = min(f_len, a + chunk_frames)
            s, e = max(0, a - ctx), min(f_len, b + ctx)
            for c in range(mel.shape[0]):  # one channel at a time, like the original
                w = self.vocoder.decode(mx.array(mel[c : c + 1, :, s:e]).astype(self.dtype))
                mx.eval(w)
                out[c, a * spf : b * spf] = np.array(w.astype(mx.float32))[
                    0, (a - s) * spf : (b - s) * spf
                ]
                del w
                mx.clear_cache()
        return out


def _ramp(n: int) -> np.ndarray:
    """Linear fade-in weights (i + 0.5) / n, i = 0..n-1 (fade-out is 1 - ramp)."""
    return ((np.arange(n, dtype=np.float32) + 0.5) / n).astype(np.float32)


def decode_lengths(t_frames: int, sample_rate: int = 48000) -> int:
    """Samples per channel returned by `MusicDCAE.decode` (plain or chunked) for T frames."""
    from acestep_mlx.audio.resample import output_length

    return output_length(t_frames * 4096, MODEL_SAMPLE_RATE, sample_rate)


__all__: Sequence[str] = ("MusicDCAE", "decode_lengths", "SCALE_FACTOR", "SHIFT_FACTOR")
