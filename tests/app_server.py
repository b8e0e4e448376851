"""Test helper: run `python app.py --demo` in a child process on a free port of 127.0.0.1 with
temporary data and output folders, wait until it answers, and stop it afterwards."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import httpx

ROOT = Path(__file__).resolve().parents[1]


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class AppServer:
    """`with AppServer(tmp) as server: httpx.get(server.url + "/health")`."""

    def __init__(self, tmp: Path, api_key: str | None = None, args: tuple[str, ...] = (),
                 port: int | None = None):
        self.tmp = Path(tmp)
        self.api_key = api_key
        self.port = port or free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.data_dir, self.output_dir = self.tmp / "data", self.tmp / "outputs"
        self.log_path = self.tmp / "server.log"
        self.args = args
        self.proc: subprocess.Popen | None = None

    @property
    def headers(self) -> dict:
        return {"Authorization": f"Bearer {self.api_key}"} if self.api_key else {}

    def start(self, timeout: float = 180.0) -> AppServer:
        env = dict(os.environ, PYTHONUNBUFFERED="1")
        env.pop("ACESTEP_API_KEY", None)
        if self.api_key:
            env["ACESTEP_API_KEY"] = self.api_key
        cmd = [sys.executable, str(ROOT / "app.py"), "--demo", "--server_name", "127.0.0.1",
               "--port", str(self.port), "--data_dir", str(self.data_dir), "--output_dir",
               str(self.output_dir), *self.args]
        self._log = open(self.log_path, "wb")  # noqa: SIM115 - closed in stop()
        self.proc = subprocess.Popen(cmd, cwd=str(ROOT), env=env, stdout=self._log,
                                     stderr=subprocess.STDOUT, start_new_session=True)
        end = time.monotonic() + timeout
        while time.monotonic() < end:
            if self.proc.poll() is not None:
                raise RuntimeError(f"the app exited with {self.proc.returncode}:\n{self.log()}")
            try:
                r = httpx.get(self.url + "/health", headers=self.headers, timeout=5)
                if r.status_code == 200 and r.json().get("model_loaded"):
                    return self
            except httpx.HTTPError:
                pass
            time.sleep(0.5)
        self.stop()
        raise RuntimeError(f"the app did not answer within {timeout:.0f} s:\n{self.log()}")

    def log(self) -> str:
        try:
            return self.log_path.read_text(errors="replace")[-4000:]
        except OSError:
            return ""

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            for sig, wait in ((signal.SIGINT, 20), (signal.SIGTERM, 10), (signal.SIGKILL, 10)):
                try:
                    os.killpg(self.proc.pid, sig)
                except ProcessLookupError:
                    break
                try:
                    self.proc.wait(wait)
                    break
                except subprocess.TimeoutExpired:
                    continue
        if getattr(self, "_log", None) is not None:
            self._log.close()
            self._log = None

    def __enter__(self) -> AppServer:
        return self.start()

    def __exit__(self, *exc) -> None:
        self.stop()


def wait_job(client: httpx.Client, job_id: str, timeout: float = 120.0,
             states: tuple[str, ...] = ("done", "failed", "cancelled")) -> dict:
    """Poll GET /v1/jobs/{id} until its state is in `states`."""
    end = time.monotonic() + timeout
    while True:
        job = client.get(f"/v1/jobs/{job_id}").json()
        if job["state"] in states or time.monotonic() > end:
            return job
        time.sleep(0.2)
