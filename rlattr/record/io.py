"""Atomic, checksummed file writes for the run directory (safetensors + JSON, never pickle),
the checksums of its JSON files, and the lock its one writer holds."""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import socket
import sys
import tempfile
import threading
import time
import warnings
import weakref
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import torch
from safetensors import SafetensorError
from safetensors.numpy import save as st_save_numpy
from safetensors.torch import load as st_load
from safetensors.torch import save as st_save

from rlattr.errors import CorruptRunLogError, RunLogError

try:
    import fcntl
except ImportError:  # not POSIX: run directories are not locked
    fcntl = None  # type: ignore[assignment]


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
    except OSError as err:
        Path(tmp_name).unlink(missing_ok=True)
        if err.filename is None:
            # A full disk names no file; the person needs to know which write failed.
            raise OSError(err.errno, err.strerror, str(path)) from err
        raise
    except BaseException:
        Path(tmp_name).unlink(missing_ok=True)
        raise


def atomic_write_text(path: Path, text: str) -> None:
    """Write ``text`` (UTF-8) atomically: a reader sees the old file or the whole new one."""
    atomic_write_bytes(path, text.encode())


def atomic_write_json(path: Path, payload: dict[str, Any], compact: bool = False) -> str:
    """Write ``payload`` as JSON atomically; returns the SHA-256 of the bytes.

    Indented by default (``run.json`` is read by people); ``compact`` drops the whitespace,
    for the small files written every iteration, where indentation is a third of the bytes.
    """
    if compact:
        text = json.dumps(payload, separators=(",", ":"), sort_keys=True, allow_nan=True)
    else:
        text = json.dumps(payload, indent=2, sort_keys=True, allow_nan=True)
    data = (text + "\n").encode()
    atomic_write_bytes(path, data)
    return sha256_bytes(data)


# safetensors header metadata key: JSON {tensor name: original dtype} of narrowed tensors.
NARROWED_KEY = "rlattr.narrowed"
# Narrower types tried for a tensor, smallest first; the first that round-trips bit for bit
# is stored. Only types safetensors and NumPy both hold (no bfloat16 targets).
_NARROW_CANDIDATES = (
    torch.bool,
    torch.uint8,
    torch.int8,
    torch.uint16,
    torch.int16,
    torch.float16,
    torch.uint32,
    torch.int32,
    torch.float32,
)
_NARROWABLE = (torch.int64, torch.int32, torch.int16, torch.float64, torch.float32)
_BITS = {1: torch.uint8, 2: torch.int16, 4: torch.int32, 8: torch.int64}


def _same_bits(a: torch.Tensor, b: torch.Tensor) -> bool:
    """Bitwise equality (tells -0.0 from 0.0 and compares NaN payloads), same dtype."""
    if a.dtype.is_floating_point:
        return torch.equal(a.view(_BITS[a.element_size()]), b.view(_BITS[b.element_size()]))
    return torch.equal(a, b)


def narrowest(tensor: torch.Tensor) -> torch.dtype:
    """The smallest dtype that stores ``tensor`` exactly: casting to it and back gives the
    same bits (so int64 indices below 256 fit uint8, 0/1 floats fit bool, float32-valued
    float64 fits float32; integers stay integers). Tensors of other dtypes, and empty ones,
    keep their dtype."""
    if tensor.dtype not in _NARROWABLE or tensor.numel() == 0:
        return tensor.dtype
    size = tensor.element_size()
    for dtype in _NARROW_CANDIDATES:
        if torch.empty(0, dtype=dtype).element_size() >= size:
            break
        if dtype.is_floating_point and not tensor.dtype.is_floating_point:
            continue  # exact, but indices stored as floats would puzzle a reader
        if _same_bits(tensor.to(dtype).to(tensor.dtype), tensor):
            return dtype
    return tensor.dtype


def atomic_write_tensors(
    path: Path, tensors: dict[str, torch.Tensor], narrow: bool = False
) -> tuple[str, int]:
    """Save tensors (moved to CPU, made contiguous) as safetensors; returns (sha256, bytes).

    With ``narrow`` each tensor is stored in ``narrowest`` dtype and its own dtype goes into
    the file's header metadata, so ``read_tensors`` gives back the same values in the same
    dtype, bit for bit (run-log format 2: indices, flags and integer rewards take 1-2 bytes).

    The bytes are the same either way; safetensors' NumPy writer has about half the
    per-tensor Python overhead of its torch writer, which matters for checkpoints of many
    small tensors written every iteration. bfloat16 has no NumPy type and takes the other.
    """
    cpu = {name: t.detach().to("cpu").contiguous() for name, t in tensors.items()}
    metadata: dict[str, str] | None = None
    if narrow:
        narrowed = {}
        for name, tensor in cpu.items():
            dtype = narrowest(tensor)
            if dtype != tensor.dtype:
                narrowed[name] = str(tensor.dtype).removeprefix("torch.")
                cpu[name] = tensor.to(dtype)
        metadata = {NARROWED_KEY: json.dumps(narrowed, sort_keys=True)} if narrowed else None
    if any(t.dtype == torch.bfloat16 for t in cpu.values()):
        data = st_save(cpu, metadata=metadata)
    else:
        data = st_save_numpy({name: t.numpy() for name, t in cpu.items()}, metadata=metadata)
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
        narrowed = _narrowed_dtypes(data)
    except (SafetensorError, ValueError, RuntimeError, TypeError, AttributeError) as err:
        raise CorruptRunLogError(f"{path} is not a readable safetensors file: {err}") from err
    return {name: t.to(device, narrowed.get(name, t.dtype)) for name, t in tensors.items()}


def _narrowed_dtypes(data: bytes) -> dict[str, torch.dtype]:
    """{tensor name: dtype to restore} from a safetensors header written with ``narrow``."""
    header_size = int.from_bytes(data[:8], "little")
    header = json.loads(data[8 : 8 + header_size])
    stored = (header.get("__metadata__") or {}).get(NARROWED_KEY)
    if stored is None:
        return {}
    dtypes = {name: getattr(torch, dtype) for name, dtype in json.loads(stored).items()}
    if not all(isinstance(d, torch.dtype) for d in dtypes.values()):
        raise ValueError(f"unknown dtype in the header metadata {stored}")
    return dtypes


# ----------------------------------------------------------------- JSON checksums
# Key under which a run-log JSON file stores the SHA-256 of its own content (every key and
# value but this one, in canonical form: sorted keys, no whitespace). The file cannot hold
# the hash of its own bytes, so the hash is of the content: an edited value (gamma in
# ``run.json``, a clip range in ``iteration.json``) no longer matches; re-indenting does.
JSON_CHECKSUM_KEY = "json_sha256"


def json_checksum(payload: dict[str, Any]) -> str:
    """SHA-256 of ``payload`` (without ``JSON_CHECKSUM_KEY``) as JSON reads it back.

    The payload goes through a JSON round trip first, so what is written (tuples, integer
    keys) and what is read back (lists, string keys) give the same hash.
    """
    body = {k: v for k, v in payload.items() if k != JSON_CHECKSUM_KEY}
    as_read = json.loads(json.dumps(body, allow_nan=True))
    canonical = json.dumps(as_read, sort_keys=True, separators=(",", ":"), allow_nan=True)
    return sha256_bytes(canonical.encode())


def with_json_checksum(payload: dict[str, Any]) -> dict[str, Any]:
    """``payload`` with its ``JSON_CHECKSUM_KEY`` (replacing a stale one)."""
    body = {k: v for k, v in payload.items() if k != JSON_CHECKSUM_KEY}
    return {**body, JSON_CHECKSUM_KEY: json_checksum(body)}


def check_json_checksum(path: Path, payload: dict[str, Any]) -> tuple[dict[str, Any], bool]:
    """(``payload`` without its checksum, whether it had one) of a JSON file read from
    ``path``; a checksum that does not match is a ``CorruptRunLogError`` naming the file."""
    if JSON_CHECKSUM_KEY not in payload:
        return payload, False
    body = {k: v for k, v in payload.items() if k != JSON_CHECKSUM_KEY}
    if json_checksum(body) != payload[JSON_CHECKSUM_KEY]:
        raise CorruptRunLogError(
            f"{path} does not match its recorded checksum ({JSON_CHECKSUM_KEY}): the file "
            "was edited or damaged; restore it from a copy of the run"
        )
    return body, True


def atomic_create_json(path: Path, payload: dict[str, Any]) -> bool:
    """Write ``payload`` (indented JSON) to ``path`` atomically, only if ``path`` does not
    exist: the whole file appears at once, or nothing. False when ``path`` already existed
    (it is left as it was).

    The bytes go to a temporary file that is then hard-linked to ``path`` (``link`` fails
    on an existing target, as ``O_EXCL`` does); where the file system has no hard links,
    the file is created with ``O_EXCL`` and written in place.
    """
    text = json.dumps(payload, indent=2, sort_keys=True, allow_nan=True) + "\n"
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp_name = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        if hasattr(os, "fchmod"):
            os.fchmod(fd, 0o666 & ~current_umask())
        with os.fdopen(fd, "wb") as handle:
            handle.write(text.encode())
            handle.flush()
            os.fsync(handle.fileno())
        try:
            os.link(tmp_name, path)
        except FileExistsError:
            return False
        except OSError:  # no hard links here: exclusive create, then write
            try:
                out = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o666)
            except FileExistsError:
                return False
            with os.fdopen(out, "wb") as handle:
                handle.write(text.encode())
                handle.flush()
                os.fsync(handle.fileno())
        return True
    finally:
        Path(tmp_name).unlink(missing_ok=True)


# ----------------------------------------------------------------- the writer lock
# The file in a run directory that its one writer holds an exclusive ``flock`` on, for as
# long as it writes (the process's life, or until ``WriterLock.release``). The kernel
# releases the lock when the process ends, however it ends; the file stays, and says who
# held it last (JSON: pid, host, since, command). ``.json`` so that a run directory holds
# only JSON and safetensors.
LOCK_FILE = "lock.json"


class RunLockedError(RunLogError):
    """Another process writes this run directory (it holds the directory's writer lock)."""


@dataclass
class _Hold:
    """This process's flock on one lock file, shared by every writer in the process."""

    fd: int
    pid: int
    count: int = 1


_holds: dict[tuple[int, int], _Hold] = {}
_holds_guard = threading.Lock()
# A share collected (its finalizer run by the garbage collector) while its thread is inside
# the guard is dropped when that thread leaves it: taking the guard there would deadlock.
_inside = threading.local()
_deferred: list[tuple[int, int]] = []


@contextlib.contextmanager
def _guarded() -> Iterator[None]:
    with _holds_guard:
        _inside.active = True
        try:
            yield
        finally:
            while _deferred:
                _drop(_deferred.pop())
            _inside.active = False


class WriterLock:
    """One writer's share of the process's lock on a run directory; ``release`` (also run
    when the object is collected) gives it up, and the last share unlocks the file."""

    def __init__(self, directory: Path, key: tuple[int, int]):
        self.directory = directory
        self._key: tuple[int, int] | None = key
        self._finalizer = weakref.finalize(self, _release, key)

    @property
    def held(self) -> bool:
        return self._key is not None

    def release(self) -> None:
        if self._key is not None:
            self._key = None
            self._finalizer()


def _release(key: tuple[int, int]) -> None:
    if getattr(_inside, "active", False):
        _deferred.append(key)
        return
    with _guarded():
        _drop(key)


def _drop(key: tuple[int, int]) -> None:
    """One share of ``key`` less; the last one unlocks and closes the file."""
    hold = _holds.get(key)
    if hold is None or hold.pid != os.getpid():
        return
    hold.count -= 1
    if hold.count == 0:
        del _holds[key]
        with contextlib.suppress(OSError):
            if fcntl is not None:
                fcntl.flock(hold.fd, fcntl.LOCK_UN)
            os.close(hold.fd)


def acquire_writer_lock(directory: Path) -> WriterLock:
    """Take the writer lock of run directory ``directory`` (created if missing) without
    waiting: a ``RunLockedError`` naming the holder (pid, host, since when, its command)
    when another process holds it. Within one process the lock is shared: every writer
    there gets a share (two writers in one process are the program's own business)."""
    directory.mkdir(parents=True, exist_ok=True)
    path = directory / LOCK_FILE
    with _guarded():
        for _ in range(10):  # the file was replaced under us: lock the new one
            fd = os.open(path, os.O_RDWR | os.O_CREAT | getattr(os, "O_CLOEXEC", 0), 0o666)
            info = os.fstat(fd)
            key = (info.st_dev, info.st_ino)
            hold = _holds.get(key)
            if hold is not None and hold.pid == os.getpid():
                os.close(fd)
                hold.count += 1
                return WriterLock(directory, key)
            if fcntl is not None:
                try:
                    fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                except BlockingIOError:
                    holder = _read_holder(fd)
                    os.close(fd)
                    raise RunLockedError(
                        f"{directory} is being written by another process ({holder}); two "
                        "writers would corrupt the run: wait for that one to finish (or stop "
                        "it), or choose another run directory"
                    ) from None
                except OSError as err:  # a file system without locks (some network mounts)
                    warnings.warn(
                        f"cannot lock {path} ({err}): nothing stops a second process from "
                        "writing this run at the same time",
                        RuntimeWarning,
                        stacklevel=3,
                    )
            try:
                same = os.stat(path).st_ino == info.st_ino
            except FileNotFoundError:
                same = False
            if same:
                break
            os.close(fd)
        else:
            raise RunLogError(f"{path} keeps being replaced: cannot lock {directory}")
        holder = {
            "pid": os.getpid(),
            "host": socket.gethostname(),
            "since": datetime.now(timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ"),
            "command": " ".join(sys.argv),
        }
        os.ftruncate(fd, 0)
        os.pwrite(fd, (json.dumps(holder, sort_keys=True) + "\n").encode(), 0)
        _holds[key] = _Hold(fd=fd, pid=os.getpid())
        return WriterLock(directory, key)


def _read_holder(fd: int) -> str:
    """Who holds the lock, as its file says (it writes that right after locking)."""
    for _ in range(50):
        try:
            stored = json.loads(os.pread(fd, 1 << 16, 0).decode())
        except (OSError, ValueError):
            time.sleep(0.02)
            continue
        if isinstance(stored, dict) and "pid" in stored:
            return (
                f"pid {stored['pid']} on host {stored.get('host', '?')}, since "
                f"{stored.get('since', '?')}: {stored.get('command', '?')}"
            )
        time.sleep(0.02)
    return "its pid and host are not written yet"


class ProtectedRunDirectory:
    """What a run directory's reader and writer share, for the PPO and the LLM run logs:
    the JSON files' checksums (checked on read, written when the run stores them) and the
    one-writer lock. The owner sets ``path``, ``format_minor`` (>= 1: checksummed JSON),
    ``_run_json_problem`` (why ``run.json`` failed its check, or None) and
    ``_writer_lock`` (None) in its constructor."""

    path: Path
    format_minor: int
    _run_json_problem: str | None
    _writer_lock: WriterLock | None

    def _open_run_json(self, run_json: Path, stored: dict[str, Any], minor: Any) -> dict[str, Any]:
        """``run.json``'s content without its checksum, and the run's ``format_minor``. A
        ``run.json`` that fails its checksum is still read (so that ``verify`` reports it
        with the rest) but not used: ``_require_intact_run_json`` refuses it."""
        if not isinstance(minor, int) or isinstance(minor, bool) or minor < 0:
            raise CorruptRunLogError(f"{run_json} holds an invalid format_minor {minor!r}")
        self.format_minor = minor
        self._run_json_problem = None
        try:
            return self._checked(run_json, stored)
        except CorruptRunLogError as err:
            self._run_json_problem = str(err)
            return {k: v for k, v in stored.items() if k != JSON_CHECKSUM_KEY}

    @property
    def metadata_checksummed(self) -> bool:
        """Whether this run's JSON files carry checksums (older runs' are read unverified)."""
        return self.format_minor >= 1

    def _require_intact_run_json(self) -> None:
        if self._run_json_problem is not None:
            raise CorruptRunLogError(self._run_json_problem)

    def _checked(self, path: Path, payload: dict[str, Any]) -> dict[str, Any]:
        """``payload`` read from ``path``, checked against its checksum and without it."""
        body, had_checksum = check_json_checksum(path, payload)
        if not had_checksum and self.metadata_checksummed:
            raise CorruptRunLogError(
                f"{path} lacks its checksum ({JSON_CHECKSUM_KEY}), which every JSON file of "
                "this run stores: the file was edited or replaced; restore it from a copy of "
                "the run"
            )
        return body

    def _read_meta_json(self, path: Path) -> dict[str, Any]:
        """A JSON file of the run, checked against its checksum (``CorruptRunLogError``
        naming the file when it does not match)."""
        return self._checked(path, read_json(path))

    def _json(self, payload: dict[str, Any]) -> dict[str, Any]:
        """``payload`` as written: with its checksum when the run stores them."""
        return with_json_checksum(payload) if self.metadata_checksummed else payload

    def acquire_writer(self) -> None:
        """Take the run directory's writer lock, unless this log holds it already; held
        until ``release_writer``, until the log is collected, or until the process ends.
        ``RunLockedError`` (naming the holder's pid, host and command) when another
        process holds it. Every write takes it first, so calling this is only needed to be
        refused before doing any work."""
        if self._writer_lock is None or not self._writer_lock.held:
            self._writer_lock = acquire_writer_lock(self.path)

    def release_writer(self) -> None:
        """Give up the writer lock (another process may then write the run)."""
        if self._writer_lock is not None:
            self._writer_lock.release()
            self._writer_lock = None

    @property
    def is_writer(self) -> bool:
        """Whether this log holds the run directory's writer lock."""
        return self._writer_lock is not None and self._writer_lock.held
