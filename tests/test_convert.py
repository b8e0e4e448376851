"""The conversion machinery on a small synthetic component: mapping, layouts, errors, atomicity."""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import mlx.core as mx
import mlx.nn as nn
import numpy as np
import pytest
from safetensors.numpy import save_file

from acestep_mlx.configs import ConfigError, config_from_dict
from convert.core import (
    ComponentSpec,
    ConversionError,
    Rule,
    convert_component,
    plan_component,
    verify_plan,
)
from convert.safetensors_io import (
    CheckpointFileError,
    SafetensorsReader,
    bf16_bits_to_f32,
    f32_to_bf16_bits,
)


@dataclass
class ToyConfig:
    width: int
    kernel: int = 3


class Toy(nn.Module):
    def __init__(self, cfg: ToyConfig):
        super().__init__()
        self.proj = nn.Linear(cfg.width, cfg.width)
        self.conv = nn.Conv1d(cfg.width, 2 * cfg.width, cfg.kernel)
        self.up = nn.ConvTranspose1d(2 * cfg.width, cfg.width, 4, stride=2)


def build_toy(cfg: dict) -> Toy:
    return Toy(config_from_dict(ToyConfig, cfg, "toy/config.json"))


RULES = (
    Rule(r"proj\.(weight|bias)", r"proj.\1"),
    Rule(r"conv\.weight", "conv.weight", "conv1d"),
    Rule(r"conv\.bias", "conv.bias"),
    Rule(r"up\.weight_g", None, reason="folded into up.weight"),
    Rule(r"up\.weight_v", "up.weight", "wn_conv_transpose1d"),
    Rule(r"up\.bias", "up.bias"),
    Rule(r"unused\..*", None, reason="training only"),
)
SPEC = ComponentSpec("toy", "toy", "model.safetensors", RULES, build_toy)


def source_tensors(width: int = 4, seed: int = 0) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(seed)
    return {
        "proj.weight": rng.standard_normal((width, width)).astype(np.float32),
        "proj.bias": rng.standard_normal((width,)).astype(np.float32),
        "conv.weight": rng.standard_normal((2 * width, width, 3)).astype(np.float32),
        "conv.bias": rng.standard_normal((2 * width,)).astype(np.float32),
        "up.weight_v": rng.standard_normal((2 * width, width, 4)).astype(np.float32),
        "up.weight_g": rng.uniform(0.5, 2, (2 * width, 1, 1)).astype(np.float32),
        "up.bias": rng.standard_normal((width,)).astype(np.float32),
        "unused.thing": np.zeros((3,), np.float32),
    }


def make_source(root: Path, tensors: dict[str, np.ndarray] | None = None,
                config: dict | None = None) -> Path:
    src = root / "toy"
    src.mkdir(parents=True)
    save_file(tensors if tensors is not None else source_tensors(), str(src / "model.safetensors"))
    (src / "config.json").write_text(json.dumps(config if config is not None else {"width": 4}))
    return src


def test_bf16_round_trip_is_round_to_nearest_even():
    x = np.array([1.0, 1.00390625, 1.01171875, -2.5, 3.0e38, 1e-40], np.float32)
    back = bf16_bits_to_f32(f32_to_bf16_bits(x))
    want = np.array(mx.array(x).astype(mx.bfloat16).astype(mx.float32))
    np.testing.assert_array_equal(back, want)


def test_convert_maps_transposes_and_folds(tmp_path):
    src = make_source(tmp_path)
    out = tmp_path / "out"
    report = convert_component(SPEC, src, out)
    assert report["dropped"] == {
        "unused.thing": "training only",
        "up.weight_g": "folded into up.weight",
    }
    model = build_toy({"width": 4})
    model.load_weights(str(out / "model.safetensors"), strict=True)
    t = source_tensors()
    np.testing.assert_array_equal(np.array(model.conv.weight), t["conv.weight"].transpose(0, 2, 1))
    v, g = t["up.weight_v"].astype(np.float64), t["up.weight_g"].astype(np.float64)
    w = g * v / np.sqrt((v**2).sum(axis=(1, 2), keepdims=True))  # per INPUT channel (dim 0)
    np.testing.assert_allclose(np.array(model.up.weight), w.transpose(1, 2, 0), rtol=1e-6)
    # the converted conv computes what PyTorch's conv1d computes (cross-correlation, NCL layout)
    x = np.random.default_rng(1).standard_normal((1, 4, 9)).astype(np.float32)
    y = np.array(model.conv(mx.array(x.transpose(0, 2, 1)))).transpose(0, 2, 1)
    ref = np.stack([sum(np.correlate(x[0, i], t["conv.weight"][o, i], "valid") for i in range(4))
                    + t["conv.bias"][o] for o in range(8)])
    np.testing.assert_allclose(y[0], ref, atol=1e-5)


def test_convert_bfloat16_output(tmp_path):
    src = make_source(tmp_path)
    convert_component(SPEC, src, tmp_path / "out", dtype="bfloat16")
    with SafetensorsReader(tmp_path / "out" / "model.safetensors") as r:
        assert {i.dtype for i in r.tensors.values()} == {"BF16"}
        np.testing.assert_allclose(r.get("proj.weight"), source_tensors()["proj.weight"], rtol=8e-3)


def test_missing_weights_file(tmp_path):
    src = make_source(tmp_path)
    (src / "model.safetensors").unlink()
    with pytest.raises(CheckpointFileError, match="not found"):
        convert_component(SPEC, src, tmp_path / "out")
    assert not (tmp_path / "out").exists()


def test_truncated_file_is_refused_and_leaves_nothing(tmp_path):
    src = make_source(tmp_path)
    f = src / "model.safetensors"
    f.write_bytes(f.read_bytes()[:-17])
    with pytest.raises(CheckpointFileError, match="truncated"):
        convert_component(SPEC, src, tmp_path / "out")
    assert list(tmp_path.iterdir()) == [src]


def test_wrong_shape_names_key_expected_and_found(tmp_path):
    t = source_tensors()
    t["proj.weight"] = np.zeros((4, 5), np.float32)
    src = make_source(tmp_path, t)
    with pytest.raises(ConversionError) as e:
        convert_component(SPEC, src, tmp_path / "out")
    msg = str(e.value)
    assert "proj.weight" in msg and "expected [4, 4]" in msg and "found [4, 5]" in msg
    assert not (tmp_path / "out").exists()


def test_unmapped_and_missing_tensors(tmp_path):
    t = source_tensors()
    t["mystery.weight"] = np.zeros((2,), np.float32)
    del t["conv.bias"]
    header = {k: ("F32", v.shape) for k, v in t.items()}
    with pytest.raises(ConversionError, match="mystery.weight"):
        plan_component(SPEC, header)
    del t["mystery.weight"]
    plan = plan_component(SPEC, {k: ("F32", v.shape) for k, v in t.items()})
    from convert.core import model_parameter_shapes

    with pytest.raises(ConversionError, match="conv.bias: model parameter not filled"):
        verify_plan(SPEC, plan, model_parameter_shapes(build_toy({"width": 4})))


def test_config_missing_field(tmp_path):
    src = make_source(tmp_path, config={"kernel": 3})
    with pytest.raises(ConfigError, match="lacks required field.*width"):
        convert_component(SPEC, src, tmp_path / "out")
    assert not (tmp_path / "out").exists()


def test_interrupted_conversion_leaves_no_cache(tmp_path):
    src = make_source(tmp_path)

    def boom(i: int, n: int) -> None:
        if i == 3:
            raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        convert_component(SPEC, src, tmp_path / "out", progress=boom)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["toy"]


def test_nan_weights_are_refused(tmp_path):
    t = source_tensors()
    t["proj.bias"][1] = np.nan
    src = make_source(tmp_path, t)
    with pytest.raises(ConversionError, match="NaN"):
        convert_component(SPEC, src, tmp_path / "out")
