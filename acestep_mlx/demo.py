"""A tiny random checkpoint in the hub layout, built offline and deterministically (`--demo`).

It has the structure of ACE-Step/ACE-Step-v1-3.5B (same sub-folders, file names and tensor names,
tiny widths, the real lyric vocabulary size) so the whole path (conversion, text and lyric encoding,
diffusion, decoding, files) runs on a machine without the real weights. Random weights make noise,
not music.
"""

from __future__ import annotations

import json
import math
import os
import shutil
import tempfile
from importlib import resources
from pathlib import Path

import numpy as np

from convert.safetensors_io import StreamingWriter

DEMO_VERSION = "1"
DEMO_NOTICE = "demo checkpoint: tiny RANDOM weights, the output is noise, not music"


def _layout() -> dict:
    return json.loads(resources.files("acestep_mlx.demo_data").joinpath("layout.json").read_text())


def _init(key: str, shape: list[int], rng: np.random.Generator) -> np.ndarray:
    """Scaled random values that keep activations of order one."""
    name = key.rsplit(".", 1)[-1]
    if name == "weight_g":
        return np.ones(shape, np.float32)  # the fold then gives weight = v / ||v||, norm 1
    if len(shape) == 1:
        if name == "bias" or "pos_bias" in key:
            return np.zeros(shape, np.float32)
        if name == "gamma":
            return np.full(shape, 0.1, np.float32)
        if "mel_scale" in key or "window" in key:
            return np.zeros(shape, np.float32)  # buffers; recomputed from the config
        return np.ones(shape, np.float32)  # norm weights
    if "scale_shift_table" in key:
        return (rng.standard_normal(shape) * 0.02).astype(np.float32)
    if "pos_bias" in key:
        return np.zeros(shape, np.float32)
    if "mel_scale.fb" in key:
        return np.zeros(shape, np.float32)
    fan_in = math.prod(shape[1:]) if len(shape) > 1 else shape[0]
    if "embed" in key and len(shape) == 2 and "embedder" not in key:
        fan_in = shape[1]
    return (rng.standard_normal(shape) / math.sqrt(max(fan_in, 1))).astype(np.float32)


def build_demo_checkpoint(dst: str | Path, seed: int = 0) -> Path:
    """Write the tiny random checkpoint into `dst` (atomically) and return it."""
    dst = Path(dst)
    layout = _layout()
    dst.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{dst.name}.tmp-", dir=dst.parent))
    try:
        for i, (sub, comp) in enumerate(sorted(layout["components"].items())):
            folder = tmp / sub
            folder.mkdir()
            rng = np.random.default_rng([seed, i])
            plan = [(k, "F32", tuple(s)) for k, s in comp["tensors"].items()]
            writer = StreamingWriter(folder / comp["weights_file"], plan, metadata={"format": "pt"})
            for k, s in comp["tensors"].items():
                writer.write(k, _init(k, s, rng), "float32")
            writer.close()
            (folder / "config.json").write_text(json.dumps(comp["config"], indent=2) + "\n")
        data = resources.files("acestep_mlx.demo_data")
        for name in ("tokenizer.json", "tokenizer_config.json", "special_tokens_map.json"):
            (tmp / "umt5-base" / name).write_bytes(data.joinpath(name).read_bytes())
        (tmp / "README.txt").write_text(DEMO_NOTICE + "\n")
        if dst.exists():
            shutil.rmtree(dst)
        os.replace(tmp, dst)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return dst


def demo_checkpoint(cache_dir: str | Path | None = None) -> Path:
    """The demo checkpoint folder, built on first use and reused afterwards."""
    from acestep_mlx.checkpoint import default_cache_dir

    root = Path(cache_dir) if cache_dir else default_cache_dir()
    folder = root / f"demo-checkpoint-v{DEMO_VERSION}"
    if not (folder / "README.txt").is_file():
        build_demo_checkpoint(folder)
    return folder
