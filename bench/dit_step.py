"""Benchmark one DiT `decode` step at the REAL size (random weights, full-size config).

    python bench/dit_step.py --T 322 645 --dtype float32 bfloat16 --layers 2 --steps 3

Builds `ACEStepTransformer` from the full-size config in `tests/fixtures/full-size-manifest.json`
with random weights, optionally with only `--layers N` of its 24 transformer blocks (the step time
is then extrapolated to 24 blocks: t24 = t0 + (tN - t0) * 24 / N, where t0 is the same step with
no blocks; the table says so). Encoder keys/values are precomputed once, as a sampler does. Writes
`bench/results/dit_step.json` and `bench/results/dit_step.md` and prints the table.

On Linux CPU, MLX's bundled reference BLAS makes float32 matmuls very slow; preload OpenBLAS:
`LD_PRELOAD=/usr/lib/x86_64-linux-gnu/openblas-pthread/libopenblas.so.0 python bench/...`
(bfloat16 matmuls do not go through BLAS and stay slow on CPU).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import sys
import time
from pathlib import Path

import mlx.core as mx
from mlx.utils import tree_flatten

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from acestep_mlx.models.dit import build_dit  # noqa: E402

MANIFEST = ROOT / "tests" / "fixtures" / "full-size-manifest.json"
RESULTS = ROOT / "bench" / "results"
FULL_LAYERS = 24
DTYPES = {"float32": mx.float32, "bfloat16": mx.bfloat16, "float16": mx.float16}


def full_config() -> dict:
    manifest = json.loads(MANIFEST.read_text())
    return manifest["ace_step_transformer/diffusion_pytorch_model.safetensors"]["config"]


def n_bytes(tree) -> int:
    return sum(v.nbytes for _, v in tree_flatten(tree))


def time_decode(model, args: tuple, kv, steps: int, warmup: int) -> float:
    """Median seconds of `decode` (evaluated) over `steps` runs after `warmup` runs."""
    times = []
    for i in range(warmup + steps):
        t0 = time.perf_counter()
        mx.eval(model.decode(*args, encoder_kv=kv))
        if i >= warmup:
            times.append(time.perf_counter() - t0)
    return statistics.median(times)


def bench_one(
    T: int, dtype: str, layers: int, batch: int, enc_len: int, steps: int, warmup: int, seed: int
) -> dict:
    cfg = dict(full_config(), num_layers=layers)
    mx.random.seed(seed)
    model = build_dit(cfg)
    model.set_dtype(DTYPES[dtype])
    # materialise only what decode uses (lyric encoder, embedders, REPA heads stay unallocated)
    used = {
        k: model[k]
        for k in ("transformer_blocks", "timestep_embedder", "t_block", "proj_in", "final_layer")
    }
    mx.eval(used)
    D = model.config.width
    block_bytes = n_bytes(model.transformer_blocks[0].parameters()) if layers else 0
    weight_bytes = n_bytes(
        {k: v.parameters() if hasattr(v, "parameters") else v for k, v in used.items()}
    )

    x = mx.random.normal((batch, 8, 16, T)).astype(model.dtype)
    mask = mx.ones((batch, T))
    states = (mx.random.normal((batch, enc_len, D)) * 0.5).astype(model.dtype)
    enc_mask = mx.ones((batch, enc_len))
    t = mx.full((batch,), 500.0)
    args = (x, mask, states, enc_mask, t)
    kv = model.precompute_encoder_kv(states)
    mx.eval(kv)

    mx.reset_peak_memory()
    t_layers = time_decode(model, args, kv, steps, warmup)
    peak = mx.get_peak_memory()

    blocks = model.transformer_blocks
    model.transformer_blocks = []
    t_zero = time_decode(model, args, [], steps, warmup)
    model.transformer_blocks = blocks

    est = t_zero + (t_layers - t_zero) * FULL_LAYERS / layers if layers else t_layers
    return {
        "T": T,
        "dtype": dtype,
        "batch": batch,
        "encoder_len": enc_len,
        "layers_timed": layers,
        "steps": steps,
        "warmup": warmup,
        "seconds_per_step_timed": round(t_layers, 4),
        "seconds_no_blocks": round(t_zero, 4),
        "seconds_per_step_24_layers": round(est, 3),
        "extrapolated": layers != FULL_LAYERS,
        "peak_memory_gb_timed": round(peak / 1e9, 3),
        "weights_gb_timed": round(weight_bytes / 1e9, 3),
        "peak_memory_gb_24_layers_est": round(
            (peak + (FULL_LAYERS - layers) * block_bytes) / 1e9, 3
        ),
        "blas_preload": os.environ.get("LD_PRELOAD", ""),
    }


def markdown(rows: list[dict], env: dict) -> str:
    lines = [
        "# DiT decode step, real size (random weights)",
        "",
        f"MLX {env['mlx']} on {env['device']} ({env['machine']}, {env['cpus']} CPUs). One "
        "`decode` call with precomputed "
        "encoder keys/values; median of the timed runs after warm-up. When fewer than 24 blocks "
        "were timed, the 24-block time is EXTRAPOLATED as t0 + (tN - t0) * 24 / N (t0 = the step "
        "without blocks) and the 24-block peak memory is the measured peak plus the weights of "
        "the missing blocks.",
        "",
        "| dtype | T | B | L_enc | blocks timed | s/step (timed) | s/step, 24 blocks | "
        "peak GB (timed) | peak GB, 24 blocks (est.) | OpenBLAS |",
        "|---|---|---|---|---|---|---|---|---|---|",
    ]
    for r in rows:
        mark = " (extrapolated)" if r["extrapolated"] else ""
        lines.append(
            f"| {r['dtype']} | {r['T']} | {r['batch']} | {r['encoder_len']} | "
            f"{r['layers_timed']} | {r['seconds_per_step_timed']:.3f} | "
            f"{r['seconds_per_step_24_layers']:.2f}{mark} | {r['peak_memory_gb_timed']:.2f} | "
            f"{r['peak_memory_gb_24_layers_est']:.2f} | "
            f"{'yes' if 'openblas' in r['blas_preload'] else 'no'} |"
        )
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument(
        "--T",
        type=int,
        nargs="+",
        default=[322, 645],
        help="latent frames (322 = 30 s, 645 = 60 s)",
    )
    p.add_argument("--dtype", nargs="+", default=["float32", "bfloat16"], choices=list(DTYPES))
    p.add_argument(
        "--layers",
        type=int,
        default=FULL_LAYERS,
        help="transformer blocks to build and time (extrapolated to 24)",
    )
    p.add_argument("--steps", type=int, default=3, help="timed runs (median reported)")
    p.add_argument("--warmup", type=int, default=1)
    p.add_argument("--batch", type=int, default=1, help="batch size (2 = cond/uncond batched)")
    p.add_argument(
        "--encoder-len", type=int, default=320, help="encoder sequence length 1 + L_text + L_lyric"
    )
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--out", default=str(RESULTS), help="results folder")
    p.add_argument(
        "--append",
        action="store_true",
        help="merge into the existing results (same dtype/T/B/L_enc rows replaced)",
    )
    args = p.parse_args(argv)
    if not 0 < args.layers <= FULL_LAYERS:
        p.error(f"--layers must be in 1..{FULL_LAYERS}")

    env = {
        "mlx": mx.__version__,
        "device": str(mx.default_device()),
        "machine": f"{platform.system()} {platform.machine()}",
        "cpus": os.cpu_count(),
        "blas_preload": os.environ.get("LD_PRELOAD", ""),
    }
    rows = []
    for dtype in args.dtype:
        for T in args.T:
            r = bench_one(
                T,
                dtype,
                args.layers,
                args.batch,
                args.encoder_len,
                args.steps,
                args.warmup,
                args.seed,
            )
            print(json.dumps(r), flush=True)
            rows.append(r)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    if args.append and (out / "dit_step.json").is_file():

        def key(r: dict) -> tuple:
            return r["dtype"], r["T"], r["batch"], r["encoder_len"]

        old = json.loads((out / "dit_step.json").read_text())["runs"]
        new = {key(r) for r in rows}
        rows = [r for r in old if key(r) not in new] + rows
    for r in rows:
        r.setdefault("blas_preload", env["blas_preload"])
    (out / "dit_step.json").write_text(
        json.dumps({"environment": env, "runs": rows}, indent=2) + "\n"
    )
    table = markdown(rows, env)
    (out / "dit_step.md").write_text(table)
    print(table)
    return 0


if __name__ == "__main__":
    sys.exit(main())
