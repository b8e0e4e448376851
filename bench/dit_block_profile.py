"""Where one real-size DiT block's time goes: each piece evaluated alone (median of `--runs`
after a warm-up) against the whole block, with the achieved GFLOP/s of the matmul pieces.

    python bench/dit_block_profile.py --T 322

Writes bench/results/dit_block_profile.*. float32 (preload OpenBLAS on Linux).
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from bench import common  # noqa: E402


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--T", type=int, default=322, help="latent frames (322 = 30 s)")
    p.add_argument("--enc-len", type=int, default=320)
    p.add_argument("--runs", type=int, default=5)
    p.add_argument("--name", default="dit_block_profile")
    args = p.parse_args(argv)

    import mlx.core as mx
    import numpy as np

    import acestep_mlx.models.dit as M

    T, B, L = args.T, 1, args.enc_len
    cfg = dict(common.full_config("dit"), num_layers=1)
    m = M.build_dit(cfg)
    m.projectors = []
    mx.eval(m.parameters())
    blk = m.transformer_blocks[0]
    heads, D = cfg["num_attention_heads"], cfg["num_attention_heads"] * cfg["attention_head_dim"]
    dh = cfg["attention_head_dim"]
    rng = np.random.default_rng(0)
    rand = lambda *s: mx.array(rng.standard_normal(s).astype(np.float32))  # noqa: E731
    x, ctx = rand(B, T, D), rand(B, L, D)
    kv = m.precompute_encoder_kv(ctx)[0]
    temb = rand(B, 6 * D) * 0.02
    mask, cross = mx.ones((B, T)), mx.zeros((B, 1, T, L))
    rope = m.rope(T)
    q4 = M._split_heads(x, heads)
    F = blk.ff.hidden
    inv, hid, sc = rand(B, T, 2 * F), rand(B, T, F), rand(B, 1, D)
    dw = blk.ff.depth_conv.conv
    a, c = blk.attn, blk.cross_attn

    def timed(fn) -> float:
        mx.eval(fn())
        ts = []
        for _ in range(args.runs):
            t0 = time.perf_counter()
            mx.eval(fn())
            ts.append(time.perf_counter() - t0)
        return statistics.median(ts)

    pieces = {
        "whole block": (lambda: blk(x, temb, mask, kv, cross, rope), None),
        "self-attn q,k,v,out GEMMs": (
            lambda: [a.to_q(x), a.to_k(x), a.to_v(x), a.to_out[0](x)], 4 * 2 * T * D * D),
        "cross-attn q,out GEMMs": (lambda: [c.to_q(x), c.to_out[0](x)], 2 * 2 * T * D * D),
        "GLUMBConv inverted GEMM": (lambda: blk.ff.inverted_conv(x), 2 * T * D * 2 * F),
        "GLUMBConv point GEMM": (lambda: blk.ff.point_conv(hid), 2 * T * F * D),
        "glu_depthwise (silu, depthwise conv, gate)": (
            lambda: M.glu_depthwise(inv, dw.weight, dw.bias), None),
        "linear_attention_core": (
            lambda: M.linear_attention_core(q4, q4, q4, mask[:, None, :, None]),
            4 * T * heads * dh * (dh + 1)),
        "cross-attn SDPA": (
            lambda: mx.fast.scaled_dot_product_attention(q4, *kv, scale=dh**-0.5, mask=cross),
            4 * T * L * D),
        "rope_apply x3": (lambda: [M.rope_apply(q4, *rope) for _ in range(3)], None),
        "modulate x2 + gated_residual x2": (
            lambda: [M.modulate(x, sc, sc), M.modulate(x, sc, sc), M.gated_residual(x, sc, x),
                     M.gated_residual(x, sc, x)], None),
    }
    rows = []
    for name, (fn, flops) in pieces.items():
        s = timed(fn)
        rows.append({"piece": name, "s": round(s, 4),
                     "gflops_per_s": round(flops / s / 1e9, 1) if flops else None})
        print(rows[-1], flush=True)
    whole = rows[0]["s"]
    env = common.environment()
    table = [f"# One real-size DiT block, T={T}, batch 1, float32: time per piece\n",
             common.env_line(env) + "\n",
             *common.md_table(["piece", "s", "share of the block", "GFLOP/s"],
                              [[r["piece"], r["s"], f"{100 * r['s'] / whole:.0f} %",
                                r["gflops_per_s"] or "-"] for r in rows])]
    common.write_results(args.name, env, rows, "\n".join(table) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
