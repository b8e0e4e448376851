"""Seeds and random tensors: per-item seeded MLX keys, or injected tensors for parity tests.

The original draws every random tensor with `randn_tensor(shape, generator=[g_0, ..., g_{B-1}])`:
item i comes from generator i. Here each batch item owns an MLX key derived from its seed; each
draw splits that key, so the sequence of draws is reproducible for a given seed. MLX's generator is
not PyTorch's: the same seed gives different noise than the original (inject the original's noise
to compare numbers, as the parity tests do).
"""

from __future__ import annotations

import random
from collections.abc import Sequence

import mlx.core as mx
import numpy as np


def parse_seeds(seeds, batch_size: int, rng: random.Random | None = None) -> list[int]:
    """The original's seed rules (`set_seeds`): a comma string, a digit string, a list of ints or
    an int; item i takes element i (or the last one); anything else means random seeds."""
    processed: int | list[int] | None = None
    if isinstance(seeds, str):
        s = seeds.strip()
        if "," in s:
            try:
                processed = [int(x) for x in s.split(",") if x.strip()]
            except ValueError as e:
                raise ValueError(f"seeds {seeds!r}: use integers separated by commas") from e
            processed = processed or None
        elif s.isdigit():
            processed = int(s)
    elif isinstance(seeds, (list, tuple)) and seeds and all(
        isinstance(s, (int, np.integer)) and not isinstance(s, bool) for s in seeds
    ):
        processed = [int(s) for s in seeds]
    elif isinstance(seeds, (int, np.integer)) and not isinstance(seeds, bool):
        processed = int(seeds)
    rng = rng or random.Random()
    out = []
    for i in range(batch_size):
        if processed is None:
            out.append(rng.randrange(0, 2**32))
        elif isinstance(processed, int):
            out.append(processed)
        else:
            out.append(processed[i] if i < len(processed) else processed[-1])
    for s in out:
        if not 0 <= s < 2**64:
            raise ValueError(f"seed {s} is out of range (0 .. 2**64-1)")
    return out


class SeededNoise:
    """Per-item seeded normal draws (one key per batch item, split at every draw)."""

    def __init__(self, seeds: Sequence[int]):
        self.seeds = list(seeds)
        self._keys = [mx.random.key(s % 2**64) for s in self.seeds]

    def _next(self, i: int) -> mx.array:
        self._keys[i], sub = mx.random.split(self._keys[i])
        return sub

    def randn(self, shape: Sequence[int], dtype=mx.float32) -> mx.array:
        """Like the original's randn_tensor(shape, generator=list): item i from generator i; a
        batch-1 shape uses the first generator only."""
        shape = tuple(shape)
        n = shape[0]
        if n == 1 or len(self._keys) == 1:
            parts = [mx.random.normal(shape, key=self._next(0))]
        else:
            parts = [mx.random.normal((1, *shape[1:]), key=self._next(i)) for i in range(n)]
        return mx.concatenate(parts, axis=0).astype(dtype) if len(parts) > 1 else parts[0].astype(
            dtype)

    def first_generator_randn(self, shape: Sequence[int], dtype=mx.float32) -> mx.array:
        """A draw of the whole shape from generator 0 (PingPong / FlowEdit SDE noise)."""
        return mx.random.normal(tuple(shape), key=self._next(0)).astype(dtype)


class InjectedNoise:
    """Returns recorded tensors in call order instead of drawing (parity tests)."""

    def __init__(self, tensors: Sequence, name: str = "noise"):
        self._tensors = [mx.array(np.asarray(t)) for t in tensors]
        self._i = 0
        self.name = name

    def _pop(self, shape: Sequence[int]) -> mx.array:
        if self._i >= len(self._tensors):
            raise RuntimeError(f"{self.name}: more random draws than injected tensors "
                               f"({len(self._tensors)})")
        t = self._tensors[self._i]
        self._i += 1
        if tuple(t.shape) != tuple(shape):
            raise ValueError(f"{self.name}: injected tensor #{self._i - 1} has shape "
                             f"{tuple(t.shape)}, the draw needs {tuple(shape)}")
        return t

    def randn(self, shape: Sequence[int], dtype=mx.float32) -> mx.array:
        return self._pop(shape).astype(dtype)

    def first_generator_randn(self, shape: Sequence[int], dtype=mx.float32) -> mx.array:
        return self._pop(shape).astype(dtype)

    @property
    def remaining(self) -> int:
        return len(self._tensors) - self._i


class Randomness:
    """Every random tensor a generation draws, by purpose.

    Seeded: the main noise and the scheduler's SDE noise come from the per-item seeds
    (`manual_seeds`), retake/repaint/extend/edit noise from `retake_seeds`, as in the original.
    Injected: the original's `randn_tensor` draws come from one ordered list and the SDE noise
    (PingPong steps, FlowEdit PingPong) from another, exactly as the fixtures record them.
    """

    def __init__(self, main, retake, sde_main, sde_retake):
        self._main, self._retake = main, retake
        self._sde_main, self._sde_retake = sde_main, sde_retake

    @classmethod
    def seeded(cls, seeds: Sequence[int], retake_seeds: Sequence[int]) -> Randomness:
        main, retake = SeededNoise(seeds), SeededNoise(retake_seeds)
        return cls(main, retake, main, retake)

    @classmethod
    def injected(cls, randn: Sequence, sde: Sequence = ()) -> Randomness:
        draws = InjectedNoise(randn, "injected noise")
        sde_draws = InjectedNoise(sde, "injected SDE noise")
        return cls(draws, draws, sde_draws, sde_draws)

    def initial(self, shape, dtype=mx.float32) -> mx.array:
        return self._main.randn(shape, dtype)

    def retake(self, shape, dtype=mx.float32) -> mx.array:
        return self._retake.randn(shape, dtype)

    def sde(self, shape, dtype=mx.float32) -> mx.array:
        """Scheduler noise (PingPong): drawn from the first seed generator."""
        return self._sde_main.first_generator_randn(shape, dtype)

    def edit(self, shape, dtype=mx.float32) -> mx.array:
        """FlowEdit forward noise: the retake generators."""
        return self._retake.randn(shape, dtype)

    def edit_sde(self, shape, dtype=mx.float32) -> mx.array:
        return self._sde_retake.first_generator_randn(shape, dtype)
