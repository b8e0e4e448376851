"""Past generations: the `*_input_params.json` files next to the audio in the output folder.

The pipeline writes one metadata JSON per output file (the original's schema, spec 9.12); the
history lists them (newest first), reads one back safely, and turns it into the values of the
text2music controls ("reload parameters").
"""

from __future__ import annotations

import json
import os
from pathlib import Path

from .security import UnsafeRequest, safe_join, safe_name

SUFFIX = "_input_params.json"
# control name -> (metadata key, default when the key is missing) in the order of UI_FIELDS
UI_FIELDS = (
    ("audio_duration", -1.0), ("prompt", ""), ("lyrics", ""), ("infer_step", 60),
    ("guidance_scale", 15.0), ("scheduler_type", "euler"), ("cfg_type", "apg"),
    ("omega_scale", 10.0), ("actual_seeds", None), ("guidance_interval", 0.5),
    ("guidance_interval_decay", 0.0), ("min_guidance_scale", 3.0), ("use_erg_tag", True),
    ("use_erg_lyric", False), ("use_erg_diffusion", True), ("oss_steps", None),
    ("guidance_scale_text", 0.0), ("guidance_scale_lyric", 0.0), ("audio2audio_enable", False),
    ("ref_audio_strength", 0.5), ("lora_name_or_path", "none"), ("lora_weight", 1.0),
    ("format", "wav"),
)


def list_history(output_dir: str | os.PathLike, limit: int = 200) -> list[dict]:
    """Metadata files in `output_dir`, newest first: name, audio file, time, task, prompt."""
    folder = Path(output_dir)
    if not folder.is_dir():
        return []
    entries = []
    for path in folder.glob(f"*{SUFFIX}"):
        if path.name.startswith(".") or not path.is_file():
            continue
        try:
            meta = json.loads(path.read_text(encoding="utf-8"))
        except (OSError, ValueError):
            continue
        if not isinstance(meta, dict):
            continue
        audio = Path(str(meta.get("audio_path") or "")).name
        entries.append({
            "name": path.name,
            "audio": audio if audio and (folder / audio).is_file() else None,
            "time": path.stat().st_mtime,
            "task": meta.get("task", "text2music"),
            "prompt": str(meta.get("prompt", ""))[:120],
            "duration": meta.get("audio_duration"),
        })
    entries.sort(key=lambda e: (e["time"], e["name"]), reverse=True)
    return entries[:limit]


def load_entry(output_dir: str | os.PathLike, name: str) -> dict:
    """The metadata of one history entry (`name` as listed), refusing anything else."""
    if not isinstance(name, str) or not name.endswith(SUFFIX):
        raise UnsafeRequest(f"{name!r} is not a history entry (names end with {SUFFIX})")
    clean = safe_name(name, "history entry")
    if clean != name:
        raise UnsafeRequest(f"{name!r} is not a history entry")
    path = safe_join(output_dir, clean)
    if not path.is_file():
        raise UnsafeRequest(f"history entry {name!r} not found", status=404)
    try:
        meta = json.loads(path.read_text(encoding="utf-8"))
    except ValueError as e:
        raise UnsafeRequest(f"history entry {name!r} is not valid JSON: {e}", 422) from e
    if not isinstance(meta, dict):
        raise UnsafeRequest(f"history entry {name!r} does not hold a JSON object", 422)
    return meta


def _join(values) -> str:
    if values is None or values == "":
        return ""
    if isinstance(values, (list, tuple)):
        return ", ".join(str(v) for v in values)
    return str(values)


def ui_values(meta: dict) -> dict:
    """Control values from a metadata dict (missing keys get the UI defaults)."""
    out = {}
    for key, default in UI_FIELDS:
        value = meta.get(key, default)
        if value is None:
            value = default
        if key in ("actual_seeds", "oss_steps"):
            value = _join(value)
        out[key] = value
    if out["lora_name_or_path"] in (None, ""):
        out["lora_name_or_path"] = "none"
    return out
