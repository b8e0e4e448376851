"""Parity case for `reference/training.safetensors`: one LoRA training-loss evaluation of the
original trainer (`Pipeline.preprocess` + `get_timestep` + `get_sd3_sigmas` + `run_step`) on a
fixed batch with injected randomness, in float32.

Steps, all through the port's training code: DCAE latents of the `music_dcae` test signal; UMT5
states of the prompt; condition dropout with the injected uniforms; the logit-normal timestep of
the injected normal draw on the 1000-step grid; the noisy latents; the DiT output with the fixture
adapter (lora/) at the training scale alpha/sqrt(r) from lora/lora_config.json; the loss with
LoRA, without it, and with LoRA plus the injected SSL features (REPA terms); the gradient of every
LoRA parameter, their norms and the total norm.

Tolerances (fixtures.json, this file): tensors atol 1e-4, losses rtol 1e-4, gradient norms rtol
1e-3; ids and masks exact. The reference ran in eval mode (no lyric-encoder dropout).
"""

from __future__ import annotations

import mlx.core as mx
import numpy as np


def _np(x) -> np.ndarray:
    return np.array(x.astype(mx.float32)) if isinstance(x, mx.array) else np.asarray(x)


def _ssl_inputs(ref) -> list[list[np.ndarray]]:
    out: dict[int, dict[int, np.ndarray]] = {}
    for name in ref.names("injected.ssl_hidden_states."):
        k, b = (int(p) for p in name.split(".")[2:4])
        out.setdefault(k, {})[b] = ref.input(name)
    return [[items[b] for b in sorted(items)] for _, items in sorted(out.items())]


def run(ref, ctx) -> None:
    from safetensors.numpy import load_file

    from acestep_mlx.codec import MusicDCAE
    from acestep_mlx.lora import load_lora_into, lora_scale
    from acestep_mlx.sampling.schedulers import training_grid
    from acestep_mlx.text.prompt_tokenizer import PromptTokenizer
    from acestep_mlx.train.config import LoRAConfig
    from acestep_mlx.train.trainer import (
        Conditions,
        apply_cfg_dropout,
        diffusion_loss,
        lora_grads,
        timesteps_from_normal,
        total_norm,
    )

    tol = ref.meta.get("tolerance", {})
    t_atol = float(tol["tensors_atol"])
    loss_rtol = float(tol["loss_rtol"])
    norm_rtol = float(tol["grad_norm_rtol"])
    info = ref.json
    fx = ctx.fixture_dir

    # 1. latents of the batch's waveform (the music_dcae test signal)
    wave = load_file(str(fx / "reference" / "music_dcae.safetensors"))["input.waveform_48k"]
    wav_len = ref.input("input.wav_lengths")
    if wave.ndim == 2:
        wave = wave[None]
    wave = wave[..., : int(wav_len.max())]
    codec = MusicDCAE.from_checkpoint(fx, "float32", cache_dir=ctx.cache_dir)
    latents, _ = codec.encode(wave, 48000)
    ref.check("intermediate.target_latents", _np(latents), atol=t_atol, rtol=0)

    # 2. text states of the prompt
    tok = PromptTokenizer.from_dir(fx / "umt5-base")
    ids, mask = tok(info["prompts"])
    ref.check("intermediate.text_attention_mask", mask)
    text = ctx.load("text_encoder", "float32")(mx.array(ids), mx.array(mask))

    # 3. condition dropout with the injected uniforms
    rand = np.stack([ref.input(f"injected.cfg_dropout_rand.{i}") for i in range(3)])
    thr = info["cfg_dropout_thresholds"]
    cond = Conditions(
        text,
        mx.array(mask),
        mx.array(ref.input("input.speaker_embs")),
        mx.array(ref.input("input.lyric_token_ids")),
        mx.array(ref.input("input.lyric_masks")),
    )
    cond = apply_cfg_dropout(cond, rand, thr["text"], thr["speaker"], thr["lyric"])
    ref.check("intermediate.encoder_text_hidden_states", _np(cond.text), atol=t_atol, rtol=0)
    ref.check("intermediate.speaker_embeds", _np(cond.speaker), atol=t_atol, rtol=0)
    ref.check("intermediate.lyric_token_idx", _np(cond.lyric_ids))
    ref.check("intermediate.lyric_mask", _np(cond.lyric_mask))

    # 4. timestep, sigma, noisy latents
    grid_t, grid_s = training_grid(1000, 3.0)
    t, sigma, _ = timesteps_from_normal(ref.input("injected.timestep_normal_u"), grid_t, grid_s)
    ref.check("intermediate.timesteps", t, atol=t_atol, rtol=0)
    noise = mx.array(ref.input("injected.noise"))
    t, sigma = mx.array(t), mx.array(sigma)

    # 5. the DiT with the fixture adapter at the training scale
    lcfg = LoRAConfig.from_file(fx / "lora" / "lora_config.json")
    scale = lora_scale(lcfg.r, lcfg.lora_alpha, lcfg.use_rslora)
    if abs(scale - float(info["lora_scaling"])) > 1e-12:
        raise AssertionError(f"LoRA scale {scale} != the reference's {info['lora_scaling']}")
    dit = ctx.load("dit", "float32")
    adapter = load_lora_into(dit, fx / "lora", strength=scale)
    try:
        dit.freeze()
        for layer in adapter.layers.values():
            layer.unfreeze(keys=["lora_A", "lora_B"], recurse=False)
        loss, parts = diffusion_loss(dit, latents, cond, noise, t, sigma)
        ref.check("intermediate.noisy_latents", _np(parts["noisy_latents"]), atol=t_atol, rtol=0)
        ref.check("intermediate.model_pred_raw", _np(parts["model_pred_raw"]), atol=t_atol, rtol=0)
        ref.check("loss.lora", _np(loss).reshape(1), atol=0, rtol=loss_rtol)

        loss, grads = lora_grads(dit, latents, cond, noise, t, sigma)
        order = info["lora_param_order"]
        ref.check(
            "grad_total_norm.lora",
            _np(total_norm(grads)).reshape(1),
            atol=0,
            rtol=norm_rtol,
            note=f"loss {float(loss.item()):.6f}",
        )
        norms = np.array([float(mx.linalg.norm(grads[k].reshape(-1)).item()) for k in order])
        _check_norms(ref, "grad_norms.lora", norms, norm_rtol)
        for k in order:
            ref.check(f"grad.lora.{k}", _np(grads[k]), atol=t_atol, rtol=0)

        ssl = _ssl_inputs(ref)
        loss_ssl, parts = diffusion_loss(dit, latents, cond, noise, t, sigma, ssl_hidden_states=ssl)
        ref.check("loss.lora_ssl", _np(loss_ssl).reshape(1), atol=0, rtol=loss_rtol)
        for name, value in parts["proj_losses"].items():
            ref.check(f"proj_loss.lora_ssl.{name}", _np(value).reshape(1), atol=0, rtol=loss_rtol)
        _, grads = lora_grads(dit, latents, cond, noise, t, sigma, ssl_hidden_states=ssl)
        ref.check(
            "grad_total_norm.lora_ssl", _np(total_norm(grads)).reshape(1), atol=0, rtol=norm_rtol
        )
        norms = np.array([float(mx.linalg.norm(grads[k].reshape(-1)).item()) for k in order])
        _check_norms(ref, "grad_norms.lora_ssl", norms, norm_rtol)

        adapter.set_strength(0.0)  # adapters disabled: the base model
        loss0, _ = diffusion_loss(dit, latents, cond, noise, t, sigma)
        ref.check("loss.no_lora", _np(loss0).reshape(1), atol=0, rtol=loss_rtol)
    finally:
        adapter.remove()
        dit.unfreeze()


def _check_norms(ref, name: str, norms: np.ndarray, rtol: float) -> None:
    ref.check(name, norms.astype(np.float32), atol=0, rtol=rtol)
