"""Reading files we did not write: only regular files, of bounded size, opened without blocking (a
FIFO, a device such as /dev/zero, or a folder named like a data file is one `DataError`, never a
hang or an endless read); and the fingerprint of a run's input data.

    raw = read_bytes(path, "checkpoint", max_bytes=2**36, error=CheckpointError)
    fingerprint(Path("outputs/worlds/w0"))   # {"files": 1234, "bytes": ..., "sha256": ...}
"""

from __future__ import annotations

import hashlib
import os
import stat
from pathlib import Path

from scene3d.errors import DataError

MAX_JSON_BYTES = 2**28  # 256 MiB: a transforms.json, config.json or metrics.json beyond this is refused


def _kind(mode: int) -> str:
    for test, name in ((stat.S_ISDIR, "a folder"), (stat.S_ISFIFO, "a FIFO"), (stat.S_ISCHR, "a character device"),
                       (stat.S_ISBLK, "a block device"), (stat.S_ISSOCK, "a socket")):
        if test(mode):
            return name
    return "not a regular file"


def _read_regular(path: str | Path, field: str, max_bytes: int, error: type[DataError], head: bool) -> bytes:
    path = Path(path)
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK)
    except FileNotFoundError:
        raise error(path, field, "file does not exist") from None
    except OSError as err:
        raise error(path, field, f"cannot read ({err.strerror or err})") from None
    try:
        info = os.fstat(fd)
        if not stat.S_ISREG(info.st_mode):
            raise error(path, field, f"is {_kind(info.st_mode)}, not a regular file")
        if info.st_size > max_bytes and not head:
            raise error(path, field, f"file of {info.st_size} bytes is larger than the {max_bytes} allowed")
        chunks, left = [], min(info.st_size, max_bytes)
        while left > 0 and (chunk := os.read(fd, min(left, 2**24))):
            chunks.append(chunk)
            left -= len(chunk)
        return b"".join(chunks)
    except OSError as err:
        raise error(path, field, f"cannot read ({err.strerror or err})") from None
    finally:
        os.close(fd)


def read_bytes(path: str | Path, field: str, max_bytes: int, error: type[DataError] = DataError) -> bytes:
    """The contents of the regular file `path` (symlinks followed), at most `max_bytes` long; anything
    else raises `error(path, field, problem)`. Opened non-blocking, so a FIFO cannot stall the read."""
    return _read_regular(path, field, max_bytes, error, head=False)


def read_head(path: str | Path, field: str, n_bytes: int, error: type[DataError] = DataError) -> bytes:
    """The first `n_bytes` (or fewer) of the regular file `path`, with `read_bytes`'s checks."""
    return _read_regular(path, field, n_bytes, error, head=True)


def read_text(path: str | Path, field: str, max_bytes: int = MAX_JSON_BYTES, error: type[DataError] = DataError) -> str:
    """`read_bytes` decoded as UTF-8 (a decoding error is `error` too)."""
    try:
        return read_bytes(path, field, max_bytes, error).decode("utf-8")
    except UnicodeDecodeError:
        raise error(path, field, "not a UTF-8 text file") from None


def regular_file_size(path: str | Path, field: str, max_bytes: int, error: type[DataError] = DataError) -> int:
    """The size of the regular file `path` (checked as `read_bytes` does, without reading it)."""
    try:
        info = os.stat(path)
    except OSError as err:
        raise error(path, field, f"cannot read ({err.strerror or err})") from None
    if not stat.S_ISREG(info.st_mode):
        raise error(path, field, f"is {_kind(info.st_mode)}, not a regular file")
    if info.st_size > max_bytes:
        raise error(path, field, f"file of {info.st_size} bytes is larger than the {max_bytes} allowed")
    return info.st_size


def fingerprint(path: str | Path, hash_suffixes: tuple[str, ...] = (".json", ".yaml"),
                max_hashed_bytes: int = 2**24) -> dict[str, object] | None:
    """What a run's input at `path` is, cheaply and deterministically: the number and total size of its
    files and a SHA-256 over their relative names and sizes plus the contents of the small JSON / YAML
    files (poses, intrinsics, configs). Modification times are left out, so a copied dataset keeps
    its fingerprint. None when `path` does not exist."""
    path = Path(path)
    if path.is_file():
        files = [path]
    elif path.is_dir():
        files = sorted(p for p in path.rglob("*") if p.is_file() and not p.is_symlink())
    else:
        return None
    digest, total = hashlib.sha256(), 0
    for file in files:
        size = file.stat().st_size
        total += size
        digest.update(f"{file.relative_to(path) if file != path else file.name}\0{size}\0".encode())
        if file.suffix in hash_suffixes and size <= max_hashed_bytes:
            digest.update(file.read_bytes())
    return {"files": len(files), "bytes": total, "sha256": digest.hexdigest()}
