"""Parity case for `reference/dit.safetensors`: the DiT's encode / decode / forward /
forward_lyric_encoder, every intermediate, and the REPA projection losses (float32)."""

from __future__ import annotations

import mlx.core as mx
import numpy as np


def _np(x: mx.array) -> np.ndarray:
    return np.array(x.astype(mx.float32))


def _ssl_inputs(ref) -> list[list[np.ndarray]]:
    """`input.ssl_hidden_states.{projector}.{item}` -> per projector, a list of per-item arrays."""
    out: dict[int, dict[int, np.ndarray]] = {}
    for name in ref.names("input.ssl_hidden_states."):
        k, b = (int(p) for p in name.split(".")[2:4])
        out.setdefault(k, {})[b] = ref.input(name)
    return [[items[b] for b in sorted(items)] for _, items in sorted(out.items())]


def run(ref, ctx) -> None:
    model = ctx.load("dit", "float32")
    inp = {
        k: ref.input(f"input.{k}")
        for k in (
            "hidden_states",
            "attention_mask",
            "encoder_text_hidden_states",
            "text_attention_mask",
            "speaker_embeds",
            "lyric_token_idx",
            "lyric_mask",
            "timestep",
        )
    }
    T = inp["hidden_states"].shape[-1]

    # forward_lyric_encoder
    lyr = model.forward_lyric_encoder(inp["lyric_token_idx"], inp["lyric_mask"])
    ref.check("output.forward_lyric_encoder", _np(lyr))

    # encode, with its parts
    states, mask, parts = model.encode(
        inp["encoder_text_hidden_states"],
        inp["text_attention_mask"],
        inp["speaker_embeds"],
        inp["lyric_token_idx"],
        inp["lyric_mask"],
        return_intermediates=True,
    )
    for name, value in parts.items():
        ref.check(f"intermediate.encode.{name}", _np(value))
    ref.check("output.encode.encoder_hidden_states", _np(states))
    ref.check("output.encode.encoder_hidden_mask", _np(mask))

    # decode on the port's own encoder states, with every intermediate
    out = model.decode(
        inp["hidden_states"],
        inp["attention_mask"],
        states,
        mask,
        inp["timestep"],
        output_length=T,
        return_intermediates=True,
    )
    for name, value in out.intermediates.items():
        ref.check(f"intermediate.decode.{name}", _np(value))
    ref.check("output.decode.sample", _np(out.sample))

    # forward = encode + decode in one call
    sample = model(
        inp["hidden_states"],
        inp["attention_mask"],
        inp["encoder_text_hidden_states"],
        inp["text_attention_mask"],
        inp["speaker_embeds"],
        inp["lyric_token_idx"],
        inp["lyric_mask"],
        inp["timestep"],
    )
    ref.check("output.forward.sample", _np(sample))

    # forward with injected SSL features -> REPA projection losses
    res = model(
        inp["hidden_states"],
        inp["attention_mask"],
        inp["encoder_text_hidden_states"],
        inp["text_attention_mask"],
        inp["speaker_embeds"],
        inp["lyric_token_idx"],
        inp["lyric_mask"],
        inp["timestep"],
        ssl_hidden_states=_ssl_inputs(ref),
    )
    ref.check("output.forward_ssl.sample", _np(res.sample))
    for name, loss in res.proj_losses:
        key = f"output.forward_ssl.proj_loss.{name}"
        # the reference stores each scalar loss with shape (1,)
        ref.check(key, _np(loss).reshape(ref.tensors[key].shape))
