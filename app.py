"""ACE-Step MLX app: the web page and the REST API on one server.

    python app.py                       # http://127.0.0.1:7865 (weights downloaded on first use)
    python app.py --demo --port 7870    # tiny random demo checkpoint (noise, not music)

The API is documented at /docs (OpenAPI schema at /openapi.json). Set ACESTEP_API_KEY to require
`Authorization: Bearer KEY` (or `X-API-Key: KEY`) on every API route; the page then asks for the
key as its password.
"""

from __future__ import annotations

import argparse
import errno
import logging
import os
import socket
import sys
from pathlib import Path


def _bool(s: str) -> bool:
    v = s.strip().lower()
    if v in ("1", "true", "yes", "on"):
        return True
    if v in ("0", "false", "no", "off"):
        return False
    raise argparse.ArgumentTypeError(f"expected true or false, got {s!r}")


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="python app.py", description="Serve the ACE-Step MLX web page and REST API.",
        formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    p.add_argument("--checkpoint", default=None,
                   help="checkpoint folder (hub layout) or hub repo id (default "
                   "ACE-Step/ACE-Step-v1-3.5B, downloaded and converted on first use)")
    p.add_argument("--demo", action="store_true",
                   help="serve a tiny RANDOM checkpoint built offline (noise, not music)")
    p.add_argument("--dtype", choices=("float32", "bfloat16"), default=None,
                   help="compute dtype (default: bfloat16 on Apple GPUs, float32 elsewhere)")
    p.add_argument("--server_name", default="127.0.0.1",
                   help="address to listen on; 0.0.0.0 exposes the server to your network (set "
                   "ACESTEP_API_KEY then)")
    p.add_argument("--port", type=int, default=7865, help="port to listen on")
    p.add_argument("--output_dir", default=os.environ.get("ACE_OUTPUT_DIR", "outputs"),
                   help="folder for generated audio and their metadata JSON")
    p.add_argument("--data_dir", default="acestep_data",
                   help="folder for uploads, datasets, LoRA training runs and the job queue")
    p.add_argument("--cache_dir", default=None,
                   help="converted weights (default $ACESTEP_MLX_CACHE or ~/.cache/acestep_mlx)")
    p.add_argument("--max_upload_mb", type=float, default=50.0, help="size limit per file")
    p.add_argument("--preload", type=_bool, default=True,
                   help="load the model at start (otherwise at the first request)")
    p.add_argument("--share", type=_bool, default=False,
                   help="public share links are not supported (kept for the original's CLI)")
    return p


def port_free(host: str, port: int) -> bool:
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    with socket.socket(family, socket.SOCK_STREAM) as s:
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            s.bind((host, port))
        except OSError as e:
            if e.errno in (errno.EADDRINUSE, errno.EACCES):
                return False
            raise
    return True


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    if args.share:
        print("error: --share is not supported: the server stays on your machine; use "
              "--server_name 0.0.0.0 with ACESTEP_API_KEY to reach it from your network",
              file=sys.stderr)
        return 2
    if not 1 <= args.port <= 65535:
        print(f"error: --port {args.port} is not a port number (1-65535)", file=sys.stderr)
        return 2
    if not port_free(args.server_name, args.port):
        print(f"error: port {args.port} on {args.server_name} is already in use (another app, or "
              f"this one already running?). Pick another port: python app.py --port "
              f"{args.port + 1}  (or PORT={args.port + 1} in .env for "
              "scripts/start_macos.sh)", file=sys.stderr)
        return 3

    data_dir = Path(args.data_dir).expanduser().resolve()
    tmp = data_dir / "tmp"
    tmp.mkdir(parents=True, exist_ok=True)
    # temporary files of the web framework stay inside the data folder
    os.environ["TMPDIR"] = str(tmp)
    os.environ["GRADIO_TEMP_DIR"] = str(data_dir / "gradio")  # the page's upload cache
    os.environ.setdefault("GRADIO_ANALYTICS_ENABLED", "False")
    import tempfile

    tempfile.tempdir = str(tmp)

    import uvicorn

    from acestep_mlx.app.security import api_key_from_env
    from acestep_mlx.app.server import create_app
    from acestep_mlx.app.service import AppConfig

    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    config = AppConfig(
        checkpoint=args.checkpoint, demo=args.demo, dtype=args.dtype,
        output_dir=Path(args.output_dir), data_dir=data_dir,
        cache_dir=Path(args.cache_dir) if args.cache_dir else None,
        api_key=api_key_from_env(), max_upload_mb=args.max_upload_mb, preload=args.preload,
        server_name=args.server_name, port=args.port)
    if args.demo:
        from acestep_mlx.demo import DEMO_NOTICE

        print(f"NOTE: {DEMO_NOTICE}", file=sys.stderr)
    if config.api_key is None and args.server_name not in ("127.0.0.1", "localhost", "::1"):
        print("WARNING: listening on a network address without ACESTEP_API_KEY: anyone who can "
              "reach this machine can use the app", file=sys.stderr)
    app, _ = create_app(config)
    host = "localhost" if args.server_name in ("0.0.0.0", "::") else args.server_name
    print(f"ACE-Step MLX: http://{host}:{args.port}  (API docs: http://{host}:{args.port}/docs"
          f"{', API key required' if config.api_key else ''})", flush=True)
    uvicorn.run(app, host=args.server_name, port=args.port, log_level="warning",
                timeout_graceful_shutdown=20)
    return 0


if __name__ == "__main__":
    sys.exit(main())
