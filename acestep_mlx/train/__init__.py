"""LoRA fine-tuning of ACE-Step v1 on MLX (`python -m acestep_mlx.train prepare|run`)."""

from acestep_mlx.train.config import LoRAConfig, TrainConfig

__all__ = ["LoRAConfig", "TrainConfig"]
