"""The REST API (FastAPI) and the web page (Gradio) on one server.

`create_app(config)` returns the FastAPI application: the API routes below, documented by the
OpenAPI schema at /openapi.json (browsable at /docs), and the Gradio page mounted at /.
When ACESTEP_API_KEY is set, every API route needs `Authorization: Bearer KEY` (or
`X-API-Key: KEY`), and the web page asks for the key as its password.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import re
from typing import Annotated, Literal

from fastapi import APIRouter, Depends, FastAPI, Query, Request
from fastapi.responses import FileResponse, JSONResponse
from pydantic import BaseModel, ConfigDict, Field

from . import history
from .jobs import FINAL, RUNNING, Job, QueueFull
from .security import UnsafeRequest, key_from_headers, key_matches
from .service import AppConfig, Service
from .uploads import read_multipart

log = logging.getLogger("acestep_mlx.app")
_JOB_ID = re.compile(r"^[0-9a-f]{32}$")
MEDIA = {".wav": "audio/wav", ".mp3": "audio/mpeg", ".ogg": "audio/ogg", ".flac": "audio/flac"}
Seeds = str | int | list[int] | None


# ------------------------------------------------------------------------------ request models
class GenerateRequest(BaseModel):
    """Any task of the pipeline; names and defaults are the original pipeline's."""

    model_config = ConfigDict(extra="forbid")
    task: Literal["text2music", "retake", "repaint", "extend", "edit", "audio2audio"] = (
        "text2music")
    prompt: str = Field(..., description="comma-separated tags (genre, instruments, mood, BPM)")
    lyrics: str = Field("", description="lyrics with [verse]/[chorus] lines; '' or [inst] for "
                        "instrumental")
    audio_duration: float = Field(60.0, description="seconds (<= 240); <= 0 picks 30-240 s")
    format: Literal["wav", "mp3", "ogg", "flac"] = "wav"
    batch_size: int = Field(1, ge=1, le=16)
    infer_step: int = Field(60, ge=1, le=200)
    guidance_scale: float = 15.0
    scheduler_type: Literal["euler", "heun", "pingpong"] = "euler"
    cfg_type: Literal["apg", "cfg", "cfg_star"] = "apg"
    omega_scale: float = 10.0
    manual_seeds: Seeds = Field(None, description="'1, 2' / 7 / [1, 2]; random when unset")
    guidance_interval: float = 0.5
    guidance_interval_decay: float = 0.0
    min_guidance_scale: float = 3.0
    use_erg_tag: bool = True
    use_erg_lyric: bool = True
    use_erg_diffusion: bool = True
    oss_steps: str | list[int] | None = None
    guidance_scale_text: float = 0.0
    guidance_scale_lyric: float = 0.0
    lora_name_or_path: str | None = Field(
        None, description="unset: the LoRA loaded with /v1/lora/load (if any); 'none': no LoRA; "
        "otherwise a LoRA trained here (its name) or a hub repo id")
    lora_weight: float | None = Field(None, description="unset: the loaded LoRA's strength")
    retake_seeds: Seeds = None
    retake_variance: float = 0.5
    repaint_start: float = 0.0
    repaint_end: float = 0.0
    src_audio: str | None = Field(
        None, description="repaint/extend/edit source: 'job:<job id>[/<index>]' or "
        "'upload:<name>' from POST /v1/audio/upload")
    ref_audio: str | None = Field(None, description="audio2audio reference (same forms)")
    ref_audio_strength: float = 0.5
    extend_left: float = Field(0.0, ge=0, le=240, description="extend: seconds added before")
    extend_right: float = Field(0.0, ge=0, le=240, description="extend: seconds added after")
    edit_target_prompt: str | None = None
    edit_target_lyrics: str | None = None
    edit_preset: Literal["only_lyrics", "remix"] | None = None
    edit_n_min: float = 0.0
    edit_n_max: float = 1.0
    edit_n_avg: int = 1


class DatasetRef(BaseModel):
    model_config = ConfigDict(extra="forbid")
    dataset: str = Field(..., max_length=100)


class TrainRequest(BaseModel):
    model_config = ConfigDict(extra="forbid")
    dataset: str = Field(..., max_length=100, description="a dataset uploaded and prepared")
    name: str | None = Field(None, max_length=100, description="LoRA name (default: dataset)")
    resume: bool = Field(False, description="continue the run called `name`")
    max_steps: int = Field(1000, ge=1, le=10_000_000)
    learning_rate: float = Field(1e-4, gt=0, le=1)
    r: int = Field(16, ge=1, le=1024)
    lora_alpha: float = Field(32, gt=0)
    use_rslora: bool = True
    target_modules: list[str] | None = None
    save_every_n_steps: int = Field(100, ge=1)
    accumulate_grad_batches: int = Field(1, ge=1, le=1024)
    dtype: Literal["float32", "bfloat16"] = "float32"
    gradient_checkpointing: bool = False


class LoraLoad(BaseModel):
    model_config = ConfigDict(extra="forbid")
    name: str = Field(..., max_length=200, description="a LoRA trained here or a hub repo id")
    strength: float = Field(1.0, ge=-3, le=3)


class LoraStrength(BaseModel):
    model_config = ConfigDict(extra="forbid")
    strength: float = Field(..., ge=-3, le=3)


# ------------------------------------------------------------------------------ helpers
def job_view(service: Service, job: Job) -> dict:
    view = {
        "id": job.id, "kind": job.kind, "state": job.state,
        "position": service.queue.position(job), "progress": job.progress,
        "cancel_requested": job.cancel_requested, "created_at": job.created_at,
        "started_at": job.started_at, "finished_at": job.finished_at, "error": job.error,
        "result": job.result,
    }
    if job.kind == "generate":
        view["request"] = service.public_params(job.params)
        if job.state == "done":
            view["audio_urls"] = [f"/v1/jobs/{job.id}/audio?index={f['index']}"
                                  for f in (job.result or {}).get("files", [])]
    return view


def _job(service: Service, job_id: str) -> Job:
    if not _JOB_ID.match(job_id):
        raise UnsafeRequest(f"{job_id!r} is not a job id (32 hexadecimal characters)")
    job = service.queue.get(job_id)
    if job is None:
        raise UnsafeRequest(f"no job with id {job_id}", status=404)
    return job


def _submit(service: Service, kind: str, params: dict) -> JSONResponse:
    job = service.queue.submit(kind, params)
    return JSONResponse(job_view(service, job), status_code=202,
                        headers={"Location": f"/v1/jobs/{job.id}"})


# ------------------------------------------------------------------------------ the app
def create_app(config: AppConfig, with_ui: bool = True) -> tuple[FastAPI, Service]:
    service = Service(config)

    @contextlib.asynccontextmanager
    async def lifespan(app: FastAPI):
        service.start()
        try:
            yield
        finally:
            await asyncio.to_thread(service.stop)

    app = FastAPI(
        title="ACE-Step MLX API", version="1.0", lifespan=lifespan,
        description="Music generation (text2music, retake, repaint, extend, edit, audio2audio), "
        "LoRA switching and LoRA training. Model work runs in one queue, in order: POST routes "
        "that start work answer 202 with a job; poll GET /v1/jobs/{id}. When the server has an "
        "API key (ACESTEP_API_KEY), send `Authorization: Bearer KEY` or `X-API-Key: KEY`.")

    async def require_key(request: Request) -> None:
        expected = config.api_key
        if expected is None:
            return
        given = key_from_headers(request.headers)
        if not given:
            raise UnsafeRequest("this server needs an API key: send 'Authorization: Bearer "
                                "KEY' or 'X-API-Key: KEY'", status=401)
        if not key_matches(given, expected):
            raise UnsafeRequest("wrong API key", status=403)

    @app.exception_handler(UnsafeRequest)
    async def _unsafe(request: Request, exc: UnsafeRequest):
        headers = {"WWW-Authenticate": "Bearer"} if exc.status == 401 else None
        return JSONResponse({"detail": str(exc)}, status_code=exc.status, headers=headers)

    @app.exception_handler(QueueFull)
    async def _full(request: Request, exc: QueueFull):
        return JSONResponse({"detail": str(exc)}, status_code=429, headers={"Retry-After": "30"})

    api = APIRouter(dependencies=[Depends(require_key)])
    S = service  # noqa: N806

    @api.get("/health", tags=["server"], summary="Server, model and queue state")
    def health() -> dict:
        return {"status": "ok", "model_loaded": S.model_loaded, "demo": config.demo,
                "queue": S.queue.counts(), "lora": S.lora_status()}

    # -------------------------------------------------------------- generation
    @api.post("/v1/generate", status_code=202, tags=["generation"],
              summary="Queue a generation (any task); returns the job")
    def generate(req: GenerateRequest) -> JSONResponse:
        fields = req.model_dump()
        src, ref = fields.pop("src_audio"), fields.pop("ref_audio")
        if req.task in ("repaint", "extend", "edit"):
            if not src:
                raise UnsafeRequest(f"task {req.task!r} needs src_audio ('job:<id>' or "
                                    "'upload:<name>')")
            fields["src_audio_path"] = S.resolve_audio_ref(src, "src_audio")
        if req.task == "audio2audio":
            if not ref:
                raise UnsafeRequest("audio2audio needs ref_audio ('job:<id>' or "
                                    "'upload:<name>')")
            fields["ref_audio_input"] = S.resolve_audio_ref(ref, "ref_audio")
        if req.task == "extend" and req.extend_left <= 0 and req.extend_right <= 0:
            raise UnsafeRequest("extend needs extend_left and/or extend_right (seconds > 0)")
        try:
            kw = S.generation_kwargs(fields)
        except ValueError as e:
            if isinstance(e, UnsafeRequest):
                raise
            raise UnsafeRequest(str(e)) from e
        return _submit(S, "generate", kw)

    @api.get("/v1/jobs", tags=["jobs"], summary="Recent jobs (newest last)")
    def jobs(limit: Annotated[int, Query(ge=1, le=500)] = 50) -> list[dict]:
        return [job_view(S, j) for j in S.queue.list()[-limit:]]

    @api.get("/v1/jobs/{job_id}", tags=["jobs"], summary="A job's state and progress")
    def job_state(job_id: str) -> dict:
        return job_view(S, _job(S, job_id))

    @api.get("/v1/jobs/{job_id}/audio", tags=["jobs"], summary="Download a finished job's audio",
             response_class=FileResponse)
    def job_audio(job_id: str, index: Annotated[int, Query(ge=0, le=15)] = 0):
        job = _job(S, job_id)
        if job.kind != "generate":
            raise UnsafeRequest(f"job {job_id} is a {job.kind} job; it has no audio", 404)
        if job.state != "done":
            raise UnsafeRequest(f"job {job_id} is {job.state}; audio exists only when it is done",
                                status=409)
        path = S.output_file(job, index)
        return FileResponse(path, media_type=MEDIA.get(path.suffix, "application/octet-stream"),
                            filename=path.name)

    @api.delete("/v1/jobs/{job_id}", tags=["jobs"], summary="Cancel a queued or running job")
    async def cancel(job_id: str) -> JSONResponse:
        job = _job(S, job_id)
        if job.state in FINAL:
            raise UnsafeRequest(f"job {job_id} already finished ({job.state})", status=409)
        S.queue.cancel(job_id)
        if job.state == RUNNING:  # give it a moment to stop at its next step
            await asyncio.to_thread(S.queue.wait, job_id, 15.0)
        return JSONResponse(job_view(S, job), status_code=200 if job.state in FINAL else 202)

    @api.post("/v1/audio/upload", status_code=201, tags=["generation"],
              summary="Upload an audio file to edit or use as reference (multipart 'file')")
    async def upload_audio(request: Request) -> dict:
        form = await read_multipart(request, S.incoming, config.max_upload_bytes, 1)
        try:
            files = [f for f in form.files if f.field == "file"]
            if len(files) != 1 or len(form.files) != 1:
                raise UnsafeRequest("send exactly one audio file in the multipart field 'file'")
            return S.upload_source(files[0].path, files[0].filename)
        finally:
            form.discard()

    @api.get("/v1/history", tags=["generation"], summary="Past generations (newest first)")
    def history_list(limit: Annotated[int, Query(ge=1, le=1000)] = 100) -> list[dict]:
        return history.list_history(config.output_dir, limit)

    @api.get("/v1/history/{name}", tags=["generation"],
             summary="The metadata JSON of a past generation")
    def history_item(name: str) -> dict:
        return S.public_params(history.load_entry(config.output_dir, name))

    # -------------------------------------------------------------- datasets / training
    @api.post("/v1/dataset/upload", status_code=201, tags=["training"],
              summary="Add songs to a dataset: multipart 'files' (audio), 'prompt' (one, or one "
              "per file), optional 'lyrics', 'dataset' (name, default 'default')")
    async def dataset_upload(request: Request) -> dict:
        form = await read_multipart(request, S.incoming, config.max_upload_bytes,
                                    config.max_files)
        try:
            unknown = {f.field for f in form.files} - {"files"}
            unknown |= set(form.fields) - {"dataset", "prompt", "lyrics"}
            if unknown:
                raise UnsafeRequest(f"unexpected form field(s) {', '.join(sorted(unknown))}; "
                                    "send 'files', 'prompt', 'lyrics' and 'dataset'")
            files = [(f.path, f.filename) for f in form.files]
            return S.add_to_dataset(form.text("dataset", "default") or "default", files,
                                    form.texts("prompt"), form.texts("lyrics"))
        finally:
            form.discard()

    @api.get("/v1/datasets", tags=["training"], summary="Datasets and their songs")
    def datasets() -> list[dict]:
        return S.list_datasets()

    @api.post("/v1/dataset/prepare", status_code=202, tags=["training"],
              summary="Encode a dataset's songs for training (a job)")
    def dataset_prepare(req: DatasetRef) -> JSONResponse:
        S.dataset_dir(req.dataset)
        return _submit(S, "prepare", {"dataset": req.dataset})

    @api.post("/v1/train", status_code=202, tags=["training"],
              summary="Train (or resume) a LoRA on a prepared dataset (a job)")
    def train(req: TrainRequest) -> JSONResponse:
        try:
            params = S.train_request(req.model_dump())
        except ValueError as e:
            if isinstance(e, UnsafeRequest):
                raise
            raise UnsafeRequest(str(e)) from e
        return _submit(S, "train", params)

    @api.get("/v1/train/status", tags=["training"],
             summary="The latest training run: state, step, losses, adapter")
    def train_status() -> dict:
        return S.train_status()

    @api.post("/v1/train/stop", tags=["training"], summary="Stop the queued or running training")
    async def train_stop() -> JSONResponse:
        active = [j for j in S.queue.list("train") if j.state not in FINAL]
        if not active:
            raise UnsafeRequest("no training is queued or running", status=409)
        job = S.queue.cancel(active[-1].id)
        await asyncio.to_thread(S.queue.wait, job.id, 60.0)
        return JSONResponse(job_view(S, job), status_code=200 if job.state in FINAL else 202)

    # -------------------------------------------------------------- LoRA
    @api.get("/v1/lora", tags=["lora"], summary="The loaded LoRA and the ones trained here")
    def lora() -> dict:
        return {**S.lora_status(), "available": S.list_loras()}

    @api.post("/v1/lora/load", status_code=202, tags=["lora"],
              summary="Load (or switch to) a LoRA at a strength (a job)")
    def lora_load(req: LoraLoad) -> JSONResponse:
        name = S.resolve_lora(req.name)
        if name == "none":
            raise UnsafeRequest("name 'none' loads nothing; use POST /v1/lora/unload")
        return _submit(S, "lora_load", {"name": name, "strength": req.strength})

    @api.post("/v1/lora/unload", status_code=202, tags=["lora"], summary="Unload the LoRA")
    def lora_unload() -> JSONResponse:
        return _submit(S, "lora_unload", {})

    @api.post("/v1/lora/strength", status_code=202, tags=["lora"],
              summary="Change the loaded LoRA's strength (a job)")
    def lora_strength(req: LoraStrength) -> JSONResponse:
        if not S.lora_status()["loaded"] and not S.lora_pending():
            raise UnsafeRequest("no LoRA is loaded: load one first (POST /v1/lora/load)", 409)
        return _submit(S, "lora_strength", {"strength": req.strength})

    app.include_router(api)

    if with_ui:
        # the page's uploads land in the data folder (read when the page is built)
        os.environ["GRADIO_TEMP_DIR"] = str(service.gradio_cache)
        import gradio as gr

        from .ui import build_ui

        blocks = build_ui(service)
        auth = None
        if config.api_key:
            def auth(username: str, password: str) -> bool:
                return key_matches(password, config.api_key)

        gr.mount_gradio_app(
            app, blocks, path="/", auth=auth,
            auth_message="This server has an API key: enter any user name and the key as the "
            "password." if config.api_key else None,
            allowed_paths=[str(config.output_dir)], max_file_size=config.max_upload_bytes,
            ssr_mode=False, show_error=True, footer_links=["settings"])
    return app, service
