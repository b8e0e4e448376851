"""Registry of the checkpoint components and their key tables (one module per component)."""

from __future__ import annotations

import importlib

from .core import ComponentSpec

# component name -> module defining SPEC (its single key table lives there)
COMPONENT_MODULES = {
    "dit": "convert.dit",
    "text_encoder": "convert.umt5",
    "dcae": "convert.dcae",
    "vocoder": "convert.vocoder",
}
COMPONENTS = tuple(COMPONENT_MODULES)


def get_spec(name: str) -> ComponentSpec:
    if name not in COMPONENT_MODULES:
        raise KeyError(f"unknown component {name!r}; known: {', '.join(COMPONENTS)}")
    return importlib.import_module(COMPONENT_MODULES[name]).SPEC


def available_specs() -> dict[str, ComponentSpec]:
    """Specs whose modules exist (all four once the project is complete)."""
    out = {}
    for name, mod in COMPONENT_MODULES.items():
        try:
            out[name] = importlib.import_module(mod).SPEC
        except ModuleNotFoundError as e:
            if e.name != mod:
                raise
    return out
