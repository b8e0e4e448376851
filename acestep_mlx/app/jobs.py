"""One job queue for all model work: a single worker thread runs jobs in the order accepted.

Job states: queued -> running -> done | failed | cancelled. Every accepted job ends in one of
the three final states (or, when the server stops while it is waiting or running, it is kept as
queued on disk and runs again at the next start): none is lost. Cancelling a queued job removes
it at once; a running job stops at its next progress event (the runner checks `ctx.cancelled`).
"""

from __future__ import annotations

import json
import logging
import os
import secrets
import tempfile
import threading
import time
from collections import deque
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path

log = logging.getLogger("acestep_mlx.app")

QUEUED, RUNNING, DONE, FAILED, CANCELLED = "queued", "running", "done", "failed", "cancelled"
FINAL = (DONE, FAILED, CANCELLED)
STAGE_SPAN = {"load": (0.0, 0.05), "preprocess": (0.05, 0.1), "diffusion": (0.1, 0.9),
              "decode": (0.9, 0.98), "save": (0.98, 1.0)}


class JobCancelled(Exception):
    """Raised by a runner that saw the cancel flag (nothing of the job is kept)."""


class QueueFull(RuntimeError):
    pass


class JobError(RuntimeError):
    """A job failed for a reason the user can act on (the message is shown as is)."""


@dataclass
class Job:
    id: str
    kind: str
    params: dict
    state: str = QUEUED
    created_at: float = field(default_factory=time.time)
    started_at: float | None = None
    finished_at: float | None = None
    progress: dict = field(default_factory=lambda: {"stage": "queued", "step": 0, "total": 0,
                                                    "fraction": 0.0, "message": ""})
    result: dict | None = None
    error: str | None = None
    cancel_requested: bool = False
    owner: str | None = None  # a UI session, when started from the web page

    def to_json(self) -> dict:
        return asdict(self)


class JobContext:
    """What a runner sees: progress reporting and the cancel flag."""

    def __init__(self, job: Job, queue: JobQueue):
        self.job, self._queue = job, queue

    @property
    def cancelled(self) -> bool:
        return self.job.cancel_requested or self._queue.stopping

    def check(self) -> None:
        if self.cancelled:
            raise JobCancelled()

    def report(self, stage: str, step: int, total: int, message: str = "",
               fraction: float | None = None) -> None:
        if fraction is None:
            lo, hi = STAGE_SPAN.get(stage, (0.0, 1.0))
            fraction = lo + (hi - lo) * (step / total if total else 0.0)
        self.job.progress = {"stage": stage, "step": int(step), "total": int(total),
                             "fraction": round(min(max(fraction, 0.0), 1.0), 4),
                             "message": message}
        self._queue._changed(self.job, persist=False)


Runner = Callable[[Job, JobContext], dict | None]


class JobQueue:
    """Jobs run one at a time by one worker thread, in submission order."""

    def __init__(self, runners: dict[str, Runner], state_dir: str | os.PathLike | None = None,
                 max_waiting: int = 100, keep_finished: int = 500):
        self.runners = runners
        self.state_dir = Path(state_dir) if state_dir else None
        self.max_waiting, self.keep_finished = max_waiting, keep_finished
        self.jobs: dict[str, Job] = {}
        self._waiting: deque[str] = deque()
        self._cond = threading.Condition()
        self._thread: threading.Thread | None = None
        self.stopping = False
        self.current: str | None = None
        if self.state_dir:
            self.state_dir.mkdir(parents=True, exist_ok=True)
            self._restore()

    # ------------------------------------------------------------------ persistence
    def _restore(self) -> None:
        found = []
        for path in self.state_dir.glob("*.json"):
            try:
                data = json.loads(path.read_text(encoding="utf-8"))
                found.append(Job(**data))
            except (OSError, ValueError, TypeError) as e:
                log.warning("ignoring unreadable job record %s: %s", path.name, e)
        for job in sorted(found, key=lambda j: j.created_at):
            if job.state in (QUEUED, RUNNING):  # interrupted by a stop: run again
                if job.cancel_requested:
                    job.state, job.finished_at, job.error = CANCELLED, time.time(), None
                else:
                    job.state, job.started_at = QUEUED, None
                    job.progress = Job(id="", kind="", params={}).progress
                    self._waiting.append(job.id)
            self.jobs[job.id] = job
            self._persist(job)

    def _persist(self, job: Job) -> None:
        if not self.state_dir:
            return
        path = self.state_dir / f"{job.id}.json"
        fd, tmp = tempfile.mkstemp(prefix=f".{job.id}.", suffix=".tmp", dir=self.state_dir)
        try:
            with os.fdopen(fd, "w", encoding="utf-8") as f:
                json.dump(job.to_json(), f, default=str)
            os.replace(tmp, path)
        except BaseException:
            Path(tmp).unlink(missing_ok=True)
            raise

    def _prune(self) -> None:
        finished = sorted((j for j in self.jobs.values() if j.state in FINAL),
                          key=lambda j: j.finished_at or 0)
        for job in finished[:max(0, len(finished) - self.keep_finished)]:
            self.jobs.pop(job.id, None)
            if self.state_dir:
                (self.state_dir / f"{job.id}.json").unlink(missing_ok=True)

    def _changed(self, job: Job, persist: bool = True) -> None:
        with self._cond:
            if persist:
                self._persist(job)
            self._cond.notify_all()

    # ------------------------------------------------------------------ public API
    def start(self) -> None:
        if self._thread is None:
            self.stopping = False
            self._thread = threading.Thread(target=self._work, name="acestep-jobs", daemon=True)
            self._thread.start()

    def stop(self, timeout: float = 30.0) -> None:
        """Stop after the running job yields (it is kept as queued for the next start)."""
        with self._cond:
            self.stopping = True
            self._cond.notify_all()
        if self._thread is not None:
            self._thread.join(timeout)
            self._thread = None

    def submit(self, kind: str, params: dict, owner: str | None = None) -> Job:
        if kind not in self.runners:
            raise ValueError(f"unknown job kind {kind!r}")
        with self._cond:
            if self.stopping:
                raise QueueFull("the server is shutting down; try again after it restarts")
            if len(self._waiting) >= self.max_waiting:
                raise QueueFull(f"{len(self._waiting)} jobs are waiting (the limit is "
                                f"{self.max_waiting}); try again when some have finished")
            job = Job(id=secrets.token_hex(16), kind=kind, params=params, owner=owner)
            self.jobs[job.id] = job
            self._waiting.append(job.id)
            self._persist(job)
            self._cond.notify_all()
        return job

    def get(self, job_id: str) -> Job | None:
        return self.jobs.get(job_id)

    def position(self, job: Job) -> int | None:
        """0 for the next job to run, None when not waiting."""
        with self._cond:
            try:
                return self._waiting.index(job.id)
            except ValueError:
                return None

    def list(self, kind: str | None = None) -> list[Job]:
        with self._cond:
            jobs = [j for j in self.jobs.values() if kind is None or j.kind == kind]
        return sorted(jobs, key=lambda j: j.created_at)

    def cancel(self, job_id: str) -> Job:
        """Cancel a queued (at once) or running (at its next step) job."""
        with self._cond:
            job = self.jobs[job_id]
            if job.state == QUEUED:
                self._waiting.remove(job.id)
                job.cancel_requested = True
                job.state, job.finished_at = CANCELLED, time.time()
                job.progress = dict(job.progress, stage="cancelled")
                self._persist(job)
            elif job.state == RUNNING:
                job.cancel_requested = True
                self._persist(job)
            self._cond.notify_all()
        return job

    def wait(self, job_id: str, timeout: float | None = None,
             until: Callable[[Job], bool] | None = None) -> Job:
        """Block until the job is final (or `until(job)`), or the timeout passes."""
        end = None if timeout is None else time.monotonic() + timeout
        done = until or (lambda j: j.state in FINAL)
        with self._cond:
            job = self.jobs[job_id]
            while not done(job):
                left = None if end is None else end - time.monotonic()
                if left is not None and left <= 0:
                    break
                self._cond.wait(left if left is not None else 1.0)
        return job

    def counts(self) -> dict:
        with self._cond:
            return {"waiting": len(self._waiting), "running": self.current}

    # ------------------------------------------------------------------ worker
    def _work(self) -> None:
        while True:
            with self._cond:
                while not self._waiting and not self.stopping:
                    self._cond.wait()
                if self.stopping:
                    return
                job = self.jobs[self._waiting.popleft()]
                job.state, job.started_at = RUNNING, time.time()
                job.progress = dict(job.progress, stage="starting")
                self.current = job.id
                self._persist(job)
                self._cond.notify_all()
            self._run(job)
            with self._cond:
                self.current = None
                self._prune()
                self._cond.notify_all()

    def _run(self, job: Job) -> None:
        ctx = JobContext(job, self)
        state, result, error = FAILED, None, None
        try:
            ctx.check()
            result = self.runners[job.kind](job, ctx) or {}
            state = DONE
        except JobCancelled:
            state = CANCELLED
        except (ValueError, FileNotFoundError, FileExistsError, PermissionError, JobError,
                NotImplementedError) as e:
            error = str(e)
        except Exception as e:  # noqa: BLE001 - a failing job must not stop the worker
            log.exception("job %s (%s) failed", job.id, job.kind)
            error = f"{type(e).__name__}: {e}"
        with self._cond:
            if state == CANCELLED and self.stopping and not job.cancel_requested:
                job.state, job.started_at = QUEUED, None  # interrupted by a stop: kept
            else:
                job.state, job.finished_at = state, time.time()
                job.result, job.error = result, error
                if state == DONE:
                    job.progress = dict(job.progress, stage="done", fraction=1.0)
                elif state == CANCELLED:
                    job.progress = dict(job.progress, stage="cancelled")
            self._persist(job)
            self._cond.notify_all()
