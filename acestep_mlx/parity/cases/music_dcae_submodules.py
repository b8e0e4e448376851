"""Parity: each MusicDCAE sub-module alone (mel front end, vocoder, DCAE encoder and decoder).

Reference: `music_dcae_submodules.safetensors` (random inputs through the original modules).
The mel front end is checked twice: with the window/filterbank computed from the config (what
the port uses) and with the buffers stored in the tiny checkpoint's vocoder file.
"""

from __future__ import annotations

import mlx.core as mx
import numpy as np

from acestep_mlx.audio.mel import LogMelSpectrogram, MelConfig, stored_mel_buffers


def _np(x: mx.array) -> np.ndarray:
    return np.array(x.astype(mx.float32))


def run(ref, ctx) -> None:
    vocoder = ctx.load("vocoder")
    cfg = MelConfig.from_vocoder(vocoder.config)

    # --- log-mel front end
    computed = LogMelSpectrogram(cfg)
    ref.check("mel_transform.window", computed.window, note="computed")
    ref.check("mel_transform.mel_filterbank", computed.filterbank, note="computed")
    wave = ref.input("mel_transform.input")
    ref.check("mel_transform.linear_magnitude", computed.linear(wave), note="computed window")
    ref.check("mel_transform.output", _np(computed(wave)), note="computed window/filterbank")
    window, fb = stored_mel_buffers(
        ctx.fixture_dir / "music_vocoder" / "diffusion_pytorch_model.safetensors"
    )
    ref.check("mel_transform.window", window, note="stored buffer")
    ref.check("mel_transform.mel_filterbank", fb, note="stored buffer")
    stored = LogMelSpectrogram(cfg, window=window, filterbank=fb)
    ref.check("mel_transform.output", _np(stored(wave)), note="stored window/filterbank")

    # --- vocoder
    mel = mx.array(ref.input("vocoder_decode.input"))
    backbone = vocoder.backbone(mx.transpose(mel, (0, 2, 1)))
    ref.check("vocoder_decode.backbone_out", _np(mx.transpose(backbone, (0, 2, 1))))
    ref.check("vocoder_decode.output", _np(vocoder.decode(mel))[:, None, :])

    # --- DCAE encoder / decoder
    dcae = ctx.load("dcae")
    x = mx.array(ref.input("dcae_encoder.input"))
    ref.check("dcae_encoder.output", _np(dcae.encode_nchw(x)))
    z = mx.array(ref.input("dcae_decoder.input"))
    ref.check("dcae_decoder.output", _np(dcae.decode_nchw(z)))
