"""LoRA fine-tuning of the ACE-Step DiT in MLX, as the original `trainer.py` does it (spec 10).

One optimiser step = `accumulate_grad_batches` micro-batches of one song each (the original's
batch size). Per micro-batch, in the original's order of random draws:

1. the song's tags are shuffled and joined (the prompt), encoded by UMT5 (frozen, float32);
2. condition dropout: three uniforms; text states zeroed when < 0.15, the speaker embedding
   (always zeros, as the original's dataset yields) when < 0.5, lyric ids AND mask when < 0.15;
3. `noise ~ N(0, I)` like the latents; 4. `u ~ N(mean, std)`, `k = clamp(long(sigmoid(u) * 1000),
   0, 999)`, `t = timesteps[k]`, `sigma = sigmas[k]` on the 1000-entry construction-time grid
   (shift applied once);
5. `x_t = sigma * noise + (1 - sigma) * x0`, the DiT predicts `v`, `x0_pred = x_t - sigma * v`,
   loss = MSE(x0_pred, x0) over all elements, divided by the accumulation count.

Then the gradient (LoRA A/B only) is clipped to total norm 0.5 and AdamW (torch semantics: lr
1e-4, betas 0.8/0.9, eps 1e-8, decoupled weight decay 1e-2) is applied with the LambdaLR factor
`step / 10` during warm-up, then `max(0, 1 - (step - 10) / (max_steps - 10))`; the first step runs
at lr 0, as in the original.

Not reproduced (deliberately): the MERT/mHuBERT alignment (REPA) losses (those models are not
part of this port; `diffusion_loss` accepts precomputed SSL features, used by the parity check);
the lyric encoder's dropout (p 0.1 in the original's training mode; the port's conformer has no
dropout, like the training reference, which was made in eval mode); the original's sample
generation every 2000 steps (`plot_step`); multi-song batches (the original's batch is one song;
use `accumulate_grad_batches`).

Long runs: randomness is counter-based (numpy PCG64 keyed by (seed, step, micro-batch); the
song order of each epoch keyed by (seed, epoch)), so a resumed run continues exactly as if it had
never stopped. A checkpoint (adapter in the original's format + AdamW moments + step) is written
atomically every `save_every_n_steps` and at the end; SIGINT/SIGTERM finish the current step,
save and exit; after a SIGKILL the next `run` resumes from the newest complete checkpoint. A
NaN/Inf loss or gradient stops the run before the update, keeps (and saves) the last good adapter
and says what happened. Every step is appended to `loss_log.jsonl`; `loss_curve.png` is redrawn
every `plot_every_n_steps`.
"""

from __future__ import annotations

import json
import math
import os
import re
import shutil
import signal
import sys
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import mlx.core as mx
import mlx.nn as nn
import numpy as np
from mlx.utils import tree_flatten

from acestep_mlx.lora import (
    LORA_FILE,
    LoRAAdapter,
    add_lora_adapters,
    make_trainable,
    peft_key,
    read_lora_file,
    save_lora_file,
)
from acestep_mlx.train.config import TrainConfig
from acestep_mlx.train.dataset import PreparedDataset, atomic_write_json, make_prompt

LOG_FILE = "loss_log.jsonl"
PLOT_FILE = "loss_curve.png"
STATE_JSON = "training_state.json"
STATE_TENSORS = "training_state.safetensors"
LAST_POINTER = "last_checkpoint.json"
STATE_FORMAT = "acestep_mlx-lora-train-state"
STATE_VERSION = 1
SPEAKER_DIM = 512
_CKPT_RE = re.compile(r"^epoch=(\d+)-step=(\d+)_lora$")


class TrainingDiverged(RuntimeError):
    """A NaN/Inf loss or gradient; the update was not applied."""


class ResumeError(ValueError):
    """An output folder whose saved run cannot be continued with this config."""


# ---------------------------------------------------------------------------------------------
# the objective


@dataclass
class Conditions:
    """DiT conditions of a batch (numpy or MLX arrays)."""

    text: mx.array  # [B, Lt, D_text] UMT5 last hidden state
    text_mask: mx.array  # [B, Lt] int
    speaker: mx.array  # [B, 512]
    lyric_ids: mx.array  # [B, Ll] int
    lyric_mask: mx.array  # [B, Ll] int


@dataclass
class StepRandomness:
    """The random draws of one micro-batch, in the original's order."""

    cfg_rand: np.ndarray  # [3, B] uniforms: text, speaker, lyrics
    noise: np.ndarray  # like the latents
    normal: np.ndarray  # [B] N(0, 1) draw of the timestep sampler

    @classmethod
    def draw(cls, rng: np.random.Generator, latent_shape: tuple[int, ...]) -> StepRandomness:
        b = latent_shape[0]
        cfg = rng.random((3, b), dtype=np.float32)
        noise = rng.standard_normal(latent_shape, dtype=np.float32)
        normal = rng.standard_normal((b,), dtype=np.float32)
        return cls(cfg, noise, normal)


def apply_cfg_dropout(
    cond: Conditions, cfg_rand, p_text: float = 0.15, p_speaker: float = 0.5, p_lyrics: float = 0.15
) -> Conditions:
    """Classifier-free-guidance dropout (spec 10.3): per item, zero the text states (mask kept),
    the speaker embedding, or the lyric ids AND mask when its uniform is below p."""
    r = np.asarray(cfg_rand, np.float32)
    keep_t, keep_s, keep_l = (
        mx.array(r[i] >= p) for i, p in enumerate((p_text, p_speaker, p_lyrics))
    )
    text = mx.array(cond.text)
    spk = mx.array(cond.speaker)
    ids = mx.array(cond.lyric_ids)
    lmask = mx.array(cond.lyric_mask)
    return Conditions(
        text=mx.where(keep_t[:, None, None], text, mx.zeros_like(text)),
        text_mask=mx.array(cond.text_mask),
        speaker=mx.where(keep_s[:, None], spk, mx.zeros_like(spk)),
        lyric_ids=mx.where(keep_l[:, None], ids, mx.zeros_like(ids)),
        lyric_mask=mx.where(keep_l[:, None], lmask, mx.zeros_like(lmask)),
    )


def timesteps_from_normal(
    z, grid_timesteps: np.ndarray, grid_sigmas: np.ndarray, mean: float = 0.0, std: float = 1.0
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Logit-normal timesteps (spec 10.4): `u = sigmoid(mean + std * z)` (float32),
    `k = clamp(long(u * n), 0, n - 1)`, -> (timesteps[k], sigmas[k], k)."""
    n = len(grid_timesteps)
    u = (np.float32(mean) + np.float32(std) * np.asarray(z, np.float32)).astype(np.float32)
    s = (1.0 / (1.0 + np.exp(-u.astype(np.float64)))).astype(np.float32)
    k = np.clip(np.trunc(s * np.float32(n)).astype(np.int64), 0, n - 1)
    return grid_timesteps[k].astype(np.float32), grid_sigmas[k].astype(np.float32), k


def diffusion_loss(
    model: nn.Module,
    latents: mx.array,
    cond: Conditions,
    noise: mx.array,
    timesteps: mx.array,
    sigmas: mx.array,
    ssl_hidden_states: list | None = None,
    ssl_coeff: float = 1.0,
) -> tuple[mx.array, dict]:
    """The original's `run_step` loss (x0-prediction MSE, float32) -> (loss, parts).

    parts: noisy_latents, model_pred_raw, denoising_loss, proj_losses (name -> loss).
    """
    x0 = latents.astype(mx.float32)
    b = x0.shape[0]
    sig = sigmas.astype(mx.float32).reshape(b, 1, 1, 1)
    noisy = sig * noise.astype(mx.float32) + (1.0 - sig) * x0
    mask = mx.ones((b, x0.shape[-1]), mx.float32)
    out = model(
        noisy,
        mask,
        cond.text,
        cond.text_mask,
        cond.speaker,
        cond.lyric_ids,
        cond.lyric_mask,
        timesteps.astype(mx.float32),
        ssl_hidden_states=ssl_hidden_states,
    )
    raw = out if isinstance(out, mx.array) else out.sample
    proj = [] if isinstance(out, mx.array) else out.proj_losses
    pred = raw.astype(mx.float32) * (-sig) + noisy
    per_item = mx.mean(mx.square(pred - x0).reshape(b, -1), axis=1)
    denoising = mx.mean(per_item)
    loss = denoising
    if proj:
        loss = loss + (sum(v for _, v in proj) / len(proj)) * ssl_coeff
    return loss, {
        "noisy_latents": noisy,
        "model_pred_raw": raw,
        "denoising_loss": denoising,
        "proj_losses": dict(proj),
    }


def lora_grads(
    model: nn.Module,
    latents,
    cond: Conditions,
    noise,
    timesteps,
    sigmas,
    ssl_hidden_states=None,
    loss_scale: float = 1.0,
) -> tuple[mx.array, dict[str, mx.array]]:
    """(loss, {PEFT key: gradient}) of the trainable (LoRA) parameters; loss unscaled."""

    def fn(*args):
        loss, _ = diffusion_loss(model, *args, ssl_hidden_states=ssl_hidden_states)
        return loss * loss_scale if loss_scale != 1 else loss

    value, grads = nn.value_and_grad(model, fn)(latents, cond, noise, timesteps, sigmas)
    flat = {}
    for name, g in tree_flatten(grads):
        module, _, part = name.rpartition(".")
        flat[peft_key(module, part)] = g
    return (value / loss_scale if loss_scale != 1 else value), flat


# ---------------------------------------------------------------------------------------------
# optimisation


def lr_factor(step: int, warmup_steps: int, max_steps: int) -> float:
    """The original LambdaLR factor at optimiser step `step` (0-based)."""
    if step < warmup_steps:
        return float(step) / float(max(1, warmup_steps))
    return max(0.0, 1.0 - float(step - warmup_steps) / float(max(1, max_steps - warmup_steps)))


def total_norm(grads: dict[str, mx.array]) -> mx.array:
    """`clip_grad_norm_`'s norm: the 2-norm of the per-tensor 2-norms (float32)."""
    norms = mx.stack([mx.linalg.norm(g.astype(mx.float32).reshape(-1)) for g in grads.values()])
    return mx.linalg.norm(norms)


def clip_grads(grads: dict[str, mx.array], max_norm: float, norm: mx.array) -> dict[str, mx.array]:
    """torch `clip_grad_norm_`: multiply every gradient by min(1, max_norm / (norm + 1e-6))."""
    coef = mx.minimum(mx.array(max_norm, mx.float32) / (norm + 1e-6), 1.0)
    return {k: g * coef for k, g in grads.items()}


class AdamW:
    """torch.optim.AdamW (amsgrad off, maximize off) on a flat dict of float32 parameters."""

    def __init__(self, betas=(0.8, 0.9), eps: float = 1e-8, weight_decay: float = 1e-2):
        self.beta1, self.beta2 = (float(b) for b in betas)
        self.eps = float(eps)
        self.weight_decay = float(weight_decay)
        self.step = 0
        self.exp_avg: dict[str, mx.array] = {}
        self.exp_avg_sq: dict[str, mx.array] = {}

    def update(
        self, params: dict[str, mx.array], grads: dict[str, mx.array], lr: float
    ) -> dict[str, mx.array]:
        self.step += 1
        bc1 = 1.0 - self.beta1**self.step
        bc2_sqrt = math.sqrt(1.0 - self.beta2**self.step)
        step_size = lr / bc1
        out = {}
        for k, p in params.items():
            g = grads[k].astype(mx.float32)
            m = self.exp_avg.get(k, mx.zeros_like(p))
            v = self.exp_avg_sq.get(k, mx.zeros_like(p))
            p = p * (1.0 - lr * self.weight_decay)
            m = m + (1.0 - self.beta1) * (g - m)  # lerp with weight 1 - beta1 (< 0.5)
            v = v * self.beta2 + (1.0 - self.beta2) * (g * g)
            denom = mx.sqrt(v) / bc2_sqrt + self.eps
            out[k] = p - step_size * (m / denom)
            self.exp_avg[k], self.exp_avg_sq[k] = m, v
        return out

    def state_arrays(self) -> dict[str, mx.array]:
        d = {f"exp_avg.{k}": v for k, v in self.exp_avg.items()}
        d.update({f"exp_avg_sq.{k}": v for k, v in self.exp_avg_sq.items()})
        return d

    def load_state(self, step: int, arrays: dict[str, np.ndarray], keys) -> None:
        self.step = int(step)
        need = {f"exp_avg.{k}" for k in keys} | {f"exp_avg_sq.{k}" for k in keys}
        if self.step > 0 and not need <= set(arrays):
            raise ResumeError(
                "the saved optimiser state does not match the adapter "
                f"(missing {sorted(need - set(arrays))[:2]})"
            )
        self.exp_avg = {
            k: mx.array(arrays[f"exp_avg.{k}"]) for k in keys if f"exp_avg.{k}" in arrays
        }
        self.exp_avg_sq = {
            k: mx.array(arrays[f"exp_avg_sq.{k}"]) for k in keys if f"exp_avg_sq.{k}" in arrays
        }


# ---------------------------------------------------------------------------------------------
# gradient checkpointing


def _checkpointed_class(cls: type) -> type:
    """A subclass of `cls` whose __call__ recomputes its activations in the backward pass."""
    call = cls.__call__

    def __call__(self, *args, **kwargs):
        def inner(params, *a, **k):
            self.update(params)
            return call(self, *a, **k)

        return mx.checkpoint(inner)(self.trainable_parameters(), *args, **kwargs)

    return type(f"Checkpointed{cls.__name__}", (cls,), {"__call__": __call__})


def enable_gradient_checkpointing(model: nn.Module) -> int:
    """Recompute the DiT blocks and the lyric-encoder layers in the backward pass (what
    diffusers' `enable_gradient_checkpointing` does for the original). Only these instances
    change class; returns how many modules were wrapped."""
    mods = list(getattr(model, "transformer_blocks", []))
    enc = getattr(model, "lyric_encoder", None)
    mods += list(getattr(enc, "encoders", []) if enc is not None else [])
    classes: dict[type, type] = {}
    for m in mods:
        cls = type(m)
        if cls.__name__.startswith("Checkpointed"):
            continue
        m.__class__ = classes.setdefault(cls, _checkpointed_class(cls))
    return len(mods)


# ---------------------------------------------------------------------------------------------
# loss log


class LossLog:
    """`loss_log.jsonl`: one JSON object per optimiser step."""

    def __init__(self, path: Path):
        self.path = Path(path)

    def records(self) -> list[dict]:
        if not self.path.is_file():
            return []
        out = []
        for line in self.path.read_text(encoding="utf-8").splitlines():
            try:
                out.append(json.loads(line))
            except ValueError:  # a line cut by a kill
                continue
        return out

    def truncate(self, last_step: int) -> list[dict]:
        """Keep the records up to `last_step` (a resumed run redoes the later ones)."""
        keep = [r for r in self.records() if r.get("step", 0) <= last_step]
        tmp = self.path.with_name(f".{self.path.name}.{uuid.uuid4().hex[:8]}.tmp")
        tmp.write_text("".join(json.dumps(r) + "\n" for r in keep), encoding="utf-8")
        os.replace(tmp, self.path)
        return keep

    def append(self, record: dict) -> None:
        with self.path.open("a", encoding="utf-8") as f:
            f.write(json.dumps(record) + "\n")
            f.flush()


# ---------------------------------------------------------------------------------------------
# checkpoints


def checkpoint_name(epoch: int, step: int) -> str:
    """The original's folder name (`<log_dir>/checkpoints/epoch={e}-step={s}_lora`)."""
    return f"epoch={epoch}-step={step}_lora"


def list_checkpoints(out_dir: Path) -> list[tuple[int, Path]]:
    """(step, folder) of every complete checkpoint holding a resumable state, oldest first."""
    root = Path(out_dir) / "checkpoints"
    found = []
    if root.is_dir():
        for p in root.iterdir():
            m = _CKPT_RE.match(p.name)
            if (
                m
                and (p / STATE_JSON).is_file()
                and (p / STATE_TENSORS).is_file()
                and (p / LORA_FILE).is_file()
            ):
                found.append((int(m.group(2)), p))
    return sorted(found)


def _write_checkpoint(
    folder: Path, weights: dict[str, mx.array], opt: AdamW, state: dict, lora_config: dict
) -> None:
    """Write a checkpoint folder atomically (a temporary folder renamed into place)."""
    from safetensors.numpy import save_file

    folder.parent.mkdir(parents=True, exist_ok=True)
    tmp = folder.parent / f".tmp-{folder.name}-{uuid.uuid4().hex[:8]}"
    tmp.mkdir()
    try:
        save_lora_file(weights, tmp)
        arrays = {k: np.array(v.astype(mx.float32)) for k, v in opt.state_arrays().items()}
        save_file(arrays, str(tmp / STATE_TENSORS))
        (tmp / "lora_config.json").write_text(json.dumps(lora_config, indent=2) + "\n")
        (tmp / STATE_JSON).write_text(json.dumps(state, indent=2) + "\n")
        if folder.exists():
            shutil.rmtree(folder)
        os.replace(tmp, folder)
    finally:
        if tmp.exists():
            shutil.rmtree(tmp, ignore_errors=True)


# ---------------------------------------------------------------------------------------------
# the trainer


@dataclass
class RunResult:
    status: str  # "finished" | "interrupted" | "diverged"
    step: int
    checkpoint: Path | None
    message: str


class LoRATrainer:
    """Loads the models, builds the adapters, trains, checkpoints and resumes."""

    def __init__(
        self, config: TrainConfig, verbose: bool = True, log: Callable[[str], None] | None = None
    ):
        self.cfg = config
        self.verbose = verbose
        self._log = log or (lambda s: print(s, file=sys.stderr, flush=True))
        self.out = Path(config.output_dir)
        self._stop_signal: int | None = None
        self._setup()

    # -- setup ----------------------------------------------------------------------------

    def _checkpoint_dir(self) -> Path:
        from acestep_mlx.checkpoint import resolve_checkpoint

        if self.cfg.checkpoint == "demo":
            from acestep_mlx.demo import demo_checkpoint

            return demo_checkpoint(self.cfg.cache_dir)
        return resolve_checkpoint(self.cfg.checkpoint, cache_dir=self.cfg.cache_dir)

    def _setup(self) -> None:
        from acestep_mlx.checkpoint import load_component
        from acestep_mlx.sampling.schedulers import training_grid
        from acestep_mlx.text.prompt_tokenizer import PromptTokenizer

        cfg = self.cfg
        self.dataset = PreparedDataset(cfg.dataset)
        ckpt = self._checkpoint_dir()
        self.checkpoint_path = ckpt
        encoded_with = self.dataset.manifest.get("checkpoint")
        if encoded_with and Path(encoded_with) != Path(ckpt).resolve():
            self._log(
                f"note: the dataset's latents were encoded with the DCAE of {encoded_with}; "
                f"training uses {ckpt} (fine when both are ACE-Step v1 checkpoints)"
            )
        self.dit = load_component(
            ckpt, "dit", cfg.dtype, cache_dir=cfg.cache_dir, verbose=self.verbose
        )
        self.text_encoder = load_component(
            ckpt, "text_encoder", "float32", cache_dir=cfg.cache_dir, verbose=self.verbose
        )
        self.tokenizer = PromptTokenizer.from_dir(ckpt / "umt5-base")
        lc = cfg.lora
        self.adapter: LoRAAdapter = add_lora_adapters(
            self.dit,
            lc.r,
            lc.scale,
            lc.target_modules,
            seed=cfg.seed,
            dtype=mx.float32,
            name=cfg.exp_name,
        )
        make_trainable(self.dit)
        if cfg.gradient_checkpointing:
            enable_gradient_checkpointing(self.dit)
        self.grid_t, self.grid_s = training_grid(cfg.num_train_timesteps, cfg.shift)
        self.opt = AdamW(cfg.betas, cfg.eps, cfg.weight_decay)
        self.step = 0
        self.elapsed = 0.0
        self.last_saved_step: int | None = None

    # -- data -----------------------------------------------------------------------------

    def batch_index(self, step: int, micro: int) -> tuple[int, int]:
        """(dataset index, epoch) of a micro-batch: each epoch is a fresh permutation."""
        n = len(self.dataset)
        g = step * self.cfg.accumulate_grad_batches + micro
        epoch, pos = divmod(g, n)
        perm = np.random.default_rng([self.cfg.seed, 0, epoch]).permutation(n)
        return int(perm[pos]), epoch

    def micro_batch(self, step: int, micro: int):
        """Everything one micro-batch needs: (item, latents, conditions, randomness, t, sigma)."""
        cfg = self.cfg
        idx, epoch = self.batch_index(step, micro)
        item = self.dataset.item(idx)
        rng = np.random.default_rng([cfg.seed, 1, step, micro])
        prompt = make_prompt(item.tags, rng if cfg.shuffle_tags else None)
        ids, mask = self.tokenizer([prompt])
        text = self.text_encoder(mx.array(ids), mx.array(mask))
        mx.eval(text)
        latents = mx.array(item.latents[None])
        rnd = StepRandomness.draw(rng, tuple(latents.shape))
        lyric = item.lyric_ids[None].astype(np.int64)
        cond = Conditions(
            text,
            mx.array(mask),
            mx.zeros((1, SPEAKER_DIM), mx.float32),
            mx.array(lyric),
            mx.ones(lyric.shape, mx.int64),
        )
        cond = apply_cfg_dropout(
            cond,
            rnd.cfg_rand,
            cfg.cfg_dropout_text,
            cfg.cfg_dropout_speaker,
            cfg.cfg_dropout_lyrics,
        )
        t, sigma, _ = timesteps_from_normal(
            rnd.normal, self.grid_t, self.grid_s, cfg.logit_mean, cfg.logit_std
        )
        return item, epoch, latents, cond, mx.array(rnd.noise), t, sigma

    # -- state ----------------------------------------------------------------------------

    def params(self) -> dict[str, mx.array]:
        return self.adapter.weights()

    def _state(self, epoch: int) -> dict:
        return {
            "format": STATE_FORMAT,
            "version": STATE_VERSION,
            "global_step": self.step,
            "epoch": epoch,
            "optimizer": {"name": "AdamW", "step": self.opt.step},
            "rng": {
                "kind": "counter-based numpy PCG64",
                "micro_batch": "default_rng([seed, 1, step, micro])",
                "epoch_order": "default_rng([seed, 0, epoch]).permutation(n)",
                "seed": self.cfg.seed,
                "next": {"step": self.step, "micro": 0},
            },
            "config": self.cfg.resume_signature(),
            "max_steps": self.cfg.max_steps,
            "dataset": {"fingerprint": self.dataset.fingerprint(), "size": len(self.dataset)},
            "elapsed_s": round(self.elapsed, 3),
        }

    def save(self) -> Path:
        """Checkpoint the current state (adapter + optimiser + step) atomically."""
        epoch = max(0, (self.step * self.cfg.accumulate_grad_batches - 1)) // len(self.dataset)
        folder = self.out / "checkpoints" / checkpoint_name(epoch, self.step)
        _write_checkpoint(
            folder, self.params(), self.opt, self._state(epoch), self.cfg.lora.to_dict()
        )
        atomic_write_json(
            self.out / LAST_POINTER,
            {
                "step": self.step,
                "checkpoint": str(folder.relative_to(self.out)),
                "adapter": str((folder / LORA_FILE).relative_to(self.out)),
            },
        )
        self.last_saved_step = self.step
        self._prune_states()
        return folder

    def _prune_states(self) -> None:
        """Keep the optimiser state of the newest `keep_last_states` checkpoints only (the
        adapters themselves are all kept, like the original's save_top_k=-1)."""
        ckpts = list_checkpoints(self.out)
        for _, folder in ckpts[: max(0, len(ckpts) - self.cfg.keep_last_states)]:
            for name in (STATE_TENSORS, STATE_JSON):
                (folder / name).unlink(missing_ok=True)

    def resume(self) -> int | None:
        """Continue from the newest complete checkpoint of `output_dir` (None when fresh)."""
        from safetensors.numpy import load_file

        ckpts = list_checkpoints(self.out)
        if not ckpts:
            return None
        step, folder = ckpts[-1]
        try:
            state = json.loads((folder / STATE_JSON).read_text())
        except ValueError as e:
            raise ResumeError(
                f"{folder / STATE_JSON} is damaged ({e}); delete that folder to "
                "resume from the one before"
            ) from e
        if state.get("format") != STATE_FORMAT or state.get("version") != STATE_VERSION:
            raise ResumeError(f"{folder} was not written by this trainer version")
        saved, now = state["config"], self.cfg.resume_signature()
        diff = sorted(k for k in now if saved.get(k) != now[k])
        if diff:
            raise ResumeError(
                f"{self.out} holds a run with different settings ({', '.join(diff)}: saved "
                f"{[saved.get(k) for k in diff]}, now {[now[k] for k in diff]}); restore them "
                "to resume it, or choose another output_dir for a new run"
            )
        ds = state.get("dataset", {})
        if ds.get("fingerprint") != self.dataset.fingerprint():
            raise ResumeError(
                f"the dataset changed since {folder.name} was saved (items were "
                "added, removed or re-prepared); use another output_dir for a "
                "new run"
            )
        weights = {}
        for module, (a, b) in read_lora_file(folder / LORA_FILE).items():
            weights[peft_key(module, "lora_A")] = a
            weights[peft_key(module, "lora_B")] = b
        self.adapter.set_weights(weights, str(folder / LORA_FILE))
        arrays = load_file(str(folder / STATE_TENSORS))
        self.opt.load_state(state["optimizer"]["step"], arrays, list(self.params()))
        self.step = int(state["global_step"])
        self.elapsed = float(state.get("elapsed_s", 0.0))
        self.last_saved_step = self.step
        if state.get("max_steps") != self.cfg.max_steps:
            self._log(
                f"note: max_steps changed from {state.get('max_steps')} to "
                f"{self.cfg.max_steps}; the learning-rate decay follows the new value"
            )
        return self.step

    # -- one step -------------------------------------------------------------------------

    def train_step(self) -> dict:
        """One optimiser step (accumulation included); raises TrainingDiverged before any
        update when a loss or gradient is not finite."""
        cfg = self.cfg
        n_acc = cfg.accumulate_grad_batches
        t0 = time.perf_counter()
        acc: dict[str, mx.array] | None = None
        losses, keys, tsteps, epoch = [], [], [], 0
        for micro in range(n_acc):
            item, epoch, latents, cond, noise, t, sigma = self.micro_batch(self.step, micro)
            loss, grads = lora_grads(
                self.dit, latents, cond, noise, mx.array(t), mx.array(sigma), loss_scale=1.0 / n_acc
            )
            mx.eval(loss, grads)
            value = float(loss.item())
            if not math.isfinite(value):
                raise TrainingDiverged(
                    f"step {self.step + 1}: the loss is {value} on song {item.key!r} "
                    f"(timestep {float(t[0]):.1f})"
                )
            acc = grads if acc is None else {k: acc[k] + grads[k] for k in acc}
            losses.append(value)
            keys.append(item.key)
            tsteps.append(round(float(t[0]), 3))
        norm = total_norm(acc)
        mx.eval(norm)
        norm_value = float(norm.item())
        if not math.isfinite(norm_value):
            bad = [k for k, g in acc.items() if not bool(mx.all(mx.isfinite(g)).item())]
            what = (
                f"non-finite gradients in {len(bad)} tensor(s), e.g. {bad[0]}"
                if bad
                else "the gradient norm overflows float32"
            )
            raise TrainingDiverged(f"step {self.step + 1}: {what} (songs {keys})")
        if cfg.gradient_clip_val > 0:
            acc = clip_grads(acc, cfg.gradient_clip_val, norm)
        lr = cfg.learning_rate * lr_factor(self.step, cfg.warmup_steps, cfg.max_steps)
        new = self.opt.update(self.params(), acc, lr)
        mx.eval(new, self.opt.state_arrays())
        self.adapter.set_weights(new)
        self.step += 1
        dt = time.perf_counter() - t0
        self.elapsed += dt
        return {
            "step": self.step,
            "loss": float(np.mean(losses)),
            "lr": lr,
            "grad_norm": norm_value,
            "sec_per_step": round(dt, 4),
            "epoch": epoch,
            "items": keys,
            "timesteps": tsteps,
            "time": round(time.time(), 3),
            "peak_memory_gb": round(mx.get_peak_memory() / 2**30, 3),
        }

    # -- the loop -------------------------------------------------------------------------

    def _on_signal(self, signum, frame) -> None:  # noqa: ARG002
        if self._stop_signal is not None:  # second signal: stop now
            raise KeyboardInterrupt
        self._stop_signal = signum
        self._log(
            f"\n{signal.Signals(signum).name}: finishing the current step, saving, "
            "stopping (again to abort without saving)"
        )

    def run(self, resume: bool = True) -> RunResult:
        """Train to `max_steps` (resuming from the newest checkpoint when `resume`)."""
        self.out.mkdir(parents=True, exist_ok=True)
        lock = _lock_output_dir(self.out)
        try:
            return self._run(resume)
        finally:
            lock.close()

    def _run(self, resume: bool) -> RunResult:
        from tqdm import tqdm

        from acestep_mlx.train.plot import write_loss_plot

        cfg = self.cfg
        atomic_write_json(self.out / "train_config.json", cfg.to_dict())
        log = LossLog(self.out / LOG_FILE)
        start = self.resume() if resume else None
        if start is None and list_checkpoints(self.out):
            raise ResumeError(
                f"{self.out} already holds checkpoints; resume it or choose another output_dir"
            )
        records = log.truncate(self.step)
        if start is not None:
            self._log(f"resuming from step {start} ({self.out})")
        handlers = {}
        if threading_main():
            for sig in (signal.SIGINT, signal.SIGTERM):
                handlers[sig] = signal.signal(sig, self._on_signal)
        bar = tqdm(
            total=cfg.max_steps,
            initial=self.step,
            desc="train",
            unit="step",
            disable=not self.verbose,
            dynamic_ncols=True,
        )
        status, message = "finished", ""
        try:
            while self.step < cfg.max_steps:
                try:
                    rec = self.train_step()
                except TrainingDiverged as e:
                    folder = None
                    if self.last_saved_step != self.step:
                        folder = self.save()
                    last = list_checkpoints(self.out)
                    kept = folder or (last[-1][1] if last else None)
                    where = kept / LORA_FILE if kept else "none (no step was completed)"
                    message = (
                        f"training stopped: {e}. That update was not applied; the adapter "
                        f"after the last finite step ({self.step}) is {where}. Running the "
                        "same command again resumes there and meets the same batch: lower "
                        "learning_rate (in a new output_dir), check that song, or use dtype "
                        "float32."
                    )
                    atomic_write_json(
                        self.out / "diverged.json",
                        {
                            "step": self.step + 1,
                            "error": str(e),
                            "last_good_checkpoint": str(kept) if kept else None,
                        },
                    )
                    return RunResult("diverged", self.step, kept, message)
                log.append(rec)
                records.append(rec)
                bar.update(1)
                bar.set_postfix(
                    loss=f"{rec['loss']:.4f}",
                    s_step=f"{rec['sec_per_step']:.2f}",
                    lr=f"{rec['lr']:.2e}",
                )
                if self.step % cfg.plot_every_n_steps == 0:
                    write_loss_plot(records, self.out / PLOT_FILE)
                if self.step % cfg.save_every_n_steps == 0 or self.step == cfg.max_steps:
                    self.save()
                if self._stop_signal is not None:
                    if self.last_saved_step != self.step:
                        self.save()
                    status = "interrupted"
                    message = (
                        f"stopped by {signal.Signals(self._stop_signal).name} at step "
                        f"{self.step}; run the same command again to resume"
                    )
                    break
        finally:
            bar.close()
            for sig, h in handlers.items():
                signal.signal(sig, h)
        if self.last_saved_step != self.step:
            self.save()
        write_loss_plot(records, self.out / PLOT_FILE)
        last = list_checkpoints(self.out)
        folder = last[-1][1] if last else None
        if status == "finished":
            message = f"finished {self.step} steps; adapter: {folder / LORA_FILE}"
        return RunResult(status, self.step, folder, message)


def _lock_output_dir(out: Path):
    """An exclusive lock on `out/.lock` held for the whole run (one run per output folder)."""
    f = open(out / ".lock", "a+")  # noqa: SIM115 - closed by the caller
    try:
        import fcntl

        fcntl.flock(f.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
    except ImportError:  # not a POSIX system: no lock
        pass
    except OSError as e:
        f.close()
        raise ResumeError(
            f"another training run is using {out}; wait for it to finish or stop it first"
        ) from e
    return f


def threading_main() -> bool:
    import threading

    return threading.current_thread() is threading.main_thread()


__all__ = [
    "AdamW",
    "Conditions",
    "LoRATrainer",
    "LossLog",
    "ResumeError",
    "RunResult",
    "StepRandomness",
    "TrainingDiverged",
    "apply_cfg_dropout",
    "clip_grads",
    "diffusion_loss",
    "enable_gradient_checkpointing",
    "lora_grads",
    "lr_factor",
    "timesteps_from_normal",
    "total_norm",
]
