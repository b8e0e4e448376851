"""Parity case `lyric_tokenizer`: lyric strings -> ids and the per-line breakdown.

For every item of `reference/lyric_tokenizer.json`: the full `tokenize_lyrics` ids, their decoded
text, and for every line each recorded field (detected language, language used, structure-tag
flag, encode language, cleaned text, ids, tokens, stripped text). All comparisons are exact.
"""

from __future__ import annotations

from acestep_mlx.text.lyric_tokenizer import LyricTokenizer

# reference line field -> LyricLine attribute
_LINE_FIELDS = {
    "line": "line", "stripped": "stripped", "ids": "ids", "detected_lang": "detected_lang",
    "lang": "lang", "structure_tag": "structure_tag", "encode_lang": "encode_lang",
    "preprocessed": "preprocessed", "tokens": "tokens",
}
_IGNORED_LINE_FIELDS = {"note"}  # free text ("blank line -> [2]")


def _units(items: list[dict]) -> list[tuple[str, int, int | None, str]]:
    units = []
    for i, item in enumerate(items):
        units.append((f"item{i:02d}.tokenize_lyrics_ids", i, None, "tokenize_lyrics_ids"))
        units.append((f"item{i:02d}.decoded", i, None, "decoded"))
        for j, line in enumerate(item["lines"]):
            unknown = set(line) - set(_LINE_FIELDS) - _IGNORED_LINE_FIELDS
            if unknown:
                raise KeyError(f"item {i} line {j}: unknown reference fields {sorted(unknown)}")
            for key in sorted(set(line) & set(_LINE_FIELDS)):
                units.append((f"item{i:02d}.line{j}.{key}", i, j, key))
    return units


def run(ref, ctx) -> None:
    items = ref.json["items"]
    units = _units(items)
    ref.expect(name for name, *_ in units)
    tok = LyricTokenizer()
    results = {}
    for i, item in enumerate(items):
        ids = tok.tokenize_lyrics(item["text"])
        results[i] = (ids, tok.decode(ids), tok.line_breakdown(item["text"]))
    for name, i, j, key in units:
        ids, decoded, lines = results[i]
        note = repr(items[i]["text"][:40])
        if j is None:
            actual = ids if key == "tokenize_lyrics_ids" else decoded
            ref.check_value(name, actual, items[i][key], note=note)
            continue
        expected = items[i]["lines"][j][key]
        actual = getattr(lines[j], _LINE_FIELDS[key]) if j < len(lines) else "<missing line>"
        ref.check_value(name, actual, expected, note=note)
    for i, item in enumerate(items):
        if len(results[i][2]) != len(item["lines"]):
            ref.check_value(f"item{i:02d}.line_count", len(results[i][2]), len(item["lines"]))
