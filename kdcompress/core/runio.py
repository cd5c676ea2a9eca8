"""Run-directory layout and atomic file I/O: every file appears whole or not at all.

The one writer, `atomic_write_bytes`, enforces for every file kdcompress writes: the permissions honour the
umask; JSON is strict (no NaN/Infinity tokens); inside a run directory (one that holds the run marker) it
never writes through a symlink, so nothing outside the run is touched; an OS error (disk full, permission
denied, is a directory) becomes one KdError line naming the path. `RunDir.claim` checks an `--out` before
any work: a path that can be a run directory, the lock, and a non-empty directory that is not a run.
"""

from __future__ import annotations

import contextlib
import io
import json
import os
import tempfile
import threading
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from .errors import InputError, UsageError
from .fsguard import (
    MARKER,
    _file_mode,
    check_confined,
    os_error,
    regular_file,
    run_root_of,
    special_root,
    strict_json,
)

__all__ = ["MARKER", "RunDir", "atomic_torch_save", "atomic_write_bytes", "atomic_write_json", "atomic_write_text",
           "check_confined", "os_error", "read_json", "regular_file", "run_root_of", "safe_torch_load", "strict_json"]

def atomic_write_bytes(path: Path, data: bytes) -> None:
    path = Path(path)
    if (root := special_root(path)) is not None:  # /proc answers "not found" to a new file: say the cause
        raise InputError(f"cannot write {path}: it is inside {root}, a special filesystem that cannot hold "
                         "files; give a path in a regular directory")
    check_confined(path)
    if path.is_dir():
        raise InputError(f"{path} is a directory; give a file path")
    if path.exists() and not path.is_symlink() and not path.is_file():  # a device or FIFO is never replaced
        regular_file(path, "output")
    tmp = None
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
        with os.fdopen(fd, "wb") as f:
            os.fchmod(f.fileno(), _file_mode())  # mkstemp makes 0600; a run's files are as shareable as any
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except OSError as e:
        if tmp is not None:
            Path(tmp).unlink(missing_ok=True)
        raise os_error(e, path) from None
    except BaseException:
        if tmp is not None:
            Path(tmp).unlink(missing_ok=True)
        raise


def atomic_write_text(path: Path, text: str) -> None:
    atomic_write_bytes(path, text.encode("utf-8"))


def atomic_write_json(path: Path, obj: Any) -> None:
    text = json.dumps(strict_json(obj), indent=2, sort_keys=False, default=_json_default, allow_nan=False)
    atomic_write_text(path, text + "\n")


def _json_default(o: Any) -> Any:
    if isinstance(o, Path):
        return str(o)
    if hasattr(o, "item"):
        return strict_json(o.item())
    raise TypeError(f"not JSON serialisable: {type(o).__name__}")


def read_json(path: Path) -> Any:
    path = Path(path)
    try:
        regular_file(path)
        return json.loads(path.read_text())
    except FileNotFoundError:
        raise InputError(f"file not found: {path}") from None
    except IsADirectoryError:
        raise InputError(f"expected a JSON file, got a directory: {path}") from None
    except OSError as e:
        raise os_error(e, path, "reading") from None
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise InputError(f"{path} is not valid JSON: {e}") from None


def atomic_torch_save(obj: Any, path: Path) -> None:
    import torch

    buf = io.BytesIO()
    torch.save(obj, buf)
    atomic_write_bytes(path, buf.getvalue())


def safe_torch_load(path: Path, *, trust: bool = False) -> Any:
    """Load a checkpoint with weights_only=True unless the user trusts the file (it may run code)."""
    import pickle

    import torch

    path = Path(path)
    if not path.exists():
        raise InputError(f"file not found: {path}")
    regular_file(path, "checkpoint")
    if path.is_dir():
        raise InputError(f"expected a checkpoint file, got a directory: {path}")
    if path.stat().st_size == 0:
        raise InputError(f"checkpoint is empty: {path}")
    try:
        return torch.load(path, map_location="cpu", weights_only=not trust)
    except pickle.UnpicklingError as e:
        if "Weights only load failed" in str(e) and _pickles_objects(path):
            raise InputError(
                f"{path} holds objects beyond weights (a pickled module or code); "
                "it was not loaded. Re-run with --trust-checkpoint only if you trust its source"
            ) from None
        raise InputError(f"{path} is not a readable checkpoint (corrupt, or not a PyTorch file)") from None
    except ModuleNotFoundError as e:  # trusted pickle of a class whose module is not importable here
        raise InputError(f"{path} pickles a model whose Python module '{e.name}' cannot be imported; install it "
                         "or add its folder to PYTHONPATH (or save a state_dict / TorchScript instead)") from None
    except AttributeError as e:  # "Can't get attribute 'Net' on <module '__main__' ...>"
        first = " ".join(str(e).split())[:200]
        raise InputError(f"{path} pickles a model whose class cannot be found ({first}); make the module that "
                         "defines it importable (a class defined in the saving script's __main__ is not), "
                         "or save a state_dict / TorchScript instead") from None
    except (RuntimeError, OSError) as e:  # torch's zip reader says what is wrong in its first sentence
        first = (str(e).strip().splitlines() or [type(e).__name__])[0].split(". ")[0]
        raise InputError(f"{path} is not a readable checkpoint: {first[:200]}") from None
    except Exception:  # a damaged file fails in many other ways: EOFError, KeyError, ValueError, ...
        raise InputError(f"{path} is not a readable checkpoint (corrupt, or not a PyTorch file)") from None


_OBJECT_OPCODES = frozenset({"GLOBAL", "STACK_GLOBAL", "REDUCE", "INST", "OBJ", "NEWOBJ", "NEWOBJ_EX", "BUILD"})


def _pickles_objects(path: Path) -> bool:
    """Whether a file the weights-only loader refused is a real pickle that builds objects (a module, or
    code), rather than damaged bytes. Read with pickletools, which parses opcodes and executes nothing."""
    import pickletools
    import zipfile

    if zipfile.is_zipfile(path):
        return True  # torch.save's archive, whole: its pickle names objects the safe loader does not allow
    try:  # the whole stream must parse: random bytes often contain an object opcode before they break
        with open(path, "rb") as f:
            names = {op.name for op, _, _ in pickletools.genops(f)}
    except Exception:
        return False
    return bool(names & _OBJECT_OPCODES)


@dataclass(frozen=True)
class RunDir:
    """The files of one run. Each stage reads its inputs from here, so a resumed run starts from files."""

    root: Path

    @property
    def config(self) -> Path:
        return self.root / "config.json"

    @property
    def selection(self) -> Path:
        return self.root / "selection.json"

    @property
    def checkpoints(self) -> Path:
        return self.root / "checkpoints"

    @property
    def last_checkpoint(self) -> Path:
        return self.checkpoints / "last.pt"

    @property
    def prepared(self) -> Path:
        """State the losses' prepare() computed before epoch 1 (ND centres, IC-KD bank), reused on resume."""
        return self.checkpoints / "prepared.pt"

    @property
    def train_result(self) -> Path:
        return self.root / "train.json"

    @property
    def student(self) -> Path:
        return self.root / "student.pt"

    @property
    def onnx(self) -> Path:
        return self.root / "student.onnx"

    @property
    def teacher_onnx(self) -> Path:
        return self.root / "teacher.onnx"

    @property
    def validation(self) -> Path:
        return self.root / "validation.json"

    @property
    def report_json(self) -> Path:
        return self.root / "report.json"

    @property
    def report_md(self) -> Path:
        return self.root / "report.md"

    @property
    def marker(self) -> Path:
        return self.root / MARKER

    # every name kdcompress writes in a run directory: the only files --restart removes, and the only
    # entries a directory without the marker may hold to be adopted as a run (one from before the marker)
    OUTPUTS = ("config.json", "selection.json", "selection.png", "train.json", "student.pt", "student.onnx",
               "student.fp16.onnx", "student.int8.onnx", "teacher.onnx", "validation.json", "report.json",
               "report.md", "export.json", "metrics.csv", "teacher_cache.json", "preset_ranking.json",
               "plots/accuracy_latency.png", "plots/training.png", "plots/confusion.png")
    CHECKPOINTS = ("last.pt", "best.pt", "prepared.pt")

    def _ours(self) -> list[Path]:
        return [self.root / n for n in self.OUTPUTS] + [self.checkpoints / n for n in self.CHECKPOINTS]

    def remove_stale_tmp(self) -> list[Path]:
        """Delete the temporary files of atomic writes that a killed process left behind (call it holding
        `lock()`, so no live writer of this run owns them): only `.NAME.*.tmp` of a NAME kdcompress writes."""
        gone = []
        for f in self._ours():
            if f.parent.is_dir() and not f.parent.is_symlink():
                for p in f.parent.glob(f".{f.name}.*.tmp"):
                    p.unlink(missing_ok=True)
                    gone.append(p)
        return gone

    def discard_checkpoints(self) -> None:
        """--restart: the resume state goes (only the files kdcompress writes there)."""
        for n in self.CHECKPOINTS:
            self._remove(self.checkpoints / n)

    def discard_previous(self) -> None:
        """--restart: every output of the previous run goes before the new run writes its first file, so no
        report or student of the old run sits beside the new config. Files kdcompress did not write stay."""
        for f in self._ours():
            self._remove(f)
        self.remove_stale_tmp()

    def _remove(self, f: Path) -> None:
        check_confined(f)
        try:
            f.unlink(missing_ok=True)
        except OSError as e:
            raise os_error(e, f, "removing") from None

    def check_path(self) -> None:
        """What `--out` names can hold a run: checked before any work, nothing written."""
        if (sys_root := special_root(self.root)) is not None:
            raise InputError(f"--out {self.root} is inside {sys_root}, a special filesystem that cannot hold a "
                             "run directory; give a path in a regular directory")
        if self.root.is_symlink() and not self.root.exists():
            raise InputError(f"--out {self.root} is a dangling symlink")
        if self.root.exists() and not self.root.is_dir():
            raise InputError(f"--out {self.root} exists and is not a directory")
        existing = next((p for p in (self.root, *self.root.absolute().parents) if p.exists()), None)
        if existing is not None and not existing.is_dir():
            raise InputError(f"--out {self.root}: {existing} is not a directory")
        if existing is not None and not os.access(existing, os.W_OK | os.X_OK):
            what = "run directory" if existing == self.root else f"--out {self.root}: directory"
            raise InputError(f"{what} {existing} is not writable")

    def foreign_entries(self) -> list[str]:
        """Entries of an existing directory without the marker that are not kdcompress's names."""
        if not self.root.is_dir() or self.marker.is_file():
            return []
        ours = {n.split("/")[0] for n in self.OUTPUTS} | {"checkpoints"}
        try:
            names = sorted(os.listdir(self.root))
        except OSError as e:
            raise os_error(e, self.root, "listing") from None
        tmp = tuple(f".{n.split('/')[-1]}." for n in self.OUTPUTS)
        return [n for n in names if n not in ours and not (n.startswith(tmp) and n.endswith(".tmp"))]

    @contextlib.contextmanager
    def claim(self, *, force: bool = False) -> Iterator[None]:
        """Check `--out`, create it, hold its lock, and refuse a non-empty directory that is not a run
        (unless `force`); nothing in an existing directory changes here. Hold it for the whole job."""
        self.check_path()
        foreign = self.foreign_entries()  # before mkdir: a refused directory is not even touched
        if foreign and not force:
            shown = ", ".join(foreign[:3]) + (", ..." if len(foreign) > 3 else "")
            raise UsageError(f"--out {self.root} is a non-empty directory that is not a kdcompress run "
                             f"({len(foreign)} entries: {shown}); use a new or empty directory, or --force to "
                             "write the run beside them (kdcompress never deletes a file it did not write)")
        made = [p for p in (self.root, *self.root.absolute().parents) if not p.exists()]  # leaf first
        try:
            self.root.mkdir(parents=True, exist_ok=True)
        except OSError as e:
            raise os_error(e, self.root, "creating run directory") from None
        try:
            with self.lock():
                for d in (self.checkpoints, self.root / "plots", *self._ours()):
                    if d.is_symlink():
                        raise InputError(f"{d} is a symlink inside run directory {self.root}; kdcompress does "
                                         "not follow links out of a run directory: remove it or use another --out")
                yield
        except BaseException:
            for d in made:  # a job refused before its first write leaves no directory it created behind
                try:
                    d.rmdir()  # only an empty one
                except OSError:
                    break
            raise

    def mark(self, command: str) -> None:
        """Write the run marker (the directory is now a kdcompress run); call holding the claim."""
        if not self.marker.is_file():
            atomic_write_json(self.marker, {"format": "kdcompress.run", "version": 1, "command": command})

    @contextlib.contextmanager
    def lock(self, fix: str = "wait for it or use another --out") -> Iterator[None]:
        """Hold an exclusive lock on the run directory (flock on the directory itself, released by the
        kernel when the process dies, even by SIGKILL): two jobs never train into one run directory.
        Re-entrant within a process (the pipeline holds it from the first check; training takes it again).
        `fix`: what the refusal of a busy directory tells the user to do."""
        import fcntl

        key = os.path.realpath(self.root)
        with _HELD_LOCK:
            if key in _HELD:
                _HELD[key] += 1
                reentered = True
            else:
                reentered = False
        if reentered:
            try:
                yield
            finally:
                with _HELD_LOCK:
                    _HELD[key] -= 1
            return
        try:
            fd = os.open(self.root, os.O_RDONLY)
        except OSError as e:
            raise os_error(e, self.root, "opening run directory") from None
        try:
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                raise UsageError(f"run directory {self.root} is in use by another kdcompress process; {fix}") from None
            except OSError:
                pass  # a filesystem without flock (some network mounts): run unlocked rather than refuse
            with _HELD_LOCK:
                _HELD[key] = 1
            try:
                yield
            finally:
                with _HELD_LOCK:
                    _HELD.pop(key, None)
        finally:
            os.close(fd)  # closing the descriptor releases the lock

    def prepare(self) -> None:
        if self.root.exists() and not self.root.is_dir():
            raise InputError(f"--out {self.root} exists and is not a directory")
        for d in (self.checkpoints, self.root / "plots"):
            if d.is_symlink():
                raise InputError(f"{d} is a symlink inside run directory {self.root}; kdcompress does not "
                                 "follow links out of a run directory: remove it or use another --out")
        try:
            self.checkpoints.mkdir(parents=True, exist_ok=True)
        except OSError as e:
            raise InputError(f"cannot create run directory {self.root}: {e.strerror}") from None
        if not os.access(self.root, os.W_OK):
            raise InputError(f"run directory {self.root} is not writable")


_HELD: dict[str, int] = {}
_HELD_LOCK = threading.Lock()
