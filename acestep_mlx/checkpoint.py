"""Finding a checkpoint (folder, HF cache snapshot or hub repo id) and loading converted components.

The original PyTorch files are converted to MLX safetensors on first use; the result is cached
under `cache_dir` (default `$ACESTEP_MLX_CACHE` or `~/.cache/acestep_mlx`) keyed by the source
files, so later runs load the MLX files directly.
"""

from __future__ import annotations

import json
import os
import sys
from pathlib import Path

from convert.components import get_spec
from convert.core import (
    REPORT_NAME,
    WEIGHTS_NAME,
    check_dtype,
    convert_component,
    source_fingerprint,
)
from convert.safetensors_io import CheckpointFileError

DEFAULT_REPO_ID = "ACE-Step/ACE-Step-v1-3.5B"
REQUIRED_SUBFOLDERS = ("ace_step_transformer", "music_dcae_f8c8", "music_vocoder", "umt5-base")


class CheckpointNotFoundError(FileNotFoundError):
    """No usable checkpoint at the given place (with what to do about it)."""


def default_cache_dir() -> Path:
    env = os.environ.get("ACESTEP_MLX_CACHE")
    return Path(env).expanduser() if env else Path.home() / ".cache" / "acestep_mlx"


def _has_layout(folder: Path) -> bool:
    return all((folder / s).is_dir() for s in REQUIRED_SUBFOLDERS)


def _find_snapshot(folder: Path) -> Path | None:
    """A Hugging Face cache (`models--ACE-Step--.../snapshots/<rev>/`) inside `folder`."""
    candidates = [folder] + sorted(folder.glob("models--*"))
    for base in candidates:
        snaps = base / "snapshots"
        if snaps.is_dir():
            ref = base / "refs" / "main"
            if ref.is_file() and _has_layout(snaps / ref.read_text().strip()):
                return snaps / ref.read_text().strip()
            for snap in sorted(snaps.iterdir(), key=lambda p: p.stat().st_mtime, reverse=True):
                if _has_layout(snap):
                    return snap
    return None


def resolve_checkpoint(path_or_repo_id: str | os.PathLike | None = None,
                       cache_dir: str | os.PathLike | None = None) -> Path:
    """Return a local folder with the hub layout of ACE-Step/ACE-Step-v1-3.5B.

    Accepts a folder in that layout, a Hugging Face cache folder holding a snapshot of it, or a
    hub repo id (default ACE-Step/ACE-Step-v1-3.5B), which is downloaded with
    `huggingface_hub.snapshot_download` into `cache_dir/hub`.
    """
    spec = str(path_or_repo_id) if path_or_repo_id is not None else DEFAULT_REPO_ID
    folder = Path(spec).expanduser()
    if folder.exists():
        if not folder.is_dir():
            raise CheckpointNotFoundError(f"{folder} is a file; pass the checkpoint folder")
        if _has_layout(folder):
            return folder
        snap = _find_snapshot(folder)
        if snap is not None:
            return snap
        missing = [s for s in REQUIRED_SUBFOLDERS if not (folder / s).is_dir()]
        raise CheckpointNotFoundError(
            f"{folder} is not an ACE-Step v1 checkpoint: missing sub-folder(s) "
            f"{', '.join(missing)}. It needs {', '.join(REQUIRED_SUBFOLDERS)} "
            f"(the layout of the hub repo {DEFAULT_REPO_ID})."
        )
    if spec.count("/") != 1 or spec.startswith((".", "/", "~")):
        raise CheckpointNotFoundError(
            f"checkpoint {spec!r} is neither an existing folder nor a hub repo id like "
            f"{DEFAULT_REPO_ID}"
        )
    hub_cache = Path(cache_dir) if cache_dir else default_cache_dir() / "hub"
    try:
        from huggingface_hub import snapshot_download

        local = snapshot_download(spec, cache_dir=str(hub_cache),
                                  allow_patterns=[f"{s}/*" for s in REQUIRED_SUBFOLDERS])
    except Exception as e:  # noqa: BLE001 - any hub failure gets the same advice
        raise CheckpointNotFoundError(
            f"could not download {spec!r} from the Hugging Face hub ({type(e).__name__}: {e}).\n"
            "If this machine is offline, download the checkpoint elsewhere and pass its local "
            f"folder instead (a folder containing {', '.join(REQUIRED_SUBFOLDERS)}), e.g. "
            "--checkpoint /path/to/ACE-Step-v1-3.5B"
        ) from e
    local = Path(local)
    if not _has_layout(local):
        raise CheckpointNotFoundError(f"the download of {spec!r} in {local} is incomplete")
    return local


def converted_component_dir(checkpoint: str | os.PathLike, component: str,
                            dtype: str = "float32", cache_dir: str | os.PathLike | None = None,
                            verbose: bool = False) -> Path:
    """Folder with the MLX weights of `component` (converting and caching them on first use).

    A checkpoint folder that was itself produced by `python -m convert` is used as it is.
    """
    check_dtype(dtype)
    spec = get_spec(component)
    src = Path(checkpoint) / spec.subfolder
    report = src / REPORT_NAME
    if report.is_file() and (src / WEIGHTS_NAME).is_file():
        info = json.loads(report.read_text())
        if info.get("dtype") == dtype:
            return src
    key = source_fingerprint(spec, src, dtype)
    out = Path(cache_dir or default_cache_dir()) / "converted" / f"{spec.subfolder}-{dtype}-{key}"
    if (out / REPORT_NAME).is_file() and (out / WEIGHTS_NAME).is_file():
        return out
    progress = None
    if verbose:
        from tqdm import tqdm

        bar = tqdm(total=None, desc=f"converting {spec.subfolder} ({dtype})", unit="tensor",
                   file=sys.stderr, leave=False)

        def progress(i: int, n: int) -> None:
            bar.total = n
            bar.update(i - bar.n)

    try:
        convert_component(spec, src, out, dtype=dtype, progress=progress)
    finally:
        if verbose:
            bar.close()
    return out


def load_component(checkpoint: str | os.PathLike, component: str, dtype: str = "float32",
                   cache_dir: str | os.PathLike | None = None, verbose: bool = False):
    """Build the MLX model of `component` from its converted weights (eval mode)."""
    from acestep_mlx.configs import read_config_json

    folder = converted_component_dir(checkpoint, component, dtype, cache_dir, verbose)
    spec = get_spec(component)
    model = spec.build_model(read_config_json(folder / "config.json"))
    try:
        model.load_weights(str(folder / WEIGHTS_NAME), strict=True)
    except ValueError as e:
        raise CheckpointFileError(
            f"converted weights in {folder} do not fit the {component} model ({e}); delete that "
            "folder to convert again"
        ) from e
    model.eval()
    return model
