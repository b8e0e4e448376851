"""`python -m convert SRC DST [--dtype float32|bfloat16|float16]`."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from tqdm import tqdm

from .components import get_spec
from .core import DTYPES, ConversionError, convert_component
from .safetensors_io import CheckpointFileError

ALL = ("dit", "text_encoder", "dcae", "vocoder")


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(
        prog="python -m convert",
        description="Convert an ACE-Step v1 checkpoint folder (hub layout of "
        "ACE-Step/ACE-Step-v1-3.5B: ace_step_transformer/, music_dcae_f8c8/, music_vocoder/, "
        "umt5-base/) to MLX safetensors in DST, with the same sub-folders. The pipeline does this "
        "automatically on first use; this command is for doing it ahead of time.",
    )
    p.add_argument("src", help="checkpoint folder, HF cache folder, or hub repo id")
    p.add_argument("dst", help="output folder (must not exist, or be empty)")
    p.add_argument("--dtype", choices=DTYPES, default="float32",
                   help="dtype of the converted floating-point weights (default float32)")
    p.add_argument("--components", default=",".join(ALL),
                   help=f"comma-separated subset of {', '.join(ALL)}")
    args = p.parse_args(argv)

    from acestep_mlx.checkpoint import resolve_checkpoint

    dst = Path(args.dst)
    if dst.exists() and any(dst.iterdir()):
        print(f"error: {dst} exists and is not empty; choose a new folder", file=sys.stderr)
        return 2
    try:
        src = resolve_checkpoint(args.src)
        for name in [c.strip() for c in args.components.split(",") if c.strip()]:
            spec = get_spec(name)
            bar = tqdm(desc=f"{spec.subfolder}", unit="tensor")

            def progress(i: int, n: int, bar=bar) -> None:
                bar.total = n
                bar.update(i - bar.n)

            report = convert_component(spec, src / spec.subfolder, dst / spec.subfolder,
                                       dtype=args.dtype, progress=progress)
            bar.close()
            print(f"{spec.subfolder}: {report['n_converted']} tensors converted, "
                  f"{len(report['dropped'])} dropped (see {dst / spec.subfolder}/conversion.json)")
    except (CheckpointFileError, ConversionError, FileNotFoundError, KeyError, ValueError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
