"""LoRA adapters at inference: parity at two strengths, strength/unload/switch, refusals."""

from __future__ import annotations

import json
from pathlib import Path

import mlx.core as mx
import mlx.nn as nn
import numpy as np
import pytest
from safetensors import safe_open
from safetensors.numpy import load_file, save_file

from acestep_mlx.checkpoint import load_component
from acestep_mlx.lora import (
    DEFAULT_TARGETS,
    LORA_FILE,
    LoRAError,
    LoRALinear,
    add_lora_adapters,
    load_lora_into,
    lora_layers,
    lora_scale,
    match_target_modules,
    read_lora_file,
    save_lora_file,
    strip_lora,
)
from acestep_mlx.parity import compare

FIXTURE = Path(__file__).parent / "fixtures" / "tiny-a"
LORA_DIR = FIXTURE / "lora"
MANIFEST = json.loads((FIXTURE / "fixtures.json").read_text())
DIT_TOL = MANIFEST["tolerances"]["dit"]
TRAIN_TOL = MANIFEST["files"]["reference/training.safetensors"]["tolerance"]
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
# measured 3.1e-2: relative L2 error of the bf16 DiT forward with the adapter (strength 0.8,
# adapter rounded to bf16 as PEFT casts it to the base dtype) against the float32 reference
# output (the DiT alone: 2.0e-2); asserted with margin
BF16_REL_BOUND = 6e-2


@pytest.fixture(scope="module")
def cache(tmp_path_factory) -> Path:
    return tmp_path_factory.mktemp("lora-cache")


@pytest.fixture(scope="module")
def dit(cache):
    return load_component(FIXTURE, "dit", "float32", cache_dir=cache)


@pytest.fixture(scope="module")
def dit_inputs() -> list[mx.array]:
    ref = load_file(str(FIXTURE / "reference" / "dit.safetensors"))
    return [mx.array(ref[f"input.{k}"]) for k in INPUTS]


def _forward(model, args) -> np.ndarray:
    return np.array(model(*args).astype(mx.float32))


@pytest.fixture()
def clean(dit):
    """Every test leaves the shared model without adapters."""
    yield dit
    strip_lora(dit)


def _assert_close(actual, expected, atol, rtol):
    ok, max_abs, _, tol = compare(actual, expected, atol, rtol)
    assert ok, f"max_abs={max_abs:.3e} ({tol})"


# ------------------------------------------------------------------------------- parity


def test_parity_strength_0_8_pipeline_reference(clean, dit_inputs):
    """`lora_weight=0.8` as the original pipeline loads the adapter (scale = weight, 9.11)."""
    ref = load_file(str(FIXTURE / "reference" / "pipeline_text2music_lora.safetensors"))
    load_lora_into(clean, LORA_DIR, 0.8)
    _assert_close(
        _forward(clean, dit_inputs),
        ref["output.dit_forward_with_lora"],
        DIT_TOL["atol"],
        DIT_TOL["rtol"],
    )


def test_parity_strength_2_training_reference(clean):
    """The training scale alpha/sqrt(r) = 2.0: the raw DiT output of the training reference,
    fed the reference's noisy latents and conditions."""
    ref = load_file(str(FIXTURE / "reference" / "training.safetensors"))
    cfg = json.loads((LORA_DIR / "lora_config.json").read_text())
    scale = lora_scale(cfg["r"], cfg["lora_alpha"], cfg["use_rslora"])
    assert scale == 2.0
    load_lora_into(clean, LORA_DIR, scale)
    x = ref["intermediate.noisy_latents"]
    args = [
        mx.array(a)
        for a in (
            x,
            np.ones((1, x.shape[-1]), np.float32),
            ref["intermediate.encoder_text_hidden_states"],
            ref["intermediate.text_attention_mask"],
            ref["intermediate.speaker_embeds"],
            ref["intermediate.lyric_token_idx"],
            ref["intermediate.lyric_mask"],
            ref["intermediate.timesteps"],
        )
    ]
    _assert_close(
        _forward(clean, args), ref["intermediate.model_pred_raw"], TRAIN_TOL["tensors_atol"], 0.0
    )


def test_strength_changes_output_and_scales_delta(clean, dit_inputs):
    base = _forward(clean, dit_inputs)
    adapter = load_lora_into(clean, LORA_DIR, 0.0)
    out0 = _forward(clean, dit_inputs)
    np.testing.assert_array_equal(out0, base)  # strength 0: exactly the base model
    adapter.set_strength(1.0)
    out1 = _forward(clean, dit_inputs)
    assert np.abs(out1 - base).max() > 0.1  # the adapter really changes the output
    adapter.set_strength(0.8)
    out08 = _forward(clean, dit_inputs)
    assert 0 < np.abs(out08 - base).max() < np.abs(out1 - base).max()


def test_unload_restores_base_and_switch(clean, dit_inputs, tmp_path):
    base = _forward(clean, dit_inputs)
    adapter = load_lora_into(clean, LORA_DIR, 1.0)
    with_a = _forward(clean, dit_inputs)
    adapter.remove()
    assert not lora_layers(clean)
    np.testing.assert_array_equal(_forward(clean, dit_inputs), base)
    # a second adapter (B negated) gives another output, same base model object
    w = load_file(str(LORA_DIR / LORA_FILE))
    other = {k: (-v if ".lora_B." in k else v) for k, v in w.items()}
    save_lora_file(other, tmp_path)
    adapter = load_lora_into(clean, tmp_path, 1.0)
    with_b = _forward(clean, dit_inputs)
    assert np.abs(with_b - with_a).max() > 0.1
    adapter.remove()
    np.testing.assert_array_equal(_forward(clean, dit_inputs), base)


def test_bf16_within_bound(cache, dit_inputs):
    ref = load_file(str(FIXTURE / "reference" / "pipeline_text2music_lora.safetensors"))
    model = load_component(FIXTURE, "dit", "bfloat16", cache_dir=cache)
    adapter = load_lora_into(model, LORA_DIR, 0.8)
    assert all(layer.lora_A.dtype == mx.bfloat16 for layer in adapter.layers.values())
    out = model(*dit_inputs)
    assert out.dtype == mx.bfloat16
    expected = ref["output.dit_forward_with_lora"]
    rel = np.linalg.norm(np.array(out.astype(mx.float32)) - expected) / np.linalg.norm(expected)
    assert rel < BF16_REL_BOUND, rel


# ------------------------------------------------------------------------------- refusals


def _variant(tmp_path: Path, change) -> Path:
    w = load_file(str(LORA_DIR / LORA_FILE))
    change(w)
    save_file(w, str(tmp_path / LORA_FILE), metadata={"format": "pt"})
    return tmp_path


KEY_A = "transformer_blocks.3.attn.to_q.lora_A.weight"
KEY_B = "transformer_blocks.3.attn.to_q.lora_B.weight"


@pytest.mark.parametrize(
    "change, message",
    [
        (lambda w: w.update({KEY_A: np.zeros((4, 31), np.float32)}), "do not fit the layer"),
        (lambda w: w.update({KEY_B: np.zeros((32, 3), np.float32)}), "rank-r pair"),
        (
            lambda w: w.update(
                {
                    "transformer_blocks.99.attn.to_q.lora_A.weight": w[KEY_A],
                    "transformer_blocks.99.attn.to_q.lora_B.weight": w[KEY_B],
                }
            ),
            "does not exist",
        ),
        (lambda w: w.pop(KEY_B), "lacks its lora_B"),
        (
            lambda w: w.update({"transformer_blocks.0.attn.to_q.alpha": np.ones((), np.float32)}),
            "unexpected tensor",
        ),
        (lambda w: w.update({KEY_A: np.full((4, 32), np.nan, np.float32)}), "NaN or Inf"),
        (
            lambda w: w.update(
                {
                    "final_layer.scale_shift_table.lora_A.weight": w[KEY_A],
                    "final_layer.scale_shift_table.lora_B.weight": w[KEY_B],
                }
            ),
            "not a linear layer",
        ),
    ],
)
def test_bad_adapter_refused_model_unchanged(clean, dit_inputs, tmp_path, change, message):
    base = _forward(clean, dit_inputs)
    with pytest.raises(LoRAError, match=message):
        load_lora_into(clean, _variant(tmp_path, change), 1.0)
    assert not lora_layers(clean)
    np.testing.assert_array_equal(_forward(clean, dit_inputs), base)


def test_refusals_of_paths_and_double_load(clean, tmp_path):
    with pytest.raises(LoRAError, match="has no pytorch_lora_weights"):
        load_lora_into(clean, tmp_path)
    with pytest.raises(LoRAError, match="neither"):
        load_lora_into(clean, str(tmp_path / "missing" / "deeper"))
    (tmp_path / LORA_FILE).write_bytes(b"not safetensors")
    with pytest.raises(LoRAError, match="not a readable safetensors"):
        load_lora_into(clean, tmp_path)
    load_lora_into(clean, LORA_DIR)
    n = len(lora_layers(clean))
    with pytest.raises(LoRAError, match="already carries"):
        load_lora_into(clean, LORA_DIR)
    assert len(lora_layers(clean)) == n


# ------------------------------------------------------------------------------- training side


def test_targets_match_the_original(clean):
    paths = match_target_modules(clean, DEFAULT_TARGETS)
    keys = json.loads((FIXTURE / "reference" / "training.json").read_text())["lora_param_order"]
    expected = {k.rsplit(".", 2)[0] for k in keys}
    assert set(paths) == expected and len(paths) == 179
    with pytest.raises(LoRAError, match="match no linear layer"):
        match_target_modules(clean, ["no_such_module"])
    with pytest.raises(LoRAError, match="only supported on linear"):
        match_target_modules(clean, ["attn"])


def test_fresh_adapters_start_at_base_and_save_roundtrip(clean, dit_inputs, tmp_path):
    base = _forward(clean, dit_inputs)
    adapter = add_lora_adapters(clean, 4, 2.0, DEFAULT_TARGETS, seed=3)
    np.testing.assert_array_equal(_forward(clean, dit_inputs), base)  # B = 0
    a = adapter.layers["transformer_blocks.0.attn.to_q"].lora_A
    assert a.shape == (4, 32) and float(mx.abs(a).max()) <= 1 / np.sqrt(32)
    path = save_lora_file(adapter.weights(), tmp_path)
    with safe_open(str(path), "np") as f:
        assert f.metadata() == {"format": "pt"}
        assert set(f.keys()) == set(adapter.weights())
    back = read_lora_file(path)
    np.testing.assert_array_equal(back["transformer_blocks.0.attn.to_q"][0], np.array(a))
    with pytest.raises(LoRAError, match="NaN/Inf"):
        save_lora_file({KEY_A: np.full((2, 2), np.inf, np.float32)}, tmp_path)
    assert read_lora_file(path)  # the previous file is intact


def test_bf16_base_float32_adapter_branch():
    """A bfloat16 base with float32 adapters: the branch runs in float32, the output is bf16
    and equals float32 math rounded once."""
    rng = np.random.default_rng(0)
    base = nn.Linear(8, 6)
    base.update(
        {
            "weight": mx.array(rng.standard_normal((6, 8)), mx.bfloat16),
            "bias": mx.zeros((6,), mx.bfloat16),
        }
    )
    a = mx.array(rng.standard_normal((2, 8)).astype(np.float32))
    b = mx.array(rng.standard_normal((6, 2)).astype(np.float32))
    layer = LoRALinear(base, a, b, 0.7)
    x = mx.array(rng.standard_normal((3, 8)), mx.bfloat16)
    y = layer(x)
    assert y.dtype == mx.bfloat16
    y_base = base(x).astype(mx.float32)
    delta = (x.astype(mx.float32) @ a.T) @ b.T * 0.7
    np.testing.assert_array_equal(
        np.array(y.astype(mx.float32)),
        np.array((y_base + delta).astype(mx.bfloat16).astype(mx.float32)),
    )


def test_full_size_adapter_layout_matches_manifest():
    """The original's config on the full-size DiT (built lazily, nothing allocated): the same
    422 keys and shapes as an adapter the original trainer writes."""
    from acestep_mlx.models.dit import build_dit

    manifest = json.loads((FIXTURE.parent / "full-size-manifest.json").read_text())
    dit_cfg = manifest["ace_step_transformer/diffusion_pytorch_model.safetensors"]["config"]
    entry = next(v for k, v in manifest.items() if k.startswith("lora ("))
    r = entry["lora_config"]["r"]
    model = build_dit(dit_cfg)
    shapes = {}
    for path in match_target_modules(model, entry["lora_config"]["target_modules"]):
        layer = model
        for part in path.split("."):
            layer = layer[int(part)] if isinstance(layer, list) else getattr(layer, part)
        out_dim, in_dim = layer.weight.shape
        shapes[f"{path}.lora_A.weight"] = [r, in_dim]
        shapes[f"{path}.lora_B.weight"] = [out_dim, r]
    assert shapes == {k: v["shape"] for k, v in entry["tensors"].items()}


def test_replace_keeps_current_adapter_when_new_one_is_refused(clean, dit_inputs, tmp_path):
    """Switching adapters: a refused adapter leaves the current one active and untouched."""
    current = load_lora_into(clean, LORA_DIR, 0.8)
    with_a = _forward(clean, dit_inputs)
    bad = _variant(tmp_path, lambda w: w.update({KEY_A: np.zeros((4, 31), np.float32)}))
    with pytest.raises(LoRAError, match="do not fit"):
        load_lora_into(clean, bad, 1.0, replace=current)
    assert set(lora_layers(clean)) == set(current.layers)
    np.testing.assert_array_equal(_forward(clean, dit_inputs), with_a)
    w = load_file(str(LORA_DIR / LORA_FILE))
    save_lora_file({k: (2 * v if ".lora_B." in k else v) for k, v in w.items()}, tmp_path / "b")
    new = load_lora_into(clean, tmp_path / "b", 0.4, replace=current)
    assert not current.layers and len(new.layers) == 179
    np.testing.assert_allclose(_forward(clean, dit_inputs), with_a, atol=1e-5)  # 0.4 * 2B


def test_hub_repo_id_resolution(clean, tmp_path, monkeypatch):
    """A hub repo id goes through huggingface_hub.snapshot_download (faked here: no network)."""
    import shutil

    import huggingface_hub

    calls = []

    def fake_download(repo_id, allow_patterns=None, cache_dir=None):
        calls.append((repo_id, allow_patterns))
        if repo_id == "someone/missing":
            raise OSError("404")
        snap = tmp_path / "snap"
        snap.mkdir(exist_ok=True)
        shutil.copy(LORA_DIR / LORA_FILE, snap / LORA_FILE)
        return str(snap)

    monkeypatch.setattr(huggingface_hub, "snapshot_download", fake_download)
    adapter = load_lora_into(clean, "ACE-Step/some-lora", 0.8, cache_dir=tmp_path)
    assert calls[0] == ("ACE-Step/some-lora", [LORA_FILE]) and len(adapter.layers) == 179
    adapter.remove()
    with pytest.raises(LoRAError, match="could not download LoRA 'someone/missing'"):
        load_lora_into(clean, "someone/missing", cache_dir=tmp_path)
    assert not lora_layers(clean)
