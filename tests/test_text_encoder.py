"""UMT5 text encoder + prompt tokenizer: parity with the original, truncation, bf16, ERG, errors."""

from __future__ import annotations

import json
from pathlib import Path

import mlx.core as mx
import numpy as np
import pytest
from safetensors.numpy import load_file

from acestep_mlx.checkpoint import load_component
from acestep_mlx.configs import ConfigError
from acestep_mlx.models.umt5 import UMT5Config, relative_position_buckets
from acestep_mlx.parity import run_parity
from acestep_mlx.text.prompt_tokenizer import PromptTokenizer
from convert.core import (
    ConversionError,
    header_of,
    model_parameter_shapes,
    plan_component,
    verify_plan,
)
from convert.umt5 import SPEC

FIXTURE = Path(__file__).parent / "fixtures" / "tiny-a"
UMT5_DIR = FIXTURE / "umt5-base"
REF = FIXTURE / "reference" / "text_encoder.safetensors"
# measured on tiny-a: 0.101 (normal) and 0.076 (ERG) relative Frobenius error of bf16 vs fp32;
# the tiny random 10-block model amplifies rounding (~0.9% after block 0, ~10% after block 9)
BF16_REL_ERR = 0.15


@pytest.fixture(scope="module")
def models(tmp_path_factory):
    cache = tmp_path_factory.mktemp("umt5-cache")
    return {
        d: load_component(FIXTURE, "text_encoder", d, cache_dir=cache)
        for d in ("float32", "bfloat16")
    }


@pytest.fixture(scope="module")
def tokenizer() -> PromptTokenizer:
    return PromptTokenizer.from_dir(UMT5_DIR)


@pytest.fixture(scope="module")
def ref() -> dict[str, np.ndarray]:
    return load_file(str(REF))


def test_parity_with_original():
    """Every tensor of the reference is compared by the parity command; ids/masks exactly."""
    summary = run_parity(FIXTURE, only=["text_encoder"], verbose=False)
    assert summary.n_not_covered == 0, summary.not_covered
    assert summary.passed + summary.failed >= 10
    for r in summary.results:
        if r.tolerance == "exact":
            assert r.passed, r.line()


# The original's own float32 output is 2.43e-5 away from the same code run in float64
# (fixtures.json `float32_vs_float64.umt5_last_hidden_state`); measured here: the float64 run of
# the original misses fixtures.json's atol 1e-5 / rtol 1e-4 at 1 of 3744 elements, so no float32
# implementation with another summation order (MLX's BLAS vs torch's MKL: every op differs by
# ~1 ulp, amplified through the 10 random blocks) can meet it everywhere. This test holds every
# element to fixtures.json's tolerance except at most MAX_OUTLIERS per tensor, and those to the
# reference's own float32 error. KNOWN GAP, reported by `python -m acestep_mlx.parity` (4 FAIL).
MAX_OUTLIERS = 4


@pytest.mark.parametrize("name", ["last_hidden_state", "last_hidden_state_null_erg",
                                  "last_hidden_state_single.0", "last_hidden_state_single.1",
                                  "last_hidden_state_single.2"])
def test_hidden_states_elementwise(models, ref, name):
    fixtures = json.loads((FIXTURE / "fixtures.json").read_text())
    tol = fixtures["tolerances"]["text_encoder"]
    floor = fixtures["float32_vs_float64"]["umt5_last_hidden_state"]["max_abs_diff"]
    ids, mask = ref["input_ids"], ref["attention_mask"]
    if name.startswith("last_hidden_state_single"):
        i = int(name.rsplit(".", 1)[1])
        n = int(mask[i].sum())
        out = models["float32"](ids[i : i + 1, :n])
    else:
        out = models["float32"](ids, mask, erg=name.endswith("null_erg"))
    expected = ref[name].astype(np.float64)
    diff = np.abs(np.array(out).astype(np.float64) - expected)
    outside = diff > tol["atol"] + tol["rtol"] * np.abs(expected)
    assert outside.sum() <= MAX_OUTLIERS, (outside.sum(), diff.max())
    assert diff.max() <= 1.25 * floor, diff.max()


def test_tokenizer_truncates_to_256_including_eos(tokenizer):
    long_prompt = ", ".join(["synth pop, female vocals, catchy"] * 60)
    ids, mask = tokenizer([long_prompt, "rock"])
    assert ids.shape == mask.shape == (2, 256)
    assert ids.dtype == mask.dtype == np.int64
    assert ids[0, -1] == tokenizer.eos_id == 1
    assert mask[0].all()
    full = PromptTokenizer.from_dir(UMT5_DIR, max_length=100_000)
    full_ids, _ = full([long_prompt])
    assert full_ids.shape[1] > 256 and full_ids[0, -1] == 1
    np.testing.assert_array_equal(ids[0, :255], full_ids[0, :255])  # 255 ids, then </s>
    # the short prompt is right-padded with <pad> = 0
    n = int(mask[1].sum())
    assert ids[1, n - 1] == 1 and (ids[1, n:] == 0).all() and not mask[1, n:].any()


def test_tokenizer_single_prompt_and_exact_length(tokenizer):
    ids, mask = tokenizer("pop, upbeat")
    assert ids.shape[0] == 1 and mask.all() and ids[0, -1] == 1
    short = PromptTokenizer.from_dir(UMT5_DIR, max_length=5)
    ids5, _ = short(["pop, upbeat, female vocals, 120 bpm"])
    assert ids5.shape == (1, 5) and ids5[0, -1] == 1
    np.testing.assert_array_equal(
        ids5[0, :4], tokenizer(["pop, upbeat, female vocals, 120 bpm"])[0][0, :4]
    )


def test_tokenizer_rejects_non_strings(tokenizer):
    with pytest.raises(TypeError, match="prompt 1 is a int"):
        tokenizer(["pop", 3])
    with pytest.raises(TypeError, match="prompt 0 is a NoneType"):
        tokenizer([None])
    with pytest.raises(TypeError, match="list of strings"):
        tokenizer(42)
    with pytest.raises(ValueError, match="empty"):
        tokenizer([])
    with pytest.raises(FileNotFoundError, match="umt5-base"):
        PromptTokenizer.from_dir(FIXTURE)


def test_bf16_close_to_fp32(models, ref):
    ids, mask = ref["input_ids"], ref["attention_mask"]
    for erg in (False, True):
        a = np.array(models["float32"](ids, mask, erg=erg))
        y = models["bfloat16"](ids, mask, erg=erg)
        assert y.dtype == mx.bfloat16
        b = np.array(y.astype(mx.float32))
        rel = np.linalg.norm(b - a) / np.linalg.norm(a)
        assert rel < BF16_REL_ERR, f"bf16 relative error {rel:.4f} (erg={erg})"


def test_erg_changes_output_only_when_enabled(models, ref):
    m = models["float32"]
    ids, mask = ref["input_ids"], ref["attention_mask"]
    base = np.array(m(ids, mask))
    erg = np.array(m(ids, mask, erg=True))
    assert np.abs(erg - base).max() > 0.1
    np.testing.assert_array_equal(np.array(m(ids, mask, erg=True, erg_layers=())), base)
    np.testing.assert_array_equal(np.array(m(ids, mask, erg=True, erg_tau=1.0)), base)
    # a different layer set gives a different result
    other = np.array(m(ids, mask, erg=True, erg_layers=(0,)))
    assert np.abs(other - erg).max() > 1e-3
    with pytest.raises(ValueError, match="ERG layer 10 does not exist"):
        m(ids, mask, erg=True, erg_layers=(9, 10))


def test_padding_does_not_change_real_tokens(models, ref):
    """A prompt alone and inside a padded batch give the same states on its real tokens."""
    m = models["float32"]
    ids, mask = ref["input_ids"], ref["attention_mask"]
    batch = np.array(m(ids, mask))
    n = int(mask[0].sum())
    alone = np.array(m(ids[:1, :n], mask[:1, :n]))
    np.testing.assert_allclose(batch[:1, :n], alone, atol=1e-5, rtol=1e-4)
    # without a mask the padding would leak into the real tokens
    unmasked = np.array(m(ids, np.ones_like(mask)))
    assert np.abs(unmasked[0, :n] - batch[0, :n]).max() > 1e-3


def test_input_errors(models, ref):
    m = models["float32"]
    ids, mask = ref["input_ids"], ref["attention_mask"]
    with pytest.raises(ValueError, match="does not match input_ids shape"):
        m(ids, mask[:, :-1])
    with pytest.raises(ValueError, match="vocabulary has 512"):
        m(np.array([[5, 512]]), np.ones((1, 2)))
    with pytest.raises(ValueError, match=r"\[batch, length\]"):
        m(ids[0], mask[0])
    with pytest.raises(TypeError, match="integer token ids"):
        m(ids.astype(np.float32), mask)


def test_relative_position_buckets():
    b = relative_position_buckets(300, 300, 32, 128)
    rel = np.arange(300)[None, :] - np.arange(300)[:, None]
    dist = np.abs(rel)
    # closed form of the default configuration: 8 + floor(2 * log2(|r| / 8)), capped at 15
    large = np.minimum(
        8 + np.array([(int(d) ** 2).bit_length() - 7 for d in dist.ravel()]).reshape(dist.shape),
        15,
    )
    expected = np.where(dist < 8, dist, large) + 16 * (rel > 0)
    np.testing.assert_array_equal(b, expected)
    assert b[0, 16] == 16 + 10 and b[0, 32] == 16 + 12 and b[0, 64] == 16 + 14
    assert b[64, 0] == 14 and b[0, 90] == 16 + 14 and b[0, 91] == 16 + 15 and b[0, 299] == 31


def test_key_table_and_config():
    header = header_of(UMT5_DIR / "model.safetensors")
    header["encoder.embed_tokens.weight"] = header["shared.weight"]
    plan = plan_component(SPEC, header)
    assert "tied" in plan.dropped["encoder.embed_tokens.weight"]
    cfg = json.loads((UMT5_DIR / "config.json").read_text())
    verify_plan(SPEC, plan, model_parameter_shapes(SPEC.build_model(cfg)))
    assert all(t.src == t.dst for t in plan.tensors)
    with pytest.raises(ConversionError, match="no mapping"):
        plan_component(SPEC, {**header, "encoder.block.0.layer.2.foo.weight": ("F32", (1,))})
    with pytest.raises(ConfigError, match="num_heads"):
        SPEC.build_model({k: v for k, v in cfg.items() if k != "num_heads"})
    with pytest.raises(ConfigError, match="gated-gelu"):
        UMT5Config.from_dict({**cfg, "feed_forward_proj": "relu"})
