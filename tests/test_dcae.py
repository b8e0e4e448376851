"""DCAE (diffusers AutoencoderDC) in MLX against the recorded outputs of the original code."""

from __future__ import annotations

import json
import math
from pathlib import Path

import mlx.core as mx
import numpy as np
import pytest
from safetensors.numpy import load_file

from acestep_mlx.checkpoint import load_component
from acestep_mlx.configs import ConfigError, read_config_json
from acestep_mlx.models.dcae import (
    DCAEConfig,
    linear_attention,
    pixel_shuffle,
    pixel_unshuffle,
    quadratic_attention,
    upsample_nearest2x,
)
from convert.core import model_parameter_shapes, plan_component, verify_plan
from convert.dcae import SPEC

FIXTURES = Path(__file__).parent / "fixtures"
TINY = FIXTURES / "tiny-a"
REF_FILE = "reference/music_dcae_submodules.safetensors"
CASES = (("dcae_encoder", "encode_nchw"), ("dcae_decoder", "decode_nchw"))


@pytest.fixture(scope="module")
def cache(tmp_path_factory) -> Path:
    return tmp_path_factory.mktemp("dcae-cache")


@pytest.fixture(scope="module")
def model32(cache):
    return load_component(TINY, "dcae", "float32", cache_dir=cache)


@pytest.fixture(scope="module")
def ref() -> dict[str, np.ndarray]:
    return load_file(str(TINY / REF_FILE))


@pytest.fixture(scope="module")
def tolerance() -> tuple[float, float]:
    fixtures = json.loads((TINY / "fixtures.json").read_text())
    tol = fixtures["files"][REF_FILE]["tolerance"]
    return float(tol["atol"]), float(tol["rtol"])


@pytest.mark.parametrize("name,method", CASES)
def test_matches_reference_float32(model32, ref, tolerance, name, method):
    atol, rtol = tolerance
    x = ref[f"{name}.input"]
    expected = ref[f"{name}.output"]
    out = getattr(model32, method)(mx.array(x))
    assert out.dtype == mx.float32
    actual = np.array(out)
    assert actual.shape == expected.shape
    err = np.abs(actual.astype(np.float64) - expected)
    print(f"{name}: max abs error {err.max():.3g} (max |ref| {np.abs(expected).max():.3g})")
    assert err.max() < atol + rtol * np.abs(expected).max()
    np.testing.assert_allclose(actual, expected, atol=atol, rtol=rtol)


@pytest.mark.parametrize("name,method", CASES)
def test_bfloat16_close_to_float32(model32, cache, ref, name, method):
    """bf16 weights/activations (fp32 norms and attention core) vs fp32: measured 2.1-2.2 %."""
    model16 = load_component(TINY, "dcae", "bfloat16", cache_dir=cache)
    assert model16.dtype == mx.bfloat16
    x = mx.array(ref[f"{name}.input"])
    out16 = getattr(model16, method)(x)
    assert out16.dtype == mx.bfloat16
    a = np.array(getattr(model32, method)(x)).astype(np.float64)
    b = np.array(out16.astype(mx.float32)).astype(np.float64)
    rel = np.linalg.norm(a - b) / np.linalg.norm(a)
    rel_max = np.abs(a - b).max() / np.abs(a).max()
    assert np.isfinite(b).all()
    assert rel < 0.05, rel
    assert rel_max < 0.08, rel_max
    assert rel > 1e-4  # it really ran in reduced precision


def torch_pixel_unshuffle(x: np.ndarray, r: int) -> np.ndarray:
    """Index formula of torch.nn.functional.pixel_unshuffle on NCHW."""
    b, c, h, w = x.shape
    out = np.empty((b, c * r * r, h // r, w // r), x.dtype)
    for ch in range(c):
        for dy in range(r):
            for dx in range(r):
                out[:, ch * r * r + dy * r + dx] = x[:, ch, dy::r, dx::r]
    return out


def test_pixel_unshuffle_and_shuffle_follow_torch_channel_order():
    rng = np.random.default_rng(0)
    x = rng.standard_normal((2, 3, 4, 6)).astype(np.float32)  # NCHW
    expected = torch_pixel_unshuffle(x, 2)
    got = np.array(pixel_unshuffle(mx.array(x.transpose(0, 2, 3, 1)))).transpose(0, 3, 1, 2)
    np.testing.assert_array_equal(got, expected)
    # pixel_shuffle is its exact inverse: out[c, 2h+dy, 2w+dx] = in[4c + 2dy + dx]
    back = np.array(pixel_shuffle(mx.array(expected.transpose(0, 2, 3, 1)))).transpose(0, 3, 1, 2)
    np.testing.assert_array_equal(back, x)
    y = rng.standard_normal((1, 8, 2, 3)).astype(np.float32)
    s = np.array(pixel_shuffle(mx.array(y.transpose(0, 2, 3, 1)))).transpose(0, 3, 1, 2)
    assert s[0, 1, 2 * 1 + 1, 2 * 2 + 0] == y[0, 1 * 4 + 1 * 2 + 0, 1, 2]
    # nearest upsampling repeats each pixel into a 2x2 patch
    up = np.array(upsample_nearest2x(mx.array(x.transpose(0, 2, 3, 1))))
    np.testing.assert_array_equal(up, x.transpose(0, 2, 3, 1).repeat(2, 1).repeat(2, 2))


def test_quadratic_fallback_equals_linear_attention():
    """Both cores compute sum_s v_s (k_s.q_t) / (sum_s k_s.q_t + eps) (no scaling, no softmax)."""
    rng = np.random.default_rng(1)
    q, k = (np.maximum(rng.standard_normal((1, 3, 4, 6)), 0) for _ in range(2))
    v = rng.standard_normal((1, 3, 4, 6))
    scores = np.einsum("bgds,bgdt->bgst", k, q)
    expected = np.einsum("bgds,bgst->bgdt", v, scores) / (scores.sum(2)[:, :, None] + 1e-15)
    for fn in (linear_attention, quadratic_attention):
        got = fn(*(mx.array(a.astype(np.float32)) for a in (q, k, v)), 1e-15)
        np.testing.assert_allclose(np.array(got), expected, rtol=1e-5, atol=1e-6)


def test_small_input_uses_quadratic_path_and_runs(model32):
    """H*W <= head_dim at the attention stage takes upstream's quadratic branch."""
    attn = model32.encoder.down_blocks[3][0].attn
    x = mx.random.normal((1, 2, 2, 32), key=mx.random.key(0))  # 4 <= head_dim 8
    assert 4 <= attn.head_dim
    y = attn(x)
    assert y.shape == x.shape and np.isfinite(np.array(y)).all()
    z = model32.encode_nchw(mx.zeros((1, 2, 8, 8)))
    assert z.shape == (1, 8, 1, 1)


def test_bad_inputs_are_explained(model32):
    with pytest.raises(ValueError, match=r"\[B, 2, H, W\]"):
        model32.encode_nchw(mx.zeros((1, 3, 16, 16)))
    with pytest.raises(ValueError, match="multiples of 8"):
        model32.encode_nchw(mx.zeros((1, 2, 128, 44)))
    with pytest.raises(ValueError, match=r"\[B, 8, h, w\]"):
        model32.decode_nchw(mx.zeros((1, 16, 7)))


def test_config_requires_fields():
    cfg = read_config_json(TINY / "music_dcae_f8c8" / "config.json")
    DCAEConfig.from_dict(cfg)
    with pytest.raises(ConfigError, match="encoder_block_types"):
        DCAEConfig.from_dict({k: v for k, v in cfg.items() if k != "encoder_block_types"})
    with pytest.raises(ConfigError, match="block type"):
        DCAEConfig.from_dict({**cfg, "decoder_block_types": "Nope"})


def test_full_size_plan_covers_every_tensor():
    manifest = json.loads((FIXTURES / "full-size-manifest.json").read_text())
    entry = manifest[f"{SPEC.subfolder}/{SPEC.weights_file}"]
    header = {k: (v["dtype"], tuple(v["shape"])) for k, v in entry["tensors"].items()}
    assert len(header) == entry["n_tensors"] == 192
    plan = plan_component(SPEC, header)
    assert not plan.dropped
    mx.reset_peak_memory()
    model = SPEC.build_model(entry["config"])
    verify_plan(SPEC, plan, model_parameter_shapes(model))
    assert mx.get_peak_memory() < 256 * 1024**2  # never materialised
    assert sum(math.prod(t.shape) for t in plan.tensors) == entry["n_elements"] == 156_812_426
    assert model.encoder.down_blocks[3][0].attn.to_out.weight.shape == (1024, 2048)


def test_decoder_eval_steps_is_bit_identical(model32):
    """Evaluating after every layer (the inference default, for memory) changes no number."""
    z = mx.array(np.random.default_rng(3).standard_normal((1, 16, 24, 8)).astype(np.float32))
    lazy = model32.decoder(z, eval_steps=False)
    stepped = model32.decoder(z, eval_steps=True)
    assert lazy.shape == stepped.shape
    np.testing.assert_array_equal(np.array(lazy), np.array(stepped))
