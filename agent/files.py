"""Small file and time helpers every folder uses: one atomic write, one JSON write, one file hash, one timestamp."""
from __future__ import annotations

import hashlib
import json
import os
import uuid
from datetime import datetime, timezone
from pathlib import Path


def atomic_write(path: str | Path, data: str | bytes, mode: int | None = None) -> None:
    """Write via a temp file in the same folder (fsync'd, created with `mode`), then rename it over
    `path`: a reader sees the old file or the new one, never half of one; a failure leaves no temp file."""
    path = Path(path)
    tmp = path.with_name(f".{path.name}.{uuid.uuid4().hex[:8]}.tmp")
    try:
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o666 if mode is None else mode)
        with os.fdopen(fd, "wb") as f:  # a `mode` holds from the first byte (a users file is never world-readable)
            f.write(data.encode("utf-8") if isinstance(data, str) else data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)


def write_json(path: str | Path, data) -> None:
    atomic_write(path, json.dumps(data, indent=2, sort_keys=True, default=str) + "\n")


def sha256_file(path: str | Path, chunk: int = 1 << 20) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while block := f.read(chunk):
            h.update(block)
    return h.hexdigest()


def last_part(path) -> str:
    """The last part of a path or hub id ("smollm2-135m-instruct"): how a model is named to users, never the
    server's folders."""
    return str(path).rstrip("/\\").replace("\\", "/").rsplit("/", 1)[-1]


def now_iso() -> str:
    """UTC timestamp, fixed-width ISO format, so text order is time order."""
    return datetime.now(timezone.utc).isoformat(timespec="microseconds")
