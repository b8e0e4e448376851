"""`python -m acestep_mlx.app.weights`: download the checkpoint and convert it to MLX, with
progress bars, before the app starts (scripts/start_macos.sh runs it; a no-op once cached).
"""

from __future__ import annotations

import argparse
import sys
import time

COMPONENTS = ("text_encoder", "dit", "dcae", "vocoder")


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m acestep_mlx.app.weights",
                                description="Download (first run) and convert the weights.")
    p.add_argument("--checkpoint", default=None,
                   help="folder or hub repo id (default ACE-Step/ACE-Step-v1-3.5B)")
    p.add_argument("--demo", action="store_true", help="the tiny random demo checkpoint")
    p.add_argument("--dtype", choices=("float32", "bfloat16"), default=None)
    p.add_argument("--cache_dir", default=None, help="converted weights cache")
    args = p.parse_args(argv)

    from acestep_mlx.checkpoint import converted_component_dir, resolve_checkpoint
    from acestep_mlx.pipeline import default_dtype

    t0 = time.perf_counter()
    if args.demo:
        from acestep_mlx.demo import demo_checkpoint

        folder = demo_checkpoint(args.cache_dir)
        print(f"demo checkpoint: {folder}", flush=True)
    else:
        spec = args.checkpoint or "ACE-Step/ACE-Step-v1-3.5B"
        print(f"checkpoint {spec}: checking (the first run downloads about 8.3 GB) ...",
              flush=True)
        try:
            folder = resolve_checkpoint(args.checkpoint)
        except Exception as e:  # noqa: BLE001 - the message says what to do
            print(f"error: {e}", file=sys.stderr)
            return 1
        print(f"checkpoint ready: {folder}", flush=True)
    dtype = args.dtype or default_dtype()
    for comp in COMPONENTS:
        t = time.perf_counter()
        try:
            converted_component_dir(folder, comp, dtype, args.cache_dir, verbose=True)
        except Exception as e:  # noqa: BLE001
            print(f"error: converting {comp} failed: {e}", file=sys.stderr)
            return 1
        print(f"  {comp:<12} {dtype}: ready ({time.perf_counter() - t:.1f} s)", flush=True)
    print(f"weights ready in {time.perf_counter() - t0:.1f} s", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
