"""Reading and writing audio files (soundfile / libsndfile): wav, flac, ogg (Vorbis), mp3.

`load_audio` returns float32 samples in [-1, 1] as [2, N] (what the original's `torchaudio.load`
gives: integer PCM divided by its full scale), mono duplicated to stereo like the original.
`save_audio` writes atomically (a temporary file in the same folder, then renamed into place) and
never replaces an existing file unless `overwrite=True`. wav is written as 32-bit float (as the
original's `torchaudio.save` does with a float tensor), so values beyond +-1 survive; flac (24-bit),
ogg and mp3 cannot hold them and are clipped to [-1, 1] first.
"""

from __future__ import annotations

import os
import uuid
from pathlib import Path

import numpy as np

MIN_SAMPLE_RATE = 8000
MAX_SAMPLE_RATE = 384000
FORMATS = ("wav", "flac", "ogg", "mp3")
# soundfile (format, subtype) per output format
_WRITE = {
    "wav": ("WAV", "FLOAT"),
    "flac": ("FLAC", "PCM_24"),
    "ogg": ("OGG", "VORBIS"),
    "mp3": ("MP3", "MPEG_LAYER_III"),
}


class AudioFileError(ValueError):
    """An audio file cannot be used (names the file and what to do)."""


def _soundfile():
    try:
        import soundfile
    except (ImportError, OSError) as e:  # OSError: libsndfile missing
        raise AudioFileError(
            f"audio file support needs the soundfile package and libsndfile "
            f"({e}); install it with `pip install soundfile`"
        ) from e
    return soundfile


def _mp3_supported(sf) -> bool:
    return "MP3" in sf.available_formats()


def load_audio(
    path: str | os.PathLike, multichannel: str = "error", allow_silent: bool = False
) -> tuple[np.ndarray, int]:
    """Read `path` -> (wave [2, N] float32, sample_rate).

    Mono is duplicated to two channels. More than two channels: `multichannel="error"` (default)
    refuses the file; "first_two" keeps channels 0 and 1 (front left/right in the usual WAV/FLAC
    layouts); "mix" averages all channels into mono and duplicates it. Refused with an
    AudioFileError naming the file: unreadable or unsupported files, empty audio, non-finite
    samples, sample rates outside 8 kHz..384 kHz, and all-silent audio (unless
    `allow_silent=True`).
    """
    sf = _soundfile()
    path = Path(path)
    if not path.is_file():
        raise AudioFileError(f"audio file not found: {path}")
    if multichannel not in ("error", "first_two", "mix"):
        raise ValueError(
            f"multichannel must be 'error', 'first_two' or 'mix', got {multichannel!r}"
        )
    try:
        data, sr = sf.read(str(path), dtype="float32", always_2d=True)
    except Exception as e:  # noqa: BLE001 - libsndfile raises several types
        hint = ""
        if path.suffix.lower() == ".mp3" and not _mp3_supported(sf):
            hint = (
                f" (this libsndfile {sf.__libsndfile_version__} cannot read mp3; it needs "
                "version 1.1 or newer: `pip install -U soundfile`)"
            )
        raise AudioFileError(
            f"cannot read audio file {path}: {e}{hint}; supported formats are "
            "wav, flac, ogg and mp3"
        ) from e
    if not MIN_SAMPLE_RATE <= sr <= MAX_SAMPLE_RATE:
        raise AudioFileError(
            f"{path}: sample rate {sr} Hz is outside the supported range "
            f"{MIN_SAMPLE_RATE}..{MAX_SAMPLE_RATE} Hz; is the file damaged?"
        )
    if data.shape[0] == 0:
        raise AudioFileError(f"{path} holds no audio samples (empty file)")
    channels = data.shape[1]
    if channels > 2:
        if multichannel == "error":
            raise AudioFileError(
                f"{path} has {channels} channels; only mono and stereo are supported. Convert it "
                "to stereo first, or pass multichannel='first_two' (keep channels 1-2) or "
                "multichannel='mix' (average all channels)"
            )
        data = data[:, :2] if multichannel == "first_two" else data.mean(axis=1, keepdims=True)
    wave = np.ascontiguousarray(data.T, dtype=np.float32)
    if wave.shape[0] == 1:
        wave = np.repeat(wave, 2, axis=0)
    if not np.isfinite(wave).all():
        raise AudioFileError(f"{path} contains NaN or infinite samples")
    if not allow_silent and not np.any(wave):
        raise AudioFileError(
            f"{path} is completely silent (every sample is zero); "
            "pass allow_silent=True to use it anyway"
        )
    return wave, int(sr)


def _format_of(path: Path, format: str | None) -> str:
    fmt = (format or path.suffix.lstrip(".")).lower()
    if fmt not in FORMATS:
        raise AudioFileError(
            f"cannot write {path}: unknown audio format {fmt!r}; choose one of {', '.join(FORMATS)}"
        )
    return fmt


def save_audio(
    path: str | os.PathLike,
    wave,
    sample_rate: int = 48000,
    format: str | None = None,
    overwrite: bool = False,
) -> Path:
    """Write `wave` [2, N] (or [N] / [C, N], numpy or MLX) to `path`; returns the path.

    `format` is wav, flac, ogg or mp3 (default: from the file extension). Atomic: the data goes
    to a temporary file in the same folder, renamed into place when complete. An existing file is
    never replaced unless `overwrite=True` (FileExistsError otherwise).
    """
    sf = _soundfile()
    path = Path(path)
    fmt = _format_of(path, format)
    if fmt == "mp3" and not _mp3_supported(sf):
        raise AudioFileError(
            f"cannot write {path}: this libsndfile ({sf.__libsndfile_version__}) has no mp3 "
            "support (needs libsndfile 1.1 or newer, e.g. `pip install -U soundfile`); "
            "write wav, flac or ogg instead"
        )
    if int(sample_rate) != sample_rate or not MIN_SAMPLE_RATE <= sample_rate <= MAX_SAMPLE_RATE:
        raise AudioFileError(
            f"cannot write {path}: sample rate {sample_rate} is outside "
            f"{MIN_SAMPLE_RATE}..{MAX_SAMPLE_RATE} Hz"
        )
    data = np.asarray(wave, dtype=np.float32)
    if data.ndim == 1:
        data = data[None]
    if data.ndim != 2 or data.shape[0] > 8 or data.shape[1] == 0:
        raise AudioFileError(
            f"cannot write {path}: expected a [channels, samples] waveform, "
            f"got shape {list(data.shape)}"
        )
    if not np.isfinite(data).all():
        raise AudioFileError(f"cannot write {path}: the waveform contains NaN or Inf")
    if fmt != "wav":
        data = np.clip(data, -1.0, 1.0)
    if path.exists() and not overwrite:
        raise FileExistsError(f"{path} already exists; pass overwrite=True to replace it")
    folder = path.parent if str(path.parent) else Path(".")
    if not folder.is_dir():
        raise AudioFileError(f"cannot write {path}: folder {folder} does not exist")
    major, subtype = _WRITE[fmt]
    # a fresh hidden name in the same folder; mode 0o666 minus the umask, like a normal file
    tmp = str(folder / f".{path.name}.{uuid.uuid4().hex[:12]}.tmp.{fmt}")
    os.close(os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o666))
    try:
        sf.write(tmp, data.T, int(sample_rate), format=major, subtype=subtype)
        if overwrite:
            os.replace(tmp, path)
        else:
            try:
                os.link(tmp, path)  # fails if `path` appeared meanwhile: never clobbers
            except FileExistsError:
                raise FileExistsError(
                    f"{path} already exists; pass overwrite=True to replace it"
                ) from None
            except OSError:  # no hard links on this file system
                if path.exists():
                    raise FileExistsError(
                        f"{path} already exists; pass overwrite=True to replace it"
                    ) from None
                os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)
    return path
