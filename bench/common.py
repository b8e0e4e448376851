"""Shared helpers of the benchmark suite: machine/version info, memory, configs, result files.

Every benchmark builds REAL-SIZE models (configs from `tests/fixtures/full-size-manifest.json`)
with random weights in memory; nothing is downloaded. Results go to `bench/results/<name>.json`
(machine + versions + rows) and `bench/results/<name>.md` (a markdown table).
"""

from __future__ import annotations

import json
import os
import platform
import resource
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
MANIFEST = ROOT / "tests" / "fixtures" / "full-size-manifest.json"
RESULTS = ROOT / "bench" / "results"
OPENBLAS = "/usr/lib/x86_64-linux-gnu/openblas-pthread/libopenblas.so.0"

MANIFEST_KEYS = {
    "dit": "ace_step_transformer/diffusion_pytorch_model.safetensors",
    "dcae": "music_dcae_f8c8/diffusion_pytorch_model.safetensors",
    "vocoder": "music_vocoder/diffusion_pytorch_model.safetensors",
    "text_encoder": "umt5-base/model.safetensors",
}
LATENT_FPS = 44100 / 512 / 8  # latent frames per second of audio


def latent_frames(seconds: float) -> int:
    """Latent frames of a clip, as the pipeline computes them (`int(s * 44100 / 4096)`)."""
    return int(seconds * 44100 / 512 / 8)


def manifest() -> dict:
    return json.loads(MANIFEST.read_text())


def full_config(component: str) -> dict:
    """The real config.json dict of `component` (dit, dcae, vocoder, text_encoder)."""
    return dict(manifest()[MANIFEST_KEYS[component]]["config"])


def openblas_preloaded() -> bool:
    return "openblas" in os.environ.get("LD_PRELOAD", "")


def cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    try:
        out = subprocess.run(
            ["sysctl", "-n", "machdep.cpu.brand_string"], capture_output=True, text=True
        )
        return out.stdout.strip() or platform.processor()
    except OSError:
        return platform.processor()


def environment() -> dict:
    """Machine and versions, recorded with every result file."""
    import mlx.core as mx
    import numpy as np

    return {
        "machine": f"{platform.system()} {platform.machine()}",
        "cpu": cpu_model(),
        "cpus": os.cpu_count(),
        "memory_gb": round(os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") / 1e9, 1)
        if hasattr(os, "sysconf")
        else None,
        "python": platform.python_version(),
        "mlx": mx.__version__,
        "numpy": np.__version__,
        "device": str(mx.default_device()),
        "openblas_preloaded": openblas_preloaded(),
        "date": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()),
    }


def env_line(env: dict) -> str:
    blas = "OpenBLAS preloaded" if env.get("openblas_preloaded") else "MLX's bundled BLAS"
    return (
        f"{env['machine']}, {env['cpu']}, {env['cpus']} CPUs, {env.get('memory_gb')} GB; "
        f"Python {env['python']}, MLX {env['mlx']} ({env['device']}), numpy {env['numpy']}; "
        f"{blas}; {env['date']}."
        + (
            " Measured matmul peak (GFLOP/s): "
            + ", ".join(f"{k} {v}" for k, v in env["matmul_gflops"].items())
            + "."
            if env.get("matmul_gflops")
            else ""
        )
    )


def peak_rss_bytes() -> int:
    """Peak resident set size of this process (Linux reports KiB, macOS bytes)."""
    r = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return r if sys.platform == "darwin" else r * 1024


def gb(n: float) -> float:
    return round(n / 1e9, 3)


def write_results(name: str, env: dict, rows: list[dict], table: str, out: Path = RESULTS) -> None:
    out.mkdir(parents=True, exist_ok=True)
    (out / f"{name}.json").write_text(
        json.dumps({"environment": env, "runs": rows}, indent=2) + "\n"
    )
    (out / f"{name}.md").write_text(table)


def run_child(module_file: str, args: list[str], timeout: float) -> dict:
    """Run `python module_file args` (a fresh process: its own peak memory) and return the
    JSON object printed on its `RESULT ` line (or an `error` entry)."""
    cmd = [sys.executable, module_file, *args]
    try:
        proc = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout, cwd=ROOT)
    except subprocess.TimeoutExpired:
        return {"error": f"timed out after {timeout:.0f} s"}
    for line in proc.stdout.splitlines():
        if line.startswith("RESULT "):
            return json.loads(line[7:])
    tail = (proc.stderr or proc.stdout).strip().splitlines()[-5:]
    return {"error": " | ".join(tail) or f"exit code {proc.returncode}"}


def md_table(headers: list[str], rows: list[list]) -> list[str]:
    lines = ["| " + " | ".join(headers) + " |", "|" + "---|" * len(headers)]
    lines += ["| " + " | ".join(str(c) for c in r) + " |" for r in rows]
    return lines


def matmul_peak_gflops(dtype: str = "float32", n: int = 2048, runs: int = 3) -> float:
    """Achieved GFLOP/s of an n x n x n matmul (best of `runs`): the practical peak that the
    stage FLOP rates are compared with."""
    import mlx.core as mx

    dt = {"float32": mx.float32, "bfloat16": mx.bfloat16, "float16": mx.float16}[dtype]
    a = mx.random.normal((n, n)).astype(dt)
    b = mx.random.normal((n, n)).astype(dt)
    mx.eval(a, b, a @ b)
    best = float("inf")
    for _ in range(runs):
        t0 = time.perf_counter()
        mx.eval(a @ b)
        best = min(best, time.perf_counter() - t0)
    return round(2 * n**3 / best / 1e9, 1)
