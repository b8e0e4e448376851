"""The key tables cover the REAL full-size checkpoint, key for key and shape for shape.

`full-size-manifest.json` lists every tensor of the published ACE-Step/ACE-Step-v1-3.5B files. The
full-size MLX models are built lazily (their parameters are never evaluated, so nothing
like 14 GB is allocated) and the conversion plan made from the manifest is verified against them.
"""

from __future__ import annotations

import json
import math
from pathlib import Path

import mlx.core as mx
import pytest

from convert.components import COMPONENTS, get_spec
from convert.core import model_parameter_shapes, plan_component, verify_plan

MANIFEST = Path(__file__).parent / "fixtures" / "full-size-manifest.json"


@pytest.fixture(scope="module")
def manifest() -> dict:
    return json.loads(MANIFEST.read_text())


@pytest.mark.parametrize("component", COMPONENTS)
def test_full_size_mapping_covers_every_key(manifest, component):
    spec = get_spec(component)
    entry = manifest[f"{spec.subfolder}/{spec.weights_file}"]
    header = {k: (v["dtype"], tuple(v["shape"])) for k, v in entry["tensors"].items()}
    assert len(header) == entry["n_tensors"]
    plan = plan_component(spec, header)  # raises on any unmapped key
    mx.reset_peak_memory()
    model = spec.build_model(entry["config"])
    expected = model_parameter_shapes(model)
    verify_plan(spec, plan, expected)  # raises naming key, expected and found shape
    assert len(plan.tensors) + len(plan.dropped) == len(header)
    # the model was never materialised
    assert mx.get_peak_memory() < 256 * 1024**2
    # every element of the real file is either converted or deliberately dropped
    converted = sum(math.prod(t.shape) for t in plan.tensors)
    dropped = sum(math.prod(header[k][1]) for k in plan.dropped)
    assert converted + dropped == entry["n_elements"]
