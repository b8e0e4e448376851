"""LoRA adapters on the DiT: load the original's `pytorch_lora_weights.safetensors`, change
strength, unload, switch, all without reloading the base model; create, save and reload adapters
for training.

Inference (spec 9.11): the original (diffusers 0.33 `load_lora_adapter`) reads only
`lora_A`/`lora_B` from the file, infers the rank from `lora_B` and sets alpha = rank, so the delta
is `lora_weight * B @ A @ x` whatever alpha/rsLoRA the adapter was trained with. The same scale is
used here (`LoRALinear.scale = strength`).

Training (spec 10.6): PEFT's `LoraConfig(r, lora_alpha, use_rslora, target_modules)`; the scale
is `alpha / sqrt(r)` (rsLoRA) or `alpha / r`, target modules are matched as PEFT does (the module
path equals a target or ends with "." + target), `lora_A` starts kaiming-uniform(a=sqrt(5)) and
`lora_B` at zero. Files are written in the trainer's format: keys `<module>.lora_A.weight` [r, in]
and `<module>.lora_B.weight` [out, r], float32, metadata `{"format": "pt"}`, so the original
pipeline loads them too.
"""

from __future__ import annotations

import math
import os
import uuid
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import mlx.core as mx
import mlx.nn as nn
import numpy as np

LORA_FILE = "pytorch_lora_weights.safetensors"
# the original's target modules (config/zh_rap_lora_config.json), matched as name suffixes
DEFAULT_TARGETS = (
    "speaker_embedder",
    "linear_q",
    "linear_k",
    "linear_v",
    "to_q",
    "to_k",
    "to_v",
    "to_out.0",
)


class LoRAError(ValueError):
    """An adapter that does not fit the model (the model is left unchanged)."""


def lora_scale(r: int, alpha: float, use_rslora: bool) -> float:
    """PEFT's training-time scale: `alpha / sqrt(r)` with rsLoRA, else `alpha / r`."""
    return float(alpha) / (math.sqrt(r) if use_rslora else float(r))


class LoRALinear(nn.Module):
    """`base(x) + scale * B(A(x))` around a frozen nn.Linear (PEFT's `lora.Linear`).

    The branch runs in the adapter's dtype (the input is cast to it); the scale is applied in
    float32 and rounded once (torch keeps a Python scalar in float32); the sum is formed in the
    wider of the two dtypes and cast back to the base output's dtype. With float32 everywhere
    this is plain `y + scale * ((x A^T) B^T)`; with a bfloat16 base and float32 adapters (training
    on small machines) the LoRA branch stays float32 as PEFT does.
    """

    def __init__(self, base: nn.Linear, lora_a: mx.array, lora_b: mx.array, scale: float):
        super().__init__()
        self.base = base
        self.lora_A = lora_a  # [r, in]
        self.lora_B = lora_b  # [out, r]
        self.scale = float(scale)

    @classmethod
    def create(
        cls, base: nn.Linear, rank: int, scale: float, rng: np.random.Generator, dtype=mx.float32
    ) -> LoRALinear:
        """A fresh adapter for training: A ~ U(-1/sqrt(in), 1/sqrt(in)) (PEFT's
        kaiming-uniform with a=sqrt(5)), B = 0, so training starts from the base model."""
        out_dim, in_dim = base.weight.shape
        bound = 1.0 / math.sqrt(in_dim)
        a = rng.uniform(-bound, bound, (rank, in_dim)).astype(np.float32)
        b = np.zeros((out_dim, rank), np.float32)
        return cls(base, mx.array(a).astype(dtype), mx.array(b).astype(dtype), scale)

    @property
    def rank(self) -> int:
        return int(self.lora_A.shape[0])

    def __call__(self, x: mx.array) -> mx.array:
        y = self.base(x)
        if self.scale == 0:
            return y
        dt = self.lora_A.dtype
        delta = (x.astype(dt) @ self.lora_A.T) @ self.lora_B.astype(dt).T
        if self.scale != 1:
            delta = (
                delta * self.scale
                if dt == mx.float32
                else ((delta.astype(mx.float32) * self.scale).astype(dt))
            )
        if delta.dtype == y.dtype:
            return y + delta
        return (y.astype(mx.float32) + delta.astype(mx.float32)).astype(y.dtype)


def _get(model: nn.Module, path: str):
    obj = model
    for part in path.split("."):
        if isinstance(obj, list):
            if not part.isdigit() or int(part) >= len(obj):
                return None
            obj = obj[int(part)]
        elif isinstance(obj, nn.Module):  # children, lists and arrays live in the dict
            obj = obj.get(part)
        else:
            return None
        if obj is None:
            return None
    return obj


def _set(model: nn.Module, path: str, value) -> None:
    parent_path, _, last = path.rpartition(".")
    parent = _get(model, parent_path) if parent_path else model
    if isinstance(parent, list):
        parent[int(last)] = value
    else:
        setattr(parent, last, value)


def lora_layers(model: nn.Module) -> dict[str, LoRALinear]:
    """Every LoRALinear in `model`, by module path."""
    return {name: m for name, m in model.named_modules() if isinstance(m, LoRALinear)}


def strip_lora(model: nn.Module) -> int:
    """Replace every LoRALinear of `model` by its base layer; returns how many."""
    layers = lora_layers(model)
    for path, layer in layers.items():
        _set(model, path, layer.base)
    return len(layers)


def peft_key(module_path: str, part: str) -> str:
    """`transformer_blocks.0.attn.to_q` + "lora_A" -> the key in the adapter file."""
    return f"{module_path}.{part}.weight"


@dataclass
class LoRAAdapter:
    """An adapter injected into a model; `remove()` restores the base layers.

    `strength` is the per-layer scale: the inference `lora_weight`, or the training scale
    (alpha/r, alpha/sqrt(r)) for adapters made by `add_lora_adapters`.
    """

    name: str
    model: nn.Module
    rank: int
    strength: float
    layers: dict[str, LoRALinear] = field(default_factory=dict)

    def set_strength(self, strength: float) -> None:
        self.strength = float(strength)
        for layer in self.layers.values():
            layer.scale = self.strength

    def remove(self) -> None:
        for path, layer in self.layers.items():
            _set(self.model, path, layer.base)
        self.layers.clear()

    def weights(self) -> dict[str, mx.array]:
        """PEFT key -> array (`<module>.lora_A.weight`, `<module>.lora_B.weight`)."""
        out = {}
        for path, layer in self.layers.items():
            out[peft_key(path, "lora_A")] = layer.lora_A
            out[peft_key(path, "lora_B")] = layer.lora_B
        return out

    def set_weights(self, weights: dict[str, np.ndarray | mx.array], source: str = "") -> None:
        """Replace every A/B from a PEFT-keyed dict (all keys required, shapes must match)."""
        expected = {k: v.shape for k, v in self.weights().items()}
        missing = sorted(set(expected) - set(weights))
        extra = sorted(set(weights) - set(expected))
        if missing or extra:
            raise LoRAError(
                f"{source or 'adapter weights'} do not match this adapter: "
                f"missing {missing[:3]}, unexpected {extra[:3]}"
            )
        for key, shape in expected.items():
            if tuple(weights[key].shape) != tuple(shape):
                raise LoRAError(
                    f"{source}: {key} has shape {list(weights[key].shape)}, expected {list(shape)}"
                )
        for path, layer in self.layers.items():
            dt = layer.lora_A.dtype
            layer.lora_A = mx.array(weights[peft_key(path, "lora_A")]).astype(dt)
            layer.lora_B = mx.array(weights[peft_key(path, "lora_B")]).astype(dt)


def match_target_modules(model: nn.Module, targets: Sequence[str]) -> list[str]:
    """Module paths PEFT would adapt for `target_modules=targets` (path == target, or path ends
    with "." + target), in the model's module order. Every match must be a linear layer."""
    targets = list(targets)
    found = []
    for name, module in model.named_modules():
        if not name or not any(name == t or name.endswith("." + t) for t in targets):
            continue
        if not isinstance(module, nn.Linear):
            raise LoRAError(
                f"target module {name!r} is a {type(module).__name__}; LoRA is only "
                "supported on linear layers: remove it from target_modules"
            )
        found.append(name)
    if not found:
        raise LoRAError(
            f"target_modules {targets} match no linear layer of the model; use "
            f"module names such as {', '.join(DEFAULT_TARGETS)}"
        )
    return sorted(found, key=_natural_key)


def _natural_key(path: str) -> tuple:
    """Sort key with numeric path parts compared as numbers (blocks 2 < 10)."""
    return tuple((0, int(p), "") if p.isdigit() else (1, 0, p) for p in path.split("."))


def _check_no_adapter(model: nn.Module) -> None:
    if lora_layers(model):
        raise LoRAError(
            "the model already carries a LoRA adapter; unload it first "
            "(ACEStepPipeline.unload_lora() or LoRAAdapter.remove())"
        )


def add_lora_adapters(
    model: nn.Module,
    rank: int,
    scale: float,
    targets: Sequence[str],
    seed: int = 0,
    dtype=mx.float32,
    name: str = "lora",
) -> LoRAAdapter:
    """Inject fresh trainable adapters (PEFT init) on the matched linear layers."""
    if rank < 1:
        raise LoRAError(f"LoRA rank r must be >= 1, got {rank}")
    _check_no_adapter(model)
    paths = match_target_modules(model, targets)
    rng = np.random.default_rng([int(seed), 0x10A])
    adapter = LoRAAdapter(name, model, int(rank), float(scale))
    for path in paths:
        layer = LoRALinear.create(_get(model, path), rank, scale, rng, dtype)
        _set(model, path, layer)
        adapter.layers[path] = layer
    return adapter


def make_trainable(model: nn.Module) -> None:
    """Freeze everything but the LoRA A/B matrices."""
    model.freeze()
    for layer in lora_layers(model).values():
        layer.unfreeze(keys=["lora_A", "lora_B"], recurse=False)


def resolve_lora_file(name_or_path: str | os.PathLike, cache_dir=None) -> Path:
    """A local folder/file, or a hub repo id holding pytorch_lora_weights.safetensors."""
    p = Path(name_or_path).expanduser()
    if p.is_file():
        return p
    if p.is_dir():
        f = p / LORA_FILE
        if not f.is_file():
            raise LoRAError(f"{p} has no {LORA_FILE}; pass the folder the trainer wrote")
        return f
    spec = str(name_or_path)
    if spec.count("/") != 1 or spec.startswith((".", "/", "~")):
        raise LoRAError(
            f"LoRA {spec!r} is neither an existing folder/file nor a hub repo id (owner/name)"
        )
    try:
        from huggingface_hub import snapshot_download

        from .checkpoint import default_cache_dir

        root = snapshot_download(
            spec,
            allow_patterns=[LORA_FILE],
            cache_dir=str(Path(cache_dir or default_cache_dir()) / "hub"),
        )
    except Exception as e:  # noqa: BLE001
        raise LoRAError(
            f"could not download LoRA {spec!r} from the hub ({type(e).__name__}: "
            f"{e}); download it elsewhere and pass its local folder"
        ) from e
    f = Path(root) / LORA_FILE
    if not f.is_file():
        raise LoRAError(f"hub repo {spec!r} has no {LORA_FILE}")
    return f


def read_lora_file(path: Path) -> dict[str, tuple[np.ndarray, np.ndarray]]:
    """module path -> (A [r, in], B [out, r]) from a PEFT-format file (float32 numpy)."""
    from convert.safetensors_io import CheckpointFileError, SafetensorsReader

    pairs: dict[str, dict[str, np.ndarray]] = {}
    try:
        with SafetensorsReader(path) as r:
            for key in r.keys():
                for part in ("lora_A", "lora_B"):
                    suffix = f".{part}.weight"
                    if key.endswith(suffix):
                        arr = np.asarray(r.get(key), dtype=np.float32)
                        pairs.setdefault(key[: -len(suffix)], {})[part] = arr
                        break
                else:
                    raise LoRAError(
                        f"{path}: unexpected tensor {key!r} (expected "
                        "'<module>.lora_A.weight' / '<module>.lora_B.weight'; "
                        "DoRA, biases and prefixed keys are not supported)"
                    )
    except CheckpointFileError as e:
        raise LoRAError(f"{path} is not a readable safetensors file: {e}") from e
    out = {}
    for module, d in pairs.items():
        if set(d) != {"lora_A", "lora_B"}:
            raise LoRAError(
                f"{path}: module {module!r} lacks its "
                f"{'lora_B' if 'lora_A' in d else 'lora_A'} weight"
            )
        for part, arr in d.items():
            if not np.isfinite(arr).all():
                raise LoRAError(
                    f"{path}: {module}.{part} contains NaN or Inf values; the "
                    "adapter is damaged (use an earlier checkpoint)"
                )
        out[module] = (d["lora_A"], d["lora_B"])
    if not out:
        raise LoRAError(f"{path} holds no LoRA weights")
    return out


def load_lora_into(
    model: nn.Module,
    name_or_path,
    strength: float = 1.0,
    cache_dir=None,
    replace: LoRAAdapter | None = None,
) -> LoRAAdapter:
    """Inject an adapter; everything is checked before the model is touched.

    `replace`: the adapter currently in the model, removed only once the new one has passed
    every check (so a refused adapter leaves the model exactly as it was).
    """
    path = resolve_lora_file(name_or_path, cache_dir)
    weights = read_lora_file(path)
    current = dict(replace.layers) if replace is not None else {}
    others = {p for p, layer in lora_layers(model).items() if current.get(p) is not layer}
    if others:
        raise LoRAError(
            "the model already carries a LoRA adapter; unload it first "
            "(ACEStepPipeline.unload_lora() or LoRAAdapter.remove()) or pass it as `replace`"
        )
    ranks = set()
    plan = []
    for module_path, (a, b) in sorted(weights.items()):
        layer = _get(model, module_path)
        if module_path in current:
            layer = current[module_path].base
        if layer is None:
            raise LoRAError(
                f"LoRA {path}: module {module_path!r} does not exist in the model "
                "(an adapter for another model?)"
            )
        if not isinstance(layer, nn.Linear):
            raise LoRAError(f"LoRA {path}: {module_path!r} is not a linear layer")
        out_dim, in_dim = layer.weight.shape
        if a.ndim != 2 or b.ndim != 2 or a.shape[0] != b.shape[1]:
            raise LoRAError(
                f"LoRA {path}: {module_path}: lora_A {list(a.shape)} and lora_B "
                f"{list(b.shape)} do not form a rank-r pair (A [r, in], B [out, r])"
            )
        if a.shape[1] != in_dim or b.shape[0] != out_dim:
            raise LoRAError(
                f"LoRA {path}: {module_path}: adapter shapes A {list(a.shape)}, B "
                f"{list(b.shape)} do not fit the layer ({in_dim} -> {out_dim}); it was trained "
                "for another model size"
            )
        ranks.add(a.shape[0])
        plan.append((module_path, layer, a, b))
    if replace is not None:
        replace.remove()
    adapter = LoRAAdapter(str(name_or_path), model, max(ranks), float(strength))
    for module_path, base, a, b in plan:
        dt = base.weight.dtype
        layer = LoRALinear(base, mx.array(a).astype(dt), mx.array(b).astype(dt), strength)
        _set(model, module_path, layer)
        adapter.layers[module_path] = layer
    return adapter


def save_lora_file(
    weights: dict[str, np.ndarray | mx.array],
    folder: str | os.PathLike,
    order: Iterable[str] | None = None,
) -> Path:
    """Write `folder/pytorch_lora_weights.safetensors` (float32, metadata {"format": "pt"})
    atomically: a temporary file in the same folder, then renamed into place. Non-finite values
    are refused (the previous file, if any, stays)."""
    from safetensors.numpy import save_file

    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    arrays = {}
    for key in order or sorted(weights):
        v = weights[key]
        arr = (
            np.array(v.astype(mx.float32)) if isinstance(v, mx.array) else np.asarray(v, np.float32)
        )
        if not np.isfinite(arr).all():
            raise LoRAError(f"refusing to save a LoRA adapter with NaN/Inf values ({key})")
        arrays[key] = np.ascontiguousarray(arr)
    final = folder / LORA_FILE
    tmp = folder / f".{LORA_FILE}.{uuid.uuid4().hex[:8]}.tmp"
    try:
        save_file(arrays, str(tmp), metadata={"format": "pt"})
        os.replace(tmp, final)
    finally:
        if tmp.exists():
            tmp.unlink()
    return final
