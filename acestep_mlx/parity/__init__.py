"""Parity harness: run the port on the recorded inputs of a fixture folder and compare.

A fixture folder (e.g. tests/fixtures/tiny-a) holds a checkpoint in the hub layout,
`fixtures.json` (every reference tensor with meaning and tolerance) and `reference/*`. Each
reference file stem (`dit`, `text_encoder`, `pipeline_repaint`, ...) is handled by a case module
in `acestep_mlx.parity.cases` (see CASES). A case reads inputs with `ref.input(name)` and compares
outputs with `ref.check(name, actual)`. Every tensor of a reference file must be either used as an
input or compared; the rest is reported as "not covered".
"""

from __future__ import annotations

import importlib
import json
import re
import tempfile
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path

import numpy as np

# reference-name pattern -> case module (first match wins)
CASES: list[tuple[str, str]] = [
    (r"dit", "acestep_mlx.parity.cases.dit"),
    (r"text_encoder", "acestep_mlx.parity.cases.text_encoder"),
    (r"music_dcae_submodules", "acestep_mlx.parity.cases.music_dcae_submodules"),
    (r"music_dcae", "acestep_mlx.parity.cases.music_dcae"),
    (r"lyric_tokenizer", "acestep_mlx.parity.cases.lyric_tokenizer"),
    (r"schedulers", "acestep_mlx.parity.cases.schedulers"),
    (r"guidance", "acestep_mlx.parity.cases.guidance"),
    (r"pipeline_.*", "acestep_mlx.parity.cases.pipeline"),
    (r"training", "acestep_mlx.parity.cases.training"),
]
# reference files that only hold inputs for other cases
INPUT_ONLY = {"pipeline_src_audio"}


@dataclass
class Result:
    reference: str
    name: str
    passed: bool
    max_abs: float
    cosine: float
    tolerance: str
    note: str = ""

    def line(self) -> str:
        status = "PASS" if self.passed else "FAIL"
        cos = "   n/a  " if np.isnan(self.cosine) else f"{self.cosine:.6f}"
        note = f"  {self.note}" if self.note else ""
        return (f"{status}  {self.reference}:{self.name:<52} max_abs={self.max_abs:.3e}  "
                f"tol[{self.tolerance}]  cos={cos}{note}")


def _cosine(a: np.ndarray, b: np.ndarray) -> float:
    a = a.astype(np.float64).ravel()
    b = b.astype(np.float64).ravel()
    na, nb = np.linalg.norm(a), np.linalg.norm(b)
    if na == 0 or nb == 0:
        return 1.0 if na == nb else 0.0
    return float(a @ b / (na * nb))


def compare(actual, expected, atol: float, rtol: float, exact: bool = False
            ) -> tuple[bool, float, float, str]:
    """(passed, max_abs_error, cosine, tolerance text); shape mismatches fail."""
    a = np.asarray(actual)
    e = np.asarray(expected)
    if a.shape != e.shape:
        return False, float("inf"), float("nan"), f"shape {list(a.shape)} != {list(e.shape)}"
    if exact or e.dtype.kind in "iub" or a.dtype.kind in "iub" and e.dtype.kind in "iub":
        diff = np.abs(a.astype(np.float64) - e.astype(np.float64))
        m = float(diff.max()) if diff.size else 0.0
        return bool(np.array_equal(a, e)), m, float("nan"), "exact"
    a64 = a.astype(np.float64)
    e64 = e.astype(np.float64)
    if not np.isfinite(a64).all():
        return False, float("inf"), float("nan"), f"atol={atol:g} rtol={rtol:g} (non-finite)"
    diff = np.abs(a64 - e64)
    m = float(diff.max()) if diff.size else 0.0
    ok = bool(np.all(diff <= atol + rtol * np.abs(e64)))
    return ok, m, _cosine(a64, e64), f"atol={atol:g} rtol={rtol:g}"


class Reference:
    """One reference file (stem) of a fixture folder, with usage tracking for coverage."""

    def __init__(self, ctx: ParityContext, name: str):
        self.ctx = ctx
        self.name = name
        base = ctx.fixture_dir / "reference"
        self.tensor_path = base / f"{name}.safetensors"
        self.json_path = base / f"{name}.json"
        self._tensors: dict[str, np.ndarray] | None = None
        self.json = json.loads(self.json_path.read_text()) if self.json_path.is_file() else None
        files = ctx.fixtures.get("files", {})
        self.meta = files.get(f"reference/{name}.safetensors") or files.get(
            f"reference/{name}.json") or {}
        self.used: set[str] = set()
        self.expected_units: set[str] = set()
        self.results: list[Result] = []

    @property
    def tensors(self) -> dict[str, np.ndarray]:
        if self._tensors is None:
            if self.tensor_path.is_file():
                from safetensors.numpy import load_file

                self._tensors = load_file(str(self.tensor_path))
            else:
                self._tensors = {}
        return self._tensors

    def units(self) -> set[str]:
        return set(self.tensors) | self.expected_units

    def names(self, prefix: str = "") -> list[str]:
        return sorted(k for k in self.tensors if k.startswith(prefix))

    def has(self, name: str) -> bool:
        return name in self.tensors

    def input(self, name: str) -> np.ndarray:
        """A recorded input (counts as covered)."""
        self.used.add(name)
        return self.tensors[name]

    def tolerance(self) -> tuple[float, float]:
        tol = self.meta.get("tolerance") or {}
        return float(tol.get("atol", 0.0)), float(tol.get("rtol", 0.0))

    def check(self, name: str, actual, atol: float | None = None, rtol: float | None = None,
              exact: bool = False, note: str = "") -> bool:
        """Compare `actual` with the reference tensor `name` (file tolerance unless given)."""
        if name not in self.tensors:
            raise KeyError(f"{self.name}: no reference tensor {name!r}")
        fa, fr = self.tolerance()
        atol = fa if atol is None else atol
        rtol = fr if rtol is None else rtol
        ok, m, cos, tol = compare(actual, self.tensors[name], atol, rtol, exact)
        return self._record(name, ok, m, cos, tol, note)

    def expect(self, names: Iterable[str]) -> None:
        """Declare comparison units that are not tensors (JSON references)."""
        self.expected_units.update(names)

    def check_value(self, name: str, actual, expected, note: str = "") -> bool:
        """Exact comparison of JSON-like values (token ids, strings)."""
        ok = actual == expected
        m = 0.0 if ok else float("inf")
        return self._record(name, ok, m, float("nan"), "exact", note)

    def _record(self, name, ok, m, cos, tol, note) -> bool:
        self.used.add(name)
        r = Result(self.name, name, ok, m, cos, tol, note)
        self.results.append(r)
        if self.ctx.verbose:
            print(r.line(), flush=True)
        return ok


class ParityContext:
    """Shared state of one parity run: the fixture folder and the converted models."""

    def __init__(self, fixture_dir: str | Path, cache_dir: str | Path | None = None,
                 verbose: bool = True):
        self.fixture_dir = Path(fixture_dir)
        manifest = self.fixture_dir / "fixtures.json"
        if not manifest.is_file():
            raise FileNotFoundError(f"{manifest} not found: not a fixture folder")
        self.fixtures = json.loads(manifest.read_text())
        self._tmp = None
        if cache_dir is None:
            self._tmp = tempfile.TemporaryDirectory(prefix="acestep-parity-")
            cache_dir = self._tmp.name
        self.cache_dir = Path(cache_dir)
        self.verbose = verbose
        self._models: dict[tuple[str, str], object] = {}

    def named_tolerance(self, key: str) -> tuple[float, float]:
        tol = self.fixtures.get("tolerances", {}).get(key, {})
        return float(tol.get("atol", 0.0)), float(tol.get("rtol", 0.0))

    def load(self, component: str, dtype: str = "float32"):
        """A component of the fixture checkpoint, converted by the project's converter."""
        from acestep_mlx.checkpoint import load_component

        key = (component, dtype)
        if key not in self._models:
            self._models[key] = load_component(self.fixture_dir, component, dtype,
                                               cache_dir=self.cache_dir)
        return self._models[key]

    def reference_names(self) -> list[str]:
        return sorted({p.stem for p in (self.fixture_dir / "reference").iterdir()
                       if p.suffix in (".safetensors", ".json")})

    def close(self) -> None:
        if self._tmp is not None:
            self._tmp.cleanup()


def case_module(name: str):
    for pattern, module in CASES:
        if re.fullmatch(pattern, name):
            try:
                return importlib.import_module(module)
            except ModuleNotFoundError as e:
                if e.name == module:
                    return None
                raise
    return None


@dataclass
class Summary:
    results: list[Result]
    not_covered: dict[str, list[str]]

    @property
    def passed(self) -> int:
        return sum(r.passed for r in self.results)

    @property
    def failed(self) -> int:
        return sum(not r.passed for r in self.results)

    @property
    def n_not_covered(self) -> int:
        return sum(len(v) for v in self.not_covered.values())

    def last_line(self) -> str:
        return f"{self.passed} passed, {self.failed} failed, {self.n_not_covered} not covered"


def run_parity(fixture_dir: str | Path, only: Iterable[str] | None = None,
               cache_dir: str | Path | None = None, verbose: bool = True) -> Summary:
    ctx = ParityContext(fixture_dir, cache_dir=cache_dir, verbose=verbose)
    try:
        names = ctx.reference_names()
        if only:
            wanted = list(dict.fromkeys(only))
            unknown = [n for n in wanted if n not in names]
            if unknown:
                raise SystemExit(f"unknown reference name(s): {', '.join(unknown)}; "
                                 f"available: {', '.join(names)}")
            names = wanted
        results: list[Result] = []
        not_covered: dict[str, list[str]] = {}
        for name in names:
            if name in INPUT_ONLY:
                continue
            ref = Reference(ctx, name)
            mod = case_module(name)
            if mod is None:
                units = sorted(ref.units()) or [name]
                not_covered[name] = units
                if verbose:
                    print(f"SKIP  {name}: no case implemented ({len(units)} not covered)",
                          flush=True)
                continue
            try:
                mod.run(ref, ctx)
            except Exception as e:  # a crashing case is a failure, not a silent skip
                ref._record("<case raised>", False, float("inf"), float("nan"), "-",
                            f"{type(e).__name__}: {e}")
                if verbose:
                    import traceback

                    traceback.print_exc()
            results.extend(ref.results)
            missing = sorted(ref.units() - ref.used)
            if missing:
                not_covered[name] = missing
                if verbose:
                    for m in missing:
                        print(f"MISS  {name}:{m} (not compared)", flush=True)
        return Summary(results, not_covered)
    finally:
        ctx.close()
