"""ACEStepPipeline on MLX: every task of the original (`text2music`, `retake`, `repaint`,
`extend`, `edit`, `audio2audio`) with its parameter names and defaults.

    pipe = ACEStepPipeline.from_pretrained()            # ACE-Step/ACE-Step-v1-3.5B
    paths_and_params = pipe(prompt="lofi, piano", lyrics="[inst]", audio_duration=30)

`pipe.stream(...)` is the same call as a generator: it yields `Progress` events (stage, step,
total) and returns a `GenerationResult`; closing it (or `cancel`) stops before anything is written.

Seeds follow the original's rules, but MLX's random generator is not PyTorch's: a seed gives
different noise (and music) than the original with the same seed. Parity tests inject noise.
"""

from __future__ import annotations

import json
import math
import os
import random
import tempfile
import time
from collections.abc import Callable, Generator
from dataclasses import dataclass, field
from pathlib import Path

import mlx.core as mx
import numpy as np

from . import diffusion as D
from .checkpoint import converted_component_dir, load_component, resolve_checkpoint
from .memory import check_lyric_length
from .noise import Randomness, parse_seeds

TASKS = ("text2music", "retake", "repaint", "extend", "edit", "audio2audio")
FORMATS = ("wav", "mp3", "ogg", "flac")
SCHEDULERS = ("euler", "heun", "pingpong")
CFG_TYPES = ("apg", "cfg", "cfg_star")
MAX_DURATION = 240.0
MAX_STEPS = 200
MAX_BATCH = 16
SAMPLE_RATE = 48000

# the metadata keys of the original, in its order (spec 9.12)
METADATA_KEYS = (
    "format", "lora_name_or_path", "lora_weight", "task", "prompt", "lyrics", "audio_duration",
    "infer_step", "guidance_scale", "scheduler_type", "cfg_type", "omega_scale",
    "guidance_interval", "guidance_interval_decay", "min_guidance_scale", "use_erg_tag",
    "use_erg_lyric", "use_erg_diffusion", "oss_steps", "timecosts", "actual_seeds",
    "retake_seeds", "retake_variance", "guidance_scale_text", "guidance_scale_lyric",
    "repaint_start", "repaint_end", "edit_n_min", "edit_n_max", "edit_n_avg", "src_audio_path",
    "edit_target_prompt", "edit_target_lyrics", "audio2audio_enable", "ref_audio_strength",
    "ref_audio_input", "audio_path",
)


def default_dtype() -> str:
    """bfloat16 on Apple GPUs (Metal), float32 elsewhere (MLX's CPU bf16 matmul is slow)."""
    try:
        return "bfloat16" if mx.metal.is_available() else "float32"
    except AttributeError:  # pragma: no cover - older MLX
        return "float32"


@dataclass
class Progress:
    stage: str  # "preprocess", "diffusion", "decode", "save"
    step: int
    total: int
    message: str = ""


@dataclass
class GenerationResult:
    paths: list[str]
    params: dict
    latents: mx.array
    waveforms: list[np.ndarray] = field(default_factory=list)
    timings: dict[str, float] = field(default_factory=dict)


class GenerationCancelled(RuntimeError):
    """A generation was stopped by its caller; no file was written."""


def _check(cond: bool, msg: str) -> None:
    if not cond:
        raise ValueError(msg)


def validate_params(p: dict) -> None:
    """Clear errors for nonsense before any work is done."""
    _check(p["task"] in TASKS, f"unknown task {p['task']!r}; choose one of {', '.join(TASKS)}")
    _check(p["format"] in FORMATS,
           f"unknown format {p['format']!r}; choose one of {', '.join(FORMATS)}")
    _check(p["scheduler_type"] in SCHEDULERS, f"unknown scheduler_type "
           f"{p['scheduler_type']!r}; choose one of {', '.join(SCHEDULERS)}")
    _check(p["cfg_type"] in CFG_TYPES,
           f"unknown cfg_type {p['cfg_type']!r}; choose one of {', '.join(CFG_TYPES)}")
    prompt = p["prompt"] if p["task"] != "edit" else p["edit_target_prompt"]
    _check(isinstance(p["prompt"], str) and p["prompt"].strip() != "",
           "the prompt is empty: describe the music with tags, e.g. 'pop, piano, 120 bpm'")
    _check(isinstance(prompt, str) and prompt.strip() != "",
           "edit needs edit_target_prompt (the prompt to edit towards)")
    _check(isinstance(p["lyrics"], str),
           "lyrics must be a string ('' or '[inst]' for instrumental music)")
    steps = p["infer_step"]
    _check(isinstance(steps, int) and not isinstance(steps, bool) and 1 <= steps <= MAX_STEPS,
           f"infer_step must be an integer from 1 to {MAX_STEPS} (got {steps!r}); "
           "27 is fast, 60 is the original's default")
    for name in ("guidance_scale", "guidance_scale_text", "guidance_scale_lyric",
                 "min_guidance_scale"):
        v = p[name]
        _check(isinstance(v, (int, float)) and math.isfinite(v) and v >= 0,
               f"{name} must be a number >= 0 (got {v!r})")
    _check(math.isfinite(p["omega_scale"]), "omega_scale must be a finite number")
    for name in ("guidance_interval", "guidance_interval_decay", "retake_variance",
                 "ref_audio_strength", "edit_n_min", "edit_n_max"):
        v = p[name]
        _check(isinstance(v, (int, float)) and 0.0 <= v <= 1.0,
               f"{name} must be between 0 and 1 (got {v!r})")
    _check(isinstance(p["edit_n_avg"], int) and p["edit_n_avg"] >= 1,
           "edit_n_avg must be an integer >= 1")
    b = p["batch_size"]
    _check(isinstance(b, int) and not isinstance(b, bool) and 1 <= b <= MAX_BATCH,
           f"batch_size must be an integer from 1 to {MAX_BATCH} (got {b!r})")
    d = p["audio_duration"]
    _check(isinstance(d, (int, float)) and math.isfinite(d) and d <= MAX_DURATION,
           f"audio_duration must be at most {MAX_DURATION:g} s (got {d!r}); "
           "0 or less picks a random length between 30 and 240 s")
    _check(d <= 0 or D.frames_for(d) >= 1,
           f"audio_duration {d!r} s is too short: at least {4096 / 44100:.3f} s")
    if p["task"] in ("repaint", "extend", "edit"):
        _check(p["src_audio_path"] is not None or p.get("src_latents") is not None,
               f"task {p['task']!r} needs src_audio_path (or src_latents)")
    if p["task"] == "repaint":
        _check(p["repaint_end"] > p["repaint_start"],
               f"repaint_start ({p['repaint_start']}) must be before repaint_end "
               f"({p['repaint_end']})")
        _check(p["repaint_start"] >= 0, "repaint_start must be >= 0 (use task='extend' to add "
               "audio before the start)")
    if p["task"] == "edit":
        _check(isinstance(p["edit_target_lyrics"], str),
               "edit needs edit_target_lyrics (a string; '' for no lyrics)")
        _check(p["edit_n_max"] > p["edit_n_min"], "edit_n_min must be below edit_n_max")
    if p["task"] == "audio2audio":
        _check(p["ref_audio_input"] is not None or p.get("ref_latents") is not None,
               "audio2audio needs ref_audio_input (the reference audio file)")
        _check(p["ref_audio_strength"] < 1.0 and
               int((1 - p["ref_audio_strength"]) * p["infer_step"]) >= 1,
               "ref_audio_strength too high for this infer_step: no step would run; lower it "
               "or raise infer_step")


def parse_oss_steps(oss_steps) -> list[int]:
    if oss_steps is None or oss_steps == "":
        return []
    if isinstance(oss_steps, str):
        try:
            steps = [int(s) for s in oss_steps.split(",") if s.strip()]
        except ValueError as e:
            raise ValueError(f"oss_steps {oss_steps!r}: use integers separated by commas, e.g. "
                             "'16, 29, 52, 96, 129, 158, 172, 183, 189, 200'") from e
    else:
        steps = [int(s) for s in oss_steps]
    _check(all(1 <= s <= 1000 for s in steps), "oss_steps must be between 1 and 1000")
    return steps


class ACEStepPipeline:
    """The ACE-Step v1 models on MLX, with the original's `__call__`."""

    def __init__(self, checkpoint_dir: str | os.PathLike, dtype: str | None = None,
                 cache_dir: str | os.PathLike | None = None, verbose: bool = True, *,
                 low_memory: bool = False, overlapped_decode: bool = False,
                 chunked_decode: bool | None = None, cache_limit_gb: float | None = None):
        """`low_memory`: load each stage's weights only while it runs (text encoder, DiT,
        codec), for 16 GB Macs. `overlapped_decode`: the original's windowed decode above 48 s.
        `chunked_decode`: bounded-memory decode (None = automatic above 48 s).
        `cache_limit_gb`: cap MLX's buffer cache."""
        self.checkpoint_dir = Path(checkpoint_dir)
        self.low_memory = low_memory
        self.overlapped_decode = overlapped_decode
        self.chunked_decode = chunked_decode
        if cache_limit_gb is not None:
            mx.set_cache_limit(int(cache_limit_gb * 1024**3))
        self.dtype_name = dtype or default_dtype()
        if self.dtype_name not in ("float32", "bfloat16"):
            raise ValueError("dtype must be 'float32' or 'bfloat16'")
        self.dtype = mx.bfloat16 if self.dtype_name == "bfloat16" else mx.float32
        self.cache_dir = cache_dir
        self.verbose = verbose
        self._text_encoder = self._text_tokenizer = self._dit = None
        self._codec = self._lyric_tokenizer = None
        self.lora = None  # set by load_lora

    @classmethod
    def from_pretrained(cls, path_or_repo_id: str | os.PathLike | None = None,
                        dtype: str | None = None, cache_dir: str | os.PathLike | None = None,
                        verbose: bool = True, lazy: bool = False, **options) -> ACEStepPipeline:
        """Resolve (download if needed), convert on first use, and load the models.

        `options` are the constructor's (low_memory, overlapped_decode, chunked_decode,
        cache_limit_gb). With low_memory the models load stage by stage during a call."""
        pipe = cls(resolve_checkpoint(path_or_repo_id), dtype, cache_dir, verbose, **options)
        if lazy or pipe.low_memory:
            # still convert everything now, so the first call does not stop to convert
            for name in ("text_encoder", "dit", "dcae", "vocoder"):
                converted_component_dir(pipe.checkpoint_dir, name, pipe.dtype_name,
                                        cache_dir, verbose)
        else:
            pipe.load()
        return pipe

    def _release(self, *names: str) -> None:
        """Drop stage weights (low_memory mode) and return MLX's cached buffers."""
        if self.low_memory:
            for name in names:
                if name == "_dit" and self.lora is not None:
                    self.lora = None  # re-applied with the next model load
                setattr(self, name, None)
        mx.clear_cache()

    # ---------------------------------------------------------------- components
    def _load(self, component: str):
        return load_component(self.checkpoint_dir, component, self.dtype_name,
                              cache_dir=self.cache_dir, verbose=self.verbose)

    @property
    def text_encoder(self):
        if self._text_encoder is None:
            self._text_encoder = self._load("text_encoder")
        return self._text_encoder

    @property
    def text_tokenizer(self):
        if self._text_tokenizer is None:
            from .text.prompt_tokenizer import PromptTokenizer

            self._text_tokenizer = PromptTokenizer.from_dir(self.checkpoint_dir / "umt5-base")
        return self._text_tokenizer

    @property
    def dit(self):
        if self._dit is None:
            self._dit = self._load("dit")
        return self._dit

    @property
    def codec(self):
        if self._codec is None:
            from .codec import MusicDCAE

            self._codec = MusicDCAE.from_checkpoint(self.checkpoint_dir, self.dtype_name,
                                                    cache_dir=self.cache_dir)
        return self._codec

    @property
    def lyric_tokenizer(self):
        if self._lyric_tokenizer is None:
            from .text.lyric_tokenizer import LyricTokenizer

            self._lyric_tokenizer = LyricTokenizer()
        return self._lyric_tokenizer

    def load(self) -> None:
        """Load every component now (otherwise each loads on first use)."""
        for name in ("text_tokenizer", "text_encoder", "dit", "codec", "lyric_tokenizer"):
            getattr(self, name)

    # ---------------------------------------------------------------- building blocks
    def text_embeddings(self, prompts: list[str], erg: bool = False):
        ids, mask = self.text_tokenizer(prompts)
        ids, mask = mx.array(ids), mx.array(mask)
        states = self.text_encoder(ids, mask, erg=erg)
        return states, mask

    def lyric_ids(self, lyrics: str) -> tuple[list[int], list[int]]:
        """(ids, mask) as the pipeline uses them: '' -> a single masked [STOP]."""
        if len(lyrics) == 0:
            return [0], [0]
        ids = self.lyric_tokenizer.tokenize_lyrics(lyrics)
        # DEVIATION (docs/deviations.md): the original has no limit and runs out of memory on
        # very long lyrics; refuse them before any work with the reason and the fix
        check_lyric_length(len(ids), self._lyric_encoder_heads())
        return ids, [1] * len(ids)

    def _lyric_encoder_heads(self) -> int:
        """The lyric encoder's head count from the DiT config (without loading the DiT)."""
        cfg = json.loads((self.checkpoint_dir / "ace_step_transformer" / "config.json")
                         .read_text())
        return int(cfg.get("lyric_encoder_attention_heads", 16))

    def encode_audio(self, path_or_wave, sample_rate: int | None = None) -> mx.array:
        """Latents [1, 8, 16, T] of an audio file (or a [2, N] wave at `sample_rate`)."""
        if isinstance(path_or_wave, (str, os.PathLike)):
            from .audio.io import load_audio

            wave, sample_rate = load_audio(path_or_wave)
        else:
            wave = np.asarray(path_or_wave, dtype=np.float32)
            if sample_rate is None:
                raise ValueError("encode_audio needs sample_rate for a raw waveform")
        if wave.ndim == 2:
            wave = wave[None]
        if wave.shape[-1] / sample_rate > MAX_DURATION:
            raise ValueError(
                f"source audio is {wave.shape[-1] / sample_rate:.1f} s long; the model handles at "
                f"most {MAX_DURATION:g} s: trim it first")
        latents, _ = self.codec.encode(mx.array(wave).astype(self.dtype), sample_rate)
        return latents

    def _conditions(self, prompt: str, lyrics: str, batch: int, erg_tag: bool, trace,
                    idx: int = 0) -> D.Conditions:
        text, mask = self.text_embeddings([prompt])
        trace(f"text_embeddings.{idx}", hidden=text, mask=mask)
        text_null = None
        if erg_tag:
            text_null, _ = self.text_embeddings([prompt], erg=True)
            trace(f"text_embeddings_null.{idx}", hidden=text_null)
        ids, lmask = self.lyric_ids(lyrics)
        trace(f"lyric_token_ids.{idx}", ids=np.array(ids, dtype=np.int64))
        rep = lambda a: mx.repeat(a, batch, axis=0)  # noqa: E731
        return D.Conditions(
            text=rep(text.astype(self.dtype)), text_mask=rep(mask),
            text_null=None if text_null is None else rep(text_null.astype(self.dtype)),
            speaker=mx.zeros((batch, 512), dtype=self.dtype),
            lyric_ids=rep(mx.array([ids])), lyric_mask=rep(mx.array([lmask])))

    # ---------------------------------------------------------------- the call
    def stream(
        self,
        format: str = "wav",
        audio_duration: float = 60.0,
        prompt: str | None = None,
        lyrics: str | None = None,
        infer_step: int = 60,
        guidance_scale: float = 15.0,
        scheduler_type: str = "euler",
        cfg_type: str = "apg",
        omega_scale: float = 10.0,
        manual_seeds=None,
        guidance_interval: float = 0.5,
        guidance_interval_decay: float = 0.0,
        min_guidance_scale: float = 3.0,
        use_erg_tag: bool = True,
        use_erg_lyric: bool = True,
        use_erg_diffusion: bool = True,
        oss_steps=None,
        guidance_scale_text: float = 0.0,
        guidance_scale_lyric: float = 0.0,
        audio2audio_enable: bool = False,
        ref_audio_strength: float = 0.5,
        ref_audio_input: str | None = None,
        lora_name_or_path: str = "none",
        lora_weight: float = 1.0,
        retake_seeds=None,
        retake_variance: float = 0.5,
        task: str = "text2music",
        repaint_start: float = 0,
        repaint_end: float = 0,
        src_audio_path: str | None = None,
        edit_target_prompt: str | None = None,
        edit_target_lyrics: str | None = None,
        edit_n_min: float = 0.0,
        edit_n_max: float = 1.0,
        edit_n_avg: int = 1,
        save_path: str | None = None,
        batch_size: int = 1,
        debug: bool = False,
        *,
        output_dir: str | os.PathLike | None = None,
        src_latents: mx.array | None = None,
        ref_latents: mx.array | None = None,
        noise: Randomness | None = None,
        trace: Callable[..., None] | None = None,
        write_files: bool = True,
    ) -> Generator[Progress, None, GenerationResult]:
        """The original's `__call__` as a generator of Progress events (returns the result)."""
        params = dict(locals())
        for k in ("self", "output_dir", "src_latents", "ref_latents", "noise", "trace",
                  "write_files", "debug", "save_path"):
            params.pop(k)
        params["src_latents"], params["ref_latents"] = src_latents, ref_latents
        if audio2audio_enable and (ref_audio_input is not None or ref_latents is not None):
            task = params["task"] = "audio2audio"
        validate_params(params)
        params.pop("src_latents"), params.pop("ref_latents")
        trace = trace or D._noop
        oss = parse_oss_steps(oss_steps)
        out_paths = []
        if write_files:
            out_paths = self._output_paths(format, batch_size, save_path, output_dir)

        t_start = time.perf_counter()
        yield Progress("preprocess", 0, 1, "loading models")
        if not self.low_memory:
            self._apply_lora(lora_name_or_path, lora_weight)
        t_load = time.perf_counter()
        seeds = parse_seeds(manual_seeds, batch_size)
        rseeds = parse_seeds(retake_seeds, batch_size)
        rand = noise or Randomness.seeded(seeds, rseeds)
        if audio_duration <= 0:
            audio_duration = random.uniform(30.0, 240.0)

        cond = self._conditions(prompt, lyrics, batch_size, use_erg_tag, trace)
        if task == "retake":
            repaint_start, repaint_end = 0, audio_duration
        if src_latents is None and src_audio_path is not None and task in (
                "repaint", "edit", "extend"):
            src_latents = self.encode_audio(src_audio_path)
        if ref_latents is None and ref_audio_input is not None and task == "audio2audio":
            ref_latents = self.encode_audio(ref_audio_input)
        if task == "repaint" and src_latents is not None:
            src_seconds = src_latents.shape[-1] * 4096 / 44100
            _check(D.frames_for(repaint_end) <= src_latents.shape[-1] and
                   D.frames_for(repaint_start) < src_latents.shape[-1],
                   f"repaint range {repaint_start}-{repaint_end} s is outside the source audio "
                   f"({src_seconds:.2f} s); use task='extend' to add audio beyond its end")
        if task == "extend" and src_latents is not None:
            src_seconds = src_latents.shape[-1] * 4096 / 44100
            left, right = -repaint_start, repaint_end - src_seconds
            _check(0 <= left <= MAX_DURATION and -0.5 <= right <= MAX_DURATION,
                   f"extend lengths must be between 0 and {MAX_DURATION:g} s (left "
                   f"{left:g} s, right {right:g} s): pass repaint_start = -left seconds and "
                   "repaint_end = source length + right seconds")
        mx.eval(cond.text, cond.text_mask)
        if task == "edit":
            tar = self._conditions(edit_target_prompt, edit_target_lyrics, batch_size, False,
                                   trace, idx=1)
            mx.eval(tar.text)
        self._release("_text_encoder", "_codec")
        if self.low_memory:
            self._apply_lora(lora_name_or_path, lora_weight)
        t_pre = time.perf_counter()
        yield Progress("preprocess", 1, 1, "conditions ready")

        if task == "edit":
            gen = D.flowedit_steps(
                self.dit, cond, tar, src_latents, rand, infer_steps=infer_step,
                guidance_scale=guidance_scale, n_min=edit_n_min, n_max=edit_n_max,
                n_avg=edit_n_avg, scheduler_type=scheduler_type, cfg_type=cfg_type,
                dtype=self.dtype, trace=trace)
        else:
            gen = D.text2music_steps(
                self.dit, cond, rand, duration=audio_duration, infer_steps=infer_step,
                guidance_scale=guidance_scale, omega_scale=omega_scale,
                scheduler_type=scheduler_type, cfg_type=cfg_type,
                guidance_interval=guidance_interval,
                guidance_interval_decay=guidance_interval_decay,
                min_guidance_scale=min_guidance_scale, oss_steps=oss,
                use_erg_lyric=use_erg_lyric, use_erg_diffusion=use_erg_diffusion,
                retake_variance=retake_variance,
                add_retake_noise=task in ("retake", "repaint", "extend"),
                guidance_scale_text=guidance_scale_text,
                guidance_scale_lyric=guidance_scale_lyric, repaint_start=repaint_start,
                repaint_end=repaint_end, src_latents=src_latents,
                audio2audio_enable=task == "audio2audio",
                ref_audio_strength=ref_audio_strength, ref_latents=ref_latents,
                dtype=self.dtype, trace=trace)
        # One step of look-ahead: step k is submitted with `async_eval`, and the graph of step
        # k + 1 is built while it runs; the progress event of a step is yielded once its latents
        # are computed (the only host wait in the loop). Cancelling at an event stops after the
        # step already in flight; nothing of it is written.
        pending = None
        while True:
            try:
                step = next(gen)
            except StopIteration as stop:
                latents = stop.value
                break
            mx.async_eval(step.latents)
            if pending is not None:
                mx.eval(pending.latents)
                yield Progress("diffusion", pending.index + 1, pending.total,
                               f"t={pending.timestep:.1f}")
            pending = step
        if pending is not None:
            mx.eval(pending.latents)
            yield Progress("diffusion", pending.index + 1, pending.total,
                           f"t={pending.timestep:.1f}")
        trace("final_latents", latents=latents)
        mx.eval(latents)
        t_diff = time.perf_counter()

        self._release("_dit")
        yield Progress("decode", 0, 1, "decoding audio")
        seconds = latents.shape[-1] * 4096 / 44100
        chunked = self.chunked_decode if self.chunked_decode is not None else seconds > 48
        overlapped = self.overlapped_decode and audio_duration > 48
        waves = self.codec.decode(latents, sample_rate=SAMPLE_RATE, overlapped=overlapped,
                                  chunked=chunked and not overlapped)
        self._release("_codec")
        waves = [np.asarray(w, dtype=np.float32) for w in waves]
        for i, w in enumerate(waves):
            trace(f"waveform_48k.{i}", wave=w)
        t_dec = time.perf_counter()
        yield Progress("decode", 1, 1, "decoded")

        timecosts = {"preprocess": t_pre - t_load, "diffusion": t_diff - t_pre,
                     "latent2audio": t_dec - t_diff}
        meta = self._metadata(params, task, prompt, lyrics, audio_duration, oss, timecosts,
                              seeds, rseeds, repaint_start, repaint_end, edit_target_prompt,
                              edit_target_lyrics)
        if write_files:
            yield Progress("save", 0, len(waves), "writing files")
            self._write_outputs(out_paths, waves, format, meta)
        timings = {"load": t_load - t_start, **timecosts,
                   "total": time.perf_counter() - t_start}
        return GenerationResult(out_paths, meta, latents, waves, timings)

    def __call__(self, *args, callback: Callable[[Progress], bool | None] | None = None,
                 **kwargs) -> list:
        """Run a generation; returns `[path_0, ..., path_{B-1}, params]` like the original.

        `callback(progress)` is called for every event; returning True cancels.
        """
        result = self.generate(*args, callback=callback, **kwargs)
        return [*result.paths, result.params]

    def generate(self, *args, callback=None, **kwargs) -> GenerationResult:
        gen = self.stream(*args, **kwargs)
        while True:
            try:
                event = next(gen)
            except StopIteration as stop:
                return stop.value
            if callback is not None and callback(event):
                gen.close()
                raise GenerationCancelled(f"cancelled during {event.stage}")

    # ---------------------------------------------------------------- LoRA
    def _apply_lora(self, name: str, weight: float) -> None:
        if name in (None, "", "none"):
            if self.lora is not None:
                self.unload_lora()
            return
        self.load_lora(name, weight)

    def load_lora(self, name_or_path: str, weight: float = 1.0) -> None:
        from .lora import load_lora_into

        current = self.lora
        if current is not None and current.name == name_or_path:
            current.set_strength(weight)
            return
        # the new adapter is checked fully before the current one is removed: a refused adapter
        # leaves the pipeline as it was
        self.lora = load_lora_into(self.dit, name_or_path, weight, cache_dir=self.cache_dir,
                                   replace=current)

    def unload_lora(self) -> None:
        if self.lora is not None:
            self.lora.remove()
            self.lora = None

    # ---------------------------------------------------------------- outputs
    def _output_paths(self, fmt: str, batch: int, save_path, output_dir) -> list[str]:
        stamp = time.strftime("%Y%m%d%H%M%S")
        if save_path is not None and not Path(save_path).is_dir():
            base = Path(save_path)
            if base.suffix.lower() != f".{fmt}":
                raise ValueError(f"save_path {base} must end with .{fmt} (format={fmt!r})")
            folder = base.parent
            names = [base.name if i == 0 else f"{base.stem}_{i}{base.suffix}"
                     for i in range(batch)]
        else:
            folder = Path(save_path) if save_path is not None else Path(output_dir or "outputs")
            names = [f"output_{stamp}_{i}.{fmt}" for i in range(batch)]
        if folder.exists() and not folder.is_dir():
            raise NotADirectoryError(f"output folder {folder} is a file, not a folder; choose "
                                     "another with --output-dir")
        try:
            folder.mkdir(parents=True, exist_ok=True)
        except OSError as e:
            raise PermissionError(f"output folder {folder} is not writable (cannot create it: "
                                  f"{e.strerror}); choose another with --output-dir") from e
        if not os.access(folder, os.W_OK):
            raise PermissionError(f"output folder {folder} is not writable; choose another with "
                                  "--output-dir")
        paths = []
        for name in names:
            p = folder / name
            if save_path is not None and not Path(save_path).is_dir() and p.exists():
                raise FileExistsError(f"{p} exists; not overwriting it (choose another name)")
            n = 1
            while p.exists() or p.with_name(p.stem + "_input_params.json").exists() \
                    or str(p) in paths:
                p = folder / f"{Path(name).stem}-{n}{Path(name).suffix}"
                n += 1
            paths.append(str(p))
        return paths

    def _metadata(self, params, task, prompt, lyrics, duration, oss, timecosts, seeds, rseeds,
                  repaint_start, repaint_end, edit_target_prompt, edit_target_lyrics) -> dict:
        values = dict(params)
        values.update(
            task=task, prompt=prompt if task != "edit" else edit_target_prompt,
            lyrics=lyrics if task != "edit" else edit_target_lyrics, audio_duration=duration,
            oss_steps=oss, timecosts=timecosts, actual_seeds=seeds, retake_seeds=rseeds,
            repaint_start=repaint_start, repaint_end=repaint_end, audio_path=None)
        return {k: values.get(k) for k in METADATA_KEYS}

    def _write_outputs(self, paths, waves, fmt, meta) -> None:
        from .audio.io import save_audio

        written: list[Path] = []
        try:
            for path, wave in zip(paths, waves, strict=True):
                save_audio(path, wave, SAMPLE_RATE, fmt)
                written.append(Path(path))
                item = dict(meta, audio_path=path)
                jpath = Path(path).with_name(Path(path).stem + "_input_params.json")
                _atomic_write_text(jpath, json.dumps(item, indent=4, ensure_ascii=False))
                written.append(jpath)
        except BaseException:
            for p in written:  # a batch is written whole or not at all
                p.unlink(missing_ok=True)
            raise


def _atomic_write_text(path: Path, text: str) -> None:
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as f:
            f.write(text)
            f.flush()
            os.fsync(f.fileno())
        umask = os.umask(0)
        os.umask(umask)
        os.chmod(tmp, 0o666 & ~umask)
        if path.exists():
            raise FileExistsError(f"{path} appeared while writing; not overwriting it")
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
