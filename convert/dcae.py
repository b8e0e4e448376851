"""Key table of the DCAE (`music_dcae_f8c8`, diffusers AutoencoderDC).

The MLX module paths equal the diffusers names, so every tensor keeps its key; 4-D conv weights
(plain, strided, grouped and depthwise alike) go from [O, I/g, kh, kw] to MLX's [O, kh, kw, I/g].
"""

from __future__ import annotations

from acestep_mlx.models.dcae import build_model

from .core import ComponentSpec, Rule

_BLOCK = r"(?:encoder\.down_blocks|decoder\.up_blocks)\.\d+\.\d+"
_CONVS = "|".join(
    (
        r"(?:encoder|decoder)\.conv_(?:in|out)",  # stem / head convs
        rf"{_BLOCK}\.(?:conv1|conv2|conv)",  # ResBlock convs, DCDown/DCUp conv
        rf"{_BLOCK}\.attn\.to_qkv_multiscale\.\d+\.proj_(?:in|out)",  # depthwise 5x5 / grouped 1x1
        rf"{_BLOCK}\.conv_out\.conv_(?:inverted|depth|point)",  # GLUMBConv
    )
)

RULES = (
    Rule(rf"((?:{_CONVS})\.weight)", r"\1", "conv2d"),
    Rule(rf"((?:{_CONVS})\.bias)", r"\1"),
    Rule(rf"({_BLOCK}\.attn\.to_(?:q|k|v|out)\.weight)", r"\1"),
    Rule(rf"({_BLOCK}\.(?:norm|attn\.norm_out|conv_out\.norm)\.(?:weight|bias))", r"\1"),
    Rule(r"(decoder\.norm_out\.(?:weight|bias))", r"\1"),
)

SPEC = ComponentSpec(
    name="dcae",
    subfolder="music_dcae_f8c8",
    weights_file="diffusion_pytorch_model.safetensors",
    rules=RULES,
    build_model=build_model,
)
