"""`scripts/start_macos.sh` on this Linux machine (the script accepts Linux for testing).

The virtual environment is made beforehand with `--system-site-packages` and the script's
install stamp, so the script reuses it instead of installing everything again; every other step
(.env, port check, weights, start) runs as a user would run it.
"""

from __future__ import annotations

import hashlib
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import httpx
import pytest
from app_server import ROOT, free_port

SCRIPT = ROOT / "scripts" / "start_macos.sh"


@pytest.fixture(scope="module")
def venv(tmp_path_factory) -> Path:
    path = tmp_path_factory.mktemp("venv") / "env"
    subprocess.run([sys.executable, "-m", "venv", "--system-site-packages", "--without-pip",
                    str(path)], check=True)
    stamp = hashlib.sha256((ROOT / "pyproject.toml").read_bytes()).hexdigest()
    (path / ".acestep_mlx_installed").write_text(stamp)
    return path


def _env(venv: Path, env_file: Path) -> dict:
    env = {k: v for k, v in os.environ.items()
           if k not in ("PORT", "SERVER_NAME", "CHECKPOINT", "ACESTEP_API_KEY")}
    env.update(VENV=str(venv), ENV_FILE=str(env_file), PYTHON=sys.executable,
               PYTHONUNBUFFERED="1")
    return env


def test_starts_the_app_on_the_demo_checkpoint_from_env(venv, tmp_path):
    port = free_port()
    env_file = tmp_path / ".env"
    env_file.write_text(f"# settings\nPORT={port}\nSERVER_NAME=127.0.0.1\nCHECKPOINT=demo\n"
                        "ACESTEP_API_KEY='s3cret'  # quoted, with a comment\n")
    log = tmp_path / "start.log"
    with open(log, "wb") as out:
        proc = subprocess.Popen(
            ["bash", str(SCRIPT), "--data_dir", str(tmp_path / "data"), "--output_dir",
             str(tmp_path / "out")], cwd=str(ROOT), env=_env(venv, env_file), stdout=out,
            stderr=subprocess.STDOUT, start_new_session=True)
    try:
        end = time.monotonic() + 180
        health = None
        while time.monotonic() < end and proc.poll() is None:
            try:
                r = httpx.get(f"http://127.0.0.1:{port}/health",
                              headers={"Authorization": "Bearer s3cret"}, timeout=5)
                if r.status_code == 200 and r.json().get("model_loaded"):
                    health = r.json()
                    break
            except httpx.HTTPError:
                pass
            time.sleep(0.5)
        text = log.read_text(errors="replace")
        assert health is not None, f"the app did not come up:\n{text}"
        assert "virtual environment up to date" in text
        assert "API key: required" in text
        assert f"starting the app on http://127.0.0.1:{port}" in text
        # the key from .env is enforced
        r = httpx.get(f"http://127.0.0.1:{port}/v1/train/status", timeout=5)
        assert r.status_code == 401
    finally:
        os.killpg(proc.pid, signal.SIGTERM)
        try:
            proc.wait(timeout=20)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()


def test_port_in_use_says_so_and_how_to_pick_another(venv, tmp_path):
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        s.listen(1)
        port = s.getsockname()[1]
        env_file = tmp_path / ".env"
        env_file.write_text(f"PORT={port}\nCHECKPOINT=demo\n")
        r = subprocess.run(["bash", str(SCRIPT)], cwd=str(ROOT), env=_env(venv, env_file),
                           capture_output=True, text=True, timeout=120)
    assert r.returncode != 0
    assert f"port {port} on 127.0.0.1 is already in use" in r.stderr
    assert f"PORT={port + 1}" in r.stderr


@pytest.mark.parametrize("value", ["abc", "0", "70000"])
def test_bad_port_in_env_is_refused(venv, tmp_path, value):
    env_file = tmp_path / ".env"
    env_file.write_text(f"PORT={value}\n")
    r = subprocess.run(["bash", str(SCRIPT), "--demo"], cwd=str(ROOT),
                       env=_env(venv, env_file), capture_output=True, text=True, timeout=60)
    assert r.returncode != 0
    assert f"PORT={value} is not a port number (1-65535); fix it in {env_file}" in r.stderr
