"""Loss-curve PNG without a plotting library: numpy rasterisation + a zlib-compressed PNG.

`write_loss_plot(records, path)` draws the per-step loss (light: the raw values, or their min/max
envelope when there are more steps than pixels) and a moving average (dark) with axes, grid lines
and numeric labels in a built-in 5x7 pixel font. The file is replaced atomically.
"""

from __future__ import annotations

import math
import os
import struct
import uuid
import zlib
from collections.abc import Sequence
from pathlib import Path

import numpy as np

WIDTH, HEIGHT = 800, 450
LEFT, RIGHT, TOP, BOTTOM = 72, 20, 34, 46
WHITE = (255, 255, 255)
BLACK = (30, 30, 30)
GRID = (225, 225, 225)
RAW = (160, 190, 230)
MEAN = (20, 70, 160)

# 5x7 glyphs, one string of 7 rows x 5 columns per character ("#" = ink)
_FONT_ROWS = {
    "0": ".###.#...##..###.#.###..##...#.###.",
    "1": "..#...##....#....#....#....#...###.",
    "2": ".###.#...#....#...#...#...#....#####",
    "3": "#####...#...#.....#....##...#.###.",
    "4": "...#...##..#.#.#..#.#####...#....#.",
    "5": "#####....####.....#....##...#.###.",
    "6": "..##..#...#....####.#...##...#.###.",
    "7": "#####....#...#...#...#....#....#...",
    "8": ".###.#...##...#.###.#...##...#.###.",
    "9": ".###.#...##...#.####....#...#..##..",
    ".": "..........................##...##..",
    "-": "...............###...............",
    "+": ".......#....#..#####..#....#.......",
    "e": "..........###.#...######.....###.",
    "a": "..........###.....#.#####...#.####",
    "c": "..........###.#....#....#...#.###.",
    "d": "....#....#.##.##..##...##...#.####",
    "g": ".....####.#...##...#.####....#.###.",
    "i": "..#.........##....#....#....#...###.",
    "l": ".##....#....#....#....#....#...###.",
    "m": "..........##.#.#.#.##.#.##...##...#",
    "n": "..........#.##.##..##...##...##...#",
    "o": "..........###.#...##...##...#.###.",
    "p": "..........####.#...#####.#....#....",
    "r": "..........#.##.##..##....#....#....",
    "s": "..........###.#.....###.....#####.",
    "t": ".#....#...###..#....#....#..#..##..",
    "u": "..........#...##...##...##..##.##.#",
    "v": "..........#...##...##...#.#.#...#..",
    "w": "..........#...##...##.#.##.#.#.#.#.",
    "x": "..........#...#.#.#...#...#.#.#...#",
    "y": "..........#...##...#.####....#.###.",
    ":": ".......##...##.........##...##.....",
    "(": "...#...#...#....#....#.....#.....#.",
    ")": ".#.....#.....#....#....#...#...#...",
    "/": ".........#...#...#...#...#.........",
    " ": "...................................",
    ",": "......................##...#...#...",
    "=": "..........#####.....#####..........",
}


def _glyph(ch: str) -> np.ndarray:
    rows = _FONT_ROWS.get(ch, _FONT_ROWS[" "]).ljust(35, ".")[:35]
    return np.array([c == "#" for c in rows], bool).reshape(7, 5)


class Canvas:
    def __init__(self, width: int, height: int):
        self.img = np.empty((height, width, 3), np.uint8)
        self.img[:] = WHITE
        self.h, self.w = height, width

    def rect(self, x0: int, y0: int, x1: int, y1: int, color) -> None:
        x0, x1 = sorted((max(0, x0), min(self.w, x1)))
        y0, y1 = sorted((max(0, y0), min(self.h, y1)))
        self.img[y0:y1, x0:x1] = color

    def line(self, x0: float, y0: float, x1: float, y1: float, color, width: int = 1) -> None:
        n = int(max(abs(x1 - x0), abs(y1 - y0))) + 1
        xs = np.rint(np.linspace(x0, x1, n + 1)).astype(int)
        ys = np.rint(np.linspace(y0, y1, n + 1)).astype(int)
        for d in range(width):
            off = d - width // 2
            ok = (xs >= 0) & (xs < self.w) & (ys + off >= 0) & (ys + off < self.h)
            self.img[ys[ok] + off, xs[ok]] = color

    def polyline(self, xs: np.ndarray, ys: np.ndarray, color, width: int = 1) -> None:
        for i in range(len(xs) - 1):
            self.line(xs[i], ys[i], xs[i + 1], ys[i + 1], color, width)

    def text(self, x: int, y: int, s: str, color=BLACK, align: str = "left") -> None:
        adv = 6
        if align == "right":
            x -= adv * len(s)
        elif align == "center":
            x -= adv * len(s) // 2
        for i, ch in enumerate(s.lower()):
            g = _glyph(ch)
            gx, gy = x + i * adv, y
            ys, xs = np.nonzero(g)
            ok = (gx + xs >= 0) & (gx + xs < self.w) & (gy + ys >= 0) & (gy + ys < self.h)
            self.img[gy + ys[ok], gx + xs[ok]] = color


def png_bytes(img: np.ndarray) -> bytes:
    """RGB uint8 [H, W, 3] -> PNG file bytes."""
    h, w, _ = img.shape
    raw = np.concatenate([np.zeros((h, 1), np.uint8), img.reshape(h, w * 3)], axis=1)

    def chunk(kind: bytes, data: bytes) -> bytes:
        return (
            struct.pack(">I", len(data))
            + kind
            + data
            + struct.pack(">I", zlib.crc32(kind + data) & 0xFFFFFFFF)
        )

    head = struct.pack(">IIBBBBB", w, h, 8, 2, 0, 0, 0)
    return (
        b"\x89PNG\r\n\x1a\n"
        + chunk(b"IHDR", head)
        + chunk(b"IDAT", zlib.compress(raw.tobytes(), 6))
        + chunk(b"IEND", b"")
    )


def _nice_ticks(lo: float, hi: float, count: int = 5) -> list[float]:
    if hi <= lo:
        return [lo]
    raw = (hi - lo) / count
    mag = 10 ** math.floor(math.log10(raw))
    step = next(m * mag for m in (1, 2, 2.5, 5, 10) if m * mag >= raw)
    first = math.ceil(lo / step) * step
    return [first + i * step for i in range(int((hi - first) / step + 1e-9) + 1)]


def _fmt(v: float) -> str:
    if v == 0:
        return "0"
    if abs(v) >= 1e5 or abs(v) < 1e-3:
        return f"{v:.1e}".replace("e-0", "e-").replace("e+0", "e")
    return f"{v:.4f}".rstrip("0").rstrip(".")


def moving_average(values: np.ndarray, window: int) -> np.ndarray:
    """Trailing mean over `window` values (shorter at the start)."""
    c = np.cumsum(np.insert(values.astype(np.float64), 0, 0.0))
    idx = np.arange(1, len(values) + 1)
    lo = np.maximum(0, idx - window)
    return (c[idx] - c[lo]) / (idx - lo)


def render_loss_plot(steps: Sequence[int], losses: Sequence[float], title: str = "") -> np.ndarray:
    """The loss curve as an RGB image."""
    cv = Canvas(WIDTH, HEIGHT)
    x = np.asarray(steps, np.float64)
    y = np.asarray(losses, np.float64)
    ok = np.isfinite(y)
    x, y = x[ok], y[ok]
    pw, ph = WIDTH - LEFT - RIGHT, HEIGHT - TOP - BOTTOM
    cv.text(LEFT, 10, title or "training loss")
    if len(y) == 0:
        cv.text(LEFT + pw // 2, TOP + ph // 2, "no steps yet", align="center")
        return cv.img
    xlo, xhi = float(x.min()), float(max(x.max(), x.min() + 1))
    ylo, yhi = float(y.min()), float(y.max())
    pad = (yhi - ylo) * 0.05 or max(abs(yhi) * 0.05, 1e-6)
    ylo, yhi = ylo - pad, yhi + pad

    def px(v):
        return LEFT + (np.asarray(v) - xlo) / (xhi - xlo) * (pw - 1)

    def py(v):
        return TOP + (1 - (np.asarray(v) - ylo) / (yhi - ylo)) * (ph - 1)

    for t in _nice_ticks(ylo, yhi):
        yy = int(round(float(py(t))))
        cv.rect(LEFT, yy, LEFT + pw, yy + 1, GRID)
        cv.text(LEFT - 6, yy - 3, _fmt(t), align="right")
    for t in _nice_ticks(xlo, xhi, 6):
        xx = int(round(float(px(t))))
        cv.rect(xx, TOP, xx + 1, TOP + ph, GRID)
        cv.text(xx, TOP + ph + 8, _fmt(round(t)), align="center")
    cv.text(LEFT + pw // 2, HEIGHT - 14, "step", align="center")
    if len(y) > 2 * pw:  # envelope per pixel column
        col = np.minimum(((x - xlo) / (xhi - xlo) * (pw - 1)).astype(int), pw - 1)
        for c in np.unique(col):
            seg = y[col == c]
            cv.rect(LEFT + c, int(py(seg.max())), LEFT + c + 1, int(py(seg.min())) + 1, RAW)
    else:
        cv.polyline(px(x), py(y), RAW)
    window = max(1, min(len(y) // 10, 500))
    mean = moving_average(y, window)
    stride = max(1, len(y) // (2 * pw))
    cv.polyline(px(x[::stride]), py(mean[::stride]), MEAN, width=2)
    cv.rect(LEFT, TOP, LEFT + pw, TOP + 1, BLACK)
    cv.rect(LEFT, TOP + ph, LEFT + pw, TOP + ph + 1, BLACK)
    cv.rect(LEFT, TOP, LEFT + 1, TOP + ph, BLACK)
    cv.rect(LEFT + pw, TOP, LEFT + pw + 1, TOP + ph + 1, BLACK)
    cv.text(
        WIDTH - RIGHT,
        10,
        f"last {_fmt(float(y[-1]))}  mean({window}) {_fmt(float(mean[-1]))}",
        align="right",
    )
    return cv.img


def write_loss_plot(records: Sequence[dict], path: str | os.PathLike, title: str = "") -> Path:
    """Draw `loss` against `step` of the loss-log records into a PNG (atomic replace)."""
    path = Path(path)
    steps = [r["step"] for r in records if "step" in r and "loss" in r]
    losses = [r["loss"] for r in records if "step" in r and "loss" in r]
    data = png_bytes(render_loss_plot(steps, losses, title))
    tmp = path.with_name(f".{path.name}.{uuid.uuid4().hex[:8]}.tmp")
    try:
        tmp.write_bytes(data)
        os.replace(tmp, path)
    finally:
        if tmp.exists():
            tmp.unlink()
    return path
