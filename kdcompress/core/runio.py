"""Run-directory layout and atomic file I/O: every file appears whole or not at all."""

from __future__ import annotations

import contextlib
import io
import json
import os
import tempfile
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from .errors import InputError, UsageError


def atomic_write_bytes(path: Path, data: bytes) -> None:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def atomic_write_text(path: Path, text: str) -> None:
    atomic_write_bytes(path, text.encode("utf-8"))


def atomic_write_json(path: Path, obj: Any) -> None:
    atomic_write_text(path, json.dumps(obj, indent=2, sort_keys=False, default=_json_default) + "\n")


def _json_default(o: Any) -> Any:
    if isinstance(o, Path):
        return str(o)
    if hasattr(o, "item"):
        return o.item()
    raise TypeError(f"not JSON serialisable: {type(o).__name__}")


def read_json(path: Path) -> Any:
    path = Path(path)
    try:
        return json.loads(path.read_text())
    except FileNotFoundError:
        raise InputError(f"file not found: {path}") from None
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

    def remove_stale_tmp(self) -> list[Path]:
        """Delete the temporary files of atomic writes that a killed process left behind (call it holding
        `lock()`, so no live writer of this run owns them)."""
        gone = []
        for folder in (self.root, self.checkpoints):
            if folder.is_dir():
                for p in folder.glob(".*.tmp"):
                    p.unlink(missing_ok=True)
                    gone.append(p)
        return gone

    @contextlib.contextmanager
    def lock(self) -> Iterator[None]:
        """Hold an exclusive lock on the run directory (flock on the directory itself, released by the
        kernel when the process dies, even by SIGKILL): two jobs never train into one run directory."""
        import fcntl

        fd = os.open(self.root, os.O_RDONLY)
        try:
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                raise UsageError(f"run directory {self.root} is in use by another kdcompress process; wait for "
                                 "it or use another --out") from None
            except OSError:
                pass  # a filesystem without flock (some network mounts): run unlocked rather than refuse
            yield
        finally:
            os.close(fd)  # closing the descriptor releases the lock

    def prepare(self) -> None:
        if self.root.exists() and not self.root.is_dir():
            raise InputError(f"--out {self.root} exists and is not a directory")
        try:
            self.checkpoints.mkdir(parents=True, exist_ok=True)
        except OSError as e:
            raise InputError(f"cannot create run directory {self.root}: {e.strerror}") from None
        if not os.access(self.root, os.W_OK):
            raise InputError(f"run directory {self.root} is not writable")
