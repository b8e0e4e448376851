"""Benchmark MusicDCAE decoding (DCAE decoder + vocoder + 48 kHz resampling) at the REAL size.

    python bench/codec.py --seconds 30 60 240 --dtype float32 bfloat16 --mode plain chunked
    python bench/codec.py --config tiny --seconds 30 240 --dtype float32 --append

Both networks are built from the full-size configs in `tests/fixtures/full-size-manifest.json`
with random weights (timing and memory do not depend on the values). Each (seconds, dtype, mode)
runs in a fresh subprocess, so that `mx.get_peak_memory()` (reset just before decoding; weights
included, and reported separately) and the process's peak RSS belong to that run alone. Writes
`bench/results/codec.json` and `bench/results/codec.md` after every run (a partial table
survives an interruption) and prints the table.

`--config tiny` uses the test fixture's tiny networks instead: seconds of compute instead of
hours, to show how memory scales with the song length. `--append` merges into the existing
results (same config/seconds/dtype/mode replaced).

plain = whole song at once (the original's default path); chunked = the bounded-memory decoder
(`MusicDCAE.decode(chunked=True)`). Plain runs longer than `--max-plain-seconds` are skipped: on
MLX's CPU backend the full-size DCAE decoder needs ~50 MB per latent frame, so a plain 240 s
decode would need over 100 GB.

On Linux CPU, MLX's bundled reference BLAS makes float32 convolutions very slow; preload OpenBLAS
(`python -m bench codec` does it):
`LD_PRELOAD=/usr/lib/x86_64-linux-gnu/openblas-pthread/libopenblas.so.0 python bench/codec.py`
(bfloat16 matmuls do not go through BLAS and stay slow on CPU).
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from bench.common import (  # noqa: E402
    RESULTS,
    env_line,
    environment,
    full_config,
    gb,
    latent_frames,
    md_table,
    peak_rss_bytes,
    run_child,
    write_results,
)

TINY = ROOT / "tests" / "fixtures" / "tiny-a"


def configs(which: str) -> tuple[dict, dict]:
    """(DCAE config, vocoder config): the real ones, or the tiny fixture checkpoint's."""
    if which == "tiny":
        return tuple(
            json.loads((TINY / sub / "config.json").read_text())
            for sub in ("music_dcae_f8c8", "music_vocoder")
        )
    return full_config("dcae"), full_config("vocoder")


def measure(args: argparse.Namespace) -> dict:
    """One decode, in this (fresh) process."""
    import mlx.core as mx
    import numpy as np
    from mlx.utils import tree_flatten

    from acestep_mlx.codec import MusicDCAE
    from acestep_mlx.models.vocoder import build_vocoder
    from convert.dcae import SPEC as DCAE_SPEC

    dcae_cfg, vocoder_cfg = configs(args.config)
    dtype = {"float32": mx.float32, "bfloat16": mx.bfloat16}[args.child_dtype]
    mx.random.seed(0)
    dcae = DCAE_SPEC.build_model(dcae_cfg)
    vocoder = build_vocoder(vocoder_cfg)
    for m in (dcae, vocoder):
        m.set_dtype(dtype)
        mx.eval(m.parameters())
    weights = sum(v.nbytes for m in (dcae, vocoder) for _, v in tree_flatten(m.parameters()))
    codec = MusicDCAE(dcae, vocoder, dtype=dtype)
    t = latent_frames(args.child_seconds)
    z = np.random.default_rng(0).standard_normal((1, 8, 16, t)).astype(np.float32)
    chunked = args.child_mode == "chunked"
    mx.clear_cache()
    mx.reset_peak_memory()
    t0 = time.perf_counter()
    wave = codec.decode(
        z,
        48000,
        chunked=chunked,
        chunk_frames=args.chunk_frames,
        context_frames=args.context_frames,
        vocoder_chunk_frames=args.vocoder_chunk_frames,
    )[0]
    wall = time.perf_counter() - t0
    peak = mx.get_peak_memory()
    return {
        "config": args.config,
        "seconds_audio": args.child_seconds,
        "latent_frames": t,
        "dtype": args.child_dtype,
        "mode": args.child_mode,
        "wall_s": round(wall, 2),
        "realtime_factor": round(args.child_seconds / wall, 4),
        "mlx_peak_gb": gb(peak),
        "mlx_peak_minus_weights_gb": gb(peak - weights),
        "weights_gb": gb(weights),
        "process_peak_rss_gb": gb(peak_rss_bytes()),
        "output_samples": int(wave.shape[-1]),
        "chunk_frames": args.chunk_frames if chunked else None,
        "context_frames": args.context_frames if chunked else None,
        "vocoder_chunk_frames": args.vocoder_chunk_frames if chunked else None,
    }


def _key(r: dict) -> tuple:
    return (r.get("config", "full"), r["seconds_audio"], r["dtype"], r["mode"])


def scaling_lines(rows: list[dict]) -> list[str]:
    out = []
    for cfg in ("full", "tiny"):
        for dt in ("float32", "bfloat16"):
            runs = sorted(
                (r["seconds_audio"], r)
                for r in rows
                if r.get("config", "full") == cfg
                and r["dtype"] == dt
                and r["mode"] == "chunked"
                and "error" not in r
            )
            if len(runs) >= 2:
                (s0, r0), (s1, r1) = runs[0], runs[-1]
                act = r1["mlx_peak_minus_weights_gb"] / r0["mlx_peak_minus_weights_gb"]
                out.append(
                    f"- {cfg} {dt}: chunked peak at {s1:g} s / at {s0:g} s: MLX "
                    f"{r1['mlx_peak_gb'] / r0['mlx_peak_gb']:.2f} (without weights {act:.2f}), "
                    f"process RSS {r1['process_peak_rss_gb'] / r0['process_peak_rss_gb']:.2f}"
                )
    return out


def table(rows: list[dict], env: dict) -> str:
    lines = [
        "# MusicDCAE decode: DCAE decoder + vocoder + resampling to 48 kHz (random weights)",
        "",
        env_line(env),
        "",
        "config `full` = the real network sizes, `tiny` = the test fixture's tiny networks. "
        "'MLX peak' = `mx.get_peak_memory()` during the decode (weights included); 'RSS' = the "
        "process's peak resident memory (numpy buffers and allocator slack included).",
        "",
    ]
    body = []
    for r in sorted(rows, key=_key):
        head = [
            r.get("config", "full"),
            f"{r['seconds_audio']:g}",
            latent_frames(r["seconds_audio"]),
            r["dtype"],
            r["mode"],
        ]
        if "error" in r:
            body.append(head + ["-"] * 5 + [r["error"]])
            continue
        note = (
            f"windows {r['chunk_frames']} latent (context {r['context_frames']}), "
            f"vocoder {r['vocoder_chunk_frames']} mel"
            if r["mode"] == "chunked"
            else ""
        )
        body.append(
            head
            + [
                r["wall_s"],
                r["realtime_factor"],
                r["mlx_peak_gb"],
                r["mlx_peak_minus_weights_gb"],
                r["process_peak_rss_gb"],
                note,
            ]
        )
    lines += md_table(
        [
            "config",
            "audio s",
            "latent T",
            "dtype",
            "mode",
            "wall s",
            "x realtime",
            "MLX peak GB",
            "peak - weights GB",
            "RSS GB",
            "note",
        ],
        body,
    )
    scaling = scaling_lines(rows)
    if scaling:
        lines += ["", "Memory scaling of the chunked decode:", *scaling]
    for note in env.get("notes", []):
        lines += ["", note]
    return "\n".join(lines) + "\n"


def run_one(args: argparse.Namespace, seconds: float, dtype: str, mode: str) -> dict:
    base = {"config": args.config, "seconds_audio": seconds, "dtype": dtype, "mode": mode}
    if mode == "plain" and seconds > args.max_plain_seconds:
        return dict(
            base,
            error=f"not run: plain > {args.max_plain_seconds:g} s "
            "(its memory grows with the length)",
        )
    r = run_child(
        __file__,
        [
            "--config",
            args.config,
            "--child-seconds",
            str(seconds),
            "--child-dtype",
            dtype,
            "--child-mode",
            mode,
            "--chunk-frames",
            str(args.chunk_frames),
            "--context-frames",
            str(args.context_frames),
            "--vocoder-chunk-frames",
            str(args.vocoder_chunk_frames),
        ],
        args.timeout,
    )
    return r if "error" not in r else dict(base, **r)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--seconds", type=float, nargs="+", default=[30, 60, 240])
    p.add_argument(
        "--dtype", nargs="+", default=["float32", "bfloat16"], choices=["float32", "bfloat16"]
    )
    p.add_argument("--mode", nargs="+", default=["plain", "chunked"], choices=["plain", "chunked"])
    p.add_argument(
        "--config",
        default="full",
        choices=["full", "tiny"],
        help="network sizes: the real ones (default) or the tiny test fixture's",
    )
    p.add_argument("--chunk-frames", type=int, default=128)
    p.add_argument("--context-frames", type=int, default=16)
    p.add_argument("--vocoder-chunk-frames", type=int, default=1024)
    p.add_argument(
        "--max-plain-seconds",
        type=float,
        default=30.0,
        help="skip plain decodes longer than this (their memory grows with length)",
    )
    p.add_argument("--timeout", type=float, default=7200.0, help="seconds per run")
    p.add_argument(
        "--append",
        action="store_true",
        help="merge into the existing results instead of starting a new table",
    )
    p.add_argument(
        "--note",
        action="append",
        default=[],
        help="a paragraph appended to the markdown (repeatable)",
    )
    p.add_argument("--out", default=str(RESULTS))
    p.add_argument("--child-seconds", type=float, help=argparse.SUPPRESS)
    p.add_argument("--child-dtype", help=argparse.SUPPRESS)
    p.add_argument("--child-mode", help=argparse.SUPPRESS)
    args = p.parse_args(argv)

    if args.child_seconds is not None:
        print("RESULT " + json.dumps(measure(args)), flush=True)
        return 0

    out = Path(args.out)
    env = environment()
    rows: list[dict] = []
    notes = list(args.note)
    if args.append and (out / "codec.json").is_file():
        previous = json.loads((out / "codec.json").read_text())
        rows = previous.get("runs", [])
        notes = previous.get("environment", {}).get("notes", []) + notes
    env["notes"] = notes
    for seconds in args.seconds:
        for dtype in args.dtype:
            for mode in args.mode:
                print(
                    f"codec: {args.config} {seconds:g} s {dtype} {mode} ...",
                    file=sys.stderr,
                    flush=True,
                )
                r = run_one(args, seconds, dtype, mode)
                rows = [x for x in rows if _key(x) != _key(r)] + [r]
                print(json.dumps(r), file=sys.stderr, flush=True)
                write_results("codec", env, rows, table(rows, env), out)
    print(table(rows, env))
    return 0


if __name__ == "__main__":
    sys.exit(main())
