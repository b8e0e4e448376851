"""Key table of the DiT (`ace_step_transformer/diffusion_pytorch_model.safetensors`).

MLX module paths equal the PyTorch state-dict names, so most rules are the identity; the
convolutions change layout (channel-last) and the cross-attention's never-used joint-attention
projections are dropped.
"""

from __future__ import annotations

from acestep_mlx.models.dit import build_dit

from .core import ComponentSpec, Rule

_BLOCK = r"transformer_blocks\.(\d+)"
_LYR = r"lyric_encoder\.encoders\.(\d+)"

RULES = (
    # transformer blocks
    Rule(rf"{_BLOCK}\.scale_shift_table", r"transformer_blocks.\1.scale_shift_table"),
    Rule(
        rf"{_BLOCK}\.(attn|cross_attn)\.(to_q|to_k|to_v|to_out\.0)\.(weight|bias)",
        r"transformer_blocks.\1.\2.\3.\4",
    ),
    Rule(
        rf"{_BLOCK}\.cross_attn\.(add_q_proj|add_k_proj|add_v_proj|to_add_out)\.(weight|bias)",
        None,
        reason="joint-attention projections of the cross-attention; never used by the "
        "original's CustomerAttnProcessor2_0 (spec 2.9)",
    ),
    Rule(
        rf"{_BLOCK}\.ff\.(inverted_conv|depth_conv|point_conv)\.conv\.weight",
        r"transformer_blocks.\1.ff.\2.conv.weight",
        "conv1d",
    ),
    Rule(
        rf"{_BLOCK}\.ff\.(inverted_conv|depth_conv)\.conv\.bias",
        r"transformer_blocks.\1.ff.\2.conv.bias",
    ),
    # timestep, condition embedders
    Rule(r"timestep_embedder\.(linear_1|linear_2)\.(weight|bias)", r"timestep_embedder.\1.\2"),
    Rule(r"t_block\.1\.(weight|bias)", r"t_block.1.\1"),
    Rule(r"(speaker_embedder|genre_embedder|lyric_proj)\.(weight|bias)", r"\1.\2"),
    Rule(r"lyric_embs\.weight", "lyric_embs.weight"),
    # lyric encoder (Conformer)
    Rule(r"lyric_encoder\.embed\.out\.(0|1)\.(weight|bias)", r"lyric_encoder.embed.out.\1.\2"),
    Rule(
        rf"{_LYR}\.self_attn\.(linear_q|linear_k|linear_v|linear_out)\.(weight|bias)",
        r"lyric_encoder.encoders.\1.self_attn.\2.\3",
    ),
    Rule(
        rf"{_LYR}\.self_attn\.linear_pos\.weight",
        r"lyric_encoder.encoders.\1.self_attn.linear_pos.weight",
    ),
    Rule(rf"{_LYR}\.self_attn\.(pos_bias_u|pos_bias_v)", r"lyric_encoder.encoders.\1.self_attn.\2"),
    Rule(
        rf"{_LYR}\.feed_forward\.(w_1|w_2)\.(weight|bias)",
        r"lyric_encoder.encoders.\1.feed_forward.\2.\3",
    ),
    Rule(rf"{_LYR}\.(norm_ff|norm_mha)\.(weight|bias)", r"lyric_encoder.encoders.\1.\2.\3"),
    Rule(r"lyric_encoder\.after_norm\.(weight|bias)", r"lyric_encoder.after_norm.\1"),
    # REPA projector heads (training)
    Rule(r"projectors\.(\d+)\.(0|2|4)\.(weight|bias)", r"projectors.\1.\2.\3"),
    # patch embedding and output layer
    Rule(
        r"proj_in\.early_conv_layers\.(0|2)\.weight",
        r"proj_in.early_conv_layers.\1.weight",
        "conv2d",
    ),
    Rule(r"proj_in\.early_conv_layers\.(0|1|2)\.bias", r"proj_in.early_conv_layers.\1.bias"),
    Rule(r"proj_in\.early_conv_layers\.1\.weight", "proj_in.early_conv_layers.1.weight"),
    Rule(r"final_layer\.(linear\.weight|linear\.bias|scale_shift_table)", r"final_layer.\1"),
)

SPEC = ComponentSpec(
    name="dit",
    subfolder="ace_step_transformer",
    weights_file="diffusion_pytorch_model.safetensors",
    rules=RULES,
    build_model=build_dit,
)
