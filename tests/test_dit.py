"""The MLX DiT (+ Conformer lyric encoder) against the original's reference tensors."""

from __future__ import annotations

import json
import math
from pathlib import Path

import mlx.core as mx
import numpy as np
import pytest
from safetensors.numpy import load_file

from acestep_mlx.checkpoint import load_component
from acestep_mlx.configs import ConfigError
from acestep_mlx.models.dit import (
    ERG_DIFFUSION_BLOCKS,
    dit_config_from_dict,
    linear_interpolate_indices,
    rope_apply,
    rope_inv_freq,
    rope_tables,
    timestep_frequencies,
    timestep_sinusoid,
)
from acestep_mlx.models.lyric_encoder import espnet_div_term, espnet_rel_positional_encoding
from acestep_mlx.parity import compare, run_parity
from convert.core import header_of, plan_component
from convert.dit import SPEC

FIXTURE = Path(__file__).parent / "fixtures" / "tiny-a"
REF = FIXTURE / "reference" / "dit.safetensors"
TOL = json.loads((FIXTURE / "fixtures.json").read_text())["tolerances"]["dit"]
ATOL, RTOL = TOL["atol"], TOL["rtol"]
INPUTS = (
    "hidden_states",
    "attention_mask",
    "encoder_text_hidden_states",
    "text_attention_mask",
    "speaker_embeds",
    "lyric_token_idx",
    "lyric_mask",
    "timestep",
)
# measured: 2.0e-2 (relative L2 error of the bf16 model's forward sample vs the fp32 reference,
# 20 blocks, weights rounded to bf16); asserted with margin
BF16_REL_BOUND = 4e-2


@pytest.fixture(scope="module")
def ref() -> dict[str, np.ndarray]:
    return load_file(str(REF))


@pytest.fixture(scope="module")
def inputs(ref) -> dict[str, np.ndarray]:
    return {k: ref[f"input.{k}"] for k in INPUTS}


@pytest.fixture(scope="module")
def cache(tmp_path_factory) -> Path:
    return tmp_path_factory.mktemp("dit-cache")


@pytest.fixture(scope="module")
def model(cache):
    return load_component(FIXTURE, "dit", "float32", cache_dir=cache)


def _np(x: mx.array) -> np.ndarray:
    return np.array(x.astype(mx.float32))


def _rel(a: np.ndarray, b: np.ndarray) -> float:
    return float(np.linalg.norm(a - b) / np.linalg.norm(b))


def _assert_ref(actual: np.ndarray, expected: np.ndarray) -> None:
    ok, max_abs, _, tol = compare(actual, expected, ATOL, RTOL)
    assert ok, f"max_abs={max_abs:.3e} ({tol})"


# ---------------------------------------------------------------------------------- parity


def test_parity_harness_covers_every_tensor(ref):
    summary = run_parity(FIXTURE, only=["dit"], verbose=False)
    failed = [r.line() for r in summary.results if not r.passed]
    assert not failed, "\n".join(failed)
    assert summary.n_not_covered == 0, summary.not_covered
    n_compared = sum(1 for k in ref if not k.startswith("input."))
    assert summary.passed == n_compared


def test_decode_on_reference_encoder_states(model, ref, inputs):
    """decode alone, fed the ORIGINAL's encoder states (not the port's); cached keys/values."""
    states = ref["output.encode.encoder_hidden_states"]
    args = (
        inputs["hidden_states"],
        inputs["attention_mask"],
        states,
        ref["output.encode.encoder_hidden_mask"],
        inputs["timestep"],
    )
    sample = model.decode(*args)
    assert sample.dtype == mx.float32
    _assert_ref(_np(sample), ref["output.decode.sample"])
    cached = model.decode(*args, encoder_kv=model.precompute_encoder_kv(states))
    np.testing.assert_array_equal(_np(cached), _np(sample))


# ---------------------------------------------------------------------------------- bf16


def test_bfloat16_within_bound_of_float32(cache, ref, inputs):
    bf = load_component(FIXTURE, "dit", "bfloat16", cache_dir=cache)
    assert bf.dtype == mx.bfloat16
    cos, sin = bf.rope(7)
    assert cos.dtype == mx.bfloat16 and sin.dtype == mx.bfloat16  # tables rounded like buffers
    states, mask = bf.encode(
        inputs["encoder_text_hidden_states"],
        inputs["text_attention_mask"],
        inputs["speaker_embeds"],
        inputs["lyric_token_idx"],
        inputs["lyric_mask"],
    )
    assert states.dtype == mx.bfloat16 and mask.dtype == mx.float32
    out = bf.decode(
        inputs["hidden_states"],
        inputs["attention_mask"],
        states,
        mask,
        inputs["timestep"],
        return_intermediates=True,
    )
    assert out.sample.dtype == mx.bfloat16
    assert out.intermediates["time_proj"].dtype == mx.float32  # sinusoid stays float32
    assert out.intermediates["timestep_embedder"].dtype == mx.bfloat16
    rel = _rel(_np(out.sample), ref["output.forward.sample"])
    assert 1e-4 < rel < BF16_REL_BOUND, rel  # bf16 really used, and close to fp32
    assert _rel(_np(states), ref["output.encode.encoder_hidden_states"]) < 2e-2


# ---------------------------------------------------------------------------------- ERG


def _states(model, inputs, erg_lyric=False):
    return model.encode(
        inputs["encoder_text_hidden_states"],
        inputs["text_attention_mask"],
        inputs["speaker_embeds"],
        inputs["lyric_token_idx"],
        inputs["lyric_mask"],
        erg_lyric=erg_lyric,
    )


def test_erg_diffusion_changes_output(model, ref, inputs):
    states, mask = _states(model, inputs)
    args = (inputs["hidden_states"], inputs["attention_mask"], states, mask, inputs["timestep"])
    plain = _np(model.decode(*args))
    erg = model.decode(*args, erg_diffusion=True, return_intermediates=True)
    # blocks before 15 are untouched, the output moves clearly
    first = ERG_DIFFUSION_BLOCKS[0]
    _assert_ref(
        _np(erg.intermediates[f"transformer_blocks.{first - 1}"]),
        ref[f"intermediate.decode.transformer_blocks.{first - 1}"],
    )
    assert _rel(_np(erg.sample), plain) > 1e-2


def test_erg_on_linear_self_attention_is_numerically_a_noop(model, inputs):
    block = model.transformer_blocks[ERG_DIFFUSION_BLOCKS[0]]
    h = mx.random.normal((1, 19, model.config.width), key=mx.random.key(1))
    mask = mx.ones((1, 19))
    rope = model.rope(19)
    base = _np(block.attn(h, mask, rope))
    scaled = _np(block.attn(h, mask, rope, 0.01))
    assert _rel(scaled, base) < 1e-5  # tau cancels except through the 1e-15 epsilon
    ctx = mx.random.normal((1, 5, model.config.width), key=mx.random.key(2))
    cmask = mx.zeros((1, 1, 19, 5))
    rope_k = model.rope(5)
    kv = block.cross_attn.project_context(ctx, rope_k)
    cross = _np(block.cross_attn(h, kv, cmask, rope))
    cross_erg = _np(block.cross_attn(h, kv, cmask, rope, 0.01))
    assert _rel(cross_erg, cross) > 1e-2  # the softmax cross-attention is flattened


def test_erg_lyric_changes_only_lyric_states(model, inputs):
    states, _ = _states(model, inputs)
    erg, _ = _states(model, inputs, erg_lyric=True)
    n_lyric = inputs["lyric_token_idx"].shape[1]
    np.testing.assert_array_equal(_np(erg)[:, :-n_lyric], _np(states)[:, :-n_lyric])
    assert _rel(_np(erg)[:, -n_lyric:], _np(states)[:, -n_lyric:]) > 1e-2


def test_per_item_erg_matches_whole_batch_erg(model, inputs):
    """cond/uncond batched: ERG applied to item 1 only equals ERG on a batch of its own."""
    two = {k: np.concatenate([v, v]) for k, v in inputs.items()}
    states, mask = _states(model, two, erg_lyric=np.array([False, True]))
    s_plain, _ = _states(model, inputs)
    s_erg, _ = _states(model, inputs, erg_lyric=True)
    np.testing.assert_allclose(_np(states[:1]), _np(s_plain), atol=1e-6, rtol=0)
    np.testing.assert_allclose(_np(states[1:]), _np(s_erg), atol=1e-6, rtol=0)
    out = _np(
        model.decode(
            two["hidden_states"],
            two["attention_mask"],
            states,
            mask,
            two["timestep"],
            erg_diffusion=mx.array([False, True]),
        )
    )
    one = _np(
        model.decode(
            inputs["hidden_states"],
            inputs["attention_mask"],
            states[1:],
            mask[1:],
            inputs["timestep"],
            erg_diffusion=True,
        )
    )
    np.testing.assert_allclose(out[1:], one, atol=1e-5, rtol=0)


def test_erg_matches_the_original_pipeline_calls(model):
    """pipeline_text2music (ERG on tag, lyric and diffusion): the null encode and the
    unconditional decode recorded from the original are reproduced by the ERG switches."""
    p = load_file(str(FIXTURE / "reference" / "pipeline_text2music.safetensors"))
    ids = p["lyric_token_ids.0"][None]
    text_mask = p["text_embeddings.0.mask"]
    spk = np.zeros((1, 512), np.float32)
    cond, mask = model.encode(p["text_embeddings.0.hidden"], text_mask, spk, ids, np.ones_like(ids))
    null_args = (p["text_embeddings_null.0"], text_mask, spk, ids, np.ones_like(ids))
    null, _ = model.encode(*null_args, erg_lyric=True)
    _assert_ref(_np(cond), p["dit_encode.0.encoder_hidden_states"])
    _assert_ref(_np(null), p["dit_encode.1.encoder_hidden_states"])
    plain_null, _ = model.encode(*null_args)
    assert not compare(_np(plain_null), p["dit_encode.1.encoder_hidden_states"], ATOL, RTOL)[0]
    # decode #1 (conditional) and #2 (unconditional, ERG diffusion) share their input latents
    x = p["dit_decode.1.hidden_states"]
    frames = np.ones((1, x.shape[-1]), np.float32)
    _assert_ref(
        _np(model.decode(x, frames, cond, mask, p["dit_decode.1.timestep"])),
        p["dit_decode.1.sample"],
    )
    uncond = model.decode(x, frames, null, mask, p["dit_decode.2.timestep"], erg_diffusion=True)
    _assert_ref(_np(uncond), p["dit_decode.2.sample"])


# ---------------------------------------------------------------------------------- batching


def test_batch_of_two_with_partial_masks(model, ref, inputs):
    rng = np.random.default_rng(0)
    second = {k: v.copy() for k, v in inputs.items()}
    second["hidden_states"] = rng.standard_normal(inputs["hidden_states"].shape).astype(np.float32)
    second["timestep"] = np.array([123.5], np.float32)
    second["text_attention_mask"][:, 3:] = 0
    second["lyric_mask"][:, 9:] = 0
    batch = {k: np.concatenate([inputs[k], second[k]]) for k in INPUTS}
    states, mask = model.encode(*(batch[k] for k in INPUTS[2:7]))
    out = _np(
        model.decode(
            batch["hidden_states"], batch["attention_mask"], states, mask, batch["timestep"]
        )
    )
    assert out.shape == (2, 8, 16, 19) and np.isfinite(out).all()
    _assert_ref(out[:1], ref["output.forward.sample"])  # item 0 unchanged by batching
    alone = _np(model(**second))
    np.testing.assert_allclose(out[1:], alone, atol=1e-5, rtol=0)
    # what sits under a mask does not matter
    poked = {k: v.copy() for k, v in second.items()}
    poked["lyric_token_idx"][:, 9:] = rng.integers(1, 6000, size=4)
    poked["encoder_text_hidden_states"][:, 3:] = 7.0
    np.testing.assert_allclose(_np(model(**poked)), alone, atol=1e-5, rtol=0)


def test_bad_inputs_are_named(model, inputs):
    with pytest.raises(ValueError, match="hidden_states must be"):
        model.decode(
            inputs["hidden_states"][:, :, :8],
            inputs["attention_mask"],
            mx.zeros((1, 3, 32)),
            mx.ones((1, 3)),
            inputs["timestep"],
        )
    with pytest.raises(ValueError, match="timestep"):
        model.decode(
            inputs["hidden_states"],
            inputs["attention_mask"],
            mx.zeros((1, 3, 32)),
            mx.ones((1, 3)),
            np.ones(3, np.float32),
        )
    with pytest.raises(ValueError, match="lyric_token_idx must hold integer"):
        model.forward_lyric_encoder(
            inputs["lyric_token_idx"].astype(np.float32), inputs["lyric_mask"]
        )


# ---------------------------------------------------------------------------------- numerics


def test_rope_mixed_convention_hand_computed():
    """Adjacent pairs rotated, frequencies indexed half-split: element d uses angle d mod D/2."""
    inv_freq = mx.array([1.0, 0.5])
    cos, sin = rope_tables(3, inv_freq, mx.float32)
    x = mx.array([[1.0, 2.0, 3.0, 4.0]] * 3)  # positions 0, 1, 2
    out = np.array(rope_apply(x, cos, sin))
    c1, s1, c5, s5 = math.cos(1), math.sin(1), math.cos(0.5), math.sin(0.5)
    expected_p1 = [1 * c1 - 2 * s1, 2 * c5 + 1 * s5, 3 * c1 - 4 * s1, 4 * c5 + 3 * s5]
    np.testing.assert_allclose(out[0], [1, 2, 3, 4], rtol=0, atol=0)
    np.testing.assert_allclose(out[1], expected_p1, rtol=1e-6)
    # neither the standard interleaved nor the standard half-split rotation
    interleaved = [1 * c1 - 2 * s1, 2 * c1 + 1 * s1, 3 * c5 - 4 * s5, 4 * c5 + 3 * s5]
    half_split = [1 * c1 - 3 * s1, 2 * c5 - 4 * s5, 3 * c1 + 1 * s1, 4 * c5 + 2 * s5]
    assert not np.allclose(out[1], interleaved, atol=1e-3)
    assert not np.allclose(out[1], half_split, atol=1e-3)


def test_rope_frequencies_and_bf16_tables():
    inv = rope_inv_freq(128, 1e6)
    np.testing.assert_allclose(inv, 1e6 ** (-np.arange(0, 128, 2) / 128), rtol=1e-6)
    cos32, _ = rope_tables(5, mx.array(inv), mx.float32)
    cos16, _ = rope_tables(5, mx.array(inv), mx.bfloat16)
    np.testing.assert_array_equal(_np(cos16), _np(cos32.astype(mx.bfloat16)))


def test_timestep_sinusoid_cos_first():
    t = np.array([0.0, 647.25, 1000.0], np.float32)
    got = np.array(timestep_sinusoid(mx.array(t), mx.array(timestep_frequencies())))
    f = np.exp(-math.log(10000) * np.arange(128) / 128)
    a = t[:, None].astype(np.float64) * f
    np.testing.assert_allclose(got, np.concatenate([np.cos(a), np.sin(a)], axis=1), atol=2e-4)
    np.testing.assert_array_equal(got[0, :128], 1.0)


def test_conformer_relative_positions_row_j_is_r_equal_L_minus_1_minus_j():
    L, width = 4, 8
    pe = np.array(espnet_rel_positional_encoding(L, mx.array(espnet_div_term(width))))[0]
    w = np.exp(-np.arange(0, width, 2) * math.log(10000.0) / width)
    for j in range(2 * L - 1):
        r = L - 1 - j
        np.testing.assert_allclose(pe[j, 0::2], np.sin(r * w), atol=1e-6)
        np.testing.assert_allclose(pe[j, 1::2], np.cos(r * w), atol=1e-6)


def test_repa_interpolation_is_torch_linear_align_corners_false():
    x = np.array([0.0, 1.0, 2.0, 3.0], np.float32)
    i0, i1, lam = linear_interpolate_indices(4, 8)  # upsampling, edges clamped
    up = (1 - lam) * x[i0] + lam * x[i1]
    np.testing.assert_allclose(up, [0, 0.25, 0.75, 1.25, 1.75, 2.25, 2.75, 3.0], atol=1e-7)
    i0, i1, lam = linear_interpolate_indices(4, 2)  # downsampling: src = 0.5, 2.5
    np.testing.assert_allclose((1 - lam) * x[i0] + lam * x[i1], [0.5, 2.5], atol=1e-7)


# ---------------------------------------------------------------------------------- config/convert


def _tiny_config() -> dict:
    return json.loads((FIXTURE / "ace_step_transformer" / "config.json").read_text())


def test_config_defaults_and_errors():
    cfg = _tiny_config()
    for k in (
        "lyric_encoder_attention_heads",
        "lyric_encoder_linear_units",
        "lyric_encoder_num_blocks",
    ):
        cfg.pop(k)
    cfg["lyric_hidden_size"] = 64
    lyr = dit_config_from_dict(cfg).lyric_encoder_config()
    assert (lyr.output_size, lyr.attention_heads, lyr.linear_units, lyr.num_blocks) == (
        64,
        16,
        4096,
        6,
    )
    bad = _tiny_config()
    bad.pop("num_layers")
    with pytest.raises(ConfigError, match="num_layers"):
        dit_config_from_dict(bad)
    bad = _tiny_config()
    bad["patch_size"] = [16, 2]
    with pytest.raises(ConfigError, match="patch_size"):
        dit_config_from_dict(bad)


def test_conversion_drops_only_unused_cross_attention_projections():
    plan = plan_component(SPEC, header_of(FIXTURE / SPEC.subfolder / SPEC.weights_file))
    n_layers = _tiny_config()["num_layers"]
    assert len(plan.dropped) == n_layers * 8
    assert all(".cross_attn.add_" in k or ".cross_attn.to_add_out." in k for k in plan.dropped)
    shapes = {t.dst: t.shape for t in plan.tensors}
    # 2048 = in_channels * 256, hard-coded in the original
    assert shapes["proj_in.early_conv_layers.0.weight"] == (2048, 16, 1, 8)
    assert shapes["transformer_blocks.0.ff.depth_conv.conv.weight"] == (160, 3, 1)


def test_dropped_lyrics_give_finite_zero_lyric_encoder_gradients(tmp_path):
    """Training drops the lyrics (ids and mask all zero) 15% of the time: the conformer's
    all-padding attention rows must not turn into NaN gradients."""
    import mlx.nn as nn
    from mlx.utils import tree_flatten

    from acestep_mlx.checkpoint import load_component

    model = load_component(FIXTURE, "dit", "float32", cache_dir=tmp_path)
    ids, mask = mx.zeros((1, 5), dtype=mx.int32), mx.zeros((1, 5))

    def loss_fn(m):
        states, smask = m.encode(mx.ones((1, 3, 32)), mx.ones((1, 3)), mx.zeros((1, 512)), ids,
                                 mask)
        out = m.decode(mx.ones((1, 8, 16, 4)), mx.ones((1, 4)), states, smask, mx.array([500.0]))
        return (out**2).mean()

    _, grads = nn.value_and_grad(model, loss_fn)(model)
    flat = dict(tree_flatten(grads))
    assert all(bool(mx.all(mx.isfinite(v)).item()) for v in flat.values())
    lyric = [v for k, v in flat.items() if k.startswith("lyric_encoder.")]
    assert lyric and max(float(mx.abs(v).max().item()) for v in lyric) == 0.0
