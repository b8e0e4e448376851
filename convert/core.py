"""Checkpoint conversion: one key table per component, planned from the header, verified, streamed.

A component (DiT, UMT5, DCAE, vocoder) is described by a `ComponentSpec`: where its files live in
the hub layout, an ordered table of `Rule`s mapping every source key to an MLX key (or dropping it
with a reason), and a function that builds the MLX model from config.json (lazily: parameters of
an unevaluated MLX model cost no memory). Conversion:

1. plans every output tensor from the safetensors header alone (no data read),
2. verifies the plan against the model: every source tensor mapped or deliberately dropped, every
   model parameter filled, every shape equal; all problems are reported together,
3. streams tensors one at a time into a temporary directory, which is renamed into place only when
   complete, so an interrupted conversion never leaves a cache that is later trusted.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import shutil
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from .safetensors_io import (
    FLOAT_DTYPES,
    CheckpointFileError,
    SafetensorsReader,
    StreamingWriter,
    TensorInfo,
    read_header,
)

CONVERTER_VERSION = "1"
DTYPES = ("float32", "bfloat16", "float16")
WEIGHTS_NAME = "model.safetensors"
REPORT_NAME = "conversion.json"


class ConversionError(ValueError):
    """The source checkpoint does not fit the model (names the keys and shapes involved)."""


# --------------------------------------------------------------------------------------------
# Transforms: each has a shape function (for planning) and an array function (for writing).
# An array function gets the source key and a getter for any source tensor (weight norm needs
# the sibling `weight_g`).

Getter = Callable[[str], np.ndarray]


@dataclass(frozen=True)
class Transform:
    shape: Callable[[tuple[int, ...]], tuple[int, ...]]
    apply: Callable[[str, Getter], np.ndarray]


def _perm(axes: tuple[int, ...]) -> Transform:
    return Transform(
        shape=lambda s: tuple(s[a] for a in axes),
        apply=lambda k, get: np.ascontiguousarray(np.transpose(get(k), axes)),
    )


def _fold_weight_norm(key: str, get: Getter) -> np.ndarray:
    """w = g * v / ||v||, the norm over every dim but 0 (legacy torch weight_norm, dim=0).

    For Conv1d weights [out, in, k] that is per output channel; for ConvTranspose1d weights
    [in, out, k] it is per *input* channel, which is what dim 0 means there too.
    """
    if not key.endswith("weight_v"):
        raise ConversionError(f"weight-norm fold expects a '*.weight_v' key, got {key!r}")
    v = get(key).astype(np.float64)
    g = get(key[: -len("weight_v")] + "weight_g").astype(np.float64)
    norm = np.sqrt(np.sum(v * v, axis=tuple(range(1, v.ndim)), keepdims=True))
    return (g * v / norm).astype(np.float32)


def _wn_then(axes: tuple[int, ...]) -> Transform:
    return Transform(
        shape=lambda s: tuple(s[a] for a in axes),
        apply=lambda k, get: np.ascontiguousarray(np.transpose(_fold_weight_norm(k, get), axes)),
    )


TRANSFORMS: dict[str, Transform] = {
    "none": Transform(shape=lambda s: tuple(s), apply=lambda k, get: get(k)),
    # PyTorch Conv1d [O, I, K] -> MLX [O, K, I]
    "conv1d": _perm((0, 2, 1)),
    # PyTorch Conv2d [O, I, H, W] -> MLX [O, H, W, I]
    "conv2d": _perm((0, 2, 3, 1)),
    # PyTorch ConvTranspose1d [I, O, K] -> MLX ConvTranspose1d [O, K, I]
    "conv_transpose1d": _perm((1, 2, 0)),
    # weight-normalised versions (source key is `...weight_v`)
    "wn_conv1d": _wn_then((0, 2, 1)),
    "wn_conv_transpose1d": _wn_then((1, 2, 0)),
}


@dataclass(frozen=True)
class Rule:
    """Map source keys matching `pattern` (full match) to `target` (a `re` template).

    `target=None` drops the tensor; `reason` then says why (it is listed in the report).
    """

    pattern: str
    target: str | None
    transform: str = "none"
    reason: str = ""


@dataclass(frozen=True)
class ComponentSpec:
    name: str  # "dit", "text_encoder", "dcae", "vocoder"
    subfolder: str  # folder in the hub layout
    weights_file: str  # safetensors file inside it
    rules: tuple[Rule, ...]
    build_model: Callable[[dict], object]  # config dict -> MLX nn.Module (unevaluated)
    extra_files: tuple[str, ...] = ()  # copied next to the converted weights (tokenizers)
    config_file: str = "config.json"


@dataclass
class PlannedTensor:
    dst: str
    src: str
    transform: str
    shape: tuple[int, ...]
    is_float: bool


@dataclass
class Plan:
    tensors: list[PlannedTensor]
    dropped: dict[str, str] = field(default_factory=dict)  # source key -> reason


def plan_component(spec: ComponentSpec, header: dict[str, tuple[str, tuple[int, ...]]]) -> Plan:
    """Map every source key (dtype, shape) through the rule table; unmapped keys are errors."""
    compiled = [(re.compile(r.pattern), r) for r in spec.rules]
    planned: list[PlannedTensor] = []
    dropped: dict[str, str] = {}
    unmapped: list[str] = []
    for key in sorted(header):
        dtype, shape = header[key]
        for rx, rule in compiled:
            if rx.fullmatch(key):
                if rule.target is None:
                    dropped[key] = rule.reason or "not used"
                else:
                    dst = rx.sub(rule.target, key)
                    tr = TRANSFORMS[rule.transform]
                    planned.append(PlannedTensor(dst, key, rule.transform, tr.shape(shape),
                                                 dtype in FLOAT_DTYPES))
                break
        else:
            unmapped.append(key)
    if unmapped:
        listed = "\n  ".join(unmapped[:20])
        more = f"\n  ... and {len(unmapped) - 20} more" if len(unmapped) > 20 else ""
        raise ConversionError(
            f"{spec.subfolder}/{spec.weights_file}: {len(unmapped)} tensor(s) have no mapping "
            f"(not an ACE-Step v1 {spec.name} checkpoint, or a newer layout):\n  {listed}{more}"
        )
    return Plan(planned, dropped)


def model_parameter_shapes(model) -> dict[str, tuple[int, ...]]:
    from mlx.utils import tree_flatten

    return {k: tuple(v.shape) for k, v in tree_flatten(model.parameters())}


def verify_plan(spec: ComponentSpec, plan: Plan, expected: dict[str, tuple[int, ...]]) -> None:
    """Every model parameter filled exactly once with the right shape; nothing extra."""
    problems: list[str] = []
    seen: dict[str, str] = {}
    for t in plan.tensors:
        if t.dst in seen:
            problems.append(f"{t.dst}: filled twice (from {seen[t.dst]} and {t.src})")
            continue
        seen[t.dst] = t.src
        if t.dst not in expected:
            problems.append(f"{t.src} -> {t.dst}: the model has no such parameter")
        elif expected[t.dst] != t.shape:
            problems.append(
                f"{t.src}: wrong shape for {t.dst}: expected {list(expected[t.dst])}, "
                f"found {list(t.shape)} (after layout conversion)"
            )
    for k in sorted(set(expected) - set(seen)):
        problems.append(f"{k}: model parameter not filled by any checkpoint tensor")
    if problems:
        listed = "\n  ".join(problems[:30])
        more = f"\n  ... and {len(problems) - 30} more" if len(problems) > 30 else ""
        raise ConversionError(
            f"{spec.subfolder}/{spec.weights_file} does not fit the {spec.name} model built from "
            f"its config.json ({len(problems)} problem(s)):\n  {listed}{more}"
        )


def header_of(path: Path) -> dict[str, tuple[str, tuple[int, ...]]]:
    tensors, _, _ = read_header(path)
    return {k: (v.dtype, v.shape) for k, v in tensors.items()}


def read_component_config(spec: ComponentSpec, src_dir: Path) -> dict:
    from acestep_mlx.configs import read_config_json

    return read_config_json(src_dir / spec.config_file)


def check_dtype(dtype: str) -> str:
    if dtype not in DTYPES:
        raise ValueError(f"unknown dtype {dtype!r}; choose one of {', '.join(DTYPES)}")
    return dtype


def convert_component(spec: ComponentSpec, src_dir: str | Path, dst_dir: str | Path,
                      dtype: str = "float32", progress: Callable[[int, int], None] | None = None,
                      ) -> dict:
    """Convert one component folder into `dst_dir` (created atomically). Returns the report."""
    check_dtype(dtype)
    src_dir, dst_dir = Path(src_dir), Path(dst_dir)
    weights = src_dir / spec.weights_file
    if not src_dir.is_dir():
        raise CheckpointFileError(f"checkpoint folder {src_dir} not found")
    config = read_component_config(spec, src_dir)
    tensors: dict[str, TensorInfo]
    tensors, _, _ = read_header(weights)
    header = {k: (v.dtype, v.shape) for k, v in tensors.items()}
    plan = plan_component(spec, header)
    model = spec.build_model(config)
    verify_plan(spec, plan, model_parameter_shapes(model))
    del model

    dst_dir.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{dst_dir.name}.tmp-", dir=dst_dir.parent))
    try:
        t0 = time.perf_counter()
        out_plan = []
        for t in plan.tensors:
            out_dtype = {"float32": "F32", "float16": "F16", "bfloat16": "BF16"}[dtype]
            out_plan.append((t.dst, out_dtype if t.is_float else "I64", t.shape))
        writer = StreamingWriter(tmp / WEIGHTS_NAME, out_plan,
                                 metadata={"format": "mlx", "component": spec.name})
        with SafetensorsReader(weights) as reader:
            for i, t in enumerate(plan.tensors):
                arr = TRANSFORMS[t.transform].apply(t.src, reader.get)
                if not t.is_float:
                    arr = arr.astype(np.int64)
                if t.is_float and not np.isfinite(arr).all():
                    raise ConversionError(f"{weights}: tensor {t.src!r} holds NaN or Inf values")
                writer.write(t.dst, arr, dtype)
                if progress:
                    progress(i + 1, len(plan.tensors))
        writer.close()
        (tmp / "config.json").write_text(json.dumps(config, indent=2, sort_keys=True) + "\n")
        for name in spec.extra_files:
            if (src_dir / name).is_file():
                shutil.copy2(src_dir / name, tmp / name)
        report = {
            "component": spec.name,
            "converter_version": CONVERTER_VERSION,
            "source": str(weights),
            "dtype": dtype,
            "n_source_tensors": len(header),
            "n_converted": len(plan.tensors),
            "dropped": plan.dropped,
            "seconds": round(time.perf_counter() - t0, 3),
        }
        (tmp / REPORT_NAME).write_text(json.dumps(report, indent=2) + "\n")
        if dst_dir.exists():
            shutil.rmtree(dst_dir)
        os.replace(tmp, dst_dir)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return report


def source_fingerprint(spec: ComponentSpec, src_dir: Path, dtype: str) -> str:
    """Cache key: converter version, dtype, config, and the weights file's header and size.

    The header holds every tensor name, dtype, shape and byte offset, so a different checkpoint
    (or a re-saved one) gets a new key without hashing gigabytes of data.
    """
    weights = src_dir / spec.weights_file
    h = hashlib.sha256()
    h.update(f"{CONVERTER_VERSION}|{spec.name}|{dtype}|".encode())
    if not weights.is_file():
        raise CheckpointFileError(
            f"checkpoint file not found: {weights}\n"
            f"The folder {src_dir.parent} must have the hub layout of ACE-Step/ACE-Step-v1-3.5B."
        )
    h.update(str(weights.stat().st_size).encode())
    with open(weights, "rb") as f:
        raw = f.read(8)
        n = int.from_bytes(raw, "little") if len(raw) == 8 else 0
        h.update(f.read(min(n, 100 * 1024 * 1024)))
    cfg = src_dir / spec.config_file
    if cfg.is_file():
        h.update(cfg.read_bytes())
    for name in spec.extra_files:
        p = src_dir / name
        if p.is_file():
            h.update(name.encode() + str(p.stat().st_size).encode())
    return h.hexdigest()[:16]
