"""Chinese text normalisation used by the lyric tokenizer and the language detector.

`normalize_zh` reproduces what the original lyric tokenizer gets from the SpeechIO/WeNet "cn_tn"
normaliser with default options (via Coqui XTTS's copy): dates, money, mobile and fixed phone
numbers, fractions, percentages, numbers followed by a measure word, long digit strings and plain
numbers become Chinese numerals, then every Chinese or ASCII punctuation mark becomes ",".
Quirks kept on purpose: each rule first collects its matches on the whole text and then rewrites
the first occurrence of each matched string (which can be an earlier, unrelated occurrence), and
the "^"/"$" sentinels are stripped with `lstrip`/`rstrip` (so a lyric's own leading "^" or
trailing "$" disappears too).

`sovits_number` and the `ssml_*` helpers are the (different) number reading used by the
language detector for `<number>`, `<telephone>`, `<currency>` and `<date>` tags.
"""

from __future__ import annotations

import re
import string

_DIGITS = "零一二三四五六七八九"
# Units of the "mid" numbering system: (power of ten, character).
_UNITS = (
    (1, "十"), (2, "百"), (3, "千"), (4, "万"), (8, "亿"), (12, "兆"), (16, "京"), (20, "垓"),
    (24, "秭"), (28, "穰"), (32, "沟"), (36, "涧"), (40, "正"), (44, "载"),
)
_POINT = "点"
_LIANG = "两"

# Punctuation turned into "," at the end (Chinese set from the Zhon project + ASCII).
_CN_PUNCTUATION = (
    "！？｡。＂＃＄％＆＇（）＊＋，－／：；＜＝＞＠［＼］＾＿｀｛｜｝～｟｠｢｣､、〃《》「」『』【】〔〕"
    "〖〗〘〙〚〛〜〝〞〟〰〾〿–—‘’‛“”„‟…‧﹏·〈〉-"
)
_ALL_PUNCTUATION = _CN_PUNCTUATION + string.punctuation
_TO_COMMA = str.maketrans(_ALL_PUNCTUATION, "," * len(_ALL_PUNCTUATION))

_CURRENCY_UNITS = (
    "((亿|千万|百万|万|千|百)|(亿|千万|百万|万|千|百|)元|(亿|千万|百万|万|千|百|)块|角|毛|分)"
)
_MEASURE_WORDS = (
    "匹|张|座|回|场|尾|条|个|首|阙|阵|网|炮|顶|丘|棵|只|支|袭|辆|挑|担|颗|壳|窠|曲|墙|群|腔|砣|座|客|贯|扎|"
    "捆|刀|令|打|手|罗|坡|山|岭|江|溪|钟|队|单|双|对|出|口|头|脚|板|跳|枝|件|贴|针|线|管|名|位|身|堂|课|本|"
    "页|家|户|层|丝|毫|厘|分|钱|两|斤|担|铢|石|钧|锱|忽|(千|毫|微)克|毫|厘|分|寸|尺|丈|里|寻|常|铺|程|"
    "(千|分|厘|毫|微)米|撮|勺|合|升|斗|石|盘|碗|碟|叠|桶|笼|盆|盒|杯|钟|斛|锅|簋|篮|盘|桶|罐|瓶|壶|卮|"
    "盏|箩|箱|煲|啖|袋|钵|年|月|日|季|刻|时|周|天|秒|分|旬|纪|岁|世|更|夜|春|夏|秋|冬|代|伏|辈|丸|泡|粒|"
    "颗|幢|堆|条|根|支|道|面|片|张|颗|块"
)

_DATE_RE = re.compile(r"\D+((([089]\d|(19|20)\d{2})年)?(\d{1,2}月(\d{1,2}[日号])?)?)")
# money = r"\D+(<amount>)" with amount below; found by `_money_amounts` (same matches, linear)
_AMOUNT_RE = re.compile(
    r"((\d+(\.\d+)?)[多余几]?" + _CURRENCY_UNITS + r"(\d" + _CURRENCY_UNITS + r"?)?)"
)
_NON_DIGITS_RE = re.compile(r"\D+")
_MOBILE_RE = re.compile(r"\D((\+?86 ?)?1([38]\d|5[0-35-9]|7[678]|9[89])\d{8})\D")
_FIXED_PHONE_RE = re.compile(r"\D((0(10|2[1-3]|[3-9]\d{2})-?)?[1-9]\d{6,7})\D")
_FRACTION_RE = re.compile(r"(?<!\d)(\d+/\d+)")
_PERCENT_RE = re.compile(r"(?<!\d)(\d+(\.\d+)?%)")
_MEASURE_RE = re.compile(r"(?<!\d)(\d+(\.\d+)?)[多余几]?(" + _MEASURE_WORDS + ")")
_DIGIT_STRING_RE = re.compile(r"(\d{4,32})")
_NUMBER_RE = re.compile(r"(\d+(\.\d+)?)")
# The (?<!..) lookbehinds in these patterns only skip start positions inside a run that can never
# be the leftmost match (the run's first position matches whenever they would): the matches are
# upstream's, without a quadratic scan of long digit or Latin runs.
_LATIN_TWO_LATIN_RE = re.compile(r"(?<![a-zA-Z])(([a-zA-Z]+)二([a-zA-Z]+))")


# --------------------------------------------------------------------------------------------
# cn_tn number reading
# --------------------------------------------------------------------------------------------
def _cardinal_parts(value: str) -> list[tuple[str, int]]:
    """Digits and units of an integer string: ("d", digit) / ("u", power) items."""
    stripped = value.lstrip("0")
    if not stripped:
        return []
    if len(stripped) == 1:
        if len(value) != len(stripped):
            return [("d", 0), ("d", int(stripped))]
        return [("d", int(stripped))]
    power = max(p for p, _ in _UNITS if p < len(stripped))
    return _cardinal_parts(value[:-power]) + [("u", power)] + _cardinal_parts(stripped[-power:])


def _use_liang(parts: list[tuple[str, int]]) -> list[tuple[str, int]]:
    """A 2 directly before a unit other than 十 (and not after 十) reads 两."""
    out = list(parts)
    for i, (kind, value) in enumerate(parts):
        if kind != "d" or value != 2:
            continue
        nxt = parts[i + 1] if i + 1 < len(parts) else None
        prev = parts[i - 1] if i > 0 else None
        if nxt is None or nxt[0] != "u" or (prev is not None and prev[0] != "u"):
            continue
        if nxt[1] != 1 and (prev is None or prev[1] != 1):
            out[i] = ("liang", 2)
    return out


def _render(parts: list[tuple[str, int]]) -> str:
    unit_chars = dict(_UNITS)
    chars = []
    for kind, value in parts:
        if kind == "d":
            chars.append(_DIGITS[value])
        elif kind == "liang":
            chars.append(_LIANG)
        elif kind == "u":
            chars.append(unit_chars[value])
        else:
            chars.append(_POINT)
    return "".join(chars)


def chinese_number(number: str, liang: bool = True, units: bool = True) -> str:
    """Read a decimal string ("12", "3.5", "2000") in Chinese numerals (cn_tn `num2chn`).

    With `units=False` the integer part is read digit by digit ("2024" -> 二零二四).
    """
    pieces = number.split(".")
    if len(pieces) > 2:
        raise ValueError(f"invalid number string with more than one dot: {number}")
    integer = pieces[0]
    decimals = pieces[1] if len(pieces) == 2 else ""
    if units and len(integer) > 1:
        parts = _cardinal_parts(integer)
    else:
        parts = [("d", int(c)) for c in integer]
    if decimals:
        parts += [("p", 0)] + [("d", int(c)) for c in decimals]
    if liang:
        parts = _use_liang(parts)
    text = _render(parts)
    if text.startswith(_POINT):
        return _DIGITS[0] + text
    if len(text) >= 2 and text[1] == "十" and text[0] == "一":
        text = text[1:]
    return text


def _digits_reading(number: str) -> str:
    return chinese_number(number, liang=False, units=False)


def _date_reading(date: str) -> str:
    try:
        year, rest = date.strip().split("年", 1)
        year = _digits_reading(year) + "年"
    except ValueError:
        rest, year = date, ""
    month = day = ""
    if rest:
        try:
            month, day = rest.strip().split("月", 1)
            month = chinese_number(month) + "月"
        except ValueError:
            day, month = date, ""
        if day:
            day = chinese_number(day[:-1]) + day[-1]
    return year + month + day


def _money_amounts(text: str) -> list[str]:
    """The group-1 strings of `re.findall(r"\\D+(<amount>)", text)`, without its quadratic scan.

    A match needs a run of non-digits and then an amount starting at the first digit after it,
    so each non-digit run is tried once.
    """
    found = []
    pos = 0
    while True:
        run = _NON_DIGITS_RE.search(text, pos)
        if run is None or run.end() >= len(text):
            return found
        amount = _AMOUNT_RE.match(text, run.end())
        if amount is None:
            pos = run.end()
        else:
            found.append(amount.group(1))
            pos = amount.end()


def _money_reading(money: str) -> str:
    for found in _NUMBER_RE.findall(money):
        money = money.replace(found[0], chinese_number(found[0]))
    return money


def _phone_reading(phone: str, fixed: bool) -> str:
    parts = phone.split("-") if fixed else phone.strip("+").split()
    return "".join(_digits_reading(p) for p in parts)


def _fraction_reading(fraction: str) -> str:
    numerator, denominator = fraction.split("/")
    return chinese_number(denominator) + "分之" + chinese_number(numerator)


def _rewrite_each(text: str, found: list[str], reading) -> str:
    for item in found:
        text = text.replace(item, reading(item), 1)
    return text


def _normalize_numbers(text: str) -> str:
    text = "^" + text + "$"
    text = _rewrite_each(text, [m[0] for m in _DATE_RE.findall(text)], _date_reading)
    text = _rewrite_each(text, _money_amounts(text), _money_reading)
    text = _rewrite_each(text, [m[0] for m in _MOBILE_RE.findall(text)],
                         lambda s: _phone_reading(s, fixed=False))
    text = _rewrite_each(text, [m[0] for m in _FIXED_PHONE_RE.findall(text)],
                         lambda s: _phone_reading(s, fixed=True))
    text = _rewrite_each(text, _FRACTION_RE.findall(text), _fraction_reading)
    text = text.replace("％", "%")
    text = _rewrite_each(text, [m[0] for m in _PERCENT_RE.findall(text)],
                         lambda s: "百分之" + chinese_number(s.strip().strip("%")))
    text = _rewrite_each(text, [m[0] for m in _MEASURE_RE.findall(text)], chinese_number)
    text = _rewrite_each(text, _DIGIT_STRING_RE.findall(text), _digits_reading)
    text = _rewrite_each(text, [m[0] for m in _NUMBER_RE.findall(text)], chinese_number)
    for whole, left, right in _LATIN_TWO_LATIN_RE.findall(text):  # P2P, B2B, O2O ...
        text = text.replace(whole, left + "2" + right, 1)
    return text.lstrip("^").rstrip("$")


def normalize_zh(text: str) -> str:
    """Numbers to Chinese numerals, then all punctuation to "," (cn_tn `TextNorm()`)."""
    return _normalize_numbers(text).translate(_TO_COMMA)


# --------------------------------------------------------------------------------------------
# GPT-SoVITS style reading used by the language detector's SSML-like tags
# --------------------------------------------------------------------------------------------
_SOVITS_DIGITS = {str(i): c for i, c in enumerate(_DIGITS)}  # ASCII digits only (KeyError else)
_SOVITS_UNITS = ((8, "亿"), (4, "万"), (3, "千"), (2, "百"), (1, "十"))


def _sovits_parts(value: str) -> list[str]:
    stripped = value.lstrip("0")
    if not stripped:
        return []
    if len(stripped) == 1:
        if len(stripped) < len(value):
            return [_SOVITS_DIGITS["0"], _SOVITS_DIGITS[stripped]]
        return [_SOVITS_DIGITS[stripped]]
    power, unit = next((p, u) for p, u in _SOVITS_UNITS if p < len(stripped))
    return _sovits_parts(value[:-power]) + [unit] + _sovits_parts(value[-power:])


def sovits_number(value: str) -> str:
    """Read "123" / "3.20" as 一百二十三 / 三点二 (GPT-SoVITS `num2str`)."""
    pieces = value.split(".")
    if len(pieces) > 2:
        raise ValueError(f"The value string: '{value}' has more than one point in it.")
    integer, decimals = (pieces[0], "") if len(pieces) == 1 else pieces
    result = ""
    if integer:
        integer = integer.lstrip("0")
        if not integer:
            result = _DIGITS[0]
        else:
            parts = _sovits_parts(integer)
            if len(parts) >= 2 and parts[0] == "一" and parts[1] == "十":
                parts = parts[1:]
            result = "".join(parts)
    decimals = decimals.rstrip("0")
    if decimals:
        result = (result or _DIGITS[0]) + "点" + "".join(_SOVITS_DIGITS[d] for d in decimals)
    return result


def _map_digit_runs(text: str, reading) -> str:
    out = []
    for piece in re.split(r"(\d+)", text):
        out.append(reading(piece) if re.match(r"(\d+)", piece) else piece)
    return "".join(out).replace(".", "点")


def ssml_number(text: str) -> str:
    """`<number>`: every digit read on its own (non-ASCII digits are dropped)."""
    return _map_digit_runs(text, lambda d: "".join(_SOVITS_DIGITS.get(c, "") for c in d))


def ssml_telephone(text: str) -> str:
    """`<telephone>`: digits one by one, +86 removed, 一 read as 幺."""
    return ssml_number(text.replace("+86", "")).replace("一", "幺")


def ssml_currency(text: str) -> str:
    """`<currency>`: every digit run read as a cardinal."""
    return _map_digit_runs(text, sovits_number)


def _non_zero(value: str, suffix: str, reading) -> str:
    value = reading(value)
    return f"{value}{suffix}" if value is not None and value != "" and value != "0" else ""


def ssml_date(text: str) -> str:
    """`<date>`: 2024/8/24, 2024-08, 08-24, 24 and h:m:s forms read as 年月日 / 点分秒."""
    if text is None or text.strip() == "":
        return ""
    text = re.sub(r"[\/\._|年|月]", "-", text)
    text = re.sub(r"日", r"", text)
    fields = text.split(" ")
    if len(fields) == 1 and ":" in fields[0]:
        time_text, fields = fields[0], []
    else:
        time_text = fields[1] if len(fields) >= 2 else ""
    date_out = ""
    if fields:
        year = month = day = ""
        parts = fields[0].split("-")
        if len(parts) == 3:
            year, month, day = parts
        elif len(parts) == 2:
            if len(parts[0]) == 4:
                year, month = parts
            else:
                month, day = parts
        elif len(parts[0]) > 0:
            if len(parts[0]) == 4:
                year = parts[0]
            else:
                day = parts[0]
        joined = (_non_zero(year, "年", ssml_number) + _non_zero(month, "月", ssml_currency)
                  + _non_zero(day, "日", ssml_currency))
        date_out = re.sub(r"([年|月|日])+", r"\1", joined)
    time_text = re.sub(r"[\/\.\-：_]", ":", time_text)
    times = time_text.split(":")
    hours = minutes = seconds = ""
    if len(times) == 3:
        hours, minutes, seconds = times
    elif len(times) == 2:
        hours, minutes = times
    elif len(times[0]) > 0:
        hours = f"{times[0]}点"
    if len(times) > 1:
        hours = _non_zero(hours, "点", ssml_currency)
        minutes = _non_zero(minutes, "分", ssml_currency)
        seconds = _non_zero(seconds, "秒", ssml_currency)
    time_out = re.sub(r"([点|分|秒])+", r"\1", f"{hours}{minutes}{seconds}")
    return f"{date_out}{time_out}"
