"""Per-line language detection making the same decisions as the original pipeline's `get_lang`.

The original runs a vendored LangSegment 0.3.5 (filters = the 98-code `language_filters.default`
list) on py3langid 0.3.0 and takes the language with the most characters, skipping "en" when
another language was seen. This module is an independent implementation of that behaviour on
py3langid; every rule below is reproduced because each changes real decisions:

* The text is cut into script runs by a fixed sequence of patterns (`<tag>..</tag>`, Hangul,
  Thai, Cyrillic, digit groups, Latin incl. French/Vietnamese letters, quotes, brackets); each
  run is replaced by a placeholder key ("⑥<tag><index:06d>⑥"), then the text is walked
  placeholder by placeholder. Text outside any run (CJK, punctuation, other scripts) is split at
  punctuation and classified by langid with the zh/ja rules (all-Han -> zh; short Han runs below
  score 0.89 -> the earlier of ja/zh in the filter string, kana -> ja, ambiguous ones wait for the
  next segment).
* Latin runs are classified by langid (the filter list contains "fr", which enables this), with a
  word-vote fallback; "en" text gets a space before inner capitals and one trailing space.
* Digit groups take the language of the first segment of the line ("zh" if none).
* Segments are merged with the previous one when they are punctuation/number only or share its
  language; characters are counted per language (Chinese x2). Ambiguous segments left waiting
  at the end are not counted.
* `detect`: the most counted language, or the second one if the first is "en"; no segment at all
  -> "zh" (so "[verse]" alone gives "zh" through its "[" segment); any internal error -> "en".

Quirks kept: membership tests against the filter list are substring tests on the "-"-joined
string, and a later placeholder substitution can swallow an earlier one (nested brackets).
"""

from __future__ import annotations

import re
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass

from .zh_normalize import ssml_currency, ssml_date, ssml_number, ssml_telephone

# LangSegment's `language_filters.default` (ISO 639-1), in its order.
DEFAULT_FILTERS: tuple[str, ...] = tuple(
    "af am an ar as az be bg bn br bs ca cs cy da de dz el en eo es et eu fa fi fo fr ga gl gu he "
    "hi hr ht hu hy id is it ja jv ka kk km kn ko ku ky la lb lo lt lv mg mk ml mn mr ms mt nb ne "
    "nl nn no oc or pa pl ps pt qu ro ru rw se si sk sl sq sr sv sw ta te th tl tr ug uk ur vi vo "
    "wa xh zh zu".split()
)
PRIORITY_THRESHOLD = 0.89
_LANGID_MEMO_SIZE = 4096  # langid answers kept per detector (repeated lines, segments)

_KEY_RE = re.compile(r"(⑥\$*\d+[\d]{6,}⑥)")  # placeholder keys
_NUMBER_KEY_RE = re.compile(r"(⑥\d{6,}⑥)")  # keys of digit groups (tag "00")
_PUNCT_RE = re.compile(r"([^\w\s]+)")
_MARK_OR_NEWLINE_RE = re.compile(r"[。.?？!！\n]")
_MARK_RUN_RE = re.compile(r"[。.?？!！]+")
_WORD_RE = re.compile(r"\w")
_FRENCH = "àáâãäåæçèéêëìíîïðñòóôõöùúûüýþÿ"
_VIETNAMESE = "đơưăáàảãạắằẳẵặấầẩẫậéèẻẽẹếềểễệíìỉĩịóòỏõọốồổỗộớờởỡợúùủũụứừửữựôâêơưỷỹ"
# A run of one script (with leading quotes/brackets and trailing punctuation). The lookbehind
# only skips starts right after an opening quote, which are never the leftmost match (the match
# would start at the first quote), so matches are unchanged and long quote runs stay linear.
_SCRIPT_RUN = r'(?<![【《（(“‘"\'])(([【《（(“‘"\']*[{chars}]+[\W\s]*)+)'


def _is_han(ch: str) -> bool:
    return "\u4e00" <= ch <= "\u9fff"


def _has_kana(text: str) -> bool:
    return re.search(r"[\u3040-\u309F\u30A0-\u30FF]", text) is not None


def _squeeze(text: str) -> str:
    """Non-word runs to one space, repeated characters to one, stripped (langid input).

    (Upstream writes the first step as `(.*?)([^\\w]+)` -> `\\1 `, which is the same
    substitution but quadratic on long lines.)
    """
    text = re.sub(r"[^\w]+", " ", text)
    return re.sub(r"(.)\1+", r"\1", text).strip()


_SHAPE_RE = re.compile(r"(\d+)|([^\W\d]+)|([^\S\n]+)")
_VALID_SHAPES = frozenset({"", "s", "d", "sd", "ds", "sds"})


def _shape(text: str) -> str:
    """Digit/space/other layout of `text` without newlines and punctuation.

    "d" digits, "s" spaces, anything else "x"; valid shapes are s?d?s?, i.e. what upstream's
    `_clear_text_number` calls "a number" (or nothing) once stripped. Shapes of concatenated
    texts are joined with `_join_shapes`, so merged segments are never rescanned.
    """
    out = []
    for digits, word, _ in _SHAPE_RE.findall(text):
        out.append("d" if digits else "x" if word else "s")
    return _normal_shape("".join(out))


def _normal_shape(shape: str) -> str:
    shape = re.sub(r"(.)\1+", r"\1", shape)
    return shape if shape in _VALID_SHAPES else "x"


def _join_shapes(a: str, b: str) -> str:
    return "x" if "x" in (a, b) else _normal_shape(a + b)


def _is_number(text: str, shape: str) -> bool:
    """Upstream's is_number: nothing but one run of digits once newlines, punctuation and
    surrounding spaces are removed (the exact string "\\n" is not a number)."""
    return text != "\n" and shape != "x"


def _is_empty(text: str, shape: str) -> bool:
    return text != "\n" and shape in ("", "s")


def _has_word_char(text: str) -> bool:
    """Whether `text` holds a \\w character, i.e. is not only punctuation and whitespace."""
    return _WORD_RE.search(text) is not None


def _sentences(text: str) -> list[str]:
    """`re.split(r"(.*?[。.?？!！]+[\\n]{,1})", text)` in linear time.

    Each match runs from the current position to the first sentence mark not preceded by a
    newline, takes the whole mark run and at most one newline; text before a newline that is not
    followed (on its line) by a mark belongs to the gap before the next match.
    """
    out = []
    gap_start = pos = 0
    n = len(text)
    while pos < n:
        found = _MARK_OR_NEWLINE_RE.search(text, pos)
        if found is None:
            break
        r = found.start()
        if text[r] == "\n":
            pos = r + 1
            continue
        end = _MARK_RUN_RE.match(text, r).end()
        if end < n and text[end] == "\n":
            end += 1
        out += [text[gap_start:pos], text[pos:end]]
        gap_start = pos = end
    out.append(text[gap_start:])
    return out


def _space_before_inner_capitals(text: str) -> str:
    return re.sub(r"(?<!\b)([A-Z])", r" \1", text).strip("-") + " "


def _joined(match) -> str:
    return match if isinstance(match, str) else "".join(match)


@dataclass
class Segment:
    """One detected piece of text."""

    lang: str
    text: str
    score: float


class _Pass:
    """State of one detection pass over a text (segments, waiting segments, counts)."""

    def __init__(self, det: LanguageDetector):
        self.det = det
        self.waiting: list[dict] = []
        self.counts: dict[str, int] | None = None
        self.keys: dict[str, tuple] = {}
        self.line_end = False
        self.handlers = {
            "$1": self.tag_segment, "$6": self.fixed_language("ko"),
            "$8": self.fixed_language("th"), "$7": self.fixed_language("ru"),
            "00": self.digit_group, "$5": self.latin_run, "$3": self.quoted, "$4": self.quoted,
        }

    # ---------------------------------------------------------------- bookkeeping
    def count(self, lang: str, text: str) -> None:
        if self.counts is None:
            self.counts = {}
        if "|" not in lang:
            n = len(text) * 2 if lang == "zh" else len(text)
            self.counts[lang] = self.counts.get(lang, 0) + n

    def accepted(self, lang: str) -> bool:
        filters = self.det.filters
        return (not filters or "?" in lang or lang in filters or lang in filters[0]
                or filters[0] == "*" or filters[0] in "alls-mixs-autos")

    def save(self, words: list[dict], lang: str, text: str, score: float, symbol=None) -> dict:
        shape = _shape(text)
        prev = words[-1] if words else None
        if symbol is not None:
            pass
        elif prev is not None and prev["symbol"] is None:
            if _is_empty(text, shape) or _is_number(text, shape):
                lang = prev["lang"]
            if prev["lang"] == lang:
                self.count(prev["lang"], text)
                prev["text"] = prev["text"] + text
                prev["shape"] = _join_shapes(prev["shape"], shape)
                return prev
            if _is_number(prev["text"], prev["shape"]):
                text = prev["text"] + text
                shape = _join_shapes(prev["shape"], shape)
                words.pop()
        elif _is_number(text, shape):
            first = self.det.filter_string[:2]
            if first in "ja-zh-en-ko-fr-vi":
                lang = first
        data = {"lang": lang, "text": text, "score": score, "symbol": symbol, "shape": shape}
        if self.accepted(lang):
            words.append(data)
            self.count(data["lang"], data["text"])
        return data

    def add(self, words: list[dict], lang: str | None, text: str, score: float,
            symbol=None) -> None:
        if text != "\n" and (text is None or len(text.strip()) == 0):
            return
        lang = ("" if lang is None else lang).lower()
        if lang == "en":
            text = _space_before_inner_capitals(text)
        had_waiting = len(self.waiting) > 0
        prev = self.waiting.pop() if had_waiting else None
        if prev is None:
            prev = words[-1] if words else None
        if prev and "|" in prev["lang"]:
            if lang in prev["lang"]:
                prev["lang"] = lang = lang.split("|")[0]
            else:
                prev["lang"] = prev["lang"].split("|")[0]
            if had_waiting:
                prev = self.save(words, prev["lang"], prev["text"], prev["score"],
                                 prev["symbol"])
        prev_lang = prev["lang"] if prev else None
        if "|" in lang and prev_lang and prev_lang not in lang and "…" not in lang:
            lang = lang.split("|")[0]
        if "|" in lang:
            self.waiting.append({"lang": lang, "text": text, "score": score, "symbol": symbol})
        else:
            self.save(words, lang, text, score, symbol)

    # ---------------------------------------------------------------- placeholders
    def protect(self, tag: str, pattern: re.Pattern, text: str) -> str:
        """Replace each run matched by `pattern` with a key, remembering the match."""
        matches = pattern.findall(text)
        if len(matches) == 1 and _joined(matches[0]) == text:
            return text
        keys = [f"⑥{tag}{i:06d}⑥" for i in range(len(matches))]
        for key, match in zip(keys, matches, strict=True):
            self.keys[key] = (tag, match)
        if tag == "$4":
            # Bracket runs are replaced one at a time, each time at the first match of the
            # updated text: an outer bracket can then swallow an inner key (as upstream).
            for key in keys:
                text = pattern.sub(key, text, count=1)
            return text
        # For the other patterns no match can start inside or run into a key, so replacing
        # the matches of the original text in one pass gives the same text.
        it = iter(keys)
        return pattern.sub(lambda m: next(it), text)

    def walk(self, words: list[dict], text: str, top: bool) -> list[dict]:
        pieces = _KEY_RE.split(text)
        last = len(pieces) - 1
        for index, piece in enumerate(pieces):
            if top:
                self.line_end = index >= last
            if _KEY_RE.match(piece):
                tag, match = self.keys[piece]
                self.handlers[tag](words, match)
            else:
                self.free_text(words, piece)
        return words

    def restore_digits(self, m: re.Match) -> str:
        value = m.group(0)
        if value in self.keys:
            value = self.keys[value][1]
        return value

    # ---------------------------------------------------------------- handlers
    def free_text(self, words: list[dict], segment: str) -> None:
        """Text between runs: split at punctuation, classify, zh/ja disambiguation."""
        line_end = self.line_end
        pieces = _PUNCT_RE.split(segment)
        wordy = [_has_word_char(p) for p in pieces]
        last = len(pieces) - 1
        # Upstream prepends a piece to the next one ("merge forward"); `carry` holds the merged
        # pieces so that long runs of merges stay linear.
        carry: list[str] = []
        carry_wordy = False
        for index, piece in enumerate(pieces):
            carry.append(piece)
            carry_wordy = carry_wordy or wordy[index]
            if len(carry) == 1 and len(piece) == 0:
                carry = []
                continue
            at_end = index >= last
            if not at_end and (not carry_wordy or not wordy[index + 1]):
                continue
            text = "".join(carry)
            if len(carry) > 1:
                carry = [text]
            clean = _NUMBER_KEY_RE.sub("", text)
            clean = _squeeze(re.sub(r"\d+", "", clean))
            if not at_end and len(clean) <= 2:
                continue
            carry, carry_wordy = [], False
            lang, score = self.det.classify(clean)
            prev_lang = words[-1]["lang"] if words else None
            if lang != "zh" and all(_is_han(c) for c in re.sub(r"\s", "", clean)):
                lang, score = "zh", 1
            if len(clean) <= 5 and any(_is_han(c) for c in clean):
                lang = self.short_han(words, text, clean, lang, score, prev_lang, at_end,
                                      line_end)
            text = _NUMBER_KEY_RE.sub(self.restore_digits, text)
            self.add(words, lang, text, score)

    def short_han(self, words, text, clean, lang, score, prev_lang, at_end, line_end) -> str:
        if score < PRIORITY_THRESHOLD and len(self.det.filter_string) > 0:
            i_ja = self.det.filter_string.find("ja")
            i_zh = self.det.filter_string.find("zh")
            if i_ja != -1 and i_ja < i_zh:
                lang = "ja"
            elif i_zh != -1 and i_zh < i_ja:
                lang = "zh"
        if _has_kana(clean):
            return "ja"
        if len(clean) > 2 and score > 0.90:
            return lang
        if at_end and line_end:
            return "zh" if len(clean) <= 1 else lang
        unknown = "zh|ja" if lang == "zh" or (len(clean) <= 2 and prev_lang == "zh") else "ja|zh"
        squeezed = re.sub(r"\s+", "", text)
        last_char = squeezed[-1]
        related = (prev_lang in unknown or unknown in prev_lang) if prev_lang else False
        if last_char in "。.":
            return prev_lang if related and len(words) > 0 else lang
        return f"{unknown}|…"

    def mean_vote(self, text: str) -> tuple[str | None, float]:
        """Most frequent langid answer over the (camel-case split) words longer than 3."""
        if text is None or text.strip() == "":
            return None, 0.0
        parts = re.sub(r"(?<!^)(?=[A-Z])", " ", text).split(" ")
        votes = [self.det.langid(p)[0] for p in parts if len(p.strip()) > 3]
        if not votes:
            return None, 0.0
        return Counter(votes).most_common(1)[0][0], 1.0

    def latin_run(self, words: list[dict], match) -> None:
        text = match[0]
        if not self.det.preview:
            self.add(words, "en", text, 1.0)
            return
        filters = self.det.filter_string
        for piece in _sentences(text):
            if len(piece.strip()) == 0:
                continue
            clean = _squeeze(piece)
            lang, score = self.det.classify(clean)
            if lang not in filters:
                lang, score = self.mean_vote(clean)
            if lang is None or score <= 0.0:
                continue
            if lang in filters:
                pass
            elif score >= 0.95:
                continue
            elif score <= 0.15 and filters[:2] == "fr":
                lang = filters[:2]
            else:
                lang = "en"
            self.add(words, lang, piece, score)

    def fixed_language(self, lang: str):
        def handler(words: list[dict], match) -> None:
            self.add(words, lang, match[0], 1.0)

        return handler

    def digit_group(self, words: list[dict], match) -> None:
        self.add(words, words[0]["lang"] if words else "zh", match, 0.0)

    def quoted(self, words: list[dict], match) -> None:
        text = "".join(match)
        if _KEY_RE.findall(text):
            self.walk(words, text, False)
            return
        clean = _squeeze(match[1])
        if len(clean) <= 5:
            self.free_text(words, text)
        else:
            lang, score = self.det.classify(clean)
            self.add(words, lang, text, score)

    def tag_segment(self, words: list[dict], match) -> None:
        tag, text = match[1], match[2]
        if tag in self.det.filter_string:
            self.add(words, tag, text, 1.0, True)
            return
        readers = {"telephone": ssml_telephone, "number": ssml_number,
                   "currency": ssml_currency, "date": ssml_date}
        lang = tag
        if tag in readers:
            lang, text = "zh", readers[tag](text)
        self.add(words, lang, text, 1.0, tag)

    # ---------------------------------------------------------------- driver
    def run(self, text: str) -> list[dict]:
        found: list[dict] = []
        for line in re.findall(r".*\n*", _KEY_RE.sub("", text)):
            if len(line.strip()) == 0:
                continue
            self.line_end = False
            self.keys = {}
            for tag, pattern in self.det.rules:
                line = self.protect(tag, pattern, line)
            found += self.walk([], line, True)
        merged: list[dict] = []
        for item in found:
            if merged and merged[-1]["lang"] == item["lang"]:
                merged[-1]["text"] = merged[-1]["text"] + item["text"]
            else:
                merged.append(item)
        return merged


class LanguageDetector:
    """LangSegment-equivalent language detection; `detect(line)` is the pipeline's `get_lang`.

    `filters` defaults to the list the pipeline uses; the py3langid model is loaded on first use.
    """

    def __init__(self, filters: Sequence[str] = DEFAULT_FILTERS):
        self.filters = list(filters)
        self.filter_string = "-".join(self.filters).lower().strip()
        self.preview = "fr" in self.filters or "vi" in self.filters
        latin = "a-zA-Z" + (_FRENCH + _VIETNAMESE if self.preview else "")
        self.rules: list[tuple[str, re.Pattern]] = [
            ("$1", re.compile(r"(<([a-zA-Z|-]*)>(.*?)<\/*[a-zA-Z|-]*>)")),
            ("$6", re.compile(_SCRIPT_RUN.format(chars="\uac00-\ud7a3"))),
            ("$8", re.compile(_SCRIPT_RUN.format(chars="\u0e00-\u0e7f"))),
            ("$7", re.compile(_SCRIPT_RUN.format(chars="А-Яа-яЁё"))),
            # (?<!\W): same matches, but a punctuation run is scanned once, not per position
            ("00", re.compile(r"(?<!\W)(\W*\d+\W+\d*\W*\d*)")),
            ("$5", re.compile(_SCRIPT_RUN.format(chars=latin))),
            ("$3", re.compile(r'(["\'])(.*?)(\1)')),
            ("$4", re.compile(
                r"([\n]*[【《（(“‘])([^【《（(“‘’”)）》】]{3,})([’”)）》】][\W\s]*[\n]{,1})")),
        ]
        self._identifier = None
        self._ptc64 = None
        self._langid_memo: dict[str, tuple[str, float]] = {}

    @property
    def identifier(self):
        """The py3langid model with normalised probabilities (as LangSegment builds it)."""
        if self._identifier is None:
            import numpy as np
            from py3langid.langid import MODEL_FILE, LanguageIdentifier

            self._identifier = LanguageIdentifier.from_pickled_model(MODEL_FILE, norm_probs=True)
            self._ptc64 = self._identifier.nb_ptc.astype(np.float64)
        return self._identifier

    def langid(self, text: str) -> tuple[str, float]:
        """py3langid's `classify(text)` (language, normalised probability), computed sparsely.

        py3langid multiplies the dense 7480-feature count vector by the 7480x97 float32 model
        (`np.dot`, ~2-7 ms a call here, 99.9% of a line's detection time; a 100,000-character
        lyric needs up to 50,000 calls). Only the features present in `text` (at most a few per
        character) are non-zero, so the same product is summed over those rows, in float64 and
        rounded to float32: it is closer to the exact value (max 1.2e-4 on the log-probabilities)
        than the float32 BLAS sum (1.3e-3, order-dependent), so decisions match to that noise.
        Answers are memoised (bounded): choruses and runs of equal segments are classified once.
        """
        hit = self._langid_memo.get(text)
        if hit is not None:
            return hit
        import numpy as np

        ident = self.identifier
        fv = ident.instance2fv(text)
        nz = np.flatnonzero(fv)
        pd = (fv[nz].astype(np.float64) @ self._ptc64[nz]).astype(np.float32) + ident.nb_pc
        probs = ident.norm_probs(pd)
        cl = int(np.argmax(probs))
        result = (ident.nb_classes[cl], probs[cl])
        if len(self._langid_memo) >= _LANGID_MEMO_SIZE:  # a pure function: memo is exact
            self._langid_memo.clear()
        self._langid_memo[text] = result
        return result

    def classify(self, text: str) -> tuple[str, float]:
        lang, score = self.langid(text)
        return lang, round(float(score), 3)

    def analyse(self, text: str) -> tuple[list[Segment], list[tuple[str, int]] | None]:
        """(segments, per-language character counts sorted descending) of `text`.

        The counts are None when the pass recorded no statistics (see `detect`).
        """
        if not isinstance(text, str):
            raise TypeError(f"language detection needs a str, got {type(text).__name__}")
        if len(text.strip()) == 0:
            return [], None
        state = _Pass(self)
        merged = state.run(text)
        segments = [Segment(d["lang"], d["text"], d["score"]) for d in merged]
        if state.counts is None:
            return segments, None
        return segments, sorted(state.counts.items(), key=lambda kv: kv[1], reverse=True)

    def counts(self, text: str) -> list[tuple[str, int]]:
        """Per-language character counts as LangSegment's `getCounts` returns them."""
        segments, counts = self.analyse(text)
        if counts is not None:
            return counts
        if not segments:
            return [("zh", 0)]
        totals: dict[str, int] = {}
        for s in segments:
            totals[s.lang] = totals.get(s.lang, 0) + (len(s.text) * 2 if s.lang == "zh"
                                                     else len(s.text))
        return sorted(totals.items(), key=lambda kv: kv[1], reverse=True)

    def detect(self, line: str) -> str:
        """The language the original pipeline's `get_lang(line)` returns (any error -> "en")."""
        if not isinstance(line, str):
            raise TypeError(f"language detection needs a str, got {type(line).__name__}")
        try:
            counts = self.counts(line)
            lang = counts[0][0]
            if len(counts) > 1 and lang == "en":
                lang = counts[1][0]
        except Exception:
            lang = "en"
        return lang
