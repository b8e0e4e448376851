"""Lyric tokenizer: lyric text -> ids exactly as the original pipeline's `tokenize_lyrics`.

`LyricTokenizer.encode(text, lang)` is the original `VoiceBpeTokenizer.encode`: clean the line for
its language (`cleaners.LyricCleaner`), prefix the language tag ("[zh-cn]" for zh), replace every
space by "[SPACE]" and run the BPE of `vocab.json` (added tokens first, then Whitespace
pre-tokenisation). `tokenize_lyrics(lyrics)` assembles lines: [START], one [SPACE] per blank line,
per line the detected language (`lang_detect.LanguageDetector`; unsupported -> en, zh* -> zh),
structure-tag lines ("[verse]", "[Verse 1]", ... anything starting with [..]) encoded as English,
and [SPACE] after each line. The pipeline itself feeds ids [0] with mask [0] for an empty lyric
(`lyric_ids_and_mask`).

Bad input (docs/lyrics.md has the full table, tests/test_lyric_tokenizer.py checks it): a non-str
lyric raises TypeError; control characters, emoji and scripts without vocabulary entries go
through (characters outside the vocabulary become [UNK] = 1, whitespace controls such as \v \f
\x85 become [SPACE]; a NUL ends a Japanese line, as MeCab reads C strings); a line whose encoding
fails (e.g. lone surrogates, which the Rust tokenizer rejects) is skipped with a logged warning, as
the original skips it; there is no length limit (100,000 characters take ~0.5-5 s). Japanese
lines need the optional `ja` extra (cutlet, fugashi, unidic-lite); without it they raise
`MissingJapaneseSupport` instead of being dropped.
"""

from __future__ import annotations

import logging
import re
from dataclasses import dataclass, field
from pathlib import Path

from .cleaners import LyricCleaner, MissingJapaneseSupport
from .lang_detect import LanguageDetector

log = logging.getLogger(__name__)

VOCAB_FILE = Path(__file__).with_name("vocab.json")

# language -> id of its tag token; the pipeline falls back to "en" for any other detection
SUPPORT_LANGUAGES: dict[str, int] = {
    "en": 259, "de": 260, "fr": 262, "es": 284, "it": 285, "pt": 286, "pl": 294, "tr": 295,
    "ru": 267, "cs": 293, "nl": 297, "ar": 5022, "zh": 5023, "ja": 5412, "hu": 5753, "ko": 6152,
    "hi": 6680,
}
START_ID = 261  # [START]
SPACE_ID = 2  # [SPACE], also the line separator
STOP_ID = 0  # [STOP]
STRUCTURE_TAG_RE = re.compile(r"\[.*?\]")  # matched at the start of a stripped line


@dataclass
class LyricLine:
    """How one line of a lyric was tokenised (the parity breakdown)."""

    line: str
    stripped: str
    ids: list[int]
    detected_lang: str | None = None  # get_lang's answer, before the fallbacks
    lang: str | None = None  # after unsupported -> en, zh* -> zh, spa -> es
    structure_tag: bool = False
    encode_lang: str | None = None  # "en" for structure tags, else `lang`
    preprocessed: str | None = None  # the cleaned text before tag prefix / [SPACE]
    tokens: list[str] = field(default_factory=list)
    error: str | None = None  # set when encoding failed and the line was skipped

    @property
    def blank(self) -> bool:
        return self.stripped == ""


def pipeline_language(detected: str) -> str:
    """The pipeline's fallbacks applied to a detected language."""
    lang = detected if detected in SUPPORT_LANGUAGES else "en"
    if "zh" in lang:
        lang = "zh"
    if "spa" in lang:
        lang = "es"
    return lang


class LyricTokenizer:
    """The lyric BPE tokenizer with the original's cleaning and line assembly."""

    def __init__(self, vocab_file: str | Path = VOCAB_FILE,
                 detector: LanguageDetector | None = None):
        from tokenizers import Tokenizer

        vocab_file = Path(vocab_file)
        if not vocab_file.is_file():
            raise FileNotFoundError(f"lyric vocabulary {vocab_file} not found (the package ships "
                                    "acestep_mlx/text/vocab.json; reinstall the package)")
        self.tokenizer = Tokenizer.from_file(str(vocab_file))
        self.detector = detector if detector is not None else LanguageDetector()
        self.cleaner = LyricCleaner()

    def __len__(self) -> int:
        return self.tokenizer.get_vocab_size()

    # ------------------------------------------------------------------ one line
    def preprocess(self, text: str, lang: str) -> str:
        """The cleaned text of one line (`VoiceBpeTokenizer.preprocess_text`)."""
        return self.cleaner.clean(text, lang.split("-")[0])

    def encode(self, text: str, lang: str) -> list[int]:
        """Ids of one line in language `lang` (no [START], no trailing [SPACE])."""
        if not isinstance(text, str):
            raise TypeError(f"text must be a str, got {type(text).__name__}")
        return self._ids(self.preprocess(text, lang), lang)

    def _ids(self, cleaned: str, lang: str) -> list[int]:
        lang = lang.split("-")[0]
        tag = "zh-cn" if lang == "zh" else lang
        return self.tokenizer.encode(f"[{tag}]{cleaned}".replace(" ", "[SPACE]")).ids

    def decode(self, ids: list[int]) -> str:
        """Readable text of ids ([SPACE] -> " ", [STOP] removed), as the original `decode`."""
        text = self.tokenizer.decode(list(ids), skip_special_tokens=False).replace(" ", "")
        return text.replace("[SPACE]", " ").replace("[STOP]", "")

    def tokens(self, ids: list[int]) -> list[str]:
        return [self.decode([i]) for i in ids]

    # ------------------------------------------------------------------ whole lyric
    def line_breakdown(self, lyrics: str, tokens: bool = True) -> list[LyricLine]:
        """Per line of `lyrics`: detection, languages, cleaned text and ids (see `LyricLine`)."""
        _check_lyrics(lyrics)
        return [self._line(raw, tokens) for raw in lyrics.split("\n")]

    def _line(self, raw: str, tokens: bool) -> LyricLine:
        stripped = raw.strip()
        if not stripped:
            return LyricLine(raw, stripped, [SPACE_ID])
        detected = self.detector.detect(stripped)
        lang = pipeline_language(detected)
        is_tag = STRUCTURE_TAG_RE.match(stripped) is not None
        item = LyricLine(raw, stripped, [], detected, lang, is_tag, "en" if is_tag else lang)
        try:
            item.preprocessed = self.preprocess(stripped, item.encode_lang)
            item.ids = self._ids(item.preprocessed, item.encode_lang)
        except MissingJapaneseSupport:
            raise
        except Exception as e:  # upstream prints "tokenize error" and drops the line
            item.error = f"{type(e).__name__}: {e}"
            item.ids = []
            log.warning("lyric line %r could not be tokenised (%s); it is skipped, as in the "
                        "original", stripped[:80], item.error)
        if tokens:
            item.tokens = self.tokens(item.ids)
        return item

    def tokenize_lyrics(self, lyrics: str) -> list[int]:
        """[START] + per line (ids + [SPACE]) / [SPACE] for blank lines (`tokenize_lyrics`)."""
        ids = [START_ID]
        for item in self.line_breakdown(lyrics, tokens=False):
            if item.blank:
                ids.append(SPACE_ID)
            elif item.error is None:
                ids += item.ids + [SPACE_ID]
        return ids

    def lyric_ids_and_mask(self, lyrics: str) -> tuple[list[int], list[int]]:
        """What the pipeline feeds the model: empty lyrics -> ([0], [0]), else (ids, all ones)."""
        _check_lyrics(lyrics)
        if len(lyrics) == 0:
            return [STOP_ID], [0]
        ids = self.tokenize_lyrics(lyrics)
        return ids, [1] * len(ids)


def _check_lyrics(lyrics) -> None:
    if isinstance(lyrics, (bytes, bytearray)):
        raise TypeError("lyrics must be a str, got bytes: decode them first, e.g. "
                        "lyrics.decode('utf-8')")
    if not isinstance(lyrics, str):
        raise TypeError(f"lyrics must be a str (use '' for an instrumental), got "
                        f"{type(lyrics).__name__}")
