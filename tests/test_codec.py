"""MusicDCAE codec: vocoder, log-mel, resampling and the wrapper against the original's references.

References: tests/fixtures/tiny-a/reference/music_dcae_submodules.safetensors and
music_dcae.safetensors (made by the original PyTorch code); tolerances from fixtures.json.
"""

from __future__ import annotations

import json
import math
from pathlib import Path

import mlx.core as mx
import numpy as np
import pytest
from safetensors.numpy import load_file

from acestep_mlx.audio.mel import LogMelSpectrogram, MelConfig, hann_window, mel_filterbank
from acestep_mlx.audio.resample import output_length, resample, sinc_resample_kernel
from acestep_mlx.codec import MusicDCAE, decode_lengths
from acestep_mlx.parity import run_parity

FIXTURE = Path(__file__).parent / "fixtures" / "tiny-a"
REF = FIXTURE / "reference"
MANIFEST = json.loads((FIXTURE / "fixtures.json").read_text())
TOL = MANIFEST["tolerances"]


def tol(key: str) -> dict:
    return {"atol": TOL[key]["atol"], "rtol": TOL[key]["rtol"]}


@pytest.fixture(scope="module")
def sub() -> dict:
    return load_file(str(REF / "music_dcae_submodules.safetensors"))


@pytest.fixture(scope="module")
def full() -> dict:
    return load_file(str(REF / "music_dcae.safetensors"))


@pytest.fixture(scope="module")
def cache(tmp_path_factory) -> Path:
    return tmp_path_factory.mktemp("codec-cache")


@pytest.fixture(scope="module")
def codec(cache) -> MusicDCAE:
    return MusicDCAE.from_checkpoint(FIXTURE, "float32", cache_dir=cache)


def npf(x) -> np.ndarray:
    return np.array(x.astype(mx.float32)) if isinstance(x, mx.array) else np.asarray(x)


def rel_l2(a, b) -> float:
    a, b = np.asarray(a, np.float64), np.asarray(b, np.float64)
    return float(np.linalg.norm(a - b) / np.linalg.norm(b))


# ------------------------------------------------------------------ parity harness
def test_parity_cases_pass_and_cover_everything(cache):
    summary = run_parity(
        FIXTURE, only=["music_dcae_submodules", "music_dcae"], cache_dir=cache, verbose=False
    )
    failed = [r.line() for r in summary.results if not r.passed]
    assert failed == []
    assert summary.not_covered == {}
    assert summary.passed >= 21


# ------------------------------------------------------------------ log-mel front end
def test_mel_computed_window_and_filterbank_match_reference(sub):
    np.testing.assert_allclose(hann_window(2048), sub["mel_transform.window"], atol=1e-7, rtol=0)
    fb = mel_filterbank(1025, 40.0, 16000.0, 128, 44100)
    np.testing.assert_allclose(fb, sub["mel_transform.mel_filterbank"], atol=1e-6, rtol=1e-5)
    mel = LogMelSpectrogram(MelConfig())
    wave = sub["mel_transform.input"]
    np.testing.assert_allclose(
        mel.linear(wave), sub["mel_transform.linear_magnitude"], **tol("mel_front_end")
    )
    out = npf(mel(wave))
    np.testing.assert_allclose(out, sub["mel_transform.output"], **tol("mel_front_end"))
    assert np.abs(out - sub["mel_transform.output"]).max() < 2e-5


def test_mel_with_stored_buffers_matches_reference(sub):
    stored = load_file(str(FIXTURE / "music_vocoder" / "diffusion_pytorch_model.safetensors"))
    window = stored["mel_transform.spectrogram.window"]
    fb = stored["mel_transform.mel_scale.fb"]
    np.testing.assert_array_equal(window, sub["mel_transform.window"])
    np.testing.assert_array_equal(fb, sub["mel_transform.mel_filterbank"])
    mel = LogMelSpectrogram(MelConfig(), window=window, filterbank=fb)
    np.testing.assert_allclose(
        npf(mel(sub["mel_transform.input"])), sub["mel_transform.output"], **tol("mel_front_end")
    )


def test_mel_rejects_bad_buffers_and_short_audio():
    with pytest.raises(ValueError, match="filterbank must be"):
        LogMelSpectrogram(MelConfig(), filterbank=np.zeros((10, 128), np.float32))
    with pytest.raises(ValueError, match="too short"):
        LogMelSpectrogram(MelConfig()).linear(np.zeros((1, 500), np.float32))


# ------------------------------------------------------------------ resampling
def test_resample_matches_torchaudio_both_directions(full):
    wave48 = full["input.waveform_48k"]
    padded44 = full["encode.intermediate.audio_44k_padded"]
    down = resample(wave48, 48000, 44100)
    assert down.shape[-1] == output_length(96000, 48000, 44100) == 88200
    np.testing.assert_allclose(down, padded44[..., :88200], atol=1e-6, rtol=0)
    assert not padded44[..., 88200:].any()
    up = resample(full["decode.intermediate.vocoder_out_44k"], 44100, 48000)
    np.testing.assert_allclose(up, full["decode.waveform_48k"], atol=1e-6, rtol=0)


def test_resample_kernel_and_lengths():
    kernel, width = sinc_resample_kernel(44100, 48000)
    assert (kernel.shape, width) == ((160, 2 * 7 + 147), 7)
    # the kernel of each phase is a lowpass with unit DC gain (up to the rolloff window)
    assert np.allclose(kernel.sum(axis=1), 1.0, atol=2e-2)
    k32, _ = sinc_resample_kernel(44100, 48000, kernel_dtype="float32")
    assert 0 < np.abs(k32 - kernel).max() < 1e-5
    assert sinc_resample_kernel(88200, 96000)[0] is kernel  # gcd-reduced: same 147 -> 160 kernel
    # torch's float32 ceil: fractions are lost above 2**22 output samples
    assert output_length(645 * 4096, 44100, 48000) == 2875560
    assert output_length(2583 * 4096, 44100, 48000) == 11515611  # exact ceil would be ...612
    x = np.random.default_rng(0).standard_normal((2, 1000)).astype(np.float32)
    np.testing.assert_array_equal(resample(x, 22050, 22050), x)
    y = resample(x, 22050, 44100)  # any integer pair
    assert y.shape == (2, 2000)
    with pytest.raises(ValueError, match="positive integer"):
        resample(x, 44100.5, 48000)


# ------------------------------------------------------------------ vocoder
def test_vocoder_matches_reference(codec, sub):
    mel = mx.array(sub["vocoder_decode.input"])
    backbone = codec.vocoder.backbone(mx.transpose(mel, (0, 2, 1)))
    np.testing.assert_allclose(
        npf(backbone).transpose(0, 2, 1), sub["vocoder_decode.backbone_out"], **tol("vocoder")
    )
    wav = npf(codec.vocoder.decode(mel))
    assert wav.shape == (1, 13 * 512)
    np.testing.assert_allclose(wav, sub["vocoder_decode.output"][:, 0], **tol("vocoder"))


def test_vocoder_convolutions_equal_mlx_reference_ops(codec):
    """The GEMM formulations (dilated conv by phases, polyphase transposed conv) compute what
    mx.conv1d(dilation=) and mx.conv_transpose1d compute."""
    rng = np.random.default_rng(3)
    conv = codec.vocoder.head.resblocks[1].convs1[2]  # kernel 7, dilation 5
    x = mx.array(rng.standard_normal((2, 37, conv.weight.shape[2])).astype(np.float32))
    ref = mx.conv1d(x, conv.weight, padding=15, dilation=5) + conv.bias
    np.testing.assert_allclose(npf(conv(x)), npf(ref), atol=1e-5)
    up = codec.vocoder.head.ups[0]  # kernel 16, stride 8
    x = mx.array(rng.standard_normal((2, 11, up.weight.shape[2])).astype(np.float32))
    ref = mx.conv_transpose1d(x, up.weight, stride=8, padding=4) + up.bias
    assert up(x).shape == (2, 88, up.weight.shape[0])
    np.testing.assert_allclose(npf(up(x)), npf(ref), atol=1e-5)


def test_vocoder_receptive_field_bounds_influence(codec):
    """Changing one mel frame changes output samples only within receptive_field() frames."""
    voc = codec.vocoder
    rf = voc.receptive_field()
    rng = np.random.default_rng(1)
    n = 2 * rf + 21
    mel = rng.normal(-4, 2, (1, 128, n)).astype(np.float32)
    base = npf(voc.decode(mx.array(mel)))[0]
    mel[0, :, n // 2] += 3.0
    diff = np.abs(npf(voc.decode(mx.array(mel)))[0] - base).reshape(n, 512).max(axis=1)
    changed = np.nonzero(diff > 0)[0]
    assert changed.size and changed.min() >= n // 2 - rf and changed.max() <= n // 2 + rf


def test_vocoder_bfloat16_close_to_float32(cache, sub):
    codec16 = MusicDCAE.from_checkpoint(FIXTURE, "bfloat16", cache_dir=cache)
    assert codec16.vocoder.dtype == mx.bfloat16
    wav = codec16.vocoder.decode(mx.array(sub["vocoder_decode.input"]))
    assert wav.dtype == mx.bfloat16
    assert rel_l2(npf(wav), sub["vocoder_decode.output"][:, 0]) < 0.02  # measured 0.0046


# ------------------------------------------------------------------ the wrapper
def test_encode_decode_match_reference(codec, full):
    latents, lengths = codec.encode(full["input.waveform_48k"], 48000)
    np.testing.assert_allclose(npf(latents), full["encode.latents"], **tol("music_dcae"))
    np.testing.assert_array_equal(lengths, full["encode.latent_lengths"])
    waves = codec.decode(full["encode.latents"], 48000)
    assert len(waves) == 1 and waves[0].dtype == np.float32
    np.testing.assert_allclose(waves[0], full["decode.waveform_48k"][0], **tol("music_dcae"))


def test_checkpoint_mel_buffers_option(cache, full):
    codec = MusicDCAE.from_checkpoint(FIXTURE, "float32", cache_dir=cache, mel_buffers="checkpoint")
    latents, _, inter = codec.encode(full["input.waveform_48k"], 48000, return_intermediates=True)
    np.testing.assert_allclose(
        npf(inter["log_mel"]), full["encode.intermediate.log_mel"], **tol("mel_front_end")
    )
    np.testing.assert_allclose(npf(latents), full["encode.latents"], **tol("music_dcae"))


def test_round_trip_shapes_and_lengths(codec):
    rng = np.random.default_rng(0)
    n = 30000  # 0.68 s at 44.1 kHz -> padded to 8 latent frames
    wave = (0.3 * np.sin(np.arange(n) / 20.0) + 0.05 * rng.standard_normal((2, n))).astype(
        np.float32
    )
    latents, lengths = codec.encode(wave, 44100)  # [2, N] accepted; no resampling at 44.1k
    assert latents.shape == (1, 8, 16, math.ceil(n / 4096))
    assert lengths.tolist() == [int(n / 44100 * 44100 / 512 / 8)]
    out48 = codec.decode(latents, 48000)[0]
    assert out48.shape == (2, decode_lengths(8, 48000)) == (2, math.ceil(8 * 4096 * 160 / 147))
    out44 = codec.decode(latents, None)[0]
    assert out44.shape == (2, 8 * 4096)
    assert np.isfinite(out48).all() and np.abs(out44).max() <= 1.0  # tanh output at 44.1k
    # a 32 kHz batch of two
    batch = np.stack([wave[:, :20000], 0.5 * wave[:, :20000]])
    latents2, lengths2 = codec.encode(batch, 32000)
    assert latents2.shape == (2, 8, 16, 7)  # 20000 -> 27563 samples at 44.1 kHz
    assert lengths2.tolist() == [6, 6]  # int(20000 / 32000 * 44100 / 512 / 8)
    assert len(codec.decode(latents2)) == 2


def test_bfloat16_codec_close_to_float32(cache, full):
    codec16 = MusicDCAE.from_checkpoint(FIXTURE, "bfloat16", cache_dir=cache)
    latents, _ = codec16.encode(full["input.waveform_48k"], 48000)
    assert latents.dtype == mx.bfloat16
    assert rel_l2(npf(latents), full["encode.latents"]) < 0.08  # measured 0.025
    wave = codec16.decode(full["encode.latents"], 48000)[0]
    assert wave.dtype == np.float32
    assert rel_l2(wave, full["decode.waveform_48k"][0]) < 0.02  # measured 0.005


def test_bad_inputs_give_clear_errors(codec):
    with pytest.raises(ValueError, match="stereo"):
        codec.encode(np.zeros((1, 1, 5000), np.float32), 48000)
    with pytest.raises(ValueError, match="empty"):
        codec.encode(np.zeros((2, 0), np.float32), 48000)
    with pytest.raises(ValueError, match="sample_rate"):
        codec.encode(np.zeros((2, 5000), np.float32), 0)
    with pytest.raises(ValueError, match="latents"):
        codec.decode(np.zeros((1, 8, 16, 0), np.float32))
    with pytest.raises(ValueError, match="either"):
        codec.decode(np.zeros((1, 8, 16, 4), np.float32), overlapped=True, chunked=True)
    with pytest.raises(ValueError, match="mel_buffers"):
        MusicDCAE.from_checkpoint(FIXTURE, mel_buffers="stored")


# ------------------------------------------------------------------ overlapped / chunked decode
class LocalDCAE:
    """A DCAE stand-in whose decoder is purely local (each latent frame -> its 8 mel frames)."""

    def __init__(self, seed: int = 0):
        self.proj = mx.array(
            np.random.default_rng(seed).standard_normal((2 * 128, 8 * 16)).astype(np.float32) * 0.05
        )

    def decode_nchw(self, z: mx.array) -> mx.array:
        b, c, h, t = z.shape
        frames = mx.transpose(z, (0, 3, 1, 2)).reshape(b, t, c * h)  # [B, T, 128]
        mel = mx.tanh(frames @ self.proj.T)  # [B, T, 256]
        mel = mx.repeat(mel, 8, axis=1)  # [B, 8T, 256]
        return mx.transpose(mel.reshape(b, 8 * t, 2, 128), (0, 2, 3, 1))


class LocalVocoder:
    """A vocoder stand-in: each mel frame -> 512 samples depending on that frame only."""

    class config:  # noqa: N801 - mimics VocoderConfig
        sampling_rate, n_fft, win_length, hop_length, n_mels = 44100, 2048, 2048, 512, 128
        f_min, f_max, input_channels = 40.0, 16000.0, 128

    def __init__(self):
        self.ramp = mx.linspace(0.5, 1.0, 512)

    def decode(self, mel: mx.array) -> mx.array:
        level = mx.tanh(mx.mean(mel, axis=1) / 10.0)  # [B, F]
        return (level[:, :, None] * self.ramp).reshape(mel.shape[0], -1)

    def receptive_field(self) -> int:
        return 0


def test_overlapped_decode_tiles_exactly_with_local_models():
    """With local stand-ins the original's overlapped decode equals the plain decode: the DCAE
    windows tile the mel exactly and the vocoder windows join with 128-sample cross-fades of
    equal values; the output is cropped to int(4096 T sr / 44100)."""
    codec = MusicDCAE(LocalDCAE(), LocalVocoder(), dtype="float32")
    t = 700  # 3 DCAE windows (anchors 128, 384, 640), 11 vocoder windows
    z = np.random.default_rng(2).standard_normal((1, 8, 16, t)).astype(np.float32)
    plain = codec.decode(z, 48000)[0]
    over = codec.decode(z, 48000, overlapped=True)[0]
    assert over.shape == (2, int(t * 4096 * 48000 / 44100))
    # the float32-computed kernel of the overlapped path differs from the float64 one by ~1e-6
    np.testing.assert_allclose(over, plain[:, : over.shape[1]], atol=2e-5, rtol=0)
    over44 = codec.decode(z, None, overlapped=True)[0]
    np.testing.assert_allclose(over44, codec.decode(z, None)[0], atol=1e-6, rtol=0)


def test_chunked_decode_bookkeeping_with_local_models():
    codec = MusicDCAE(LocalDCAE(), LocalVocoder(), dtype="float32")
    z = np.random.default_rng(4).standard_normal((1, 8, 16, 101)).astype(np.float32)
    plain = codec.decode(z, 48000)[0]
    chunked = codec.decode(
        z,
        48000,
        chunked=True,
        chunk_frames=24,
        context_frames=4,
        crossfade_frames=16,
        vocoder_chunk_frames=50,
    )[0]
    assert chunked.shape == plain.shape
    np.testing.assert_allclose(chunked, plain, atol=1e-6, rtol=0)


def test_chunked_decode_close_to_plain_on_tiny_model(codec):
    """Real tiny model: the vocoder stage of the chunked decode is exact; the DCAE windows are an
    approximation (the EfficientViT linear attention is global). Measured on random latents with
    the statistics of the reference latents, 32 frames in 16-frame windows: rel. RMS 0.45%."""
    rng = np.random.default_rng(0)
    t = 32
    z = (rng.standard_normal((1, 8, 16, t)) * 1.26 + 0.87).astype(np.float32)
    plain = codec.decode(z, 48000)[0]
    same = codec.decode(z, 48000, chunked=True, chunk_frames=t, vocoder_chunk_frames=128)[0]
    np.testing.assert_allclose(same, plain, atol=1e-6, rtol=0)  # one DCAE window: exact
    chunked = codec.decode(
        z,
        48000,
        chunked=True,
        chunk_frames=16,
        context_frames=4,
        crossfade_frames=32,
        vocoder_chunk_frames=128,
    )[0]
    assert chunked.shape == plain.shape
    err = rel_l2(chunked, plain)
    assert 0 < err < 0.02


def test_chunked_vocoder_stage_is_exact(codec):
    rng = np.random.default_rng(5)
    mel = rng.normal(-4, 2, (2, 128, 150)).astype(np.float32)
    whole = np.stack([npf(codec.vocoder.decode(mx.array(mel[c : c + 1])))[0] for c in range(2)])
    np.testing.assert_allclose(codec.vocode_chunked(mel, chunk_frames=32), whole, atol=1e-6, rtol=0)


def test_overlapped_decode_runs_on_tiny_model(codec):
    """Single window: equal to the plain decode away from the end (the original pads the last
    vocoder window with zero mel frames and resamples with a float32-computed kernel)."""
    z = np.random.default_rng(6).standard_normal((1, 8, 16, 8)).astype(np.float32)
    plain = codec.decode(z, 48000)[0]
    over = codec.decode(z, 48000, overlapped=True)[0]
    assert over.shape == (2, int(8 * 4096 * 48000 / 44100))
    np.testing.assert_allclose(over[:, :20000], plain[:, :20000], atol=2e-5, rtol=0)


def test_vocoder_key_table_drops_only_folded_and_recomputed_tensors():
    from convert.core import header_of, plan_component
    from convert.vocoder import SPEC

    header = header_of(FIXTURE / "music_vocoder" / "diffusion_pytorch_model.safetensors")
    plan = plan_component(SPEC, header)
    assert set(plan.dropped) == {k for k in header if k.endswith("weight_g")} | {
        "mel_transform.spectrogram.window",
        "mel_transform.mel_scale.fb",
    }
    assert all(plan.dropped.values())
    transforms = {t.src: t.transform for t in plan.tensors}
    assert transforms["head.ups.0.weight_v"] == "wn_conv_transpose1d"
    assert transforms["head.conv_pre.weight_v"] == "wn_conv1d"
    assert transforms["backbone.channel_layers.0.0.weight"] == "conv1d"
    assert transforms["backbone.channel_layers.0.1.weight"] == "none"  # LayerNorm
    assert transforms["backbone.channel_layers.1.1.weight"] == "conv1d"
