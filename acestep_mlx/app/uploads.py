"""Streaming multipart parsing with limits, straight into the server's data folder.

Starlette's own form parser spools large files to the system temp folder before any limit can
be applied; this parser writes each file part to a random name inside `incoming_dir` while
counting bytes, and aborts (deleting what it wrote) as soon as a limit is passed.
"""

from __future__ import annotations

import os
import secrets
from dataclasses import dataclass, field
from email.message import Message
from pathlib import Path

from python_multipart.multipart import MultipartParser, parse_options_header

from .security import UnsafeRequest

MAX_TEXT_BYTES = 64 * 1024
MAX_FIELDS = 200


@dataclass
class UploadedFile:
    field: str
    filename: str  # as sent by the client (unchecked)
    path: Path  # temporary file inside incoming_dir
    size: int


@dataclass
class Form:
    fields: dict[str, list[str]] = field(default_factory=dict)
    files: list[UploadedFile] = field(default_factory=list)

    def text(self, name: str, default: str | None = None) -> str | None:
        values = self.fields.get(name)
        return values[0] if values else default

    def texts(self, name: str) -> list[str]:
        return list(self.fields.get(name, []))

    def discard(self) -> None:
        for f in self.files:
            f.path.unlink(missing_ok=True)


def _disposition(raw: str) -> tuple[str | None, str | None]:
    msg = Message()
    msg["content-disposition"] = raw
    return msg.get_param("name", header="content-disposition"), msg.get_filename()


class _Collector:
    """Parser callbacks that build a Form and enforce the limits."""

    def __init__(self, incoming: Path, max_file_bytes: int, max_files: int):
        self.incoming, self.max_file_bytes, self.max_files = incoming, max_file_bytes, max_files
        self.form = Form()
        self._headers: dict[str, str] = {}
        self._hfield = self._hvalue = b""
        self._name: str | None = None
        self._file: UploadedFile | None = None
        self._fh = None
        self._text = bytearray()
        self.error: UnsafeRequest | None = None

    def callbacks(self) -> dict:
        return {
            "on_part_begin": self.part_begin, "on_header_field": self.header_field,
            "on_header_value": self.header_value, "on_header_end": self.header_end,
            "on_headers_finished": self.headers_finished, "on_part_data": self.part_data,
            "on_part_end": self.part_end,
        }

    def part_begin(self) -> None:
        self._headers, self._hfield, self._hvalue = {}, b"", b""
        self._name, self._file, self._fh, self._text = None, None, None, bytearray()

    def header_field(self, data: bytes, start: int, end: int) -> None:
        self._hfield += data[start:end]

    def header_value(self, data: bytes, start: int, end: int) -> None:
        self._hvalue += data[start:end]

    def header_end(self) -> None:
        self._headers[self._hfield.decode("latin-1").lower()] = self._hvalue.decode("utf-8",
                                                                                   "replace")
        self._hfield, self._hvalue = b"", b""

    def headers_finished(self) -> None:
        name, filename = _disposition(self._headers.get("content-disposition", ""))
        if not name:
            raise UnsafeRequest("a multipart part has no field name")
        self._name = name
        if filename is not None:
            if len(self.form.files) >= self.max_files:
                raise UnsafeRequest(f"too many files: at most {self.max_files} per request",
                                    status=413)
            path = self.incoming / f"upload-{secrets.token_hex(12)}.part"
            self._fh = open(path, "wb")  # noqa: SIM115 - closed in part_end / abort
            self._file = UploadedFile(name, filename, path, 0)
            self.form.files.append(self._file)
        elif sum(len(v) for v in self.form.fields.values()) >= MAX_FIELDS:
            raise UnsafeRequest(f"too many form fields (at most {MAX_FIELDS})", status=413)

    def part_data(self, data: bytes, start: int, end: int) -> None:
        chunk = data[start:end]
        if self._file is not None:
            self._file.size += len(chunk)
            if self._file.size > self.max_file_bytes:
                raise UnsafeRequest(
                    f"file {self._file.filename!r} is larger than the limit of "
                    f"{self.max_file_bytes / 1e6:g} MB", status=413)
            self._fh.write(chunk)
        else:
            self._text += chunk
            if len(self._text) > MAX_TEXT_BYTES:
                raise UnsafeRequest(f"form field {self._name!r} is longer than "
                                    f"{MAX_TEXT_BYTES // 1024} KB", status=413)

    def part_end(self) -> None:
        if self._fh is not None:
            self._fh.close()
            self._fh = None
        elif self._name is not None:
            try:
                text = self._text.decode("utf-8")
            except UnicodeDecodeError as e:
                raise UnsafeRequest(f"form field {self._name!r} is not UTF-8 text") from e
            self.form.fields.setdefault(self._name, []).append(text)

    def abort(self) -> None:
        if self._fh is not None:
            self._fh.close()
        self.form.discard()


async def read_multipart(request, incoming_dir: str | os.PathLike, max_file_bytes: int,
                         max_files: int) -> Form:
    """Parse a multipart/form-data request body into a Form (files under `incoming_dir`).

    Raises UnsafeRequest (400 malformed, 413 too large, 415 not multipart); nothing is left on
    disk when it raises.
    """
    ctype, params = parse_options_header(request.headers.get("content-type", ""))
    if ctype != b"multipart/form-data" or b"boundary" not in params:
        raise UnsafeRequest("send the files as multipart/form-data", status=415)
    length = request.headers.get("content-length")
    budget = max_files * max_file_bytes + max_files * 4096 + MAX_FIELDS * MAX_TEXT_BYTES
    if length is not None:
        if not length.isdigit():
            raise UnsafeRequest("invalid Content-Length header")
        if int(length) > budget:
            raise UnsafeRequest(f"request body too large ({int(length) / 1e6:.1f} MB)", 413)
    incoming = Path(incoming_dir)
    incoming.mkdir(parents=True, exist_ok=True)
    collector = _Collector(incoming, max_file_bytes, max_files)
    parser = MultipartParser(params[b"boundary"], collector.callbacks(), max_size=budget)
    try:
        async for chunk in request.stream():
            if chunk:
                parser.write(chunk)
        parser.finalize()
    except UnsafeRequest:
        collector.abort()
        raise
    except Exception as e:  # noqa: BLE001 - malformed bodies raise several parser errors
        collector.abort()
        raise UnsafeRequest(f"malformed multipart body: {e}") from e
    if collector._fh is not None:
        collector.abort()
        raise UnsafeRequest("the multipart body ended in the middle of a file")
    return collector.form
