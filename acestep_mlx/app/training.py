"""The app's side of LoRA training: it runs `python -m acestep_mlx.train prepare|run` in a
child process (stop = interrupt it, status = read its loss log), so a crash or a stop of the
trainer never takes the server down, and the trainer's own resume logic is used as is.

What this relies on from `acestep_mlx.train` (the trainer's interface):
  prepare --audio-dir DIR --out OUT [--checkpoint C] [--cache-dir D] -> OUT/manifest.json
  run --config train.json   -> in the config's output_dir: loss_log.jsonl (lines with "step"
      and "loss"), loss_curve.png, checkpoints/*/pytorch_lora_weights.safetensors (the
      original's adapter format) and its resume state; SIGINT/SIGTERM stop it resumably (exit
      130), and the same command resumes it.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

from .jobs import JobCancelled, JobContext, JobError

LORA_FILE = "pytorch_lora_weights.safetensors"
LOSS_LOGS = ("loss_log.jsonl", "loss.jsonl", "losses.jsonl", "train_log.jsonl")
LOSS_PNGS = ("loss_curve.png", "loss.png")
CONFIG_NAME = "train.json"
DEFAULT_TARGETS = ["speaker_embedder", "linear_q", "linear_k", "linear_v", "to_q", "to_k",
                   "to_v", "to_out.0"]
STOP_GRACE_S = 30.0


# ------------------------------------------------------------------------------ commands
def _base() -> list[str]:
    return [sys.executable, "-m", "acestep_mlx.train"]


def prepare_command(src: Path, out: Path, checkpoint: str | None,
                    cache_dir: Path | None) -> list[str]:
    cmd = [*_base(), "prepare", "--audio-dir", str(src), "--out", str(out)]
    if checkpoint:
        cmd += ["--checkpoint", str(checkpoint)]
    if cache_dir:
        cmd += ["--cache-dir", str(cache_dir)]
    return cmd


def train_config(req: dict, prepared: Path, out: Path, checkpoint: str | None,
                 cache_dir: Path | None) -> dict:
    """The trainer's config JSON for an API/UI training request (validated by the trainer's
    own config class, so a bad value is refused before anything runs)."""
    cfg = {
        "dataset": str(prepared), "output_dir": str(out), "checkpoint": checkpoint,
        "lora": {"r": int(req.get("r", 16)), "lora_alpha": req.get("lora_alpha", 32),
                 "use_rslora": bool(req.get("use_rslora", True)),
                 "target_modules": list(req.get("target_modules") or DEFAULT_TARGETS)},
        "max_steps": int(req.get("max_steps", 1000)),
        "learning_rate": req.get("learning_rate", 1e-4),
        "save_every_n_steps": int(req.get("save_every_n_steps", 100)),
        "dtype": req.get("dtype", "float32"),
        "gradient_checkpointing": bool(req.get("gradient_checkpointing", False)),
        "exp_name": out.name,
    }
    if cache_dir:
        cfg["cache_dir"] = str(cache_dir)
    if req.get("accumulate_grad_batches"):
        cfg["accumulate_grad_batches"] = int(req["accumulate_grad_batches"])
    try:
        from acestep_mlx.configs import ConfigError
        from acestep_mlx.train.config import TrainConfig
    except ImportError:  # trainer not installed: the child process will report it
        return cfg
    try:
        TrainConfig.from_dict(cfg, "training request")
    except ConfigError as e:
        raise ValueError(str(e)) from e
    return cfg


def write_config(out: Path, cfg: dict) -> Path:
    path = out / CONFIG_NAME
    tmp = out / f".{CONFIG_NAME}.tmp"
    tmp.write_text(json.dumps(cfg, indent=2) + "\n", encoding="utf-8")
    os.replace(tmp, path)
    return path


def train_command(cfg_path: Path, resume: bool) -> list[str]:
    return [*_base(), "run", "--config", str(cfg_path)]


# ------------------------------------------------------------------------------ reading state
def prepared_summary(folder: Path) -> dict | None:
    """The prepared dataset's manifest, summarised (None when not prepared)."""
    manifest = folder / "manifest.json"
    if not manifest.is_file():
        return None
    try:
        data = json.loads(manifest.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    items = data.get("items", []) if isinstance(data, dict) else []
    skipped = data.get("skipped", []) if isinstance(data, dict) else []
    return {"items": len(items), "skipped": skipped}


def _loss_log(out: Path) -> Path | None:
    for name in LOSS_LOGS:
        if (out / name).is_file():
            return out / name
    found = sorted(out.glob("*.jsonl"))
    return found[0] if found else None


def read_losses(out: Path) -> list[dict]:
    """[{"step": int, "loss": float, ...}] from the trainer's JSONL loss log."""
    path = _loss_log(out) if out.is_dir() else None
    if path is None:
        return []
    rows = []
    try:
        lines = path.read_text(encoding="utf-8").splitlines()
    except OSError:
        return []
    for line in lines:
        try:
            row = json.loads(line)
        except ValueError:
            continue  # a line being written
        if isinstance(row, dict) and "step" in row and "loss" in row:
            rows.append({"step": int(row["step"]), "loss": float(row["loss"]),
                         **{k: v for k, v in row.items() if k in ("lr", "grad_norm")}})
    return rows


def last_loss(out: Path) -> dict | None:
    rows = read_losses(out)
    return rows[-1] if rows else None


def loss_curve(out: Path) -> Path | None:
    for name in LOSS_PNGS:
        if (out / name).is_file():
            return out / name
    found = sorted(out.glob("*.png")) if out.is_dir() else []
    return found[0] if found else None


def adapter_folder(out: Path) -> Path | None:
    """The newest folder under `out` holding an adapter in the original's format."""
    if not out.is_dir():
        return None
    if (out / LORA_FILE).is_file():
        return out
    found = [p for p in out.rglob(LORA_FILE) if len(p.relative_to(out).parts) <= 4]
    if not found:
        return None
    return max(found, key=lambda p: p.stat().st_mtime).parent


def has_run(out: Path) -> bool:
    return out.is_dir() and ((out / CONFIG_NAME).is_file() or adapter_folder(out) is not None)


# ------------------------------------------------------------------------------ child process
def run_subprocess(cmd: list[str], ctx: JobContext, log_path: Path, cwd: Path,
                   poll: Callable[[], None] | None = None, graceful: bool = False,
                   interval: float = 1.0) -> None:
    """Run `cmd`, its output into `log_path`; a cancel interrupts it (SIGINT, then SIGTERM and
    SIGKILL after a grace period) and raises JobCancelled. A failure raises JobError with the
    end of the log."""
    log_path.parent.mkdir(parents=True, exist_ok=True)
    env = dict(os.environ, PYTHONUNBUFFERED="1")
    # the child runs in the data folder: make sure it imports this copy of the package
    root = str(Path(__file__).resolve().parents[2])
    env["PYTHONPATH"] = os.pathsep.join([root, *filter(None, [env.get("PYTHONPATH")])])
    with open(log_path, "ab") as log:
        log.write(f"\n$ {' '.join(cmd)}\n".encode())
        log.flush()
        proc = subprocess.Popen(cmd, cwd=str(cwd), stdout=log, stderr=subprocess.STDOUT,
                                stdin=subprocess.DEVNULL, env=env, start_new_session=True)
        try:
            while proc.poll() is None:
                if ctx.cancelled:
                    _stop(proc, graceful)
                    raise JobCancelled()
                if poll is not None:
                    poll()
                try:
                    proc.wait(timeout=interval)
                except subprocess.TimeoutExpired:
                    pass
        except BaseException:
            if proc.poll() is None:
                _stop(proc, False)
            raise
    if poll is not None:
        poll()
    if proc.returncode != 0:
        tail = _tail(log_path)
        raise JobError(f"{cmd[3]} failed (exit code {proc.returncode}): {tail}")


def _stop(proc: subprocess.Popen, graceful: bool) -> None:
    steps = ([(signal.SIGINT, STOP_GRACE_S)] if graceful else []) + [
        (signal.SIGTERM, 10.0), (signal.SIGKILL, 10.0)]
    for sig, wait in steps:
        if proc.poll() is not None:
            return
        try:
            os.killpg(proc.pid, sig)
        except ProcessLookupError:
            return
        end = time.monotonic() + wait
        while proc.poll() is None and time.monotonic() < end:
            time.sleep(0.1)


def _tail(path: Path, lines: int = 6) -> str:
    try:
        text = path.read_text(encoding="utf-8", errors="replace").strip().splitlines()
    except OSError:
        return "(no log)"
    return " | ".join(text[-lines:]) or "(no output)"
