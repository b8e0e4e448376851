"""Training data: `prepare` turns a folder of songs into cached latents, the trainer reads them.

Input folder (the original's `convert2hf_dataset.py` layout): `NAME.{wav,flac,ogg,mp3}` with
`NAME_prompt.txt` (tags separated by ", ", as the original splits them) and optional
`NAME_lyrics.txt`. Each song is handled as the original dataset does (spec 10.1): mono is
duplicated, the first two channels kept, resampled to 48 kHz (torchaudio's sinc resampler),
clamped to [-1, 1], zero-padded to at least 3 s, rejected when more than 95 % of its samples are
zero in both channels, and cut to its first 240 s. The latents come from the DCAE in float32; the
lyrics are tokenised with the TRAINING variant (spec 10.2: one language detection over the whole
text, structure lines in English, an `[UNK]` fallback to the segment language); the prompt is
tokenised in file order for reference (training shuffles the tags again at every step, as the
original does).

Output folder: `items/<NAME>.safetensors` (`latents` [8, 16, T] float32, `lyric_token_ids` [L]
int64, `prompt_token_ids` [P] int64) and `manifest.json` (every item, every skipped file with its
reason, the checkpoint used). Every tensor is checked for NaN/Inf before it is written; files are
written atomically, and songs whose cached item is up to date are not encoded again.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import uuid
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

SAMPLE_RATE = 48000
MIN_SECONDS = 3
MAX_SECONDS = 240
SILENCE_RATIO = 0.95
MAX_PROMPT_CHARS = 256
MAX_LYRIC_TOKENS = 4096
AUDIO_SUFFIXES = (".wav", ".flac", ".ogg", ".mp3")
MANIFEST = "manifest.json"
MANIFEST_FORMAT = "acestep_mlx-lora-dataset"
MANIFEST_VERSION = 1

# spec 10.2: languages the training tokenisation accepts (only the keys matter)
SUPPORT_LANGUAGES = (
    "en",
    "de",
    "fr",
    "es",
    "it",
    "pt",
    "pl",
    "tr",
    "ru",
    "cs",
    "nl",
    "ar",
    "zh",
    "ja",
    "hu",
    "ko",
    "hi",
)
START_ID, SPACE_ID, UNK_ID, STOP_ID = 261, 2, 1, 0
_STRUCTURE = re.compile(r"\[.*?\]")
_PROMPT_LIKE = re.compile(r"write a .* song that genre is")


class DatasetError(ValueError):
    """A prepared dataset folder that cannot be used (with what to do about it)."""


class SkipItem(Exception):
    """A song that cannot be used for training; the message says why."""


# ---------------------------------------------------------------------------------------------
# lyrics (training tokenisation, spec 10.2)


def training_lyric_ids(lyrics: str, tokenizer, detector) -> list[int]:
    """The original dataset's `tokenize_lyrics_map` -> ids (not truncated).

    `tokenizer.encode(text, lang) -> list[int]` (VoiceBpeTokenizer), `detector` a
    LanguageDetector (LangSegment). Prompt-like text ("write a ... song that genre is") and empty
    lyrics give `[0]`; an unsupported main language raises SkipItem (the original drops the item).
    """
    if _PROMPT_LIKE.search(lyrics) or not lyrics.strip():
        return [STOP_ID]
    try:
        segments, _ = detector.analyse(lyrics)
        counts = detector.counts(lyrics)
    except Exception as e:  # noqa: BLE001 - the original drops such an item
        raise SkipItem(f"language detection failed on the lyrics ({type(e).__name__}: {e})") from e
    most_common = counts[0][0] if counts else "en"
    if most_common == "":
        most_common = "en"
    if most_common not in SUPPORT_LANGUAGES:
        raise SkipItem(
            f"the lyrics' main language {most_common!r} is not supported by the lyric "
            f"tokenizer (supported: {', '.join(SUPPORT_LANGUAGES)})"
        )
    ids = [START_ID]
    for seg in segments:
        lang = seg.lang if seg.lang in SUPPORT_LANGUAGES else "en"
        if "zh" in lang:
            lang = "zh"
        if "spa" in lang:
            lang = "es"
        for line in seg.text.split("\n"):
            if not line.strip():
                ids.append(SPACE_ID)
                continue
            try:
                if _STRUCTURE.match(line):
                    tok = list(tokenizer.encode(line, "en"))
                else:
                    tok = list(tokenizer.encode(line, most_common))
                    if UNK_ID in tok:
                        tok = list(tokenizer.encode(line, lang))
            except ImportError as e:  # an optional language package is missing
                raise SkipItem(f"cannot tokenise the lyrics: {e}") from e
            except Exception:  # noqa: BLE001 - the original logs and skips the line
                continue
            ids += tok + [SPACE_ID]
    return ids


# ---------------------------------------------------------------------------------------------
# audio


def is_silent(wave: np.ndarray, threshold: float = SILENCE_RATIO) -> bool:
    """More than `threshold` of the samples are zero in every channel (the original's test)."""
    silent = np.all(wave == 0, axis=0)
    return float(np.mean(silent.astype(np.float32))) > threshold


def load_training_audio(path: str | os.PathLike, max_seconds: float = MAX_SECONDS) -> np.ndarray:
    """A song as the original dataset loads it -> float32 [2, N] at 48 kHz (SkipItem if not
    usable)."""
    from acestep_mlx.audio.io import AudioFileError, load_audio
    from acestep_mlx.audio.resample import resample

    try:
        wave, sr = load_audio(path, multichannel="first_two", allow_silent=True)
    except AudioFileError as e:
        raise SkipItem(str(e)) from e
    if sr != SAMPLE_RATE:
        wave = resample(wave, sr, SAMPLE_RATE)
    wave = np.clip(wave, -1.0, 1.0).astype(np.float32)
    if wave.shape[-1] < SAMPLE_RATE * MIN_SECONDS:
        wave = np.pad(wave, ((0, 0), (0, SAMPLE_RATE * MIN_SECONDS - wave.shape[-1])))
    if is_silent(wave):
        raise SkipItem(f"more than {SILENCE_RATIO:.0%} of the samples are silent (exact zeros)")
    return np.ascontiguousarray(wave[:, : int(max_seconds * SAMPLE_RATE)])


# ---------------------------------------------------------------------------------------------
# prompts


def split_tags(text: str) -> list[str]:
    """`NAME_prompt.txt` -> tags (stripped text split on ", " like the original)."""
    return [t for t in text.strip().split(", ") if t != ""]


def make_prompt(tags: Sequence[str], rng: np.random.Generator | None) -> str:
    """The original's per-step prompt: tags shuffled (when `rng` is given), joined with ", ",
    "music" when there are none, cut to 256 characters."""
    tags = list(tags) or ["music"]
    if rng is not None and len(tags) > 1:
        tags = [tags[i] for i in rng.permutation(len(tags))]
    return ", ".join(tags)[:MAX_PROMPT_CHARS]


# ---------------------------------------------------------------------------------------------
# the cache


def _atomic_write_bytes(path: Path, data: bytes) -> None:
    tmp = path.with_name(f".{path.name}.{uuid.uuid4().hex[:8]}.tmp")
    try:
        tmp.write_bytes(data)
        os.replace(tmp, path)
    finally:
        if tmp.exists():
            tmp.unlink()


def atomic_write_json(path: Path, obj) -> None:
    _atomic_write_bytes(
        Path(path), (json.dumps(obj, indent=2, ensure_ascii=False) + "\n").encode("utf-8")
    )


def _save_item(path: Path, tensors: dict[str, np.ndarray]) -> None:
    from safetensors.numpy import save_file

    for name, arr in tensors.items():
        if arr.dtype.kind == "f" and not np.isfinite(arr).all():
            raise SkipItem(
                f"the {name} contain NaN or Inf values (the encoder diverged on this "
                "file); nothing was cached for it"
            )
    tmp = path.with_name(f".{path.name}.{uuid.uuid4().hex[:8]}.tmp")
    try:
        save_file({k: np.ascontiguousarray(v) for k, v in tensors.items()}, str(tmp))
        os.replace(tmp, path)
    finally:
        if tmp.exists():
            tmp.unlink()


def _source_stamp(*paths: Path | None) -> str:
    h = hashlib.sha256()
    for p in paths:
        if p is None:
            h.update(b"-")
            continue
        st = p.stat()
        h.update(f"{p.name}:{st.st_size}:{st.st_mtime_ns}".encode())
        if p.suffix == ".txt":
            h.update(p.read_bytes())
    return h.hexdigest()[:16]


@dataclass
class SongFiles:
    key: str
    audio: Path
    prompt: Path | None
    lyrics: Path | None


def scan_folder(folder: str | os.PathLike) -> tuple[list[SongFiles], list[dict]]:
    """Songs of a folder (sorted by name) and the files skipped while scanning (with reasons)."""
    folder = Path(folder)
    if not folder.is_dir():
        raise DatasetError(f"audio folder not found: {folder}")
    songs: list[SongFiles] = []
    skipped: list[dict] = []
    seen: dict[str, Path] = {}
    for p in sorted(folder.iterdir()):
        if not p.is_file() or p.suffix.lower() not in AUDIO_SUFFIXES:
            continue
        key = p.stem
        if key in seen:
            skipped.append(
                {
                    "file": str(p),
                    "reason": f"another audio file with the same name "
                    f"({seen[key].name}) was taken; rename one of them",
                }
            )
            continue
        seen[key] = p
        prompt = p.with_name(f"{key}_prompt.txt")
        lyrics = p.with_name(f"{key}_lyrics.txt")
        songs.append(
            SongFiles(
                key, p, prompt if prompt.is_file() else None, lyrics if lyrics.is_file() else None
            )
        )
    return songs, skipped


@dataclass
class PrepareReport:
    out_dir: Path
    items: list[dict] = field(default_factory=list)
    skipped: list[dict] = field(default_factory=list)
    reused: int = 0

    def summary(self) -> str:
        lines = [
            f"{len(self.items)} item(s) cached in {self.out_dir} ({self.reused} reused), "
            f"{len(self.skipped)} file(s) skipped"
        ]
        lines += [f"  skipped {s['file']}: {s['reason']}" for s in self.skipped]
        return "\n".join(lines)


def prepare_dataset(
    audio_dir: str | os.PathLike,
    out_dir: str | os.PathLike,
    checkpoint: str | os.PathLike | None = None,
    cache_dir=None,
    max_seconds: float = MAX_SECONDS,
    on_item: Callable[[str, str], None] | None = None,
    lyric_tokenizer=None,
) -> PrepareReport:
    """Encode every usable song of `audio_dir` into `out_dir` (see the module docstring).

    `on_item(key, status)` is called per song ("cached", "reused" or "skipped: reason").
    """
    import mlx.core as mx

    from acestep_mlx.checkpoint import resolve_checkpoint

    if not 0 < max_seconds <= MAX_SECONDS:
        raise DatasetError(f"max_seconds must be in (0, {MAX_SECONDS}], got {max_seconds}")
    songs, skipped = scan_folder(audio_dir)
    if not songs:
        raise DatasetError(
            f"{audio_dir} holds no audio files ({', '.join(AUDIO_SUFFIXES)}); "
            "each song needs NAME.wav (or flac/ogg/mp3) and NAME_prompt.txt"
        )
    ckpt = resolve_checkpoint(checkpoint, cache_dir=cache_dir).resolve()
    out = Path(out_dir)
    (out / "items").mkdir(parents=True, exist_ok=True)
    old = {}
    if (out / MANIFEST).is_file():
        try:
            old = {it["key"]: it for it in json.loads((out / MANIFEST).read_text())["items"]}
        except (ValueError, KeyError, TypeError):
            old = {}
    report = PrepareReport(out)
    report.skipped.extend(skipped)
    tools: dict = {}

    def tool(name: str):
        if name not in tools:
            if name == "codec":
                from acestep_mlx.codec import MusicDCAE

                tools[name] = MusicDCAE.from_checkpoint(ckpt, "float32", cache_dir=cache_dir)
            elif name == "prompt":
                from acestep_mlx.text.prompt_tokenizer import PromptTokenizer

                tools[name] = PromptTokenizer.from_dir(ckpt / "umt5-base")
            elif name == "lyrics":
                if lyric_tokenizer is not None:
                    tools[name] = lyric_tokenizer
                else:
                    from acestep_mlx.text.lyric_tokenizer import LyricTokenizer

                    tools[name] = LyricTokenizer()
            elif name == "lang":
                tools[name] = tool("lyrics").detector
        return tools[name]

    visited: set[str] = set()

    def write_manifest(complete: bool) -> None:
        items = list(report.items)
        if not complete:  # entries of an earlier run not reached yet stay reusable
            items += [e for k, e in old.items() if k not in visited]
        atomic_write_json(
            out / MANIFEST,
            {
                "format": MANIFEST_FORMAT,
                "version": MANIFEST_VERSION,
                "complete": complete,
                "checkpoint": str(ckpt),
                "sample_rate": SAMPLE_RATE,
                "max_seconds": max_seconds,
                "items": items,
                "skipped": report.skipped,
            },
        )

    for song in songs:
        visited.add(song.key)

        def skip(reason: str, song=song) -> None:
            report.skipped.append({"file": str(song.audio), "reason": reason})
            if on_item:
                on_item(song.key, f"skipped: {reason}")

        if song.prompt is None:
            skip(f"no prompt file {song.key}_prompt.txt (comma-separated tags) next to it")
            continue
        try:
            prompt_text = song.prompt.read_text(encoding="utf-8")
            lyrics = song.lyrics.read_text(encoding="utf-8").strip() if song.lyrics else ""
        except (OSError, UnicodeDecodeError) as e:
            skip(f"cannot read its text files as UTF-8 ({e})")
            continue
        tags = split_tags(prompt_text)
        if not tags:
            skip(f"{song.prompt.name} is empty; write the tags, e.g. 'pop, piano, 90 bpm'")
            continue
        stamp = _source_stamp(song.audio, song.prompt, song.lyrics) + f"-{max_seconds:g}"
        item_file = out / "items" / f"{song.key}.safetensors"
        prev = old.get(song.key)
        if (
            prev is not None
            and prev.get("source_stamp") == stamp
            and item_file.is_file()
            and (prev.get("checkpoint") == str(ckpt))
        ):
            report.items.append(prev)
            report.reused += 1
            if on_item:
                on_item(song.key, "reused")
            continue
        try:
            wave = load_training_audio(song.audio, max_seconds)
            lyric_ids = (
                training_lyric_ids(lyrics, tool("lyrics"), tool("lang")) if lyrics else [STOP_ID]
            )[:MAX_LYRIC_TOKENS]
            prompt_ids, _ = tool("prompt")(make_prompt(tags, None))
            latents, _ = tool("codec").encode(wave[None], SAMPLE_RATE)
            lat = np.array(latents.astype(mx.float32))[0]
            _save_item(
                item_file,
                {
                    "latents": lat,
                    "lyric_token_ids": np.asarray(lyric_ids, np.int64),
                    "prompt_token_ids": np.asarray(prompt_ids[0], np.int64),
                },
            )
        except (SkipItem, ValueError) as e:
            skip(str(e))
            continue
        entry = {
            "key": song.key,
            "file": f"items/{song.key}.safetensors",
            "audio": str(song.audio.resolve()),
            "seconds": round(wave.shape[-1] / SAMPLE_RATE, 3),
            "latent_frames": int(lat.shape[-1]),
            "tags": tags,
            "lyrics": lyrics,
            "lyric_tokens": len(lyric_ids),
            "source_stamp": stamp,
            "checkpoint": str(ckpt),
        }
        report.items.append(entry)
        write_manifest(complete=False)  # an interrupted prepare keeps what it has encoded
        if on_item:
            on_item(song.key, "cached")
    write_manifest(complete=True)
    keep = {Path(e["file"]).name for e in report.items}
    for f in (out / "items").glob("*.safetensors"):
        if f.name not in keep:  # songs removed or now skipped
            f.unlink()
    return report


@dataclass
class TrainItem:
    key: str
    latents: np.ndarray  # [8, 16, T] float32
    tags: list[str]
    lyric_ids: np.ndarray  # [L] int64


class PreparedDataset:
    """A folder written by `prepare_dataset`; items are read on demand."""

    def __init__(self, folder: str | os.PathLike):
        self.folder = Path(folder)
        path = self.folder / MANIFEST
        if not path.is_file():
            raise DatasetError(
                f"{self.folder} is not a prepared dataset (no {MANIFEST}); run "
                "`python -m acestep_mlx.train prepare --audio-dir SONGS --out "
                f"{self.folder}` first"
            )
        try:
            data = json.loads(path.read_text(encoding="utf-8"))
        except (ValueError, UnicodeDecodeError) as e:
            raise DatasetError(f"{path} is damaged ({e}); run prepare again") from e
        if data.get("format") != MANIFEST_FORMAT or data.get("version") != MANIFEST_VERSION:
            raise DatasetError(
                f"{path} is not a dataset manifest of this version; run prepare again"
            )
        if not data.get("complete", False):
            raise DatasetError(
                f"{self.folder}: `prepare` did not finish (it was interrupted); run it again, "
                "it reuses what it had encoded"
            )
        self.manifest = data
        self.entries: list[dict] = list(data["items"])
        if not self.entries:
            raise DatasetError(
                f"{self.folder} holds no usable item (every file was skipped: see "
                f"{MANIFEST}); add songs and run prepare again"
            )
        for e in self.entries:
            if not (self.folder / e["file"]).is_file():
                raise DatasetError(f"{self.folder / e['file']} is missing; run prepare again")

    def __len__(self) -> int:
        return len(self.entries)

    def fingerprint(self) -> str:
        h = hashlib.sha256()
        for e in self.entries:
            h.update(f"{e['key']}:{e['source_stamp']}".encode())
        return h.hexdigest()[:16]

    def item(self, index: int) -> TrainItem:
        from safetensors.numpy import load_file

        e = self.entries[index]
        t = load_file(str(self.folder / e["file"]))
        lat = t["latents"]
        if lat.ndim != 3 or not np.isfinite(lat).all():
            raise DatasetError(f"{self.folder / e['file']} holds bad latents; run prepare again")
        return TrainItem(e["key"], lat, list(e["tags"]), t["lyric_token_ids"])
