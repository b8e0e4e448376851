"""Per-language lyric cleaning, as done by the original `VoiceBpeTokenizer.preprocess_text`.

Languages ar cs de en es fr hu it nl pl pt ru tr zh ko: remove '"', (tr) fold İ Ö Ü, lowercase,
expand numbers / currencies / ordinals (num2words; Chinese: `zh_normalize.normalize_zh`),
expand abbreviations and symbols, collapse whitespace; then zh -> pinyin with tone numbers,
ko -> academic romanisation. ja -> cutlet romaji, lowercased (optional dependency). hi ->
lowercase and collapse whitespace. The three expansion steps each swallow their own errors, as in
the original (e.g. a number too large for num2words leaves the whole line's numbers as digits).

The abbreviation, symbol, ordinal and currency tables are those of Coqui TTS's XTTS tokenizer,
which the original copied (see NOTICE).
"""

from __future__ import annotations

import re

from .zh_normalize import normalize_zh

MULTILINGUAL = frozenset(
    {"ar", "cs", "de", "en", "es", "fr", "hu", "it", "nl", "pl", "pt", "ru", "tr", "zh", "ko"}
)
CLEANED_LANGUAGES = MULTILINGUAL | {"ja", "hi"}

_ABBREVIATIONS_TABLE: dict[str, list[tuple[str, str]]] = {
    "en": [("mrs", "misess"), ("mr", "mister"), ("dr", "doctor"), ("st", "saint"),
           ("co", "company"), ("jr", "junior"), ("maj", "major"), ("gen", "general"),
           ("drs", "doctors"), ("rev", "reverend"), ("lt", "lieutenant"), ("hon", "honorable"),
           ("sgt", "sergeant"), ("capt", "captain"), ("esq", "esquire"), ("ltd", "limited"),
           ("col", "colonel"), ("ft", "fort")],
    "es": [("sra", "señora"), ("sr", "señor"), ("dr", "doctor"), ("dra", "doctora"),
           ("st", "santo"), ("co", "compañía"), ("jr", "junior"), ("ltd", "limitada")],
    "fr": [("mme", "madame"), ("mr", "monsieur"), ("dr", "docteur"), ("st", "saint"),
           ("co", "compagnie"), ("jr", "junior"), ("ltd", "limitée")],
    "de": [("fr", "frau"), ("dr", "doktor"), ("st", "sankt"), ("co", "firma"), ("jr", "junior")],
    "pt": [("sra", "senhora"), ("sr", "senhor"), ("dr", "doutor"), ("dra", "doutora"),
           ("st", "santo"), ("co", "companhia"), ("jr", "júnior"), ("ltd", "limitada")],
    "it": [("sig", "signore"), ("dr", "dottore"), ("st", "santo"), ("co", "compagnia"),
           ("jr", "junior"), ("ltd", "limitata")],
    "pl": [("p", "pani"), ("m", "pan"), ("dr", "doktor"), ("sw", "święty"), ("jr", "junior")],
    "ar": [],
    "zh": [],
    "cs": [("dr", "doktor"), ("ing", "inženýr"), ("p", "pan")],
    "ru": [("г-жа", "госпожа"), ("г-н", "господин"), ("д-р", "доктор")],
    "nl": [("dhr", "de heer"), ("mevr", "mevrouw"), ("dr", "dokter"), ("jhr", "jonkheer")],
    "tr": [("b", "bay"), ("byk", "büyük"), ("dr", "doktor")],
    "hu": [("dr", "doktor"), ("b", "bácsi"), ("nőv", "nővér")],
    "ko": [],
}
# Russian abbreviations end at a word boundary, all others need the trailing dot.
_ABBREVIATIONS = {
    lang: [(re.compile(rf"\b{abbr}\b" if lang == "ru" else rf"\b{abbr}\.", re.IGNORECASE), full)
           for abbr, full in table]
    for lang, table in _ABBREVIATIONS_TABLE.items()
}

_SYMBOL_ORDER = ("&", "@", "%", "#", "$", "£", "°")
_SYMBOL_WORDS: dict[str, tuple[str, ...]] = {
    "en": ("and", "at", "percent", "hash", "dollar", "pound", "degree"),
    "es": ("y", "arroba", "por ciento", "numeral", "dolar", "libra", "grados"),
    "fr": ("et", "arobase", "pour cent", "dièse", "dollar", "livre", "degrés"),
    "de": ("und", "at", "prozent", "raute", "dollar", "pfund", "grad"),
    "pt": ("e", "arroba", "por cento", "cardinal", "dólar", "libra", "graus"),
    "it": ("e", "chiocciola", "per cento", "cancelletto", "dollaro", "sterlina", "gradi"),
    "pl": ("i", "małpa", "procent", "krzyżyk", "dolar", "funt", "stopnie"),
    "ar": ("و", "على", "في المئة", "رقم", "دولار", "جنيه", "درجة"),
    "zh": ("和", "在", "百分之", "号", "美元", "英镑", "度"),
    "cs": ("a", "na", "procento", "křížek", "dolar", "libra", "stupně"),
    "ru": ("и", "собака", "процентов", "номер", "доллар", "фунт", "градус"),
    "nl": ("en", "bij", "procent", "hekje", "dollar", "pond", "graden"),
    "tr": ("ve", "at", "yüzde", "diyez", "dolar", "sterlin", "derece"),
    "hu": ("és", "kukac", "százalék", "kettőskereszt", "dollár", "font", "fok"),
    "ko": ("그리고", "에", "퍼센트", "번호", "달러", "파운드", "도"),
}
_SYMBOLS = {
    lang: [(re.compile(re.escape(sym), re.IGNORECASE), f" {word} ")
           for sym, word in zip(_SYMBOL_ORDER, words, strict=True)]
    for lang, words in _SYMBOL_WORDS.items()
}

_ORDINAL_RE = {
    "en": re.compile(r"([0-9]+)(st|nd|rd|th)"),
    "es": re.compile(r"([0-9]+)(º|ª|er|o|a|os|as)"),
    "fr": re.compile(r"([0-9]+)(º|ª|er|re|e|ème)"),
    "de": re.compile(r"([0-9]+)(st|nd|rd|th|º|ª|\.(?=\s|$))"),
    "pt": re.compile(r"([0-9]+)(º|ª|o|a|os|as)"),
    "it": re.compile(r"([0-9]+)(º|°|ª|o|a|i|e)"),
    "pl": re.compile(r"([0-9]+)(º|ª|st|nd|rd|th)"),
    "ar": re.compile(r"([0-9]+)(ون|ين|ث|ر|ى)"),
    "cs": re.compile(r"([0-9]+)\.(?=\s|$)"),
    "ru": re.compile(r"([0-9]+)(-й|-я|-е|-ое|-ье|-го)"),
    "nl": re.compile(r"([0-9]+)(de|ste|e)"),
    "tr": re.compile(r"([0-9]+)(\.|inci|nci|uncu|üncü|\.)"),
    "hu": re.compile(r"([0-9]+)(\.|adik|edik|odik|edik|ödik|ödike|ik)"),
    "ko": re.compile(r"([0-9]+)(번째|번|차|째)"),
}
_ORDINAL_RE = {lang: re.compile(r"(?<![0-9])" + p.pattern) for lang, p in _ORDINAL_RE.items()}
_INTEGER_RE = re.compile(r"[0-9]+")
# The lookbehinds added to upstream's ordinal, currency and decimal patterns only skip start
# positions inside a digit run, which are never the leftmost match: same matches, linear time.
# (currency, pattern) in the order they are expanded
_CURRENCY_RE = (
    ("GBP", re.compile(r"((£[0-9\.\,]*[0-9]+)|((?<![0-9.,])[0-9\.\,]*[0-9]+£))")),
    ("USD", re.compile(r"((\$[0-9\.\,]*[0-9]+)|((?<![0-9.,])[0-9\.\,]*[0-9]+\$))")),
    ("EUR", re.compile(r"(((?<![0-9.,])[0-9\.\,]*[0-9]+€)|((€[0-9\.\,]*[0-9]+)))")),
)
# the connector num2words puts before the cents, cut off for whole amounts
_CENTS_JOINER = {
    "en": ", ", "es": " con ", "fr": " et ", "de": " und ", "pt": " e ", "it": " e ",
    "pl": ", ", "cs": ", ", "ru": ", ", "nl": ", ", "ar": ", ", "tr": ", ", "hu": ", ",
    "ko": ", ",
}
_THOUSANDS_COMMA_RE = re.compile(r"\b\d{1,3}(,\d{3})*(\.\d+)?\b")
_THOUSANDS_DOT_RE = re.compile(r"\b\d{1,3}(.\d{3})*(\,\d+)?\b")  # "." matches any character
_DECIMAL_RE = re.compile(r"(?<![0-9])([0-9]+[.,][0-9]+)")
_WHITESPACE_RE = re.compile(r"\s+")


def _num2words(value, lang: str, **kwargs) -> str:
    from num2words import num2words

    return num2words(value, lang="cz" if lang == "cs" else lang, **kwargs)


def _currency_words(match: re.Match, lang: str, currency: str) -> str:
    amount = float(re.sub(r"[^\d.]", "", match.group(0).replace(",", ".")))
    words = _num2words(amount, lang, to="currency", currency=currency)
    if amount.is_integer():
        cut = words.rfind(_CENTS_JOINER[lang])
        if cut != -1:
            words = words[:cut]
    return words


def expand_numbers(text: str, lang: str) -> str:
    """Numbers, currencies, decimals and ordinals to words (zh: Chinese normaliser)."""
    if lang == "zh":
        return normalize_zh(text)
    if lang in ("en", "ru"):
        text = _THOUSANDS_COMMA_RE.sub(lambda m: m.group(0).replace(",", ""), text)
    else:
        text = _THOUSANDS_DOT_RE.sub(lambda m: m.group(0).replace(".", ""), text)
    try:
        for currency, pattern in _CURRENCY_RE:
            text = pattern.sub(lambda m, c=currency: _currency_words(m, lang, c), text)
    except Exception:  # the original keeps whatever was expanded before the failure
        pass
    if lang != "tr":
        text = _DECIMAL_RE.sub(
            lambda m: _num2words(float(m.group(1).replace(",", ".")), lang), text)
    text = _ORDINAL_RE[lang].sub(lambda m: _num2words(int(m.group(1)), lang, ordinal=True), text)
    return _INTEGER_RE.sub(lambda m: _num2words(int(m.group(0)), lang), text)


def expand_abbreviations(text: str, lang: str) -> str:
    for pattern, full in _ABBREVIATIONS[lang]:
        text = pattern.sub(full, text)
    return text


def expand_symbols(text: str, lang: str) -> str:
    for pattern, words in _SYMBOLS[lang]:
        text = pattern.sub(words, text).replace("  ", " ")
    return text.strip()


def collapse_whitespace(text: str) -> str:
    return _WHITESPACE_RE.sub(" ", text)


def multilingual_clean(text: str, lang: str) -> str:
    """The shared cleaner of the 15 "multilingual" languages (before zh/ko transliteration)."""
    text = text.replace('"', "")
    if lang == "tr":
        text = text.replace("İ", "i").replace("Ö", "ö").replace("Ü", "ü")
    text = text.lower()
    for step in (expand_numbers, expand_abbreviations, expand_symbols):
        try:
            text = step(text, lang)
        except Exception:  # each step is best effort in the original
            pass
    return collapse_whitespace(text)


def pinyin_tone3(text: str) -> str:
    """Han characters to pinyin with tone numbers (neutral tone 5), other text unchanged."""
    import pypinyin

    items = pypinyin.pinyin(text, style=pypinyin.Style.TONE3, heteronym=False,
                            neutral_tone_with_five=True)
    return "".join(item[0] for item in items)


class MissingJapaneseSupport(ImportError):
    """Japanese lyrics need the optional packages cutlet, fugashi and unidic-lite."""


class LyricCleaner:
    """`clean(text, lang)`: the per-language preprocessing of one lyric line.

    Holds the Korean transliterator and (created on first Japanese line) the cutlet romaniser.
    """

    def __init__(self):
        self._korean = None
        self._romaji = None

    def korean(self, text: str) -> str:
        if self._korean is None:
            from hangul_romanize import Transliter
            from hangul_romanize.rule import academic

            self._korean = Transliter(academic)
        return self._korean.translit(text)

    def japanese(self, text: str) -> str:
        if self._romaji is None:
            try:
                import cutlet

                self._romaji = cutlet.Cutlet()
            except (ImportError, RuntimeError) as e:
                raise MissingJapaneseSupport(
                    "Japanese lyrics need the optional packages cutlet, fugashi and unidic-lite "
                    f"({type(e).__name__}: {e}); install them with: "
                    "pip install 'acestep-mlx[ja]'"
                ) from e
        return self._romaji.romaji(text).lower()

    def clean(self, text: str, lang: str) -> str:
        if lang in MULTILINGUAL:
            text = multilingual_clean(text, lang)
            if lang == "zh":
                text = pinyin_tone3(text)
            elif lang == "ko":
                text = self.korean(text)
            return text
        if lang == "ja":
            return self.japanese(text)
        if lang == "hi":
            return collapse_whitespace(text.lower())
        raise NotImplementedError(
            f"Language '{lang}' is not supported by the lyric tokenizer; supported: "
            f"{', '.join(sorted(CLEANED_LANGUAGES))}"
        )
