"""Convert original ACE-Step v1 PyTorch checkpoints (hub layout) to MLX safetensors."""

from .core import (
    ComponentSpec,
    ConversionError,
    Rule,
    convert_component,
    plan_component,
    verify_plan,
)
from .safetensors_io import CheckpointFileError

__all__ = [
    "CheckpointFileError",
    "ComponentSpec",
    "ConversionError",
    "Rule",
    "convert_component",
    "plan_component",
    "verify_plan",
]
