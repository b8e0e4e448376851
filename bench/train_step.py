"""Benchmark one LoRA training step at the REAL size (random weights, full-size config).

    python bench/train_step.py --seconds 30 60 --dtype float32 bfloat16 --layers 2

One optimiser step of `acestep_mlx.train`: the full DiT forward (lyric encoder, embedders,
`--layers N` of the 24 transformer blocks, final layer) on a clip of `--seconds` (latent frames
T = ceil(s * 44100 / 4096)), the x0-prediction loss, the backward pass w.r.t. the LoRA matrices of
the original's config (config/zh_rap_lora_config.json: r 256, alpha 32, rsLoRA, targets q/k/v/out
of both attentions, the lyric encoder's q/k/v and the speaker projection), gradient clipping and
the AdamW update. "float32" = everything float32 (the original's precision="32"); "bfloat16" =
frozen bf16 base with float32 adapters and optimiser. The UMT5 prompt encoding (frozen, no
gradient) and data loading are not included.

With fewer than 24 blocks, the 24-block figures are EXTRAPOLATED linearly from the same step with
1 and N blocks: t24 = t1 + (tN - t1) * 23 / (N - 1), and likewise the peak memory (weights,
adapters, AdamW moments and saved activations grow per block); the table says so. The base
weights and adapter+AdamW sizes are exact (from the full-size shapes).

Writes `bench/results/train_step.json` and `bench/results/train_step.md`. On Linux CPU, preload
OpenBLAS for float32 (`LD_PRELOAD=/usr/lib/x86_64-linux-gnu/openblas-pthread/libopenblas.so.0`);
bfloat16 matmuls stay slow on CPU.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import platform
import statistics
import sys
import time
from pathlib import Path

import mlx.core as mx
import numpy as np
from mlx.utils import tree_flatten

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from acestep_mlx.lora import DEFAULT_TARGETS, add_lora_adapters, lora_scale, make_trainable  # noqa: E402
from acestep_mlx.models.dit import build_dit  # noqa: E402
from acestep_mlx.train.trainer import (  # noqa: E402
    AdamW,
    Conditions,
    clip_grads,
    enable_gradient_checkpointing,
    lora_grads,
    total_norm,
)

MANIFEST = ROOT / "tests" / "fixtures" / "full-size-manifest.json"
RESULTS = ROOT / "bench" / "results"
FULL_LAYERS = 24
ZH_RAP_LORA = {"r": 256, "lora_alpha": 32, "use_rslora": True}


def full_config() -> dict:
    manifest = json.loads(MANIFEST.read_text())
    return manifest["ace_step_transformer/diffusion_pytorch_model.safetensors"]["config"]


def n_bytes(tree) -> int:
    return sum(v.nbytes for _, v in tree_flatten(tree))


def build(layers: int, dtype: str, rank: int, seed: int, checkpointing: bool):
    mx.random.seed(seed)
    model = build_dit(dict(full_config(), num_layers=layers))
    if dtype == "bfloat16":
        model.set_dtype(mx.bfloat16)
    del model["projectors"]  # REPA heads: unused without SSL features
    model["projectors"] = []
    mx.eval(model.parameters())
    scale = lora_scale(rank, ZH_RAP_LORA["lora_alpha"], ZH_RAP_LORA["use_rslora"])
    adapter = add_lora_adapters(model, rank, scale, DEFAULT_TARGETS, seed=seed)
    make_trainable(model)
    if checkpointing:
        enable_gradient_checkpointing(model)
    mx.eval(model.parameters())
    return model, adapter


def inputs(T: int, text_len: int, lyric_len: int, seed: int):
    rng = np.random.default_rng(seed)
    cfg = full_config()
    lat = mx.array(rng.standard_normal((1, 8, 16, T)).astype(np.float32))
    cond = Conditions(
        mx.array(
            rng.standard_normal((1, text_len, cfg["text_embedding_dim"])).astype(np.float32) * 0.2
        ),
        mx.ones((1, text_len), mx.int64),
        mx.zeros((1, cfg["speaker_embedding_dim"]), mx.float32),
        mx.array(rng.integers(3, cfg["lyric_encoder_vocab_size"], (1, lyric_len))),
        mx.ones((1, lyric_len), mx.int64),
    )
    noise = mx.array(rng.standard_normal((1, 8, 16, T)).astype(np.float32))
    return lat, cond, noise, mx.array([500.0]), mx.array([0.5])


def time_steps(model, adapter, opt, data, steps: int, warmup: int) -> float:
    times = []
    for i in range(warmup + steps):
        t0 = time.perf_counter()
        _, grads = lora_grads(model, *data)
        norm = total_norm(grads)
        grads = clip_grads(grads, 0.5, norm)
        new = opt.update(adapter.weights(), grads, 1e-4)
        mx.eval(new, opt.state_arrays())
        adapter.set_weights(new)
        if i >= warmup:
            times.append(time.perf_counter() - t0)
    return statistics.median(times)


def measure(layers: int, dtype: str, T: int, a) -> tuple[float, int, int, int]:
    """(median s/step, peak bytes, base weight bytes, adapter+AdamW bytes) with `layers`."""
    model, adapter = build(layers, dtype, a.rank, a.seed, a.checkpointing)
    data = inputs(T, a.text_len, a.lyric_len, a.seed)
    weights = n_bytes(model.parameters()) - n_bytes(adapter.weights())
    opt = AdamW()
    mx.reset_peak_memory()
    t = time_steps(model, adapter, opt, data, a.steps, a.warmup)
    peak = mx.get_peak_memory()
    trained = 3 * n_bytes(adapter.weights())
    del model, adapter, opt, data
    mx.clear_cache()
    return t, peak, weights, trained


def full_size_bytes(dtype: str, rank: int) -> tuple[int, int]:
    """(frozen base weights, adapter + AdamW moments) of the 24-block model, from the shapes of
    the lazily built model (nothing is allocated)."""
    from acestep_mlx.lora import match_target_modules

    model = build_dit(full_config())
    model["projectors"] = []
    item = 2 if dtype == "bfloat16" else 4
    base = sum(v.size for _, v in tree_flatten(model.parameters())) * item
    lora = 0
    for path in match_target_modules(model, DEFAULT_TARGETS):
        layer = model
        for part in path.split("."):
            layer = layer[int(part)] if isinstance(layer, list) else getattr(layer, part)
        out_dim, in_dim = layer.weight.shape
        lora += rank * (in_dim + out_dim) * 4 * 3  # float32 A, B + two AdamW moments
    return base, lora


def bench_one(seconds: float, dtype: str, a) -> dict:
    T = math.ceil(seconds * 44100 / 4096)
    tN, pN, _, _ = measure(a.layers, dtype, T, a)
    if a.layers == FULL_LAYERS:
        t24, p24, t1 = tN, pN, None
    else:
        # two points (1 and N blocks): the lyric encoder, embedders and final layer are the
        # fixed part (with 0 blocks the encoder would be dead code and skipped by MLX)
        t1, p1, _, _ = measure(1, dtype, T, a)
        f = (FULL_LAYERS - 1) / (a.layers - 1)
        t24 = t1 + (tN - t1) * f
        p24 = p1 + (pN - p1) * f
    w24, l24 = full_size_bytes(dtype, a.rank)
    return {
        "seconds_audio": seconds,
        "T": T,
        "dtype": dtype,
        "lora_rank": a.rank,
        "text_len": a.text_len,
        "lyric_len": a.lyric_len,
        "gradient_checkpointing": a.checkpointing,
        "layers_timed": a.layers,
        "steps": a.steps,
        "warmup": a.warmup,
        "seconds_per_step_timed": round(tN, 3),
        "seconds_per_step_1_layer": None if t1 is None else round(t1, 3),
        "seconds_per_step_24_layers": round(t24, 2),
        "peak_memory_gb_timed": round(pN / 1e9, 3),
        "peak_memory_gb_24_layers": round(p24 / 1e9, 2),
        "base_weights_gb_24_layers": round(w24 / 1e9, 2),
        "adapter_and_adamw_gb_24_layers": round(l24 / 1e9, 2),
        "extrapolated": a.layers != FULL_LAYERS,
        "blas_preload": os.environ.get("LD_PRELOAD", ""),
    }


def markdown(rows: list[dict], env: dict) -> str:
    lines = [
        "# LoRA training step, real size (random weights)",
        "",
        f"MLX {env['mlx']} on {env['device']} ({env['machine']}, {env['cpus']} CPUs). One "
        "optimiser step: DiT forward + backward w.r.t. the LoRA matrices (alpha 32, "
        "rsLoRA, the original's target modules) + clipping + AdamW; batch 1; prompt "
        f"{rows[0]['text_len']} tokens, lyrics {rows[0]['lyric_len']} tokens; median of the "
        "timed steps after warm-up. UMT5 prompt encoding and data loading not included. When "
        "fewer than 24 blocks were timed, the 24-block time and peak memory are EXTRAPOLATED "
        "linearly from the same step with 1 and N blocks.",
        "",
        "| audio | T | base dtype | r | ckpt | blocks timed | s/step (timed) | s/step, 24 blocks | "
        "peak GB (timed) | peak GB, 24 blocks | base weights GB | LoRA+AdamW GB | OpenBLAS |",
        "|---|---|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for r in rows:
        mark = " (extrap.)" if r["extrapolated"] else ""
        lines.append(
            f"| {r['seconds_audio']:g} s | {r['T']} | {r['dtype']} | {r['lora_rank']} | "
            f"{'yes' if r['gradient_checkpointing'] else 'no'} | {r['layers_timed']} | "
            f"{r['seconds_per_step_timed']:.2f} | {r['seconds_per_step_24_layers']:.1f}{mark} | "
            f"{r['peak_memory_gb_timed']:.2f} | {r['peak_memory_gb_24_layers']:.1f}{mark} | "
            f"{r['base_weights_gb_24_layers']:.1f} | {r['adapter_and_adamw_gb_24_layers']:.2f} | "
            f"{'yes' if 'openblas' in r['blas_preload'] else 'no'} |"
        )
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument(
        "--seconds", type=float, nargs="+", default=[30.0, 60.0], help="clip lengths in seconds"
    )
    p.add_argument(
        "--dtype",
        nargs="+",
        default=["float32", "bfloat16"],
        choices=["float32", "bfloat16"],
        help="base model dtype",
    )
    p.add_argument(
        "--layers",
        type=int,
        default=FULL_LAYERS,
        help="transformer blocks to build and time (extrapolated to 24)",
    )
    p.add_argument("--rank", type=int, default=ZH_RAP_LORA["r"], help="LoRA rank")
    p.add_argument("--text-len", type=int, default=64, help="prompt tokens")
    p.add_argument("--lyric-len", type=int, default=512, help="lyric tokens")
    p.add_argument("--checkpointing", action="store_true", help="gradient checkpointing")
    p.add_argument("--steps", type=int, default=2, help="timed steps (median reported)")
    p.add_argument("--warmup", type=int, default=1)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--out", default=str(RESULTS), help="results folder")
    p.add_argument(
        "--append",
        action="store_true",
        help="merge into the existing results (same audio/dtype/ckpt rows replaced)",
    )
    a = p.parse_args(argv)
    if not 2 <= a.layers <= FULL_LAYERS:
        p.error(f"--layers must be in 2..{FULL_LAYERS} (1 and N blocks are timed)")
    env = {
        "mlx": mx.__version__,
        "device": str(mx.default_device()),
        "machine": f"{platform.system()} {platform.machine()}",
        "cpus": os.cpu_count(),
    }
    rows = []
    for dtype in a.dtype:
        for s in a.seconds:
            r = bench_one(s, dtype, a)
            print(json.dumps(r), flush=True)
            rows.append(r)
    out = Path(a.out)
    out.mkdir(parents=True, exist_ok=True)
    if a.append and (out / "train_step.json").is_file():

        def key(r: dict) -> tuple:
            return r["seconds_audio"], r["dtype"], r["gradient_checkpointing"], r["lora_rank"]

        old = json.loads((out / "train_step.json").read_text())["runs"]
        new = {key(r) for r in rows}
        rows = [r for r in old if key(r) not in new] + rows
    (out / "train_step.json").write_text(
        json.dumps({"environment": env, "runs": rows}, indent=2) + "\n"
    )
    table = markdown(rows, env)
    (out / "train_step.md").write_text(table)
    print(table)
    return 0


if __name__ == "__main__":
    sys.exit(main())
