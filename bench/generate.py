"""End-to-end generation benchmark at the REAL size with random weights (issue 5 item 7, issue 9).

    python bench/generate.py --seconds 30 60 240 --dtype float32 bfloat16 --steps 27 60

Per (seconds, dtype), in a fresh subprocess (so peak memory belongs to that run): builds the
full-size UMT5 text encoder, DiT (with `--layers N` of its 24 blocks), DCAE decoder and vocoder
from `tests/fixtures/full-size-manifest.json` with random weights, and times each stage the way a
text2music run executes it:

* text: UMT5 on `--text-len` tokens (B = 1; a real run also encodes the ERG null prompt only
  when ERG is on, which it is not by default);
* lyrics: `dit.encode` for the conditional and the unconditional branch (speaker and genre
  embedders, Conformer lyric encoder on `--lyric-len` tokens, `lyric_proj`);
* encoder K/V: the cross-attention keys/values precomputed once per branch (batch 1 + batch 2);
* DiT: one `decode` at batch 1 and one at batch 2 (cond + uncond batched); a run of N steps makes
  `dit_calls(N)` of each (APG, guidance interval 0.5: batch 2 on the middle half of the steps);
* DCAE decode and vocoder: the chunked decoder (`MusicDCAE.decode_mel_chunked`, 128-frame
  windows with 16 frames of context, then `vocode_chunked`, 1024 mel frames), both stereo
  channels. Its cost is linear in the length, so clips longer than `--decode-seconds` are timed
  on `--decode-seconds` and scaled (marked in the table).

REDUCTIONS (all marked in the tables): the DiT is timed with N blocks and a 0-block baseline and
EXTRAPOLATED to 24 blocks, t24 = t0 + (tN - t0) * 24 / N; per-step times are measured once and
multiplied by the call counts; DiT lengths above `--max-dit-frames` are extrapolated linearly from
the two longest timed lengths (every DiT cost is linear in T). Peak memory of the full model is
estimated as the full-size weights of every stage (all resident, the default pipeline) plus the
largest transient activation measured (MLX peak minus weights, per stage, DiT per-block
activations do not accumulate across blocks at inference).

Writes bench/results/generate.json and .md. On Linux CPU preload OpenBLAS for float32:
`LD_PRELOAD=/usr/lib/x86_64-linux-gnu/openblas-pthread/libopenblas.so.0`.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from bench import common  # noqa: E402
from bench.flops import (  # noqa: E402
    dit_calls,
    dit_encoder_kv_flops,
    dit_step_flops,
    lyric_encode_flops,
    umt5_flops,
)

FULL_LAYERS = 24
STAGES = ("text", "lyrics", "encoder_kv", "dit", "dcae", "vocoder")


def _timed(fn, runs: int, warmup: int) -> float:
    import mlx.core as mx

    times = []
    for i in range(warmup + runs):
        t0 = time.perf_counter()
        mx.eval(fn())
        if i >= warmup:
            times.append(time.perf_counter() - t0)
    return statistics.median(times)


def _nbytes(tree) -> int:
    from mlx.utils import tree_flatten

    return sum(v.nbytes for _, v in tree_flatten(tree))


def _measure(fn, runs: int, warmup: int, weights: int) -> dict:
    """Seconds (median) and the transient MLX memory above the resident `weights`."""
    import mlx.core as mx

    mx.clear_cache()
    mx.reset_peak_memory()
    s = _timed(fn, runs, warmup)
    return {"s": s, "transient_gb": common.gb(max(0, mx.get_peak_memory() - weights))}


def child(args: argparse.Namespace) -> dict:
    """One (seconds, dtype) measurement in this process."""
    import mlx.core as mx
    import numpy as np

    from acestep_mlx.codec import MusicDCAE
    from convert.components import get_spec

    dtype = {"float32": mx.float32, "bfloat16": mx.bfloat16}[args.child_dtype]
    sec, layers = args.child_seconds, args.layers
    T = common.latent_frames(sec)
    Lt, Ll = args.text_len, args.lyric_len
    heavy = args.child_dtype == "bfloat16"
    runs, warm = (1, 0) if heavy else (args.runs, 1)
    rng = np.random.default_rng(0)
    mx.random.seed(0)
    res: dict = {"seconds_audio": sec, "T": T, "dtype": args.child_dtype, "layers_timed": layers}

    # -- text encoder ----------------------------------------------------------------------
    te_cfg = common.full_config("text_encoder")
    te = get_spec("text_encoder").build_model(te_cfg)
    te.set_dtype(dtype)
    mx.eval(te.parameters())
    w_te = _nbytes(te.parameters())
    ids = mx.array(rng.integers(0, 32000, (1, Lt)), mx.int32)
    mask = mx.ones((1, Lt), mx.int32)
    m = _measure(lambda: te(ids, mask), runs, warm, w_te)
    text_states = te(ids, mask).astype(mx.float32)
    mx.eval(text_states)
    res["text"] = m
    te = None  # free the text encoder before the next stage
    mx.clear_cache()

    # -- DiT (reduced blocks) ----------------------------------------------------------------
    cfg = dict(common.full_config("dit"), num_layers=layers)
    dit = get_spec("dit").build_model(cfg)
    dit.set_dtype(dtype)
    dit.projectors = []  # REPA heads: training only
    mx.eval(dit.parameters())
    w_dit = _nbytes(dit.parameters())
    block_bytes = _nbytes(dit.transformer_blocks[0].parameters())
    spk = mx.array(rng.standard_normal((1, 512)).astype(np.float32))
    lyr = mx.array(rng.integers(0, 6000, (1, Ll)), mx.int32)
    lmask = mx.ones((1, Ll), mx.int32)
    tmask = mx.ones((1, Lt), mx.float32)

    def encode_both():
        a = dit.encode(text_states, tmask, spk, lyr, lmask)
        b = dit.encode(
            mx.zeros_like(text_states), tmask, mx.zeros_like(spk), mx.zeros_like(lyr), lmask
        )
        return a + b

    res["lyrics"] = _measure(encode_both, runs, warm, w_dit)
    states, smask, ustates, _ = encode_both()
    mx.eval(states, smask, ustates)
    states2 = mx.concatenate([states, ustates])
    smask2 = mx.concatenate([smask, smask])

    kv_m1 = _measure(lambda: dit.precompute_encoder_kv(states), runs, warm, w_dit)
    kv_m2 = _measure(lambda: dit.precompute_encoder_kv(states2), runs, warm, w_dit)
    kv1, kv2 = dit.precompute_encoder_kv(states), dit.precompute_encoder_kv(states2)
    mx.eval(kv1, kv2)

    def step(batch, kv, st, sm):
        x = mx.array(rng.standard_normal((batch, 8, 16, T)).astype(np.float32))
        am = mx.ones((batch, T), dtype)
        t = mx.full((batch,), 500.0)
        return lambda: dit.decode(x, am, st, sm, t, encoder_kv=kv)

    dit_rows = {}
    timed_T = T <= args.max_dit_frames
    if timed_T:
        for b, kv, st, sm in ((1, kv1, states, smask), (2, kv2, states2, smask2)):
            mN = _measure(step(b, kv, st, sm), runs, warm, w_dit)
            blocks = dit.transformer_blocks
            dit.transformer_blocks = []
            m0 = _measure(step(b, [], st, sm), runs, warm, w_dit - layers * block_bytes)
            dit.transformer_blocks = blocks
            t24 = m0["s"] + (mN["s"] - m0["s"]) * FULL_LAYERS / layers
            dit_rows[str(b)] = {
                "s_timed": round(mN["s"], 4),
                "s_no_blocks": round(m0["s"], 4),
                "s_24": round(t24, 4),
                "transient_gb": mN["transient_gb"],
            }
    res["dit_step"] = dit_rows
    # encoder K/V: 24/N of the timed blocks (K/V cost is per block)
    res["encoder_kv"] = {
        "s": (kv_m1["s"] + kv_m2["s"]) * FULL_LAYERS / layers,
        "b1_s": kv_m1["s"] * FULL_LAYERS / layers,
        "b2_s": kv_m2["s"] * FULL_LAYERS / layers,
        "transient_gb": max(kv_m1["transient_gb"], kv_m2["transient_gb"]),
    }
    res["weights_dit_timed_gb"] = common.gb(w_dit)
    res["dit_block_gb"] = common.gb(block_bytes)
    dit = kv1 = kv2 = None
    mx.clear_cache()

    # -- DCAE decode + vocoder (chunked) --------------------------------------------------------
    dsec = min(sec, args.decode_seconds)
    if dsec > 0:
        dcae = get_spec("dcae").build_model(common.full_config("dcae"))
        voc = get_spec("vocoder").build_model(common.full_config("vocoder"))
        for mdl in (dcae, voc):
            mdl.set_dtype(dtype)
            mx.eval(mdl.parameters())
        w_dec = _nbytes(dcae.parameters()) + _nbytes(voc.parameters())
        codec = MusicDCAE(dcae, voc, dtype=dtype)
        td = common.latent_frames(dsec)
        z = mx.array(rng.standard_normal((1, 8, 16, td)).astype(np.float32)).astype(dtype)
        mx.clear_cache()
        mx.reset_peak_memory()
        t0 = time.perf_counter()
        mel = codec.decode_mel_chunked(z, args.chunk_frames, args.context_frames)
        t_dcae = time.perf_counter() - t0
        p_dcae = mx.get_peak_memory()
        mx.reset_peak_memory()
        t0 = time.perf_counter()
        codec.vocode_chunked(mel, args.vocoder_chunk_frames)
        t_voc = time.perf_counter() - t0
        p_voc = mx.get_peak_memory()
        scale = sec / dsec
        res["decode_seconds_timed"] = dsec
        res["dcae"] = {"s": t_dcae * scale, "transient_gb": common.gb(max(0, p_dcae - w_dec))}
        res["vocoder"] = {"s": t_voc * scale, "transient_gb": common.gb(max(0, p_voc - w_dec))}
        del dcae, voc, codec
    res["process_peak_rss_gb"] = common.gb(common.peak_rss_bytes())
    return res


def full_weights_gb(dtype: str) -> dict[str, float]:
    """Full-size weights per stage in `dtype` (element counts from the manifest)."""
    man = common.manifest()
    b = 2 if dtype == "bfloat16" else 4
    out = {}
    for comp, key in common.MANIFEST_KEYS.items():
        n = man[key]["n_elements"]
        out[comp] = round(n * b / 1e9, 3)
    return out


def assemble(res: dict, steps: int, args: argparse.Namespace, by_T: dict) -> dict:
    """Per-run totals for `steps` sampling steps from the per-stage measurements."""
    calls = dit_calls(steps, 0.5)
    T = res["T"]
    dit = res["dit_step"]
    note = []
    if not dit:  # extrapolate linearly in T from the two longest timed lengths (same dtype)
        pts = sorted((t, r) for t, r in by_T.items() if r)
        (t_a, a), (t_b, b) = pts[-2], pts[-1]
        dit = {}
        for bb in ("1", "2"):
            slope = (b[bb]["s_24"] - a[bb]["s_24"]) / (t_b - t_a)
            dit[bb] = {
                "s_24": b[bb]["s_24"] + slope * (T - t_b),
                "transient_gb": b[bb]["transient_gb"] * T / t_b,
            }
        note.append(f"DiT extrapolated in T from T={t_a},{t_b}")
    t_dit = calls["batch1"] * dit["1"]["s_24"] + calls["batch2"] * dit["2"]["s_24"]
    kv = res["encoder_kv"]
    if args.kv_reuse:  # the conditional K/V sliced from the guided batch (one projection less)
        kv_s = kv["b2_s"] if "b2_s" in kv else kv["s"] * 2 / 3
        if "b2_s" not in kv:
            note.append("K/V reuse estimated as 2/3")
    else:
        kv_s = kv["s"]
    stages = {
        "text": res["text"]["s"] * args.text_calls,
        "lyrics": res["lyrics"]["s"],
        "encoder_kv": kv_s,
        "dit": t_dit,
        "dcae": res.get("dcae", {}).get("s", float("nan")),
        "vocoder": res.get("vocoder", {}).get("s", float("nan")),
    }
    total = sum(stages.values())
    cfg = common.full_config("dit")
    L = 1 + args.text_len + args.lyric_len
    f1 = dit_step_flops(cfg, T, L)["total"]
    dit_flops = f1 * (calls["batch1"] + 2 * calls["batch2"])
    weights = full_weights_gb(res["dtype"])
    codec_rates = {}
    per_frame = common.RESULTS / "codec_flops.json"
    if per_frame.is_file():
        per = json.loads(per_frame.read_text())
        for k in ("dcae", "vocoder"):
            if stages[k] == stages[k] and stages[k] > 0:  # not NaN
                codec_rates[f"{k}_gflops_per_s"] = round(per[k] * T / stages[k] / 1e9, 1)
    transient = max(
        res["text"]["transient_gb"],
        res["lyrics"]["transient_gb"],
        dit["2"]["transient_gb"],
        res.get("dcae", {}).get("transient_gb", 0.0),
        res.get("vocoder", {}).get("transient_gb", 0),
    )
    if res.get("decode_seconds_timed", res["seconds_audio"]) < res["seconds_audio"]:
        note.append(f"decode timed on {res['decode_seconds_timed']:g} s and scaled")
    if res.get("decode_reused"):
        note.append("decode from the 'before' run (code unchanged)")
    return {
        "seconds_audio": res["seconds_audio"],
        "T": T,
        "dtype": res["dtype"],
        "steps": steps,
        "dit_calls_b1": calls["batch1"],
        "dit_calls_b2": calls["batch2"],
        "stage_s": {k: round(v, 2) for k, v in stages.items()},
        "dit_step_b1_s": round(dit["1"]["s_24"], 3),
        "dit_step_b2_s": round(dit["2"]["s_24"], 3),
        "total_s": round(total, 1),
        "realtime_factor": round(res["seconds_audio"] / total, 4),
        "dit_tflop": round(dit_flops / 1e12, 2),
        "dit_gflops_per_s": round(dit_flops / t_dit / 1e9, 1),
        "text_gflops_per_s": round(
            umt5_flops(common.full_config("text_encoder"), args.text_len) / res["text"]["s"] / 1e9,
            1,
        ),
        "text_calls": args.text_calls,
        "kv_reuse": args.kv_reuse,
        "lyrics_gflops_per_s": round(
            2
            * lyric_encode_flops(cfg, args.text_len, args.lyric_len)["total"]
            / res["lyrics"]["s"]
            / 1e9,
            1,
        ),
        "encoder_kv_gflops_per_s": round(
            dit_encoder_kv_flops(cfg, L, 2 if args.kv_reuse else 3) / kv_s / 1e9, 1
        ),
        **codec_rates,
        "weights_full_gb": round(sum(weights.values()), 2),
        "peak_est_gb": round(sum(weights.values()) + transient, 2),
        "peak_est_low_memory_gb": round(max(weights.values()) + transient, 2),
        "process_peak_rss_gb_timed": res["process_peak_rss_gb"],
        "layers_timed": res["layers_timed"],
        "notes": "; ".join(note),
    }


def table(rows: list[dict], env: dict, title: str) -> str:
    lines = [
        f"# {title}",
        "",
        common.env_line(env),
        "",
        "Real-size models, random weights. DiT timed with "
        f"{rows[0]['layers_timed'] if rows else '?'} of 24 blocks and EXTRAPOLATED to 24; "
        "stage seconds are per generation (text, lyrics = cond + uncond `encode`, encoder K/V "
        "once, DiT = all steps with APG interval 0.5, DCAE + vocoder chunked decode). "
        "Peak = full-size weights of all stages resident + the largest transient measured "
        "(estimate); low-mem = only the largest stage's weights resident.",
        "",
    ]
    head = [
        "audio s",
        "T",
        "dtype",
        "steps",
        "text s",
        "lyrics s",
        "enc K/V s",
        "DiT s",
        "DiT s/step B1 / B2",
        "DCAE s",
        "vocoder s",
        "total s",
        "x realtime",
        "DiT GFLOP/s",
        "peak GB (est.)",
        "low-mem peak GB",
        "notes",
    ]
    body = []
    for r in rows:
        s = r["stage_s"]
        body.append(
            [
                f"{r['seconds_audio']:g}",
                r["T"],
                r["dtype"],
                r["steps"],
                s["text"],
                s["lyrics"],
                s["encoder_kv"],
                s["dit"],
                f"{r['dit_step_b1_s']} / {r['dit_step_b2_s']}",
                s["dcae"],
                s["vocoder"],
                r["total_s"],
                r["realtime_factor"],
                r["dit_gflops_per_s"],
                r["peak_est_gb"],
                r["peak_est_low_memory_gb"],
                r["notes"],
            ]
        )
    return "\n".join(lines + common.md_table(head, body)) + "\n"


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--seconds", type=float, nargs="+", default=[30, 60])
    p.add_argument("--dtype", nargs="+", default=["bfloat16"], choices=["float32", "bfloat16"])
    p.add_argument("--steps", type=int, nargs="+", default=[27, 60])
    p.add_argument("--layers", type=int, default=2, help="DiT blocks timed (extrapolated to 24)")
    p.add_argument("--runs", type=int, default=1, help="timed runs per stage (median)")
    p.add_argument("--text-len", type=int, default=63)
    p.add_argument("--lyric-len", type=int, default=256)
    p.add_argument(
        "--decode-seconds",
        type=float,
        default=30.0,
        help="longest clip the decode is timed on (longer ones scaled); 0 = skip",
    )
    p.add_argument(
        "--decode-from",
        default="",
        help="a previous *_raw.json: reuse its DCAE/vocoder rows (same dtype and "
        "length) instead of timing the decode again (for runs that change only the "
        "DiT/text code)",
    )
    p.add_argument(
        "--max-dit-frames",
        type=int,
        default=4096,
        help="longer DiT lengths are extrapolated linearly in T",
    )
    p.add_argument(
        "--text-calls",
        type=int,
        default=2,
        help="UMT5 calls per run (2 = prompt + ERG null prompt, the pipeline's default)",
    )
    p.add_argument(
        "--kv-reuse",
        action="store_true",
        help="account the encoder K/V as one batch-2 projection (the pipeline since the K/V "
        "reuse) instead of batch 1 + batch 2 (the pipeline before it)",
    )
    p.add_argument("--reassemble", default="", help="rebuild the tables from a *_raw.json")
    p.add_argument("--chunk-frames", type=int, default=128)
    p.add_argument("--context-frames", type=int, default=16)
    p.add_argument("--vocoder-chunk-frames", type=int, default=1024)
    p.add_argument("--timeout", type=float, default=3600.0)
    p.add_argument("--name", default="generate", help="results file stem")
    p.add_argument("--title", default="Generation benchmark (real size, random weights)")
    p.add_argument("--out", default=str(common.RESULTS))
    p.add_argument("--child-seconds", type=float, help=argparse.SUPPRESS)
    p.add_argument("--child-dtype", help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    if not 0 < args.layers <= FULL_LAYERS:
        p.error(f"--layers must be in 1..{FULL_LAYERS}")

    if args.child_seconds is not None:
        print("RESULT " + json.dumps(child(args)), flush=True)
        return 0

    if args.reassemble:
        saved = json.loads(Path(args.reassemble).read_text())
        raw = saved["runs"] if isinstance(saved, dict) else saved
        env_file = Path(args.reassemble.replace("_raw.json", ".json"))
        env = json.loads(env_file.read_text())["environment"] if env_file.is_file() else {}
        rows = []
        for dtype in args.dtype:
            by_T: dict[int, dict] = {}
            for res in sorted(
                (r for r in raw if r.get("dtype") == dtype and "error" not in r),
                key=lambda r: r["T"],
            ):
                by_T[res["T"]] = res["dit_step"]
                rows += [assemble(res, n, args, by_T) for n in args.steps]
        table_md = table(rows, env, args.title)
        common.write_results(args.name, env, rows, table_md, Path(args.out))
        print(table_md)
        return 0

    env = common.environment()
    env["matmul_gflops"] = {
        d: common.matmul_peak_gflops(d, 1024 if d != "float32" else 2048) for d in args.dtype
    }
    passthrough = [
        "--layers",
        str(args.layers),
        "--runs",
        str(args.runs),
        "--text-len",
        str(args.text_len),
        "--lyric-len",
        str(args.lyric_len),
        "--decode-seconds",
        str(args.decode_seconds),
        "--max-dit-frames",
        str(args.max_dit_frames),
        "--chunk-frames",
        str(args.chunk_frames),
        "--context-frames",
        str(args.context_frames),
        "--vocoder-chunk-frames",
        str(args.vocoder_chunk_frames),
    ]
    raw, rows = [], []
    for dtype in args.dtype:
        by_T: dict[int, dict] = {}
        for sec in sorted(args.seconds):
            t0 = time.perf_counter()
            res = common.run_child(
                __file__,
                passthrough + ["--child-seconds", str(sec), "--child-dtype", dtype],
                args.timeout,
            )
            print(
                f"[{dtype} {sec:g} s: {time.perf_counter() - t0:.0f} s] {json.dumps(res)}",
                file=sys.stderr,
                flush=True,
            )
            if "error" in res:
                raw.append({"seconds_audio": sec, "dtype": dtype, **res})
                continue
            if args.decode_from and "dcae" not in res:
                for old in json.loads(Path(args.decode_from).read_text()):
                    if old.get("dtype") == dtype and old.get("seconds_audio") == sec:
                        for k in ("dcae", "vocoder", "decode_seconds_timed"):
                            if k in old:
                                res[k] = old[k]
                        res["decode_reused"] = True
            raw.append(res)
            by_T[res["T"]] = res["dit_step"]
            for n in args.steps:
                rows.append(assemble(res, n, args, by_T))
            table_md = table(rows, env, args.title)
            common.write_results(args.name, env, rows, table_md, Path(args.out))
            (Path(args.out) / f"{args.name}_raw.json").write_text(json.dumps(raw, indent=2))
    table_md = table(rows, env, args.title)
    common.write_results(args.name, env, rows, table_md, Path(args.out))
    (Path(args.out) / f"{args.name}_raw.json").write_text(json.dumps(raw, indent=2))
    print(table_md)
    return 0


if __name__ == "__main__":
    sys.exit(main())
