"""`python -m acestep_mlx.parity FIXTURE_DIR [--only NAMES]`: compare the port with the original."""

from __future__ import annotations

import argparse
import sys

from . import run_parity


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(
        prog="python -m acestep_mlx.parity",
        description="Run every reference case of a fixture folder (made by the original PyTorch "
        "ACE-Step) through the MLX port and compare the numbers within the tolerances stated in "
        "its fixtures.json. Prints one line per compared tensor and a summary line "
        "'N passed, M failed, K not covered'. Exit status 1 when anything failed.",
    )
    p.add_argument("fixture_dir", help="fixture folder, e.g. tests/fixtures/tiny-a")
    p.add_argument("--only", default="",
                   help="comma-separated reference names (stems of the files in reference/), "
                   "e.g. text_encoder,dit")
    p.add_argument("--cache-dir", default=None,
                   help="where converted weights go (default: a temporary folder, removed after)")
    p.add_argument("--quiet", action="store_true", help="print only failures and the summary")
    args = p.parse_args(argv)
    only = [s.strip() for s in args.only.split(",") if s.strip()] or None
    summary = run_parity(args.fixture_dir, only=only, cache_dir=args.cache_dir,
                         verbose=not args.quiet)
    if args.quiet:
        for r in summary.results:
            if not r.passed:
                print(r.line())
    print(summary.last_line())
    return 0 if summary.failed == 0 else 1


if __name__ == "__main__":
    sys.exit(main())
