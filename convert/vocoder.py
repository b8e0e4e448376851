"""Key table of the vocoder (`music_vocoder/diffusion_pytorch_model.safetensors`, ADaMoSHiFiGANV1).

Module paths of `acestep_mlx.models.vocoder` equal the PyTorch names, so the table is identity
apart from the layouts: Conv1d [O, I, K] -> [O, K, I], ConvTranspose1d [I, O, K] -> [O, K, I], and
the head's weight-normalised convolutions, folded here (`w = g * v / ||v||`, the norm over every
dim but 0: per output channel for Conv1d, per INPUT channel for ConvTranspose1d).
"""

from __future__ import annotations

from convert.core import ComponentSpec, Rule


def _build(config: dict):
    from acestep_mlx.models.vocoder import build_vocoder

    return build_vocoder(config)


RULES = (
    # --- log-mel front end buffers: recomputed from config.json by acestep_mlx.audio.mel
    Rule(
        r"mel_transform\.spectrogram\.window",
        None,
        reason="buffer: periodic Hann window, recomputed from win_length by acestep_mlx.audio.mel",
    ),
    Rule(
        r"mel_transform\.mel_scale\.fb",
        None,
        reason="buffer: Slaney mel filterbank, recomputed from config.json by "
        "acestep_mlx.audio.mel",
    ),
    # --- HiFi-GAN head: weight norm folded into `weight`
    Rule(r"head\.(.+)\.weight_g", None, reason="weight norm: folded into the sibling weight"),
    Rule(r"head\.(ups\.\d+)\.weight_v", r"head.\1.weight", "wn_conv_transpose1d"),
    Rule(r"head\.(.+)\.weight_v", r"head.\1.weight", "wn_conv1d"),
    Rule(r"head\.(.+)\.bias", r"head.\1.bias"),
    # --- ConvNeXt backbone
    Rule(r"backbone\.channel_layers\.0\.0\.weight", "backbone.channel_layers.0.0.weight", "conv1d"),
    Rule(
        r"backbone\.channel_layers\.([1-9]\d*)\.1\.weight",
        r"backbone.channel_layers.\1.1.weight",
        "conv1d",
    ),
    Rule(r"backbone\.stages\.(.+)\.dwconv\.weight", r"backbone.stages.\1.dwconv.weight", "conv1d"),
    Rule(r"backbone\.(.+)", r"backbone.\1"),
)

SPEC = ComponentSpec(
    name="vocoder",
    subfolder="music_vocoder",
    weights_file="diffusion_pytorch_model.safetensors",
    rules=RULES,
    build_model=_build,
)
