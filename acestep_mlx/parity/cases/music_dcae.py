"""Parity: the full MusicDCAE encode and decode (48 kHz wave <-> latents), every intermediate.

Reference: `music_dcae.safetensors` (`MusicDCAE.encode(wav, sr=48000)` and `MusicDCAE.decode(
latents, sr=48000)` of the original). The decode starts from the recorded latents, so the two
halves are checked independently.
"""

from __future__ import annotations

import mlx.core as mx
import numpy as np

from acestep_mlx.codec import MusicDCAE


def _np(x) -> np.ndarray:
    return np.array(x.astype(mx.float32)) if isinstance(x, mx.array) else np.asarray(x)


def run(ref, ctx) -> None:
    codec = MusicDCAE(ctx.load("dcae"), ctx.load("vocoder"))

    wave = ref.input("input.waveform_48k")
    latents, lengths, inter = codec.encode(wave, 48000, return_intermediates=True)
    ref.check("encode.intermediate.audio_44k_padded", inter["audio_44k_padded"])
    ref.check("encode.intermediate.log_mel", _np(inter["log_mel"]))
    ref.check("encode.intermediate.dcae_encoder_in", _np(inter["dcae_encoder_in"]))
    ref.check("encode.intermediate.dcae_encoder_out", _np(inter["dcae_encoder_out"]))
    ref.check("encode.latents", _np(latents))
    ref.check("encode.latent_lengths", lengths, exact=True)

    recorded = ref.tensors["encode.latents"]  # decode from the original's latents
    waves, inters = codec.decode(recorded, 48000, return_intermediates=True)
    ref.check(
        "decode.intermediate.dcae_decoder_out",
        np.concatenate([_np(i["dcae_decoder_out"]) for i in inters]),
    )
    ref.check(
        "decode.intermediate.vocoder_in_mel",
        np.concatenate([_np(i["vocoder_in_mel"]) for i in inters]),
    )
    ref.check(
        "decode.intermediate.vocoder_out_44k", np.stack([i["vocoder_out_44k"] for i in inters])
    )
    ref.check("decode.waveform_48k", np.stack(waves))
