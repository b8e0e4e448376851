"""Validated configs of LoRA training: the LoRA config (the original's `--lora_config_path` JSON,
PEFT `LoraConfig` keys) and the training run config (`train.json`).

Defaults are the original trainer's (spec 10.6-10.7): AdamW lr 1e-4, betas (0.8, 0.9), weight
decay 1e-2, eps 1e-8, 10 warm-up steps then linear decay to `max_steps`, gradient clipping at norm
0.5, accumulation 1, a checkpoint every 2000 steps, logit-normal(0, 1) timesteps on the 1000-step
grid with shift 3, condition dropout 0.15 (text) / 0.5 (speaker) / 0.15 (lyrics). Every value is
checked; a bad one raises ConfigError naming the field and the fix.
"""

from __future__ import annotations

import dataclasses
import json
import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from acestep_mlx.configs import ConfigError
from acestep_mlx.lora import lora_scale

# PEFT LoraConfig keys this port accepts only at their default value (anything else would change
# what is trained, and is not implemented).
_PEFT_FIXED: dict[str, Any] = {
    "lora_dropout": 0.0,
    "bias": "none",
    "fan_in_fan_out": False,
    "init_lora_weights": True,
    "use_dora": False,
    "modules_to_save": None,
    "layers_to_transform": None,
    "layers_pattern": None,
    "rank_pattern": {},
    "alpha_pattern": {},
    "megatron_config": None,
    "loftq_config": {},
}
# PEFT keys without effect on training (bookkeeping)
_PEFT_IGNORED = (
    "peft_type",
    "task_type",
    "inference_mode",
    "base_model_name_or_path",
    "revision",
    "auto_mapping",
)


def _err(source: str, msg: str) -> ConfigError:
    return ConfigError(f"{source}: {msg}")


def _is_int(v) -> bool:
    return isinstance(v, int) and not isinstance(v, bool)


def _is_num(v) -> bool:
    return isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v)


def read_json_object(path: str | Path, what: str) -> dict:
    path = Path(path).expanduser()
    if not path.is_file():
        raise ConfigError(f"{what} not found: {path}")
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError) as e:
        raise ConfigError(f"{path} is not valid JSON: {e}") from e
    if not isinstance(data, dict):
        raise ConfigError(f"{path} must hold a JSON object ({what})")
    return data


@dataclass(frozen=True)
class LoRAConfig:
    """`{"r": 256, "lora_alpha": 32, "use_rslora": true, "target_modules": [...]}`."""

    target_modules: tuple[str, ...]
    r: int = 8  # PEFT defaults
    lora_alpha: float = 8
    use_rslora: bool = False

    @property
    def scale(self) -> float:
        """The training-time scale of every adapted layer."""
        return lora_scale(self.r, self.lora_alpha, self.use_rslora)

    def to_dict(self) -> dict:
        return {
            "r": self.r,
            "lora_alpha": self.lora_alpha,
            "target_modules": list(self.target_modules),
            "use_rslora": self.use_rslora,
        }

    @classmethod
    def from_dict(cls, data: dict, source: str = "lora config") -> LoRAConfig:
        if not isinstance(data, dict):
            raise _err(source, "the LoRA config must be a JSON object")
        known = {"r", "lora_alpha", "use_rslora", "target_modules"}
        for key, value in data.items():
            if key in known or key in _PEFT_IGNORED:
                continue
            if key in _PEFT_FIXED:
                if value != _PEFT_FIXED[key] and not (key == "init_lora_weights" and value is True):
                    raise _err(
                        source,
                        f"{key}={value!r} is not supported by this port; remove it "
                        f"or set it to {_PEFT_FIXED[key]!r}",
                    )
                continue
            raise _err(
                source,
                f"unknown key {key!r}; a LoRA config holds r, lora_alpha, "
                "use_rslora and target_modules (PEFT LoraConfig names)",
            )
        if "target_modules" not in data:
            raise _err(
                source,
                'target_modules is required, e.g. ["speaker_embedder", '
                '"linear_q", "linear_k", "linear_v", "to_q", "to_k", "to_v", '
                '"to_out.0"] (config/zh_rap_lora_config.json)',
            )
        targets = data["target_modules"]
        if isinstance(targets, str):
            raise _err(
                source,
                "target_modules as a regular expression is not supported; give a "
                "list of module names",
            )
        if (
            not isinstance(targets, list)
            or not targets
            or not all(isinstance(t, str) and t.strip() for t in targets)
        ):
            raise _err(source, "target_modules must be a non-empty list of module names")
        r = data.get("r", cls.r)
        if not _is_int(r) or r < 1:
            raise _err(source, f"r must be a positive integer (the LoRA rank), got {r!r}")
        alpha = data.get("lora_alpha", cls.lora_alpha)
        if not _is_num(alpha) or alpha <= 0:
            raise _err(source, f"lora_alpha must be a positive number, got {alpha!r}")
        rs = data.get("use_rslora", cls.use_rslora)
        if not isinstance(rs, bool):
            raise _err(source, f"use_rslora must be true or false, got {rs!r}")
        return cls(tuple(t.strip() for t in targets), int(r), alpha, rs)

    @classmethod
    def from_file(cls, path: str | Path) -> LoRAConfig:
        return cls.from_dict(read_json_object(path, "LoRA config"), str(path))


@dataclass(frozen=True)
class TrainConfig:
    """One training run (`python -m acestep_mlx.train run --config train.json`).

    Paths in the JSON are relative to the JSON file's folder.
    """

    dataset: str  # folder written by `prepare`
    output_dir: str  # checkpoints, loss log, loss curve
    lora: LoRAConfig
    checkpoint: str | None = None  # folder / hub id; None -> ACE-Step/ACE-Step-v1-3.5B; "demo"
    cache_dir: str | None = None  # converted weights (default $ACESTEP_MLX_CACHE)
    # optimisation (trainer.py defaults)
    learning_rate: float = 1e-4
    betas: tuple[float, float] = (0.8, 0.9)
    eps: float = 1e-8
    weight_decay: float = 1e-2
    warmup_steps: int = 10
    max_steps: int = 2_000_000
    gradient_clip_val: float = 0.5  # 0 disables
    accumulate_grad_batches: int = 1
    # diffusion objective
    shift: float = 3.0
    num_train_timesteps: int = 1000
    logit_mean: float = 0.0
    logit_std: float = 1.0
    cfg_dropout_text: float = 0.15
    cfg_dropout_speaker: float = 0.5
    cfg_dropout_lyrics: float = 0.15
    shuffle_tags: bool = True
    # precision / memory
    dtype: str = "float32"  # base model: float32 or bfloat16 (adapters + optimiser: float32)
    gradient_checkpointing: bool = False
    # long-job behaviour
    seed: int = 0
    save_every_n_steps: int = 2000
    keep_last_states: int = 2  # optimiser states kept for resume (adapters are all kept)
    plot_every_n_steps: int = 10
    exp_name: str = "lora"

    # fields that must not change when a run is resumed
    RESUME_KEYS = (
        "dataset",
        "lora",
        "checkpoint",
        "learning_rate",
        "betas",
        "eps",
        "weight_decay",
        "warmup_steps",
        "gradient_clip_val",
        "accumulate_grad_batches",
        "shift",
        "num_train_timesteps",
        "logit_mean",
        "logit_std",
        "cfg_dropout_text",
        "cfg_dropout_speaker",
        "cfg_dropout_lyrics",
        "shuffle_tags",
        "dtype",
        "seed",
    )

    def to_dict(self) -> dict:
        d = {f.name: getattr(self, f.name) for f in dataclasses.fields(self)}
        d["lora"] = self.lora.to_dict()
        d["betas"] = list(self.betas)
        return d

    def resume_signature(self) -> dict:
        d = self.to_dict()
        return {k: d[k] for k in self.RESUME_KEYS}

    @classmethod
    def from_dict(
        cls, data: dict, source: str = "train config", base_dir: str | Path | None = None
    ) -> TrainConfig:
        if not isinstance(data, dict):
            raise _err(source, "the training config must be a JSON object")
        if "ssl_coeff" in data or "ssl" in data:
            raise _err(
                source,
                "the MERT/mHuBERT alignment (REPA/SSL) losses are not part of this "
                "port's training; remove ssl_coeff (training uses the denoising loss only)",
            )
        names = {f.name for f in dataclasses.fields(cls)} | {"lora_config"}
        unknown = sorted(set(data) - names)
        if unknown:
            raise _err(
                source,
                f"unknown key(s) {', '.join(unknown)}; valid keys: {', '.join(sorted(names))}",
            )
        base = Path(base_dir) if base_dir is not None else None

        def path_of(v):
            p = Path(str(v)).expanduser()
            return str((base / p if base is not None and not p.is_absolute() else p).resolve())

        for req in ("dataset", "output_dir"):
            if req not in data or not isinstance(data[req], str) or not data[req]:
                raise _err(source, f"{req} is required (a folder path)")
        if ("lora" in data) == ("lora_config" in data):
            raise _err(
                source,
                "give exactly one of lora (an inline LoRA config object) or "
                "lora_config (the path of a LoRA config JSON such as "
                "config/zh_rap_lora_config.json)",
            )
        if "lora" in data:
            lora = LoRAConfig.from_dict(data["lora"], f"{source}: lora")
        else:
            if not isinstance(data["lora_config"], str):
                raise _err(source, "lora_config must be a file path")
            lora = LoRAConfig.from_file(path_of(data["lora_config"]))
        kw: dict[str, Any] = {
            "dataset": path_of(data["dataset"]),
            "output_dir": path_of(data["output_dir"]),
            "lora": lora,
        }
        ckpt = data.get("checkpoint")
        if ckpt is not None:
            if not isinstance(ckpt, str) or not ckpt:
                raise _err(source, 'checkpoint must be a folder, a hub repo id or "demo"')
            hub_id = (
                ckpt.count("/") == 1
                and not ckpt.startswith((".", "/", "~"))
                and not Path(path_of(ckpt)).exists()
            )
            is_local = ckpt != "demo" and not hub_id
            kw["checkpoint"] = path_of(ckpt) if is_local else ckpt
        if data.get("cache_dir") is not None:
            kw["cache_dir"] = path_of(data["cache_dir"])
        for f in dataclasses.fields(cls):
            if f.name in kw or f.name not in data or f.name in ("cache_dir",):
                continue
            kw[f.name] = data[f.name]
        if "betas" in kw:
            b = kw["betas"]
            if not isinstance(b, (list, tuple)) or len(b) != 2:
                raise _err(source, f"betas must be a list of two numbers, got {b!r}")
            kw["betas"] = tuple(b)
        cfg = cls(**kw)
        cfg.validate(source)
        return cfg

    @classmethod
    def from_file(cls, path: str | Path) -> TrainConfig:
        path = Path(path).expanduser()
        return cls.from_dict(read_json_object(path, "training config"), str(path), path.parent)

    def validate(self, source: str = "train config") -> None:
        def need(cond: bool, msg: str) -> None:
            if not cond:
                raise _err(source, msg)

        num = {
            "learning_rate",
            "eps",
            "weight_decay",
            "gradient_clip_val",
            "shift",
            "logit_mean",
            "logit_std",
            "cfg_dropout_text",
            "cfg_dropout_speaker",
            "cfg_dropout_lyrics",
        }
        ints = {
            "warmup_steps",
            "max_steps",
            "accumulate_grad_batches",
            "num_train_timesteps",
            "seed",
            "save_every_n_steps",
            "keep_last_states",
            "plot_every_n_steps",
        }
        for name in num:
            need(
                _is_num(getattr(self, name)),
                f"{name} must be a finite number, got {getattr(self, name)!r}",
            )
        for name in ints:
            need(
                _is_int(getattr(self, name)),
                f"{name} must be an integer, got {getattr(self, name)!r}",
            )
        for name in ("shuffle_tags", "gradient_checkpointing"):
            need(isinstance(getattr(self, name), bool), f"{name} must be true or false")
        need(self.learning_rate > 0, "learning_rate must be > 0")
        need(
            all(_is_num(b) and 0 <= b < 1 for b in self.betas),
            f"betas must be two numbers in [0, 1), got {list(self.betas)}",
        )
        need(self.eps > 0, "eps must be > 0")
        need(self.weight_decay >= 0, "weight_decay must be >= 0")
        need(self.warmup_steps >= 0, "warmup_steps must be >= 0")
        need(self.max_steps >= 1, "max_steps must be >= 1")
        need(self.gradient_clip_val >= 0, "gradient_clip_val must be >= 0 (0 disables clipping)")
        need(self.accumulate_grad_batches >= 1, "accumulate_grad_batches must be >= 1")
        need(self.shift > 0, "shift must be > 0")
        need(self.num_train_timesteps >= 2, "num_train_timesteps must be >= 2")
        need(self.logit_std > 0, "logit_std must be > 0")
        for name in ("cfg_dropout_text", "cfg_dropout_speaker", "cfg_dropout_lyrics"):
            need(0 <= getattr(self, name) <= 1, f"{name} must be a probability in [0, 1]")
        need(
            self.dtype in ("float32", "bfloat16"),
            f'dtype must be "float32" or "bfloat16" (the frozen base model), got {self.dtype!r}',
        )
        need(self.seed >= 0, "seed must be >= 0")
        need(self.save_every_n_steps >= 1, "save_every_n_steps must be >= 1")
        need(self.keep_last_states >= 1, "keep_last_states must be >= 1 (resume needs one)")
        need(self.plot_every_n_steps >= 1, "plot_every_n_steps must be >= 1")
        need(
            isinstance(self.exp_name, str)
            and self.exp_name.strip() != ""
            and "/" not in self.exp_name,
            "exp_name must be a non-empty name without '/'",
        )


def example_config() -> dict:
    """A commented starting point for `train.json` (written by `run --write-example`)."""
    return {
        "checkpoint": None,
        "dataset": "my_dataset",
        "output_dir": "exps/my_lora",
        "lora": {
            "r": 16,
            "lora_alpha": 32,
            "use_rslora": True,
            "target_modules": [
                "speaker_embedder",
                "linear_q",
                "linear_k",
                "linear_v",
                "to_q",
                "to_k",
                "to_v",
                "to_out.0",
            ],
        },
        "max_steps": 2000,
        "save_every_n_steps": 200,
        "dtype": "float32",
        "gradient_checkpointing": False,
    }


__all__ = ["LoRAConfig", "TrainConfig", "ConfigError", "example_config"]
