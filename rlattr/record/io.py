"""Atomic, checksummed file writes for the run directory (safetensors + JSON, never pickle)."""

from __future__ import annotations

import hashlib
import json
import os
import tempfile
import threading
from pathlib import Path
from typing import Any

import torch
from safetensors import SafetensorError
from safetensors.numpy import save as st_save_numpy
from safetensors.torch import load as st_load
from safetensors.torch import save as st_save

from rlattr.errors import CorruptRunLogError


def sha256_bytes(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def sha256_file(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for chunk in iter(lambda: handle.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


_UMASK_LOCK = threading.Lock()


def current_umask() -> int:
    """The process umask, read without changing it where the OS allows.

    ``os.umask`` can only be read by setting it, and for that moment any file another
    thread creates (the run log's background writer, say) would get the wrong mode; Linux
    shows the umask in ``/proc/self/status``, so that is tried first.
    """
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("Umask:"):
                return int(line.split()[1], 8)
    except (OSError, ValueError, IndexError):
        pass
    with _UMASK_LOCK:
        mask = os.umask(0o022)
        os.umask(mask)
    return mask


def atomic_write_bytes(path: Path, data: bytes) -> None:
    """Write ``data`` to ``path`` so that a reader sees either the old file or the whole new one.

    The bytes go to a temporary file in the same directory, are flushed to disk, and the
    file is renamed over the target (rename is atomic on POSIX within one file system).
    The file gets the mode a plain ``open(path, "wb")`` would give it (0666 minus the
    umask): ``mkstemp`` creates 0600 files, which would hide a run from a group that
    shares the run directory.
    """
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp_name = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        if hasattr(os, "fchmod"):
            os.fchmod(fd, 0o666 & ~current_umask())
        with os.fdopen(fd, "wb") as handle:
            handle.write(data)
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(tmp_name, path)
    except BaseException:
        Path(tmp_name).unlink(missing_ok=True)
        raise


def atomic_write_json(path: Path, payload: dict[str, Any]) -> str:
    """Write ``payload`` as indented JSON atomically; returns the SHA-256 of the bytes."""
    data = (json.dumps(payload, indent=2, sort_keys=True, allow_nan=True) + "\n").encode()
    atomic_write_bytes(path, data)
    return sha256_bytes(data)


def atomic_write_tensors(path: Path, tensors: dict[str, torch.Tensor]) -> tuple[str, int]:
    """Save tensors (moved to CPU, made contiguous) as safetensors; returns (sha256, bytes).

    The bytes are the same either way; safetensors' NumPy writer has about half the
    per-tensor Python overhead of its torch writer, which matters for checkpoints of many
    small tensors written every iteration. bfloat16 has no NumPy type and takes the other.
    """
    cpu = {name: t.detach().to("cpu").contiguous() for name, t in tensors.items()}
    if any(t.dtype == torch.bfloat16 for t in cpu.values()):
        data = st_save(cpu)
    else:
        data = st_save_numpy({name: t.numpy() for name, t in cpu.items()})
    atomic_write_bytes(path, data)
    return sha256_bytes(data), len(data)


def read_json(path: Path) -> dict[str, Any]:
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise
    except OSError as err:
        raise CorruptRunLogError(f"cannot read {path}: {err}") from err
    except UnicodeDecodeError as err:
        raise CorruptRunLogError(
            f"{path} is not valid JSON (binary data, not text: overwritten or damaged)"
        ) from err
    try:
        payload = json.loads(text)
    except json.JSONDecodeError as err:
        raise CorruptRunLogError(
            f"{path} is not valid JSON (truncated or altered?): {err}"
        ) from err
    if not isinstance(payload, dict):
        raise CorruptRunLogError(f"{path} should hold a JSON object")
    return payload


def read_tensors(
    path: Path, expected_sha256: str | None = None, device: torch.device | str = "cpu"
) -> dict[str, torch.Tensor]:
    """Load a safetensors file, checking its SHA-256 first when one is given."""
    data = path.read_bytes()
    if expected_sha256 is not None and sha256_bytes(data) != expected_sha256:
        raise CorruptRunLogError(
            f"{path} does not match its recorded checksum: the file is truncated or altered"
        )
    try:
        tensors = st_load(data)
    except (SafetensorError, ValueError, RuntimeError) as err:
        raise CorruptRunLogError(f"{path} is not a readable safetensors file: {err}") from err
    return {name: t.to(device) for name, t in tensors.items()}
