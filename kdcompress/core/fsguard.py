"""Guards every file access of kdcompress shares: OS errors as one KdError line, strict JSON, the umask,
no symlink followed inside a run directory, no FIFO or device read as a file."""

from __future__ import annotations

import errno
import hashlib
import math
import os
import stat
import threading
import time
from pathlib import Path
from typing import Any

from .errors import EnvironmentProblem, InputError, KdError

MARKER = ".kdcompress-run"  # a run directory holds this file; kdcompress writes into no other non-empty one


def os_error(e: OSError, path: Path | str | None = None, doing: str = "writing") -> KdError:
    """One OS failure as the KdError with its documented exit code, naming the path: disk full and out of
    memory are the machine's (7); permission denied, a directory or a missing path are the input's (3)."""
    where = str(path if path is not None else (e.filename or "?"))
    reason = e.strerror or type(e).__name__
    if e.errno in (errno.ENOSPC, errno.EDQUOT):
        return EnvironmentProblem(f"no space left on the device {doing} {where} ({reason}); "
                                  "free some space or use another --out")
    if e.errno == errno.ENOMEM:
        return EnvironmentProblem(f"out of memory {doing} {where}")
    if e.errno in (errno.EACCES, errno.EPERM, errno.EROFS):
        return InputError(f"permission denied {doing} {where} ({reason})")
    if e.errno == errno.EISDIR:
        return InputError(f"{where} is a directory; give a file path")
    if e.errno == errno.ENOTDIR:
        return InputError(f"a part of {where} is not a directory")
    if e.errno == errno.ENOENT:
        if doing == "reading":
            return InputError(f"file not found: {where}")
        # a write, create or lock that meets ENOENT: a folder on the way is missing, not the file itself
        return InputError(f"cannot finish {doing} {where}: a directory on its path does not exist")
    return InputError(f"cannot access {where}: {reason}")


SPECIAL_ROOTS = ("/proc", "/sys", "/dev")  # kernel and device filesystems: no place for a file or a run


def special_root(path: Path | str) -> str | None:
    """The special filesystem (/proc, /sys, /dev) that `path` lies in once links are resolved, else None."""
    real = os.path.realpath(path)
    return next((r for r in SPECIAL_ROOTS if real == r or real.startswith(r + "/")), None)


def check_output_file(path: Path, flag: str = "--out") -> None:
    """Before any work: a file path that kdcompress can write. Refuses, naming the cause, a path inside
    /proc, /sys or /dev, a directory, an existing FIFO or device, a path below a file, and a directory that
    is not writable. Nothing is created."""
    path = Path(path)
    if (root := special_root(path)) is not None:
        raise InputError(f"{flag} {path} is inside {root}, a special filesystem that cannot hold files; "
                         "give a path in a regular directory")
    if path.is_dir():
        raise InputError(f"{flag} {path} is a directory; give a file path")
    if path.exists():
        regular_file(path, f"{flag}")
    existing = next((p for p in Path(os.path.abspath(path)).parents if p.exists()), None)
    if existing is not None and not existing.is_dir():
        raise InputError(f"{flag} {path}: {existing} is not a directory")
    if existing is not None and not os.access(existing, os.W_OK | os.X_OK):
        raise InputError(f"{flag} {path}: directory {existing} is not writable")


def strict_json(obj: Any) -> Any:
    """NaN and +-inf become null: stdout and every file hold strict JSON, never a NaN token."""
    if isinstance(obj, float):
        return obj if math.isfinite(obj) else None
    if isinstance(obj, dict):
        return {k: strict_json(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [strict_json(v) for v in obj]
    return obj


_UMASK_LOCK = threading.Lock()


def _file_mode() -> int:
    """0666 less the process umask (read by setting and restoring it: there is no getter)."""
    with _UMASK_LOCK:
        mask = os.umask(0o022)
        os.umask(mask)
    return 0o666 & ~mask


def run_root_of(path: Path) -> Path | None:
    """The nearest enclosing directory (lexically, symlinks not followed) that holds the run marker."""
    p = Path(os.path.abspath(path)).parent
    for d in (p, *p.parents):
        if (d / MARKER).is_file() and not (d / MARKER).is_symlink():
            return d
    return None


def check_confined(path: Path) -> None:
    """Inside a run directory, refuse a path that goes through a symlink (a folder or the file itself):
    following it would write or delete outside the run."""
    path = Path(os.path.abspath(path))
    root = run_root_of(path)
    if root is None:
        return
    cur = root
    for part in path.relative_to(root).parts:
        cur = cur / part
        if cur.is_symlink():
            raise InputError(f"{cur} is a symlink inside run directory {root}; kdcompress does not follow "
                             "links out of a run directory: remove it or use another --out")


def regular_file(path: Path, what: str = "file", *, expected: str | None = None) -> Path:
    """Refuse, at once, a path that exists but is not a regular file (a FIFO or a device would block a
    reader forever or stream without end). Symlinks to regular files are fine. A directory is refused
    when `expected` names the file wanted ("an .onnx file"); otherwise the caller says what it means."""
    path = Path(path)
    try:
        st = path.stat()
    except FileNotFoundError:
        raise InputError(f"{what} not found: {path}") from None
    except OSError as e:
        raise os_error(e, path, "reading") from None
    if stat.S_ISDIR(st.st_mode):
        if expected is not None:
            raise InputError(f"{what} {path} is a directory, expected {expected}")
        return path  # the caller says what a directory means for it
    if not stat.S_ISREG(st.st_mode):
        kind = ("a FIFO" if stat.S_ISFIFO(st.st_mode)
                else "a device" if stat.S_ISCHR(st.st_mode) or stat.S_ISBLK(st.st_mode)
                else "a socket" if stat.S_ISSOCK(st.st_mode)
                else "not a regular file")
        raise InputError(f"{what} {path} is {kind}; give a regular file")
    return path


_DIGESTS: dict[tuple[int, int, int, int], str] = {}  # (device, inode, size, mtime ns) -> sha256, this process


def file_sha256(path: Path) -> str:
    """The sha256 of a file's bytes, read in 1 MiB blocks (torch-free: a warm select and profile use it).
    Remembered for this process by the file's identity and modification time, so one command that asks
    twice (a cold select's summary key, then the teacher it loads) reads a large teacher once; a file
    rewritten in between has a new mtime (or inode) and is read again. A file modified in the last 2 s is
    not remembered: file systems stamp mtimes with a coarse clock, so a rewrite within the same tick would
    keep the old one (the "racy git" problem); any later rewrite of an older file gets a new mtime."""
    with open(path, "rb") as f:
        st = os.fstat(f.fileno())
        ident = (st.st_dev, st.st_ino, st.st_size, st.st_mtime_ns)
        if (known := _DIGESTS.get(ident)) is not None:
            return known
        h = hashlib.sha256()
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    digest = h.hexdigest()
    if time.time_ns() - st.st_mtime_ns > 2_000_000_000:
        if len(_DIGESTS) > 256:
            _DIGESTS.clear()
        _DIGESTS[ident] = digest
    return digest
