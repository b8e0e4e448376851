"""Audio files: reading (formats, mono/stereo, refusals with clear errors) and atomic saving."""

from __future__ import annotations

import os

import numpy as np
import pytest
import soundfile as sf

from acestep_mlx.audio import io as audio_io
from acestep_mlx.audio.io import AudioFileError, load_audio, save_audio


def tone(n: int = 4800, channels: int = 2, sr: int = 48000) -> np.ndarray:
    t = np.arange(n) / sr
    rows = [0.4 * np.sin(2 * np.pi * (220 + 110 * c) * t) for c in range(channels)]
    return np.stack(rows).astype(np.float32)


@pytest.mark.parametrize("fmt", ["wav", "flac", "ogg", "mp3"])
def test_save_and_load_every_format(tmp_path, fmt):
    wave = tone()
    path = save_audio(tmp_path / f"out.{fmt}", wave, 48000)
    assert path.is_file() and path.name == f"out.{fmt}"
    back, sr = load_audio(path)
    assert sr == 48000 and back.dtype == np.float32 and back.shape[0] == 2
    if fmt == "wav":  # 32-bit float, bit exact
        np.testing.assert_array_equal(back, wave)
    elif fmt == "flac":  # 24-bit PCM
        np.testing.assert_allclose(back, wave, atol=1e-6)
    else:  # lossy codecs: same length scale and energy
        assert abs(back.shape[1] - wave.shape[1]) < 4000
        assert 0.3 < np.sqrt(np.mean(back**2)) / np.sqrt(np.mean(wave**2)) < 3.0
    assert sorted(p.name for p in tmp_path.iterdir()) == [f"out.{fmt}"]  # no temp files left


def test_wav_keeps_values_beyond_full_scale_and_other_formats_clip(tmp_path):
    wave = tone() * 3.0
    back, _ = load_audio(save_audio(tmp_path / "loud.wav", wave))
    np.testing.assert_array_equal(back, wave)
    back, _ = load_audio(save_audio(tmp_path / "loud.flac", wave))
    assert np.abs(back).max() <= 1.0 and np.abs(back).max() > 0.99


def test_mono_is_duplicated(tmp_path):
    mono = tone(channels=1)[0]
    sf.write(tmp_path / "mono.wav", mono, 22050, subtype="FLOAT")
    wave, sr = load_audio(tmp_path / "mono.wav")
    assert sr == 22050 and wave.shape == (2, mono.size)
    np.testing.assert_array_equal(wave[0], mono)
    np.testing.assert_array_equal(wave[1], mono)


def test_pcm16_is_scaled_like_torchaudio(tmp_path):
    ints = np.array([[0, 16384, -32768, 32767]] * 2, np.int16).T
    sf.write(tmp_path / "pcm.wav", ints, 44100, subtype="PCM_16")
    wave, _ = load_audio(tmp_path / "pcm.wav")
    np.testing.assert_array_equal(wave[0], np.array([0, 0.5, -1, 32767 / 32768], np.float32))


def test_three_channels_refused_or_downmixed(tmp_path):
    data = tone(channels=3)
    sf.write(tmp_path / "three.wav", data.T, 48000, subtype="FLOAT")
    with pytest.raises(AudioFileError, match=r"three\.wav has 3 channels.*multichannel="):
        load_audio(tmp_path / "three.wav")
    first, _ = load_audio(tmp_path / "three.wav", multichannel="first_two")
    np.testing.assert_array_equal(first, data[:2])
    mixed, _ = load_audio(tmp_path / "three.wav", multichannel="mix")
    np.testing.assert_allclose(mixed[0], data.mean(axis=0), atol=1e-7)
    np.testing.assert_array_equal(mixed[0], mixed[1])


def test_unreadable_missing_and_empty_files(tmp_path):
    bad = tmp_path / "noise.wav"
    bad.write_bytes(b"this is not audio at all" * 10)
    with pytest.raises(AudioFileError, match=r"cannot read audio file .*noise\.wav"):
        load_audio(bad)
    with pytest.raises(AudioFileError, match="not found"):
        load_audio(tmp_path / "missing.wav")
    sf.write(tmp_path / "empty.wav", np.zeros((0, 2), np.float32), 48000, subtype="FLOAT")
    with pytest.raises(AudioFileError, match=r"empty\.wav holds no audio"):
        load_audio(tmp_path / "empty.wav")


def test_silent_file_refused_unless_allowed(tmp_path):
    sf.write(tmp_path / "silence.wav", np.zeros((4800, 2), np.float32), 48000, subtype="FLOAT")
    with pytest.raises(AudioFileError, match=r"silence\.wav is completely silent"):
        load_audio(tmp_path / "silence.wav")
    wave, _ = load_audio(tmp_path / "silence.wav", allow_silent=True)
    assert wave.shape == (2, 4800) and not wave.any()


@pytest.mark.parametrize("rate", [4000, 500000])
def test_absurd_sample_rates_refused(tmp_path, rate):
    sf.write(tmp_path / "odd.wav", tone(n=1000).T, rate, subtype="FLOAT")
    with pytest.raises(AudioFileError, match=rf"odd\.wav: sample rate {rate} Hz is outside"):
        load_audio(tmp_path / "odd.wav")


def test_save_never_overwrites_unless_asked(tmp_path):
    path = tmp_path / "song.wav"
    save_audio(path, tone())
    before = path.read_bytes()
    with pytest.raises(FileExistsError, match="overwrite=True"):
        save_audio(path, tone() * 0.5)
    assert path.read_bytes() == before
    save_audio(path, tone() * 0.5, overwrite=True)
    back, _ = load_audio(path)
    np.testing.assert_array_equal(back, tone() * 0.5)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["song.wav"]


def test_failed_write_leaves_nothing(tmp_path, monkeypatch):
    def broken_write(*args, **kwargs):
        raise RuntimeError("disk full")

    monkeypatch.setattr(sf, "write", broken_write)
    with pytest.raises(RuntimeError, match="disk full"):
        save_audio(tmp_path / "x.wav", tone())
    assert list(tmp_path.iterdir()) == []


def test_save_rejects_bad_requests(tmp_path):
    with pytest.raises(AudioFileError, match="unknown audio format 'aiff'"):
        save_audio(tmp_path / "x.aiff", tone())
    with pytest.raises(AudioFileError, match="NaN or Inf"):
        save_audio(tmp_path / "x.wav", np.full((2, 10), np.nan, np.float32))
    with pytest.raises(AudioFileError, match="folder"):
        save_audio(tmp_path / "no" / "such" / "x.wav", tone())
    with pytest.raises(AudioFileError, match="expected a \\[channels, samples\\]"):
        save_audio(tmp_path / "x.wav", np.zeros((2, 2, 2), np.float32))
    assert list(tmp_path.iterdir()) == []


def test_mp3_unavailable_gives_clear_error(tmp_path, monkeypatch):
    monkeypatch.setattr(audio_io, "_mp3_supported", lambda sf_module: False)
    with pytest.raises(AudioFileError, match="no mp3 support"):
        save_audio(tmp_path / "x.mp3", tone())
    assert not os.listdir(tmp_path)
