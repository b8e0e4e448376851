"""Streaming safetensors reading and writing with numpy (bfloat16 included).

The original checkpoints are stored in bfloat16, which numpy cannot represent, and they are large
(6.6 GB for the DiT). This module reads one tensor at a time from an open file and writes an output
file tensor by tensor after its header, so peak memory stays about the size of the largest tensor.
"""

from __future__ import annotations

import json
import os
import struct
from dataclasses import dataclass
from pathlib import Path

import numpy as np

# safetensors dtype name -> (numpy dtype used to hold the raw bytes, bytes per element)
_RAW = {
    "F64": np.dtype("<f8"),
    "F32": np.dtype("<f4"),
    "F16": np.dtype("<f2"),
    "BF16": np.dtype("<u2"),
    "I64": np.dtype("<i8"),
    "I32": np.dtype("<i4"),
    "I16": np.dtype("<i2"),
    "I8": np.dtype("i1"),
    "U8": np.dtype("u1"),
    "BOOL": np.dtype("?"),
}
FLOAT_DTYPES = {"F64", "F32", "F16", "BF16"}
_MAX_HEADER = 100 * 1024 * 1024


class CheckpointFileError(ValueError):
    """A checkpoint file is missing, truncated or not a safetensors file."""


@dataclass(frozen=True)
class TensorInfo:
    dtype: str
    shape: tuple[int, ...]
    start: int
    end: int


def read_header(path: str | Path) -> tuple[dict[str, TensorInfo], dict[str, str], int]:
    """Parse a safetensors header; check that every tensor lies inside the file.

    Returns (tensors, metadata, data_offset).
    """
    path = Path(path)
    if not path.is_file():
        raise CheckpointFileError(f"checkpoint file not found: {path}")
    size = path.stat().st_size
    with open(path, "rb") as f:
        raw = f.read(8)
        if len(raw) < 8:
            raise CheckpointFileError(
                f"{path} is not a safetensors file (only {size} bytes); re-download it"
            )
        (n,) = struct.unpack("<Q", raw)
        if n > _MAX_HEADER or 8 + n > size:
            raise CheckpointFileError(
                f"{path} has a damaged or truncated safetensors header; re-download it"
            )
        try:
            header = json.loads(f.read(n))
        except (UnicodeDecodeError, json.JSONDecodeError) as e:
            raise CheckpointFileError(f"{path} has an unreadable safetensors header: {e}") from e
    data_offset = 8 + n
    metadata = header.pop("__metadata__", None) or {}
    tensors: dict[str, TensorInfo] = {}
    end_max = 0
    for key, entry in header.items():
        dtype = entry["dtype"]
        if dtype not in _RAW:
            raise CheckpointFileError(f"{path}: tensor {key!r} has unsupported dtype {dtype}")
        shape = tuple(int(s) for s in entry["shape"])
        start, end = (int(o) for o in entry["data_offsets"])
        if end - start != int(np.prod(shape, dtype=np.int64)) * _RAW[dtype].itemsize:
            raise CheckpointFileError(f"{path}: tensor {key!r} has inconsistent byte offsets")
        tensors[key] = TensorInfo(dtype, shape, start, end)
        end_max = max(end_max, end)
    if data_offset + end_max > size:
        raise CheckpointFileError(
            f"{path} is truncated: it has {size} bytes but its header needs "
            f"{data_offset + end_max}; the download or copy was interrupted, fetch the file again"
        )
    return tensors, metadata, data_offset


def bf16_bits_to_f32(bits: np.ndarray) -> np.ndarray:
    return (bits.astype(np.uint32) << 16).view(np.float32)


def f32_to_bf16_bits(x: np.ndarray) -> np.ndarray:
    """Round float32 to bfloat16 (round to nearest even), returned as uint16 bit patterns."""
    u = np.ascontiguousarray(x, dtype=np.float32).view(np.uint32)
    nan = np.isnan(x)
    rounded = ((u + (0x7FFF + ((u >> 16) & 1))) >> 16).astype(np.uint16)
    if nan.any():
        rounded[nan] = 0x7FC0
    return rounded


class SafetensorsReader:
    """Reads tensors one at a time; floating point tensors come back as float32."""

    def __init__(self, path: str | Path):
        self.path = Path(path)
        self.tensors, self.metadata, self._offset = read_header(self.path)
        self._file = open(self.path, "rb")

    def close(self) -> None:
        self._file.close()

    def __enter__(self) -> SafetensorsReader:
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def keys(self) -> list[str]:
        return list(self.tensors)

    def get(self, key: str) -> np.ndarray:
        info = self.tensors[key]
        self._file.seek(self._offset + info.start)
        raw = self._file.read(info.end - info.start)
        if len(raw) != info.end - info.start:
            raise CheckpointFileError(f"{self.path} is truncated while reading {key!r}")
        arr = np.frombuffer(raw, dtype=_RAW[info.dtype]).reshape(info.shape)
        if info.dtype == "BF16":
            return bf16_bits_to_f32(arr)
        if info.dtype in ("F16", "F64"):
            return arr.astype(np.float32)
        return arr.copy()


_OUT = {"float32": ("F32", np.dtype("<f4")), "float16": ("F16", np.dtype("<f2")),
        "bfloat16": ("BF16", np.dtype("<u2"))}


def _encode(arr: np.ndarray, dtype: str) -> tuple[str, np.ndarray]:
    """Bytes-ready array and its safetensors dtype; floats are cast to `dtype`, ints kept."""
    if arr.dtype.kind == "f":
        name, np_dtype = _OUT[dtype]
        if dtype == "bfloat16":
            return name, f32_to_bf16_bits(arr.astype(np.float32))
        return name, arr.astype(np_dtype)
    for name, raw in _RAW.items():
        if raw == arr.dtype.newbyteorder("<") and name not in ("BF16",):
            return name, arr
    raise TypeError(f"cannot store arrays of dtype {arr.dtype}")


def output_dtype_name(np_kind: str, dtype: str) -> str:
    return _OUT[dtype][0] if np_kind == "f" else "I64"


class StreamingWriter:
    """Write a safetensors file whose header is known up front, tensor by tensor, in order.

    `plan` is a list of (key, safetensors dtype, shape). Each `write(key, array)` call must come in
    plan order. The file is written to `path` directly; callers make it atomic by writing into a
    temporary directory that is renamed when everything succeeded.
    """

    def __init__(self, path: str | Path, plan: list[tuple[str, str, tuple[int, ...]]],
                 metadata: dict[str, str] | None = None):
        header: dict[str, object] = {"__metadata__": dict(metadata or {"format": "mlx"})}
        offset = 0
        self._order = []
        for key, dtype, shape in plan:
            nbytes = int(np.prod(shape, dtype=np.int64)) * _RAW[dtype].itemsize
            header[key] = {"dtype": dtype, "shape": list(shape),
                           "data_offsets": [offset, offset + nbytes]}
            self._order.append((key, dtype, tuple(shape), nbytes))
            offset += nbytes
        blob = json.dumps(header, separators=(",", ":")).encode()
        blob += b" " * (-len(blob) % 8)
        self._file = open(path, "wb")
        self._file.write(struct.pack("<Q", len(blob)))
        self._file.write(blob)
        self._next = 0

    def write(self, key: str, arr: np.ndarray, dtype: str) -> None:
        want_key, want_dtype, want_shape, nbytes = self._order[self._next]
        if key != want_key:
            raise RuntimeError(f"tensor {key!r} written out of order (expected {want_key!r})")
        name, data = _encode(np.asarray(arr), dtype)
        if name != want_dtype or tuple(data.shape) != want_shape:
            raise RuntimeError(
                f"tensor {key!r}: planned {want_dtype}{list(want_shape)}, "
                f"got {name}{list(data.shape)}"
            )
        buf = np.ascontiguousarray(data).tobytes()
        assert len(buf) == nbytes
        self._file.write(buf)
        self._next += 1

    def close(self) -> None:
        if self._next != len(self._order):
            self._file.close()
            raise RuntimeError("not every planned tensor was written")
        self._file.flush()
        os.fsync(self._file.fileno())
        self._file.close()
