"""Kernel A/B: one real-size DiT `decode` call, an older `acestep_mlx/models/dit.py` vs the
current one, interleaved in ONE process with the same random weights (so machine load hits both
alike).

    python bench/kernel_ab.py --old-rev 00d3e5d --blocks 2 --reps 3 --T 322 645

The old module is read with `git show REV:acestep_mlx/models/dit.py` and imported under another
name. Rounds alternate old/new (order swapped each round); the median is reported, with the
graph-build time (Python) and the largest output difference. Writes bench/results/kernel_ab.*.
"""

from __future__ import annotations

import argparse
import functools
import importlib.util
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from bench import common  # noqa: E402


def load_old(rev: str):
    src = subprocess.run(["git", "show", f"{rev}:acestep_mlx/models/dit.py"], cwd=ROOT,
                         capture_output=True, text=True, check=True).stdout
    path = Path(tempfile.mkdtemp()) / "dit_old.py"
    path.write_text(src)
    spec = importlib.util.spec_from_file_location("dit_old", path)
    module = importlib.util.module_from_spec(spec)
    sys.modules["dit_old"] = module
    spec.loader.exec_module(module)
    return module


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--old-rev", default="00d3e5d", help="git revision of the old dit.py")
    p.add_argument("--blocks", type=int, default=2, help="DiT blocks in both models")
    p.add_argument("--reps", type=int, default=3, help="timed rounds (each runs old and new)")
    p.add_argument("--T", type=int, nargs="+", default=[322, 645], help="latent frames")
    p.add_argument("--enc-len", type=int, default=320, help="encoder length L")
    p.add_argument("--name", default="kernel_ab")
    args = p.parse_args(argv)

    import mlx.core as mx
    import numpy as np

    import acestep_mlx.models.dit as new

    old = load_old(args.old_rev)
    cfg = dict(common.full_config("dit"), num_layers=args.blocks)
    mx.random.seed(0)
    m_new = new.build_dit(cfg)
    m_old = old.build_dit(cfg)
    m_new.projectors = m_old.projectors = []
    m_old.update(m_new.parameters())
    mx.eval(m_new.parameters(), m_old.parameters())
    rng = np.random.default_rng(0)
    width = cfg["num_attention_heads"] * cfg["attention_head_dim"]
    ctx = mx.array(rng.standard_normal((2, args.enc_len, width)).astype(np.float32))
    cmask = mx.ones((2, args.enc_len), mx.float32)
    models = {"old": m_old, "new": m_new}
    rows = []
    for T in args.T:
        for B in (1, 2):
            x = mx.array(rng.standard_normal((B, 8, 16, T)).astype(np.float32))
            am = mx.ones((B, T), mx.float32)
            t = mx.full((B,), 500.0)
            st, sm = ctx[:B], cmask[:B]
            kv = {n: m.precompute_encoder_kv(st) for n, m in models.items()}
            mx.eval(kv)
            fns = {n: functools.partial(m.decode, x, am, st, sm, t, encoder_kv=kv[n])
                   for n, m in models.items()}
            outs = {n: f() for n, f in fns.items()}
            mx.eval(outs)  # warm-up (and compilation)
            diff = float(mx.max(mx.abs(outs["old"] - outs["new"])))
            times: dict[str, list[float]] = {"old": [], "new": []}
            build: dict[str, list[float]] = {"old": [], "new": []}
            for r in range(args.reps):
                for n in (("old", "new") if r % 2 == 0 else ("new", "old")):
                    t0 = time.perf_counter()
                    y = fns[n]()
                    t1 = time.perf_counter()
                    mx.eval(y)
                    build[n].append(t1 - t0)
                    times[n].append(time.perf_counter() - t0)
            med = {n: statistics.median(v) for n, v in times.items()}
            rows.append({"T": T, "B": B, "blocks": args.blocks, "old_s": round(med["old"], 4),
                         "new_s": round(med["new"], 4),
                         "speedup": round(med["old"] / med["new"], 3),
                         "graph_build_ms_old": round(1e3 * statistics.median(build["old"]), 2),
                         "graph_build_ms_new": round(1e3 * statistics.median(build["new"]), 2),
                         "max_abs_diff": diff})
            print(rows[-1], flush=True)
    env = common.environment()
    table = [f"# Kernel A/B: DiT decode, dit.py of {args.old_rev} vs current\n",
             common.env_line(env) + "\n",
             *common.md_table(
                 ["T", "batch", "blocks", "old s", "new s", "old / new", "build ms old / new",
                  "max abs diff"],
                 [[r["T"], r["B"], r["blocks"], r["old_s"], r["new_s"], r["speedup"],
                   f"{r['graph_build_ms_old']} / {r['graph_build_ms_new']}", r["max_abs_diff"]]
                  for r in rows])]
    common.write_results(args.name, env, rows, "\n".join(table) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
