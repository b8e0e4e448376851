"""The benchmark suite: `python -m bench all` (or `python bench/run.py all`).

Sub-commands (extra arguments after the name go to that benchmark's own CLI):

    flops     FLOPs per DiT step at 30 / 60 / 240 s          (bench/flops.py)
    generate  end-to-end stages, RTF, peak memory            (bench/generate.py)
    dit       one DiT decode step                            (bench/dit_step.py)
    codec     DCAE decode + vocoder, plain vs chunked        (bench/codec.py)
    train     one LoRA training step                         (bench/train_step.py)
    convert   real-size random checkpoint -> conversion      (bench/convert_bench.py)
    kernel_ab old vs current DiT kernels, interleaved         (bench/kernel_ab.py)
    block_profile  time per piece of one DiT block           (bench/dit_block_profile.py)
    all       every one of the above with the suite's defaults

All models are real size with random weights built in memory (nothing is downloaded). Results
land in bench/results/*.json|md; docs/benchmarks.md collects them. On Linux the float32 runs are
started with OpenBLAS preloaded when it is installed (MLX's bundled reference BLAS is ~40x
slower); `--no-openblas` turns that off. `--quick` uses the reduced settings this repository's
2-core CI machine can afford (1 DiT block extrapolated to 24, short decodes).
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from bench.common import OPENBLAS  # noqa: E402

SCRIPTS = {
    "flops": ["-m", "bench.flops"],
    "generate": ["bench/generate.py"],
    "dit": ["bench/dit_step.py"],
    "codec": ["bench/codec.py"],
    "train": ["bench/train_step.py"],
    "convert": ["bench/convert_bench.py"],
    "kernel_ab": ["bench/kernel_ab.py"],
    "block_profile": ["bench/dit_block_profile.py"],
}

# the matrix: 30 / 60 / 240 s, 27 and 60 steps, float32 and bfloat16
_AB = "--old-rev 00d3e5d --blocks 2 --reps 5 --T 322 645"
FULL = {
    "flops": "",
    "generate": "--seconds 30 60 240 --dtype float32 bfloat16 --steps 27 60 --layers 4",
    "dit": "--T 322 645 2583 --dtype float32 bfloat16 --layers 4",
    "codec": "--seconds 30 60 240 --dtype float32 bfloat16",
    "train": "--seconds 30 60 --dtype float32 bfloat16 --layers 2",
    "convert": "--dtype float32 bfloat16",
    "kernel_ab": _AB,
    "block_profile": "--T 322",
}
# reduced settings this repository's 2-core machine can afford
QUICK = dict(
    FULL,
    generate="--seconds 30 60 240 --dtype float32 bfloat16 --steps 27 60 --layers 1 "
    "--decode-seconds 10 --max-dit-frames 700",
    dit="--T 322 645 --dtype float32 --layers 1 --steps 1",
    codec="--seconds 10 --dtype float32 --mode plain chunked",
    train="--seconds 30 --dtype float32 --layers 2 --steps 1",
    convert="--dtype float32 bfloat16 --dit-layers 4",
)


def child_env(openblas: bool) -> dict:
    env = dict(os.environ)
    if openblas and sys.platform.startswith("linux") and Path(OPENBLAS).is_file():
        if "openblas" not in env.get("LD_PRELOAD", ""):
            env["LD_PRELOAD"] = ":".join(p for p in (OPENBLAS, env.get("LD_PRELOAD")) if p)
    env["PYTHONPATH"] = ":".join(p for p in (str(ROOT), env.get("PYTHONPATH")) if p)
    return env


def run(name: str, extra: list[str], quick: bool, openblas: bool) -> int:
    defaults = (QUICK if quick else FULL)[name].split() if not extra else []
    cmd = [sys.executable, *SCRIPTS[name], *defaults, *extra]
    print("$ " + " ".join(cmd), flush=True)
    return subprocess.call(cmd, cwd=ROOT, env=child_env(openblas))


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(
        description=__doc__.split("\n\n")[0],
        formatter_class=argparse.RawDescriptionHelpFormatter,
        epilog=__doc__.split("\n\n", 1)[1],
    )
    p.add_argument("what", choices=[*SCRIPTS, "all"])
    p.add_argument("--quick", action="store_true", help="reduced settings (slow machines)")
    p.add_argument("--no-openblas", action="store_true")
    args, extra = p.parse_known_args(argv)
    names = list(SCRIPTS) if args.what == "all" else [args.what]
    if args.what == "all" and extra:
        p.error("extra arguments go with a single benchmark, not with 'all'")
    failed = [n for n in names if run(n, extra, args.quick, not args.no_openblas) != 0]
    if failed:
        print(f"failed: {', '.join(failed)}", file=sys.stderr)
        return 1
    print("results: bench/results/*.md (collected in docs/benchmarks.md)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
