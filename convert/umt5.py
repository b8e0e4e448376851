"""Key table of the UMT5 text encoder (`umt5-base/model.safetensors`, a `UMT5EncoderModel` save).

The MLX module paths equal the PyTorch names, so every kept tensor maps to itself; linear weights
keep the PyTorch [out, in] layout, which is also MLX's.
"""

from __future__ import annotations

from acestep_mlx.models.umt5 import build_umt5

from .core import ComponentSpec, Rule

_BLOCK = r"encoder\.block\.\d+\.layer"

RULES = (
    Rule(r"shared\.weight", r"\g<0>"),
    Rule(
        r"encoder\.embed_tokens\.weight",
        None,
        reason="tied to shared.weight (same tensor; transformers usually does not store it)",
    ),
    Rule(_BLOCK + r"\.0\.SelfAttention\.(q|k|v|o)\.weight", r"\g<0>"),
    Rule(_BLOCK + r"\.0\.SelfAttention\.relative_attention_bias\.weight", r"\g<0>"),
    Rule(_BLOCK + r"\.0\.layer_norm\.weight", r"\g<0>"),
    Rule(_BLOCK + r"\.1\.DenseReluDense\.(wi_0|wi_1|wo)\.weight", r"\g<0>"),
    Rule(_BLOCK + r"\.1\.layer_norm\.weight", r"\g<0>"),
    Rule(r"encoder\.final_layer_norm\.weight", r"\g<0>"),
    # a full UMT5 (encoder-decoder) save: UMT5EncoderModel.from_pretrained ignores these
    Rule(
        r"(decoder\..*|lm_head\.weight)",
        None,
        reason="decoder / LM head of a full UMT5 save; only the encoder is used",
    ),
)

SPEC = ComponentSpec(
    name="text_encoder",
    subfolder="umt5-base",
    weights_file="model.safetensors",
    rules=RULES,
    build_model=build_umt5,
    extra_files=("tokenizer.json", "tokenizer_config.json", "special_tokens_map.json"),
)
