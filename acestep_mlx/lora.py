"""LoRA adapters on the DiT: load the original's `pytorch_lora_weights.safetensors`, change
strength, unload, switch, all without reloading the base model.

The original (diffusers 0.33 `load_lora_adapter`) reads only `lora_A`/`lora_B` from the file,
infers the rank from `lora_B` and sets alpha = rank, so at inference the delta is
`lora_weight * B @ A @ x` whatever alpha/rsLoRA the adapter was trained with (spec 9.11). The same
scale is used here (`LoRALinear.scale = strength`); training uses alpha/r or alpha/sqrt(r).
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path

import mlx.core as mx
import mlx.nn as nn
import numpy as np

LORA_FILE = "pytorch_lora_weights.safetensors"
# the original's target modules (config/zh_rap_lora_config.json), matched as name suffixes
DEFAULT_TARGETS = ("speaker_embedder", "linear_q", "linear_k", "linear_v", "to_q", "to_k",
                   "to_v", "to_out.0")


class LoRAError(ValueError):
    """An adapter that does not fit the model (the model is left unchanged)."""


class LoRALinear(nn.Module):
    """`base(x) + scale * (x A^T) B^T` around a frozen nn.Linear."""

    def __init__(self, base: nn.Linear, lora_a: mx.array, lora_b: mx.array, scale: float):
        super().__init__()
        self.base = base
        self.lora_A = lora_a  # [r, in]
        self.lora_B = lora_b  # [out, r]
        self.scale = scale

    @classmethod
    def create(cls, base: nn.Linear, rank: int, scale: float, dtype=mx.float32) -> LoRALinear:
        """A fresh adapter for training: A ~ U(-1/sqrt(in), 1/sqrt(in)) (kaiming-uniform
        a=sqrt(5), as peft), B = 0, so training starts from the base model."""
        out_dim, in_dim = base.weight.shape
        bound = 1.0 / np.sqrt(in_dim)
        a = mx.random.uniform(-bound, bound, (rank, in_dim)).astype(dtype)
        b = mx.zeros((out_dim, rank), dtype=dtype)
        return cls(base, a, b, scale)

    def __call__(self, x: mx.array) -> mx.array:
        y = self.base(x)
        if self.scale == 0:
            return y
        a = self.lora_A.astype(x.dtype)
        b = self.lora_B.astype(x.dtype)
        return y + self.scale * ((x @ a.T) @ b.T)


def _get(model: nn.Module, path: str):
    obj = model
    for part in path.split("."):
        obj = obj[int(part)] if isinstance(obj, list) else getattr(obj, part, None)
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


@dataclass
class LoRAAdapter:
    """An adapter injected into a model; `remove()` restores the base layers."""

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
    if spec.count("/") != 1:
        raise LoRAError(f"LoRA {spec!r} is neither a folder/file nor a hub repo id")
    try:
        from huggingface_hub import snapshot_download

        from .checkpoint import default_cache_dir

        root = snapshot_download(spec, allow_patterns=[LORA_FILE],
                                 cache_dir=str(Path(cache_dir or default_cache_dir()) / "hub"))
    except Exception as e:  # noqa: BLE001
        raise LoRAError(f"could not download LoRA {spec!r} from the hub ({type(e).__name__}: "
                        f"{e}); download it elsewhere and pass its local folder") from e
    f = Path(root) / LORA_FILE
    if not f.is_file():
        raise LoRAError(f"hub repo {spec!r} has no {LORA_FILE}")
    return f


def read_lora_file(path: Path) -> dict[str, tuple[np.ndarray, np.ndarray]]:
    """module path -> (A [r, in], B [out, r]) from a PEFT-format file."""
    from convert.safetensors_io import SafetensorsReader

    pairs: dict[str, dict[str, np.ndarray]] = {}
    with SafetensorsReader(path) as r:
        for key in r.keys():
            for part in ("lora_A", "lora_B"):
                suffix = f".{part}.weight"
                if key.endswith(suffix):
                    pairs.setdefault(key[: -len(suffix)], {})[part] = r.get(key)
                    break
            else:
                raise LoRAError(f"{path}: unexpected tensor {key!r} (expected "
                                "'<module>.lora_A.weight' / '<module>.lora_B.weight')")
    out = {}
    for module, d in pairs.items():
        if set(d) != {"lora_A", "lora_B"}:
            raise LoRAError(f"{path}: module {module!r} lacks its "
                            f"{'lora_B' if 'lora_A' in d else 'lora_A'} weight")
        out[module] = (d["lora_A"], d["lora_B"])
    if not out:
        raise LoRAError(f"{path} holds no LoRA weights")
    return out


def load_lora_into(model: nn.Module, name_or_path, strength: float = 1.0,
                   cache_dir=None) -> LoRAAdapter:
    """Inject an adapter; everything is checked before the model is touched."""
    path = resolve_lora_file(name_or_path, cache_dir)
    weights = read_lora_file(path)
    ranks = set()
    plan = []
    for module_path, (a, b) in sorted(weights.items()):
        layer = _get(model, module_path)
        if layer is None:
            raise LoRAError(f"LoRA {path}: module {module_path!r} does not exist in the model "
                            "(an adapter for another model?)")
        base = layer.base if isinstance(layer, LoRALinear) else layer
        if not isinstance(base, nn.Linear):
            raise LoRAError(f"LoRA {path}: {module_path!r} is not a linear layer")
        out_dim, in_dim = base.weight.shape
        if a.ndim != 2 or b.ndim != 2 or a.shape[0] != b.shape[1]:
            raise LoRAError(f"LoRA {path}: {module_path}: lora_A {list(a.shape)} and lora_B "
                            f"{list(b.shape)} do not form a rank-r pair")
        if a.shape[1] != in_dim or b.shape[0] != out_dim:
            raise LoRAError(
                f"LoRA {path}: {module_path}: adapter shapes A {list(a.shape)}, B "
                f"{list(b.shape)} do not fit the layer ({in_dim} -> {out_dim}); it was trained "
                "for another model size")
        ranks.add(a.shape[0])
        plan.append((module_path, base, a, b))
    adapter = LoRAAdapter(str(name_or_path), model, max(ranks), float(strength))
    for module_path, base, a, b in plan:
        dt = base.weight.dtype
        layer = LoRALinear(base, mx.array(a).astype(dt), mx.array(b).astype(dt), strength)
        _set(model, module_path, layer)
        adapter.layers[module_path] = layer
    return adapter

