"""The app's engine, shared by the REST API and the web page: folders, the job queue and its
runners (generation, LoRA switching, dataset preparation, training), request checking.

All model work goes through `Service.queue` (one worker thread, jobs in order). Only that thread
touches the pipeline. Paths that come from clients are resolved here and must lie inside the
server's folders (`data_dir`, `output_dir`, the web page's upload cache).
"""

from __future__ import annotations

import gc
import inspect
import logging
import os
import re
import secrets
from dataclasses import dataclass, field
from pathlib import Path

from . import training
from .jobs import DONE, Job, JobCancelled, JobContext, JobError, JobQueue
from .security import (
    AUDIO_EXTENSIONS,
    DEFAULT_MAX_UPLOAD_MB,
    UnsafeRequest,
    audio_file_name,
    hub_repo_id,
    is_inside,
    safe_join,
    safe_name,
)

log = logging.getLogger("acestep_mlx.app")
MAX_SOURCE_SECONDS = 240.0
_JOB_REF = re.compile(r"^job:([0-9a-f]{32})(?:/(\d{1,2}))?$")
_UPLOAD_REF = re.compile(r"^upload:([A-Za-z0-9._-]{1,140})$")


@dataclass
class AppConfig:
    """Where the app keeps things and which model it serves."""

    checkpoint: str | None = None  # folder / hub repo id; None -> ACE-Step/ACE-Step-v1-3.5B
    demo: bool = False  # serve the tiny random demo checkpoint
    dtype: str | None = None  # None: bfloat16 on Apple GPUs, float32 elsewhere
    output_dir: Path = field(default_factory=lambda: Path("outputs"))
    data_dir: Path = field(default_factory=lambda: Path("acestep_data"))
    cache_dir: Path | None = None  # converted weights (default $ACESTEP_MLX_CACHE)
    api_key: str | None = None
    max_upload_mb: float = DEFAULT_MAX_UPLOAD_MB
    max_files: int = 50
    preload: bool = True  # load the model when the server starts
    server_name: str = "127.0.0.1"
    port: int = 7865

    def __post_init__(self):
        self.output_dir = Path(self.output_dir).expanduser().resolve()
        self.data_dir = Path(self.data_dir).expanduser().resolve()
        if self.cache_dir is not None:
            self.cache_dir = Path(self.cache_dir).expanduser().resolve()
        if self.dtype not in (None, "float32", "bfloat16"):
            raise ValueError("dtype must be float32 or bfloat16")
        if not self.max_upload_mb > 0:
            raise ValueError("max_upload_mb must be > 0")

    @property
    def max_upload_bytes(self) -> int:
        return int(self.max_upload_mb * 1e6)


def _stream_defaults() -> dict:
    from acestep_mlx.pipeline import ACEStepPipeline

    sig = inspect.signature(ACEStepPipeline.stream)
    return {k: p.default for k, p in sig.parameters.items()
            if k != "self" and p.kind is p.POSITIONAL_OR_KEYWORD}


EDIT_PRESETS = {"only_lyrics": (0.6, 1.0), "remix": (0.2, 0.4)}


def extend_range(src_seconds: float, left: float, right: float) -> tuple[float, float]:
    """(repaint_start, repaint_end) that add `left` / `right` seconds to a source, as the CLI
    computes them: the pipeline measures the right part after adding the left one (an upstream
    quirk kept for parity), so the left length is added back when extending on the right."""
    return (-left if left else 0.0), src_seconds + right + (left if right > 0 else 0.0)


def audio_info(path: Path, max_seconds: float | None = None) -> dict:
    """Checks that an audio file really decodes; returns its duration, rate and channels."""
    import soundfile as sf

    try:
        info = sf.info(str(path))
    except Exception as e:  # noqa: BLE001 - libsndfile raises several types
        raise UnsafeRequest(f"{path.name}: not a readable audio file ({e}); send wav, flac, "
                            "ogg or mp3", status=415) from e
    if info.frames <= 0 or info.samplerate <= 0:
        raise UnsafeRequest(f"{path.name}: the file holds no audio", status=415)
    seconds = info.frames / info.samplerate
    if max_seconds is not None and seconds > max_seconds:
        raise UnsafeRequest(f"{path.name}: {seconds:.1f} s of audio; at most {max_seconds:g} s "
                            "can be edited (trim it first)")
    return {"duration": round(seconds, 3), "sample_rate": info.samplerate,
            "channels": info.channels}


class Service:
    """Folders, the queue and the model; see the module docstring."""

    def __init__(self, config: AppConfig, gradio_cache: Path | None = None):
        self.config = config
        d = config.data_dir
        self.uploads, self.incoming = d / "uploads", d / "incoming"
        self.datasets, self.prepared, self.loras = d / "datasets", d / "prepared", d / "loras"
        self.gradio_cache = gradio_cache or d / "gradio"
        for folder in (config.output_dir, self.uploads, self.incoming, self.datasets,
                       self.prepared, self.loras, self.gradio_cache):
            folder.mkdir(parents=True, exist_ok=True)
        for stale in self.incoming.glob("upload-*.part"):
            stale.unlink(missing_ok=True)
        self._pipe = None
        self._lora_wanted: tuple[str, float] | None = None  # restored after a reload
        self.checkpoint = self._checkpoint_spec()
        self.queue = JobQueue(
            {"load": self._run_load, "generate": self._run_generate,
             "lora_load": self._run_lora_load, "lora_unload": self._run_lora_unload,
             "lora_strength": self._run_lora_strength, "prepare": self._run_prepare,
             "train": self._run_train},
            state_dir=d / "jobs")
        self.defaults = _stream_defaults()

    # ------------------------------------------------------------------ lifecycle
    def start(self) -> None:
        self.queue.start()
        if self.config.preload and not any(j.kind == "load" and j.state == "queued"
                                           for j in self.queue.list()):
            self.queue.submit("load", {})

    def stop(self) -> None:
        self.queue.stop()

    def _checkpoint_spec(self) -> str | None:
        if self.config.demo:
            from acestep_mlx.demo import demo_checkpoint

            return str(demo_checkpoint(self.config.cache_dir))
        return self.config.checkpoint

    @property
    def model_loaded(self) -> bool:
        return self._pipe is not None

    def pipeline(self, ctx: JobContext | None = None):
        """The pipeline, loaded on first use (worker thread only)."""
        if self._pipe is None:
            from acestep_mlx.pipeline import ACEStepPipeline

            if ctx:
                ctx.report("load", 0, 1, "loading the model (first use converts the weights)")
            pipe = ACEStepPipeline.from_pretrained(self.checkpoint, dtype=self.config.dtype,
                                                   cache_dir=self.config.cache_dir)
            if self._lora_wanted is not None:
                pipe.load_lora(*self._lora_wanted)
            self._pipe = pipe
            if ctx:
                ctx.report("load", 1, 1, "model loaded")
        return self._pipe

    def _release_pipeline(self) -> None:
        """Free the model's memory (training runs in its own process)."""
        if self._pipe is not None:
            lora = self._pipe.lora
            self._lora_wanted = (lora.name, lora.strength) if lora is not None else None
            self._pipe = None
            gc.collect()
            try:
                import mlx.core as mx

                mx.clear_cache()
            except (ImportError, AttributeError):  # pragma: no cover
                pass

    # ------------------------------------------------------------------ LoRA
    def lora_status(self) -> dict:
        if self._pipe is not None and self._pipe.lora is not None:
            return {"loaded": True, "name": self._display_lora(self._pipe.lora.name),
                    "strength": self._pipe.lora.strength}
        if self._pipe is None and self._lora_wanted is not None:
            return {"loaded": True, "name": self._display_lora(self._lora_wanted[0]),
                    "strength": self._lora_wanted[1]}
        return {"loaded": False, "name": "none", "strength": None}

    def _display_lora(self, spec: str) -> str:
        p = Path(spec)
        if p.is_absolute() and is_inside(p, [self.loras]):
            return p.relative_to(self.loras.resolve()).parts[0]
        return spec

    def resolve_lora(self, spec: str | None) -> str | None:
        """A LoRA the server may load: a trained one (by name) or a hub repo id. None / 'none'
        pass through. Local paths are refused (the server only reads its own folders)."""
        if spec is None:
            return None
        spec = spec.strip()
        if spec in ("", "none"):
            return "none"
        if "/" not in spec:
            name = safe_name(spec, "LoRA name")
            if name != spec:
                raise UnsafeRequest(f"LoRA name {spec!r} has characters outside [A-Za-z0-9._-]")
            folder = training.adapter_folder(safe_join(self.loras, name))
            if folder is None:
                raise UnsafeRequest(f"no trained LoRA called {spec!r}: train one first, or give "
                                    "a hub repo id such as ACE-Step/ACE-Step-v1-chinese-rap-LoRA",
                                    status=404)
            return str(folder)
        if not hub_repo_id(spec) or Path(spec).exists():
            raise UnsafeRequest(f"LoRA {spec!r} must be the name of a LoRA trained here or a hub "
                                "repo id (owner/name); local paths are not accepted")
        return spec

    def list_loras(self) -> list[dict]:
        out = []
        for folder in sorted(self.loras.iterdir()) if self.loras.is_dir() else []:
            if folder.is_dir() and not folder.name.startswith("."):
                adapter = training.adapter_folder(folder)
                out.append({"name": folder.name, "ready": adapter is not None})
        return out

    # ------------------------------------------------------------------ uploads
    def store_audio(self, tmp: Path, filename: str, folder: Path, max_seconds: float | None,
                    stem: str | None = None) -> tuple[Path, dict]:
        """Check an uploaded temporary file and move it into `folder` under a safe name."""
        name = audio_file_name(filename)
        info = audio_info(tmp, max_seconds)
        base = safe_name(stem, "name") if stem else Path(name).stem
        dest = safe_join(folder, base + Path(name).suffix)
        n = 1
        while dest.exists() or _siblings_exist(dest):
            dest = safe_join(folder, f"{base}-{n}{Path(name).suffix}")
            n += 1
        os.replace(tmp, dest)
        return dest, info

    def upload_source(self, tmp: Path, filename: str) -> dict:
        """An audio file to edit (repaint/extend/edit) or to use as audio2audio reference."""
        stem = f"{secrets.token_hex(4)}_{Path(audio_file_name(filename)).stem}"[:90]
        dest, info = self.store_audio(tmp, filename, self.uploads, MAX_SOURCE_SECONDS, stem)
        return {"ref": f"upload:{dest.name}", "name": dest.name, "bytes": dest.stat().st_size,
                **info}

    def resolve_audio_ref(self, ref: str, what: str) -> str:
        """'job:<id>[/<index>]' or 'upload:<name>' -> a file inside the server's folders."""
        if not isinstance(ref, str):
            raise UnsafeRequest(f"{what} must be a string")
        m = _JOB_REF.match(ref.strip())
        if m:
            job = self.queue.get(m.group(1))
            if job is None or job.kind != "generate":
                raise UnsafeRequest(f"{what}: no generation job {m.group(1)}", status=404)
            if job.state != DONE:
                raise UnsafeRequest(f"{what}: job {job.id} is {job.state}, not done", status=409)
            files = job.result.get("files", [])
            idx = int(m.group(2) or 0)
            if idx >= len(files):
                raise UnsafeRequest(f"{what}: job {job.id} has {len(files)} file(s)", status=404)
            path = safe_join(self.config.output_dir, files[idx]["name"])
        else:
            m = _UPLOAD_REF.match(ref.strip())
            if not m:
                raise UnsafeRequest(f"{what} {ref!r}: use 'job:<job id>' (optionally "
                                    "'job:<job id>/<index>') or 'upload:<name>' as returned by "
                                    "POST /v1/audio/upload")
            path = safe_join(self.uploads, safe_name(m.group(1), what))
        if not path.is_file():
            raise UnsafeRequest(f"{what} {ref!r}: the file is gone", status=404)
        return str(path)

    def check_local_audio(self, path: str | None, what: str,
                          max_seconds: float | None = MAX_SOURCE_SECONDS) -> str | None:
        """A path from the web page: must be an audio file inside the server's folders."""
        if path in (None, ""):
            return None
        p = Path(path).resolve()
        roots = [self.config.output_dir, self.uploads, self.gradio_cache, self.datasets]
        if not is_inside(p, roots):
            raise UnsafeRequest(f"{what}: files outside the server's folders are not used")
        if p.suffix.lower() not in AUDIO_EXTENSIONS:
            raise UnsafeRequest(f"{what}: {p.name} is not an audio file "
                                f"({', '.join(AUDIO_EXTENSIONS)})", status=415)
        if not p.is_file():
            raise UnsafeRequest(f"{what}: {p.name} not found", status=404)
        if p.stat().st_size > self.config.max_upload_bytes:
            raise UnsafeRequest(f"{what}: {p.name} is larger than "
                                f"{self.config.max_upload_mb:g} MB", status=413)
        audio_info(p, max_seconds)
        return str(p)

    # ------------------------------------------------------------------ generation
    def generation_kwargs(self, req: dict) -> dict:
        """Request fields (the pipeline's names + extend_left/right, edit_preset) -> checked
        pipeline keyword arguments. `src_audio_path` / `ref_audio_input` must already be
        resolved to files inside the server's folders."""
        from acestep_mlx.noise import parse_seeds
        from acestep_mlx.pipeline import parse_oss_steps, validate_params

        kw = dict(self.defaults)
        kw.update({k: v for k, v in req.items() if k in self.defaults and v is not None})
        kw.pop("save_path", None), kw.pop("debug", None)  # outputs go to the output folder
        if kw["lyrics"] is None:
            kw["lyrics"] = ""
        task = kw["task"]
        if task == "edit":  # the original UI's fallbacks and presets
            if kw.get("edit_target_prompt") is None:
                kw["edit_target_prompt"] = kw["prompt"]
            if kw.get("edit_target_lyrics") is None:
                kw["edit_target_lyrics"] = kw["lyrics"]
            preset = req.get("edit_preset")
            if preset is not None:
                kw["edit_n_min"], kw["edit_n_max"] = EDIT_PRESETS[preset]
        if task == "extend":
            left = float(req.get("extend_left") or 0.0)
            right = float(req.get("extend_right") or 0.0)
            if not kw.get("src_audio_path"):
                raise ValueError("extend needs a source audio (src_audio)")
            if left < 0 or right < 0 or (left == 0 and right == 0):
                raise ValueError("extend needs extend_left and/or extend_right: seconds (> 0) "
                                 "to add before and/or after the source")
            src = audio_info(Path(kw["src_audio_path"]))["duration"]
            kw["repaint_start"], kw["repaint_end"] = extend_range(src, left, right)
            kw["retake_variance"] = 1.0
        if task == "repaint" and kw.get("src_audio_path"):
            src = audio_info(Path(kw["src_audio_path"]))["duration"]
            if kw["repaint_end"] > src + 0.1:
                raise ValueError(f"repaint range {kw['repaint_start']}-{kw['repaint_end']} s is "
                                 f"outside the source audio ({src:.2f} s); use task 'extend' to "
                                 "add audio beyond its end")
        kw["audio2audio_enable"] = task == "audio2audio"
        if task == "audio2audio" and not kw.get("ref_audio_input"):
            raise ValueError("audio2audio needs a reference audio (ref_audio)")
        if task not in ("repaint", "extend", "edit"):
            kw["src_audio_path"] = None
        if task != "audio2audio":
            kw["ref_audio_input"] = None
        if task == "retake" and not kw.get("manual_seeds"):
            raise ValueError("retake needs manual_seeds: the seeds of the take to vary "
                             "(actual_seeds of its metadata)")
        kw["lora_name_or_path"] = self.resolve_lora(req.get("lora_name_or_path"))
        if kw["lora_name_or_path"] is None:
            kw["lora_weight"] = req.get("lora_weight")  # None -> the loaded one's strength
        check = dict(kw, src_latents=None, ref_latents=None,
                     lora_name_or_path=kw["lora_name_or_path"] or "none")
        if check["task"] == "audio2audio":
            check["audio2audio_enable"] = True
        validate_params(check)
        parse_oss_steps(kw.get("oss_steps"))
        for name in ("manual_seeds", "retake_seeds"):
            parse_seeds(kw.get(name), kw["batch_size"])
        return kw

    def submit_generation(self, kw: dict, owner: str | None = None) -> Job:
        return self.queue.submit("generate", kw, owner=owner)

    def _run_load(self, job: Job, ctx: JobContext) -> dict:
        self.pipeline(ctx)
        return {"checkpoint": Path(str(self.checkpoint)).name if self.checkpoint else None}

    def _run_generate(self, job: Job, ctx: JobContext) -> dict:
        pipe = self.pipeline(ctx)
        kw = dict(job.params)
        if kw.get("lora_name_or_path") is None:  # the loaded LoRA (if any) at its strength
            lora = pipe.lora
            kw["lora_name_or_path"] = lora.name if lora is not None else "none"
            weight = kw.get("lora_weight")
            kw["lora_weight"] = weight if weight is not None else (
                lora.strength if lora is not None else 1.0)
        gen = pipe.stream(**kw, output_dir=str(self.config.output_dir))
        try:
            while True:
                if ctx.cancelled:
                    gen.close()
                    raise JobCancelled()
                try:
                    ev = next(gen)
                except StopIteration as stop:
                    result = stop.value
                    break
                ctx.report(ev.stage, ev.step, ev.total, ev.message)
        finally:
            gen.close()
        files = [{"index": i, "name": Path(p).name, "metadata": Path(p).stem +
                  "_input_params.json"} for i, p in enumerate(result.paths)]
        params = dict(result.params, audio_path=result.paths[0] if result.paths else None)
        return {"files": files, "params": self.public_params(params),
                "timings": {k: round(v, 3) for k, v in result.timings.items()}}

    def public_params(self, params: dict) -> dict:
        """Metadata with server paths shortened to their names."""
        out = dict(params)
        for key in ("audio_path", "src_audio_path", "ref_audio_input", "lora_name_or_path"):
            v = out.get(key)
            if isinstance(v, str) and os.path.isabs(v):
                out[key] = self._display_lora(v) if key == "lora_name_or_path" else Path(v).name
        return out

    def output_file(self, job: Job, index: int) -> Path:
        files = (job.result or {}).get("files", [])
        if not 0 <= index < len(files):
            raise UnsafeRequest(f"job {job.id} has {len(files)} file(s); index {index} does not "
                                "exist", status=404)
        path = safe_join(self.config.output_dir, files[index]["name"])
        if not path.is_file():
            raise UnsafeRequest(f"{files[index]['name']} was removed from the output folder",
                                status=410)
        return path

    # ------------------------------------------------------------------ LoRA jobs
    def _run_lora_load(self, job: Job, ctx: JobContext) -> dict:
        pipe = self.pipeline(ctx)
        pipe.load_lora(job.params["name"], float(job.params["strength"]))
        return self.lora_status()

    def _run_lora_unload(self, job: Job, ctx: JobContext) -> dict:
        if self._pipe is not None:
            self._pipe.unload_lora()
        self._lora_wanted = None
        return self.lora_status()

    def _run_lora_strength(self, job: Job, ctx: JobContext) -> dict:
        strength = float(job.params["strength"])
        if self._pipe is not None and self._pipe.lora is not None:
            self._pipe.lora.set_strength(strength)
        elif self._pipe is None and self._lora_wanted is not None:
            self._lora_wanted = (self._lora_wanted[0], strength)
        else:
            raise JobError("no LoRA is loaded: load one first (POST /v1/lora/load)")
        return self.lora_status()

    def lora_pending(self) -> bool:
        return any(j.kind == "lora_load" and j.state in ("queued", "running")
                   for j in self.queue.list())

    # ------------------------------------------------------------------ datasets / training
    def dataset_dir(self, name: str, create: bool = False) -> Path:
        clean = safe_name(name, "dataset name")
        if clean != name.strip():
            raise UnsafeRequest(f"dataset name {name!r}: use only letters, digits, '.', '_', '-'")
        folder = safe_join(self.datasets, clean)
        if create:
            folder.mkdir(parents=True, exist_ok=True)
        elif not folder.is_dir():
            raise UnsafeRequest(f"no dataset called {name!r}; upload files to it first",
                                status=404)
        return folder

    def add_to_dataset(self, dataset: str, files: list[tuple[Path, str]], prompts: list[str],
                       lyrics: list[str]) -> dict:
        """Store uploaded songs with their prompt (and lyrics) texts; all or nothing."""
        if not files:
            raise UnsafeRequest("no audio files in the request (field 'files')")
        n = len(files)
        if len(prompts) not in (1, n):
            raise UnsafeRequest(f"{n} file(s) but {len(prompts)} prompt(s): send one prompt for "
                                "all files or one per file, in the same order")
        if len(lyrics) not in (0, 1, n):
            raise UnsafeRequest(f"{n} file(s) but {len(lyrics)} lyrics texts: send none, one for "
                                "all files or one per file")
        prompts = prompts * n if len(prompts) == 1 else prompts
        lyrics = (lyrics * n if len(lyrics) == 1 else lyrics) or [""] * n
        for i, p in enumerate(prompts):
            if not p.strip():
                raise UnsafeRequest(f"prompt {i + 1} is empty: describe the song with "
                                    "comma-separated tags, e.g. 'pop, piano, 100 bpm'")
        names = [audio_file_name(fn) for _, fn in files]  # all names checked before any move
        for tmp, _ in files:
            audio_info(tmp)
        folder = self.dataset_dir(dataset, create=True)
        stored = []
        try:
            for (tmp, fn), name, prompt, lyric in zip(files, names, prompts, lyrics, strict=True):
                dest, info = self.store_audio(tmp, fn, folder, None, Path(name).stem)
                stored.append(dest)
                ptxt = dest.with_name(f"{dest.stem}_prompt.txt")
                ptxt.write_text(prompt.strip() + "\n", encoding="utf-8")
                stored.append(ptxt)
                if lyric.strip():
                    ltxt = dest.with_name(f"{dest.stem}_lyrics.txt")
                    ltxt.write_text(lyric.strip() + "\n", encoding="utf-8")
                    stored.append(ltxt)
        except BaseException:
            for p in stored:
                p.unlink(missing_ok=True)
            raise
        return self.dataset_info(dataset)

    def dataset_info(self, name: str) -> dict:
        folder = self.dataset_dir(name)
        songs = []
        for p in sorted(folder.iterdir()):
            if p.suffix.lower() in AUDIO_EXTENSIONS and p.is_file():
                lyr = p.with_name(f"{p.stem}_lyrics.txt")
                songs.append({"name": p.name, "bytes": p.stat().st_size,
                              "prompt": _read(p.with_name(f"{p.stem}_prompt.txt")),
                              "has_lyrics": lyr.is_file()})
        prepared = training.prepared_summary(safe_join(self.prepared, folder.name))
        return {"dataset": folder.name, "songs": songs, "prepared": prepared}

    def list_datasets(self) -> list[dict]:
        return [self.dataset_info(p.name) for p in sorted(self.datasets.iterdir())
                if p.is_dir() and not p.name.startswith(".")]

    def _run_prepare(self, job: Job, ctx: JobContext) -> dict:
        name = job.params["dataset"]
        src = self.dataset_dir(name)
        out = safe_join(self.prepared, src.name)
        self._release_pipeline()
        cmd = training.prepare_command(src, out, self.checkpoint, self.config.cache_dir)
        log_path = out.parent / f"{src.name}.prepare.log"
        training.run_subprocess(cmd, ctx, log_path, cwd=self.config.data_dir,
                                poll=lambda: ctx.report("prepare", 0, 1, "encoding songs",
                                                        fraction=0.5))
        summary = training.prepared_summary(out)
        if summary is None:
            raise JobError(f"prepare wrote no dataset; see {log_path.name}")
        return summary

    def train_request(self, req: dict) -> dict:
        """Checks a training request; returns the job parameters."""
        dataset = self.dataset_dir(req["dataset"])
        prepared = safe_join(self.prepared, dataset.name)
        if training.prepared_summary(prepared) is None and not self._prepare_pending(dataset.name):
            raise UnsafeRequest(f"dataset {dataset.name!r} is not prepared yet: POST "
                                "/v1/dataset/prepare first", status=409)
        name = req.get("name") or dataset.name
        clean = safe_name(name, "LoRA name")
        if clean != name:
            raise UnsafeRequest(f"LoRA name {name!r}: use only letters, digits, '.', '_', '-'")
        out = safe_join(self.loras, clean)
        if training.has_run(out) and not req.get("resume"):
            raise UnsafeRequest(f"a LoRA called {clean!r} was already trained here: pass "
                                "resume=true to continue it, or choose another name", 409)
        if req.get("resume") and not training.has_run(out):
            raise UnsafeRequest(f"nothing to resume: no training run called {clean!r}", 404)
        if any(j.kind == "train" and j.state in ("queued", "running")
               for j in self.queue.list()):
            raise UnsafeRequest("a training run is already queued or running; stop it first "
                                "(POST /v1/train/stop)", 409)
        cfg = training.train_config(req, prepared, out, self.checkpoint, self.config.cache_dir)
        return {"name": clean, "dataset": dataset.name, "config": cfg,
                "resume": bool(req.get("resume"))}

    def _prepare_pending(self, dataset: str) -> bool:
        return any(j.kind == "prepare" and j.params.get("dataset") == dataset
                   and j.state in ("queued", "running") for j in self.queue.list())

    def _run_train(self, job: Job, ctx: JobContext) -> dict:
        out = safe_join(self.loras, job.params["name"])
        out.mkdir(parents=True, exist_ok=True)
        self._release_pipeline()
        cfg_path = training.write_config(out, job.params["config"])
        cmd = training.train_command(cfg_path, job.params.get("resume", False))
        total = int(job.params["config"].get("max_steps", 0))

        def poll() -> None:
            last = training.last_loss(out)
            if last is not None:
                ctx.report("train", last["step"], total, f"loss {last['loss']:.4f}")

        training.run_subprocess(cmd, ctx, out / "train.log", cwd=self.config.data_dir,
                                poll=poll, graceful=True)
        return self.train_status_of(out)

    def train_status_of(self, out: Path) -> dict:
        losses = training.read_losses(out)
        adapter = training.adapter_folder(out)
        return {"name": out.name, "steps_logged": len(losses),
                "last": losses[-1] if losses else None, "adapter_ready": adapter is not None,
                "loss_curve": training.loss_curve(out) is not None}

    def train_status(self) -> dict:
        jobs = self.queue.list("train")
        if not jobs:
            return {"state": "idle", "job": None, "loras": self.list_loras()}
        job = jobs[-1]
        out = safe_join(self.loras, job.params["name"])
        status = self.train_status_of(out)
        status["losses"] = training.read_losses(out)[-500:]
        return {"state": job.state, "job": job.id, "progress": job.progress,
                "error": job.error, **status, "loras": self.list_loras()}


def _siblings_exist(audio: Path) -> bool:
    return any(audio.with_name(f"{audio.stem}{s}").exists()
               for s in ("_prompt.txt", "_lyrics.txt"))


def _read(path: Path) -> str | None:
    try:
        return path.read_text(encoding="utf-8").strip()
    except OSError:
        return None
