"""Safety rules of the app: the API key, upload checks, safe names and paths.

Everything the server reads or writes on behalf of a request goes through `safe_join`, which
refuses any path that would leave its root folder. Names coming from clients are never used as
paths directly: `safe_name` refuses traversal, absolute paths and odd names and keeps a small,
portable alphabet.
"""

from __future__ import annotations

import hmac
import os
import re
import unicodedata
from pathlib import Path

AUDIO_EXTENSIONS = (".wav", ".flac", ".ogg", ".mp3")
DEFAULT_MAX_UPLOAD_MB = 50.0
MAX_NAME_LENGTH = 100
API_KEY_ENV = "ACESTEP_API_KEY"
_SAFE_CHARS = re.compile(r"[^A-Za-z0-9._-]+")
_HUB_REPO_ID = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_-]*(?:\.[A-Za-z0-9_-]+)*/"
                          r"[A-Za-z0-9][A-Za-z0-9_-]*(?:\.[A-Za-z0-9_-]+)*$")


class UnsafeRequest(ValueError):
    """A name, path or upload that the server refuses (`status` is the HTTP code to answer)."""

    def __init__(self, message: str, status: int = 400):
        super().__init__(message)
        self.status = status


# ------------------------------------------------------------------------------------ API key
def api_key_from_env() -> str | None:
    """The configured key, or None when the API is open (unset or empty variable)."""
    key = os.environ.get(API_KEY_ENV, "").strip()
    return key or None


def key_from_headers(headers) -> str | None:
    """The key a client sent: `Authorization: Bearer KEY` or `X-API-Key: KEY`."""
    auth = headers.get("authorization")
    if auth:
        scheme, _, value = auth.partition(" ")
        if scheme.lower() == "bearer" and value.strip():
            return value.strip()
    value = headers.get("x-api-key")
    return value.strip() if value else None


def key_matches(given: str | None, expected: str | None) -> bool:
    """Constant-time comparison; everything matches when no key is configured."""
    if expected is None:
        return True
    if not given:
        return False
    return hmac.compare_digest(given.encode("utf-8"), expected.encode("utf-8"))


# ------------------------------------------------------------------------------------ names
def safe_name(name: str, what: str = "name", keep_suffix: bool = True) -> str:
    """A client-supplied file or folder name made safe, or UnsafeRequest.

    Refused: empty names, path separators, '..', absolute paths, names starting with '.' or '~',
    control characters and overlong names. Other characters outside [A-Za-z0-9._-] become '_'
    (accents are folded first: 'Café' -> 'Cafe').
    """
    if not isinstance(name, str) or name.strip() == "":
        raise UnsafeRequest(f"{what} is empty")
    raw = name.strip()
    if "\x00" in raw or any(unicodedata.category(c).startswith("C") for c in raw):
        raise UnsafeRequest(f"{what} {raw!r} contains control characters")
    if "/" in raw or "\\" in raw:
        raise UnsafeRequest(f"{what} {raw!r} is a path, not a plain name (no '/', '\\' or '..')")
    if ".." in raw:
        raise UnsafeRequest(f"{what} {raw!r} contains '..'")
    if raw.startswith((".", "~")) or re.match(r"^[A-Za-z]:", raw):
        raise UnsafeRequest(f"{what} {raw!r} must not start with '.', '~' or a drive letter")
    if len(raw) > MAX_NAME_LENGTH:
        raise UnsafeRequest(f"{what} is longer than {MAX_NAME_LENGTH} characters")
    folded = unicodedata.normalize("NFKD", raw).encode("ascii", "ignore").decode("ascii")
    clean = _SAFE_CHARS.sub("_", folded).strip("_")
    if keep_suffix:
        stem, dot, suffix = clean.rpartition(".")
        if dot and stem.strip("._-") == "":
            clean = ""
    if clean.strip("._-") == "":
        raise UnsafeRequest(f"{what} {raw!r} has no usable characters (use letters, digits, "
                            "'.', '_' or '-')")
    return clean


def audio_file_name(name: str) -> str:
    """A safe name for an uploaded audio file; refuses other extensions (415)."""
    clean = safe_name(name, "file name")
    suffix = Path(clean).suffix.lower()
    if suffix not in AUDIO_EXTENSIONS:
        raise UnsafeRequest(f"{name!r} is not an audio file: accepted extensions are "
                            f"{', '.join(AUDIO_EXTENSIONS)}", status=415)
    return Path(clean).stem + suffix


def safe_join(root: str | os.PathLike, *parts: str) -> Path:
    """`root/part/...` resolved, refusing anything that ends up outside `root`."""
    base = Path(root).resolve()
    for part in parts:
        if Path(part).is_absolute() or part.startswith("~"):
            raise UnsafeRequest(f"{part!r} is an absolute path; only names inside the server's "
                                "folders are accepted")
    path = base.joinpath(*parts).resolve()
    if path != base and base not in path.parents:
        raise UnsafeRequest(f"{'/'.join(parts)!r} points outside the server's folders")
    return path


def is_inside(path: str | os.PathLike, roots) -> bool:
    """Whether `path` (resolved) lies in one of `roots`."""
    p = Path(path).resolve()
    for root in roots:
        r = Path(root).resolve()
        if p == r or r in p.parents:
            return True
    return False


def hub_repo_id(spec: str) -> bool:
    """Whether `spec` has the shape of a hub repo id ('owner/name', no '..')."""
    return bool(_HUB_REPO_ID.match(spec)) and ".." not in spec
