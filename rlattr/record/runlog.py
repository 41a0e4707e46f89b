"""RunLog: the run directory from which any recorded iteration can be replayed exactly.

Layout (all tensors in safetensors, all metadata in JSON, every write atomic)::

    run.json                          format version, config, seed, versions, policy spec
    checkpoints/000012.safetensors    policy + optimiser state at the *start* of iteration 12
    checkpoints/000012.json           its checksum, optimiser hyperparameters, counters, RNG
    iterations/000012/records.safetensors
    iterations/000012/plan.safetensors
    iterations/000012/iteration.json  checksums + plan metadata; written last (commit marker)
    iterations/000012/scores/<name>.safetensors + .json   scores of the records (any time)
    iterations/000012/ground_truth.safetensors   per-record ``info["rlattr_*"]`` (optional)
    tb/                               TensorBoard event files

Write order at the end of iteration k: records k, plan k, checkpoint k+1 (tensors, then
JSON), then ``iteration.json`` of k. So a committed iteration always has its end state on
disk, and a kill at any point leaves only uncommitted files that ``resume`` discards.

Format 2 (written by default; format 1 stays readable) stores the same values in about a
tenth of the bytes, and loads them back bit for bit:

- every tensor in the narrowest dtype that holds it exactly (``io.narrowest``: indices
  below 256 in uint8, 0/1 flags in bool, ...; the header says what to cast back to);
- what can be computed again is left out when the computation gives it back bit for bit
  (checked when written): a plan's minibatches (its permutations cut again), advantages
  and returns (SB3's GAE on the stored rewards and values), record ids (``iteration * N +
  i``);
- sparse checkpoints: only every ``Retention.checkpoint_every``-th start-of-iteration state
  keeps its tensors (and always the newest, for resume). The others keep their JSON (so
  they are listed, with counters and optimiser hyperparameters) and are rebuilt on demand
  by ``load_checkpoint``: exact replay of the logged updates from the previous full one
  (``rlattr.record.rebuild``, above both this module and replay).
  A rebuilt checkpoint holds the policy and optimiser state, not the RNG states a full one
  holds (only resume reads those, and it resumes from the newest, full, checkpoint).
"""

from __future__ import annotations

import math
import shutil
import threading
from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from contextlib import contextmanager
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import torch

from rlattr.errors import CorruptRunLogError, FormatVersionError, RunLogError
from rlattr.record.io import (
    JSON_CHECKSUM_KEY,
    ProtectedRunDirectory,
    RunLockedError,
    WriterLock,
    acquire_writer_lock,
    atomic_create_json,
    atomic_write_json,
    atomic_write_tensors,
    read_json,
    read_tensors,
    sha256_file,
    with_json_checksum,
)
from rlattr.record.plan import UpdatePlan
from rlattr.record.records import Records, recompute_gae

FORMAT_NAME = "rlattr-runlog"
FORMAT_VERSION = 2
READABLE_VERSIONS = (1, 2)
# Minor version of format 2 (``run.json["format_minor"]``, absent: 0), which readers of
# older releases ignore. 1: every JSON file (run.json, iteration.json, checkpoint and score
# JSON) stores the checksum of its content (``io.JSON_CHECKSUM_KEY``), checked on load and
# by ``verify``; runs without it still read, their metadata unverified.
FORMAT_MINOR = 1
GROUND_TRUTH_FILE = "ground_truth.safetensors"
# Record fields format 2 leaves out when GAE recomputes them bit for bit.
_GAE_FIELDS = ("advantages", "returns")
# Default full-checkpoint spacing of format 2, in environment steps: a full checkpoint every
# ceil(8192 / rollout) iterations (CartPole preset: 32; LunarLander: 4). Measured in
# experiments/results/bench_runlog_size.md: a 64x64 MLP's checkpoint (~85 KiB) then costs
# ~10 bytes per step, and reaching the farthest iteration replays ~8192 steps' updates.
CHECKPOINT_STEPS = 8192
# When the rollout size is unknown (run.json without n_steps and n_envs).
CHECKPOINT_EVERY = 32


_write_version = FORMAT_VERSION


def write_format_version() -> int:
    """The format ``RunLog.create`` writes when not told (``FORMAT_VERSION``, or what an
    enclosing ``writing_format`` block set)."""
    return _write_version


@contextmanager
def writing_format(version: int) -> Iterator[None]:
    """Within the block, new run directories (``AttributedPPO``, ``RecordRun``) are written
    in format ``version``: 1 gives the layout of older releases, to measure or test against.
    """
    global _write_version
    if version not in READABLE_VERSIONS:
        raise ValueError(f"format version must be one of {READABLE_VERSIONS}, got {version}")
    previous, _write_version = _write_version, version
    try:
        yield
    finally:
        _write_version = previous


@dataclass(frozen=True)
class Retention:
    """Which iterations a run keeps on disk.

    Attributes:
        record_every: record iterations 0, m, 2m, ... (1 records every iteration).
        keep_last: keep only the newest ``keep_last`` recorded iterations (None keeps all).
        checkpoint_every: keep the full policy + optimiser state at the start of
            iterations 0, m, 2m, ... (and the newest); the others are rebuilt by exact
            replay when loaded. Takes effect only when every iteration is recorded and kept
            (record_every 1, keep_last None), since a rebuild replays every iteration from
            the previous full checkpoint; otherwise every kept checkpoint is full.
            1 keeps every checkpoint full (format 1's layout). None (default): every
            ``ceil(CHECKPOINT_STEPS / (n_steps * n_envs))`` iterations, fixed when the run
            directory is created (and stored in ``run.json``).
    """

    record_every: int = 1
    keep_last: int | None = None
    checkpoint_every: int | None = None

    def __post_init__(self) -> None:
        if self.record_every < 1:
            raise ValueError(f"record_every must be >= 1, got {self.record_every}")
        if self.keep_last is not None and self.keep_last < 1:
            raise ValueError(f"keep_last must be >= 1 or None, got {self.keep_last}")
        if self.checkpoint_every is not None and self.checkpoint_every < 1:
            raise ValueError(f"checkpoint_every must be >= 1, got {self.checkpoint_every}")

    def resolved(self, algorithm: dict[str, Any]) -> Retention:
        """This retention with ``checkpoint_every`` fixed for a run of ``algorithm``
        (``run.json["algorithm"]``: its rollout is ``n_steps * n_envs`` records)."""
        if self.checkpoint_every is not None:
            return self
        try:
            rollout = int(algorithm["n_steps"]) * int(algorithm["n_envs"])
        except (KeyError, TypeError, ValueError):
            return replace(self, checkpoint_every=CHECKPOINT_EVERY)
        return replace(self, checkpoint_every=max(1, math.ceil(CHECKPOINT_STEPS / rollout)))

    def records(self, iteration: int) -> bool:
        return iteration % self.record_every == 0

    def full_checkpoint(self, iteration: int) -> bool:
        """Whether the checkpoint at the start of ``iteration`` keeps its tensors."""
        sparse = self.record_every == 1 and self.keep_last is None
        return not sparse or iteration % (self.checkpoint_every or CHECKPOINT_EVERY) == 0

    def json_dict(self) -> dict[str, Any]:
        return {
            "record_every": self.record_every,
            "keep_last": self.keep_last,
            "checkpoint_every": self.checkpoint_every,
        }


@dataclass
class VerifyReport:
    """Outcome of ``RunLog.verify``.

    Attributes:
        iterations, checkpoints: what is committed.
        problems: corrupt or missing files, and gaps; any problem makes ``ok`` false.
        leftovers: uncommitted files (what an interrupted run leaves; ``resume`` discards them).
        gaps: iterations the retention policy should have kept between the first and the
            last committed one, but that are not committed (deleted, or never finished):
            a kill cannot cause one, since iterations commit in order.
        metadata_verified: whether the JSON files carry checksums (format 2.1 on); False
            for runs written before, whose metadata cannot be checked (only parsed).
    """

    iterations: list[int] = field(default_factory=list)
    checkpoints: list[int] = field(default_factory=list)
    problems: list[str] = field(default_factory=list)
    leftovers: list[str] = field(default_factory=list)
    gaps: list[int] = field(default_factory=list)
    metadata_verified: bool = True

    @property
    def ok(self) -> bool:
        return not self.problems


class BackgroundWriter:
    """Runs run-log writes one at a time, in order, on a worker thread.

    Serialising, hashing and fsync-ing an iteration costs about as much as a small PPO
    update; doing it while the next rollout is collected keeps recording nearly free.
    Order is preserved (one worker), so the commit protocol is unchanged: a kill loses at
    most the iterations still queued, which are uncommitted and discarded on resume.
    Errors surface at the next ``submit`` or at ``drain``. After a write fails, the writes
    queued behind it do not run: a later iteration committed past a missing one would leave
    a gap that a resume (which restarts after the last commit) never fills.
    """

    def __init__(self) -> None:
        self._executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="rlattr-runlog")
        self._pending: list[Future[int]] = []
        self._failed = threading.Event()
        self.bytes_written = 0

    def submit(self, fn: Any, *args: Any, **kwargs: Any) -> None:
        self._collect(block=False)
        self._pending.append(self._executor.submit(self._run, fn, args, kwargs))

    def _run(self, fn: Any, args: tuple[Any, ...], kwargs: dict[str, Any]) -> int:
        if self._failed.is_set():
            return 0  # an earlier write failed: nothing may commit after it
        try:
            return fn(*args, **kwargs)
        except BaseException:
            self._failed.set()
            raise

    def drain(self) -> None:
        """Wait for every queued write; re-raise the first error."""
        self._collect(block=True)

    def _collect(self, block: bool) -> None:
        still_pending = []
        for future in self._pending:
            if block or future.done():
                self.bytes_written += future.result() or 0
            else:
                still_pending.append(future)
        self._pending = still_pending


# What ``run.json`` must hold for a run to be read, replayed and scored.
_REQUIRED_META = {
    "policy": ("class", "kwargs", "observation_space", "action_space"),
    "algorithm": ("gamma", "gae_lambda"),
}


def _check_run_meta(run_json: Path, meta: dict[str, Any]) -> None:
    """Refuse a ``run.json`` that lacks what replay and scoring read, naming what is missing."""
    missing = [key for key in _REQUIRED_META if not isinstance(meta.get(key), dict)]
    for key, inner in _REQUIRED_META.items():
        if key not in missing:
            missing += [f"{key}.{name}" for name in inner if name not in meta[key]]
    if missing:
        raise CorruptRunLogError(
            f"{run_json} lacks {', '.join(missing)}: the file is damaged or was edited; "
            "restore it from a copy of the run or train the run again"
        )


def _name(index: int) -> str:
    return f"{index:06d}"


# Key of a checkpoint JSON whose tensors were left out (format 2): rebuilt by replay.
_SPARSE = "tensors"

# (log, iteration, device) -> (tensors, meta) of a sparse checkpoint. Rebuilding replays the
# logged updates, which is replay's work, and replay reads this run log: so the rebuild lives
# above both (rlattr.record.rebuild), which installs it here when rlattr.record is imported.
CheckpointRebuilder = Callable[
    ["RunLog", int, "torch.device | str"], tuple[dict[str, torch.Tensor], dict[str, Any]]
]
_rebuilder: CheckpointRebuilder | None = None


def install_checkpoint_rebuilder(rebuilder: CheckpointRebuilder) -> None:
    """Install what ``RunLog.load_checkpoint`` rebuilds sparse checkpoints with
    (``rlattr.record.rebuild.rebuild_checkpoint``, installed on import)."""
    global _rebuilder
    _rebuilder = rebuilder


def is_sparse_checkpoint(meta: dict[str, Any]) -> bool:
    """Whether a checkpoint's JSON marks it sparse (its tensors are rebuilt by replay)."""
    return _SPARSE in meta


_SPARSE_VALUE = "rebuilt by replaying the previous iteration"


class RunLog(ProtectedRunDirectory):
    """Read and write one run directory. Open an existing one with ``RunLog(path)``.

    One process writes a run at a time: ``create``, ``open_for_writing`` and the first
    write of a log opened for reading (``write_scores``, say) take the directory's writer
    lock (``io.LOCK_FILE``, an OS lock the kernel drops when the process ends), and hold
    it until ``release_writer`` or until the log is collected. Another process then gets a
    ``RunLockedError`` naming the holder. Reading takes no lock.

    Args:
        path: the run directory.
        cache_checkpoints: write each checkpoint ``load_checkpoint`` rebuilds back into the
            run directory as a full one, so the next load reads it instead of replaying
            (skipped while another process writes the run).
        allow_modules: top-level modules, besides ``rlattr.allowlist``'s own list, that
            ``run.json`` and its stored preset may name classes from (CLI: ``--allow-module``).
    """

    def __init__(
        self,
        path: str | Path,
        cache_checkpoints: bool = False,
        allow_modules: Sequence[str] = (),
    ):
        self.path = Path(path)
        self.cache_checkpoints = cache_checkpoints
        self.allow_modules: tuple[str, ...] = tuple(allow_modules)
        self._writer_lock: WriterLock | None = None
        run_json = self.path / "run.json"
        if not run_json.exists():
            raise RunLogError(f"{self.path} is not an rlattr run directory (no run.json)")
        stored = read_json(run_json)
        if stored.get("format") != FORMAT_NAME:
            raise FormatVersionError(f"{run_json} is not an rlattr run log")
        version = stored.get("format_version")
        if version not in READABLE_VERSIONS:
            raise FormatVersionError(
                f"{self.path} uses run-log format version {version}; this rlattr reads "
                f"versions {', '.join(map(str, READABLE_VERSIONS))}. Use the rlattr release "
                "that wrote it."
            )
        self.format_version: int = version
        _check_run_meta(run_json, stored)
        # Format 1 kept every checkpoint full and did not store the spacing.
        stored_retention = {"checkpoint_every": 1, **stored.get("retention", {})}
        try:
            self.retention = Retention(**stored_retention)
        except (TypeError, ValueError) as err:
            raise CorruptRunLogError(
                f"{run_json} holds an invalid retention ({err}): the file is damaged or was "
                "edited; restore it from a copy of the run"
            ) from err
        minor = stored.get("format_minor", 0) if version >= 2 else 0
        self._meta = self._open_run_json(run_json, stored, minor)

    @property
    def meta(self) -> dict[str, Any]:
        """``run.json`` (without its checksum); a ``CorruptRunLogError`` when the file does
        not match its checksum."""
        if self._run_json_problem is not None:
            raise CorruptRunLogError(self._run_json_problem)
        return self._meta

    @property
    def stored_meta(self) -> dict[str, Any]:
        """``run.json`` as read, whether or not it matches its checksum (for reports that
        show a damaged run; everything else reads ``meta``)."""
        return self._meta

    @property
    def run_json_problem(self) -> str | None:
        """Why ``run.json`` cannot be used (it does not match its checksum), or None."""
        return self._run_json_problem

    # ----------------------------------------------------------------- the writer lock
    @classmethod
    def open_for_writing(
        cls,
        path: str | Path,
        cache_checkpoints: bool = False,
        allow_modules: Sequence[str] = (),
    ) -> RunLog:
        """Open an existing run to write to it (resume): ``RunLog(path, ...)`` holding the
        directory's writer lock (``RunLockedError`` naming the holder if another process
        holds it)."""
        log = cls(path, cache_checkpoints, allow_modules)
        log.acquire_writer()
        return log

    # ----------------------------------------------------------------- creation
    @classmethod
    def create(
        cls,
        path: str | Path,
        meta: dict[str, Any],
        retention: Retention | None = None,
        format_version: int | None = None,
    ) -> RunLog:
        """Start a new run directory, holding its writer lock (see ``acquire_writer``).
        Refuses to overwrite one that already holds a run: ``run.json`` is created only
        where none exists (atomically: a reader sees all of it or none).

        ``format_version`` None writes ``write_format_version()`` (format 2 unless a
        ``writing_format`` block says otherwise); 1 writes the layout older releases wrote
        (int64 indices, every checkpoint full, no JSON checksums), for comparisons and
        compatibility tests.
        """
        root = Path(path)
        exists = RunLogError(
            f"{root} already holds a run; pass resume=True (CLI: --resume) to continue "
            "it, or choose another run directory"
        )
        if (root / "run.json").exists():
            raise exists
        version = write_format_version() if format_version is None else format_version
        if version not in READABLE_VERSIONS:
            raise ValueError(f"format_version must be one of {READABLE_VERSIONS}, got {version}")
        retention = (retention or Retention()).resolved(meta.get("algorithm") or {})
        stored_retention = retention.json_dict()
        if version == 1:  # every checkpoint full, and no key for the spacing
            del stored_retention["checkpoint_every"]
        payload = {
            **{k: v for k, v in meta.items() if k not in (JSON_CHECKSUM_KEY, "format_minor")},
            "format": FORMAT_NAME,
            "format_version": version,
            "retention": stored_retention,
        }
        if version >= 2:
            payload = with_json_checksum({**payload, "format_minor": FORMAT_MINOR})
        lock = acquire_writer_lock(root)
        try:
            if not atomic_create_json(root / "run.json", payload):
                raise exists
            log = cls(root)
        except BaseException:
            lock.release()
            raise
        log._writer_lock = lock
        return log

    # ----------------------------------------------------------------- paths
    @property
    def tb_dir(self) -> Path:
        return self.path / "tb"

    def iteration_dir(self, iteration: int) -> Path:
        return self.path / "iterations" / _name(iteration)

    def _checkpoint_paths(self, index: int) -> tuple[Path, Path]:
        base = self.path / "checkpoints" / _name(index)
        return base.with_suffix(".safetensors"), base.with_suffix(".json")

    # ----------------------------------------------------------------- listing
    def iterations(self) -> list[int]:
        """Committed (finished and recorded) iterations, ascending."""
        root = self.path / "iterations"
        if not root.exists():
            return []
        return sorted(
            int(d.name)
            for d in root.iterdir()
            if d.name.isdigit() and (d / "iteration.json").exists()
        )

    def checkpoints(self) -> list[int]:
        """Iterations whose start-of-iteration checkpoint is committed, ascending."""
        root = self.path / "checkpoints"
        if not root.exists():
            return []
        return sorted(int(p.stem) for p in root.glob("*.json") if p.stem.isdigit())

    def has_checkpoint(self, iteration: int) -> bool:
        return self._checkpoint_paths(iteration)[1].exists()

    # ----------------------------------------------------------------- writing
    def write_checkpoint(
        self, iteration: int, tensors: dict[str, torch.Tensor], meta: dict[str, Any]
    ) -> int:
        """Write the state at the start of ``iteration``; returns bytes written."""
        self.acquire_writer()
        tensor_path, json_path = self._checkpoint_paths(iteration)
        digest, size = atomic_write_tensors(tensor_path, tensors, narrow=self._narrow)
        payload = {**meta, "iteration": iteration, "sha256": digest, "bytes": size}
        atomic_write_json(json_path, self._json(payload), compact=self._narrow)
        return size

    @property
    def _narrow(self) -> bool:
        """Format 2 narrows tensors and writes per-iteration JSON compactly."""
        return self.format_version >= 2

    def write_iteration(
        self,
        records: Records,
        plan: UpdatePlan,
        info: dict[str, Any],
        observation_space: Any = None,
        next_checkpoint: tuple[dict[str, torch.Tensor], dict[str, Any]] | None = None,
        scores: dict[str, tuple[torch.Tensor, dict[str, Any]]] | None = None,
        ground_truth: dict[str, torch.Tensor] | None = None,
    ) -> int:
        """Write one finished iteration (and, first, the checkpoint that follows it).

        ``scores`` (name → (scores, metadata)) computed during training are stored too, and
        so is ``ground_truth`` (``info`` key → ``[N]`` tensor, what the environments said
        about each record; ``load_ground_truth``), listed with its checksum.

        ``iteration.json`` is written last: its presence is what marks the iteration done.
        Returns the number of bytes written.
        """
        self.acquire_writer()
        k = records.iteration
        directory = self.iteration_dir(k)
        if (directory / "iteration.json").exists():
            raise RunLogError(f"iteration {k} is already committed in {self.path}")
        record_tensors = records.tensor_dict(observation_space)
        plan_tensors, plan_meta = plan.tensor_dict(), plan.json_dict()
        derived_fields: list[str] = []
        if self._narrow:
            del record_tensors["record_ids"]  # iteration * N + i: Records recomputes them
            plan_tensors, plan_meta = plan.stored_tensor_dict()
            if self._gae_gives_back(records):
                derived_fields = list(_GAE_FIELDS)
                for name in derived_fields:
                    del record_tensors[name]
        rec_sha, rec_bytes = atomic_write_tensors(
            directory / "records.safetensors", record_tensors, narrow=self._narrow
        )
        plan_sha, plan_bytes = atomic_write_tensors(
            directory / "plan.safetensors", plan_tensors, narrow=self._narrow
        )
        written = rec_bytes + plan_bytes
        files = {
            "records.safetensors": {"sha256": rec_sha, "bytes": rec_bytes},
            "plan.safetensors": {"sha256": plan_sha, "bytes": plan_bytes},
        }
        if ground_truth:
            truth_sha, truth_bytes = atomic_write_tensors(
                directory / GROUND_TRUTH_FILE, dict(ground_truth), narrow=self._narrow
            )
            files[GROUND_TRUTH_FILE] = {"sha256": truth_sha, "bytes": truth_bytes}
            written += truth_bytes
        for name, (values, meta) in (scores or {}).items():
            written += self.write_scores(k, name, values, meta)
        if next_checkpoint is not None:
            written += self.write_checkpoint(k + 1, *next_checkpoint)
        payload = {
            "iteration": k,
            "n_envs": records.n_envs,
            "n_steps": records.n_steps,
            "files": files,
            **({"derived_records": derived_fields} if derived_fields else {}),
            "plan": plan_meta,
            "info": _json_safe(info),
        }
        atomic_write_json(directory / "iteration.json", self._json(payload), compact=self._narrow)
        return written

    # ----------------------------------------------------------------- scores
    def write_scores(
        self, iteration: int, name: str, scores: torch.Tensor, meta: dict[str, Any]
    ) -> int:
        """Store ``[N]`` scores of iteration ``iteration``'s records under ``name``.

        Scores may be written during training (before the iteration commits) or later by
        ``rlattr attribute``; an existing entry of the same name is replaced atomically.
        """
        if not name.replace("-", "").replace("_", "").replace(".", "").isalnum():
            raise ValueError(f"score name {name!r} may hold letters, digits, '-', '_' and '.'")
        self.acquire_writer()
        directory = self.iteration_dir(iteration) / "scores"
        stored = {"scores": scores.to(torch.float64)}
        if not self._narrow:  # format 2 leaves out the ids: record i of iteration k
            stored["record_ids"] = (
                torch.arange(scores.numel(), dtype=torch.int64) + iteration * scores.numel()
            )
        digest, size = atomic_write_tensors(
            directory / f"{name}.safetensors", stored, narrow=self._narrow
        )
        stored_meta = {**_json_safe(meta), "name": name, "iteration": iteration, "sha256": digest}
        atomic_write_json(directory / f"{name}.json", self._json(stored_meta), compact=self._narrow)
        return size

    def score_names(self, iteration: int) -> list[str]:
        directory = self.iteration_dir(iteration) / "scores"
        return sorted(p.stem for p in directory.glob("*.json")) if directory.exists() else []

    def load_scores(
        self, iteration: int, name: str, device: torch.device | str = "cpu"
    ) -> tuple[torch.Tensor, dict[str, Any]]:
        """(scores ``[N]`` float64, metadata) stored under ``name`` for ``iteration``."""
        directory = self.iteration_dir(iteration) / "scores"
        json_path = directory / f"{name}.json"
        if not json_path.exists():
            raise RunLogError(
                f"no scores {name!r} for iteration {iteration} in {self.path} "
                f"(stored: {self.score_names(iteration) or 'none'}); run `rlattr attribute`"
            )
        self._require_intact_run_json()
        meta = self._read_meta_json(json_path)
        tensors = read_tensors(directory / f"{name}.safetensors", meta["sha256"], device)
        return tensors["scores"], meta

    # ----------------------------------------------------------------- reading
    def iteration_meta(self, iteration: int) -> dict[str, Any]:
        path = self.iteration_dir(iteration) / "iteration.json"
        if not path.exists():
            available = self.iterations()
            shown = f"{available[0]}..{available[-1]}" if available else "none"
            raise RunLogError(
                f"iteration {iteration} is not recorded in {self.path} "
                f"(recorded iterations: {shown}; {len(available)} in all)"
            )
        return self._read_meta_json(path)

    def _read_iteration_file(
        self, iteration: int, name: str, device: torch.device | str
    ) -> dict[str, torch.Tensor]:
        self._require_intact_run_json()
        meta = self.iteration_meta(iteration)
        path = self.iteration_dir(iteration) / name
        if not path.exists():
            raise CorruptRunLogError(
                f"{path} is missing although iteration {iteration} is committed"
            )
        return read_tensors(path, meta["files"][name]["sha256"], device)

    def load_records(self, iteration: int, device: torch.device | str = "cpu") -> Records:
        meta = self.iteration_meta(iteration)
        tensors = self._read_iteration_file(iteration, "records.safetensors", device)
        derived = meta.get("derived_records", [])
        if derived:  # placeholders until GAE below recomputes them
            tensors.update({name: torch.empty(0) for name in derived})
        try:
            records = Records.from_tensor_dict(tensors, iteration, meta["n_envs"], meta["n_steps"])
        except KeyError as err:
            raise CorruptRunLogError(f"records of iteration {iteration}: {err}") from err
        if derived:
            algorithm = self.meta["algorithm"]
            recomputed = recompute_gae(records, algorithm["gamma"], algorithm["gae_lambda"])
            if recomputed is None or set(derived) != set(_GAE_FIELDS):
                raise CorruptRunLogError(
                    f"records of iteration {iteration} cannot be completed ({derived} are "
                    "derived but GAE's inputs are not stored): the file was altered"
                )
            records = replace(records, advantages=recomputed[0], returns=recomputed[1])
        return records

    def _gae_gives_back(self, records: Records) -> bool:
        """Whether GAE on the stored inputs reproduces the records' advantages and returns
        bit for bit (it does for SB3's buffer; not where something rewrote them)."""
        algorithm = self.meta["algorithm"]
        recomputed = recompute_gae(records, algorithm["gamma"], algorithm["gae_lambda"])
        if recomputed is None:
            return False
        stored = (records.advantages, records.returns)
        return all(
            a.shape == b.shape
            and a.dtype == b.dtype == torch.float32
            and torch.equal(a.view(torch.int32), b.view(torch.int32))
            for a, b in zip(recomputed, stored, strict=True)
        )

    def load_plan(self, iteration: int, device: torch.device | str = "cpu") -> UpdatePlan:
        meta = self.iteration_meta(iteration)
        tensors = self._read_iteration_file(iteration, "plan.safetensors", device)
        try:
            return UpdatePlan.from_stored(meta["plan"], tensors)
        except KeyError as err:
            raise CorruptRunLogError(f"plan of iteration {iteration} lacks {err}") from err

    def load_ground_truth(
        self, iteration: int, device: torch.device | str = "cpu"
    ) -> dict[str, torch.Tensor]:
        """Per-record ground truth of ``iteration``: ``info`` key (``rlattr_fault``, ...) →
        ``[N]`` tensor aligned with its records (bool, or float64 with NaN where a step lacked
        the key). Empty when the environments reported none (or the run predates it)."""
        if GROUND_TRUTH_FILE not in self.iteration_meta(iteration)["files"]:
            return {}
        return self._read_iteration_file(iteration, GROUND_TRUTH_FILE, device)

    def checkpoint_meta(self, iteration: int) -> dict[str, Any]:
        """The JSON of the checkpoint at the start of ``iteration`` (full or rebuildable)."""
        json_path = self._checkpoint_paths(iteration)[1]
        if not json_path.exists():
            checkpoints = self.checkpoints()
            shown = f"{checkpoints[0]}..{checkpoints[-1]}" if checkpoints else "none"
            raise RunLogError(
                f"no checkpoint for the start of iteration {iteration} in {self.path} "
                f"(checkpoints: {shown}; {len(checkpoints)} in all)"
            )
        return self._read_meta_json(json_path)

    def is_full_checkpoint(self, iteration: int) -> bool:
        """Whether the checkpoint of ``iteration`` holds its tensors (False: it is rebuilt
        by replay when loaded)."""
        return _SPARSE not in self.checkpoint_meta(iteration)

    def is_logged_checkpoint(self, iteration: int) -> bool:
        """Whether the checkpoint of ``iteration`` holds the state training wrote: full and
        not a rebuilt one cached back to disk. Only such a checkpoint is an independent
        check of a replay."""
        meta = self.checkpoint_meta(iteration)
        return _SPARSE not in meta and not meta.get("rebuilt", False)

    def load_checkpoint(
        self, iteration: int, device: torch.device | str = "cpu", cache: bool | None = None
    ) -> tuple[dict[str, torch.Tensor], dict[str, Any]]:
        """The (tensors, meta) of the state at the start of ``iteration``.

        A sparse checkpoint (format 2) is rebuilt by replaying the logged iterations from
        the previous full checkpoint on ``device``: bit for bit the state training had when
        ``device`` is the one it trained on. Its meta then has ``"rebuilt": True`` and its
        tensors hold no RNG state. ``cache`` (default: the log's ``cache_checkpoints``)
        writes the rebuilt state back as a full checkpoint.
        """
        self._require_intact_run_json()
        meta = self.checkpoint_meta(iteration)
        if _SPARSE in meta:
            if _rebuilder is None:  # only if rlattr.record's __init__ did not run
                raise RunLogError(
                    f"{self.path}: checkpoint {iteration} is sparse and nothing is installed "
                    "to rebuild it: import rlattr.record.rebuild"
                )
            tensors, meta = _rebuilder(self, iteration, device)
            if self.cache_checkpoints if cache is None else cache:
                self._store_rebuilt(iteration, tensors, meta)
            return tensors, meta
        tensor_path = self._checkpoint_paths(iteration)[0]
        if not tensor_path.exists():
            raise CorruptRunLogError(f"{tensor_path} is missing")
        return read_tensors(tensor_path, meta["sha256"], device), meta

    def _store_rebuilt(
        self, iteration: int, tensors: dict[str, torch.Tensor], meta: dict[str, Any]
    ) -> None:
        """Make a rebuilt checkpoint full: tensors first, then the JSON that commits them.

        Skipped while another process writes the run (the checkpoint stays rebuildable);
        a log that was not the writer holds the lock only for this write.
        """
        stored = {k: v for k, v in meta.items() if k not in (_SPARSE, "sha256", "bytes")}
        if self.is_writer:
            self.write_checkpoint(iteration, tensors, stored)
            return
        try:
            self.acquire_writer()
        except (RunLockedError, OSError):  # another writer, or a read-only run directory
            return
        try:
            self.write_checkpoint(iteration, tensors, stored)
        finally:
            self.release_writer()

    # ----------------------------------------------------------------- integrity
    def verify(self) -> VerifyReport:
        """Recompute every checksum; list corrupt files and uncommitted leftovers."""
        report = VerifyReport(
            iterations=self.iterations(),
            checkpoints=self.checkpoints(),
            metadata_verified=self.metadata_checksummed,
        )
        if self._run_json_problem is not None:
            report.problems.append(self._run_json_problem)
        for k in report.iterations:
            try:
                meta = self.iteration_meta(k)
            except CorruptRunLogError as err:
                report.problems.append(str(err))
                continue
            for name, info in meta.get("files", {}).items():
                path = self.iteration_dir(k) / name
                if not path.exists():
                    report.problems.append(f"{path}: missing")
                elif sha256_file(path) != info["sha256"]:
                    report.problems.append(f"{path}: checksum mismatch (truncated or altered)")
            for score_json in sorted((self.iteration_dir(k) / "scores").glob("*.json")):
                try:
                    expected = self._read_meta_json(score_json).get("sha256")
                except CorruptRunLogError as err:
                    report.problems.append(str(err))
                    continue
                path = score_json.with_suffix(".safetensors")
                if not path.exists() or sha256_file(path) != expected:
                    report.problems.append(f"{path}: missing or checksum mismatch")
        committed = set(report.iterations)
        full: set[int] = set()
        rebuildable: set[int] = set()
        for k in report.checkpoints:
            tensor_path, json_path = self._checkpoint_paths(k)
            try:
                meta = self._read_meta_json(json_path)
            except CorruptRunLogError as err:
                report.problems.append(str(err))
                continue
            if _SPARSE in meta:
                # Rebuilt by replaying iteration k-1 from checkpoint k-1 (full or rebuilt).
                if k - 1 not in committed or (k - 1 not in full and k - 1 not in rebuildable):
                    report.problems.append(
                        f"{json_path}: rebuilt by replaying iteration {k - 1} from checkpoint "
                        f"{k - 1}, but that is not on disk: it cannot be loaded"
                    )
                else:
                    rebuildable.add(k)
                if tensor_path.exists():  # a kill between marking it sparse and deleting
                    report.leftovers.append(str(tensor_path))
                continue
            full.add(k)
            if not tensor_path.exists():
                report.problems.append(f"{tensor_path}: missing")
            elif sha256_file(tensor_path) != meta.get("sha256"):
                report.problems.append(f"{tensor_path}: checksum mismatch (truncated or altered)")
        report.gaps = self._gaps(report.iterations)
        for k in report.gaps:
            where = self.iteration_dir(k)
            state = "holds no iteration.json" if where.exists() else "is missing"
            report.problems.append(
                f"{where}: iteration {k} is not committed ({state}) although later ones are: "
                "deleted or damaged; replay, attribution and stage effects cannot use it"
            )
        root = self.path / "iterations"
        if root.exists():
            gaps = {self.iteration_dir(k) for k in report.gaps}  # reported as problems
            for d in sorted(root.iterdir()):
                if not (d / "iteration.json").exists() and d not in gaps:
                    report.leftovers.append(str(d))
        for p in sorted((self.path / "checkpoints").glob("*.safetensors")):
            if not p.with_suffix(".json").exists():
                report.leftovers.append(str(p))
        return report

    def _gaps(self, committed: list[int]) -> list[int]:
        """Iterations between the first and last committed that retention should keep."""
        if not committed:
            return []
        present = set(committed)
        return [
            k
            for k in range(committed[0], committed[-1])
            if self.retention.records(k) and k not in present
        ]

    # ----------------------------------------------------------------- resume + retention
    def resume_point(self) -> int | None:
        """The iteration to restart from: the newest full checkpoint whose predecessor
        finished.

        Returns None when the run has no checkpoint yet (start from scratch). A sparse
        checkpoint (format 2) is never one: it holds no RNG state to resume with. The
        write order makes the newest one full whatever moment a kill strikes (a checkpoint
        turns sparse only after the iteration that follows it has committed).
        """
        committed = set(self.iterations())
        for k in reversed(self.checkpoints()):
            previous_recorded = k > 0 and self.retention.records(k - 1)
            if (not previous_recorded or (k - 1) in committed) and self.is_full_checkpoint(k):
                return k
        return None

    def discard_after(self, iteration: int) -> None:
        """Remove everything a killed run left beyond the restart point ``iteration``."""
        self.acquire_writer()
        root = self.path / "iterations"
        if root.exists():
            for d in root.iterdir():
                beyond = d.name.isdigit() and int(d.name) >= iteration
                if beyond or not (d / "iteration.json").exists():
                    shutil.rmtree(d)
        ckpt_root = self.path / "checkpoints"
        if ckpt_root.exists():
            for p in ckpt_root.iterdir():
                stem = p.name.split(".")[0]
                if (stem.isdigit() and int(stem) > iteration) or p.name.startswith("."):
                    p.unlink()
            # A kill between marking a checkpoint sparse and deleting its tensors (see
            # ``_make_sparse``) leaves the tensors behind; the JSON says they are not used.
            for k in self.checkpoints():
                tensor_path, _ = self._checkpoint_paths(k)
                if not self.is_full_checkpoint(k) and tensor_path.exists():
                    tensor_path.unlink()

    def apply_retention(self, newest_checkpoint: int) -> int:
        """Delete iterations beyond ``keep_last`` and checkpoints nothing needs any more.

        A checkpoint k is kept while iteration k (to replay it) or k-1 (to check its replay
        against the state that followed) is kept, and the newest one always (to resume).
        Returns the bytes of checkpoint tensors a sparse checkpoint gave up (so what was
        written, less this, is what the run adds on disk).
        """
        self.acquire_writer()
        if self.retention.record_every == 1 and self.retention.keep_last is None:
            # Everything is kept; the checkpoint before the newest loses its tensors unless
            # it is on the full grid (the newest stays full: resume starts from it).
            return self._make_sparse(newest_checkpoint - 1)
        kept_iterations = self.iterations()
        if self.retention.keep_last is not None:
            for k in kept_iterations[: -self.retention.keep_last]:
                shutil.rmtree(self.iteration_dir(k))
            kept_iterations = kept_iterations[-self.retention.keep_last :]
        needed = {newest_checkpoint} | set(kept_iterations) | {k + 1 for k in kept_iterations}
        for k in self.checkpoints():
            if k not in needed:
                # The JSON is the commit marker, so it goes first.
                for path in reversed(self._checkpoint_paths(k)):
                    path.unlink(missing_ok=True)
        return 0

    def _make_sparse(self, iteration: int) -> int:
        """Drop the tensors of checkpoint ``iteration`` when retention rebuilds it on demand
        (its iteration committed, so it can be replayed; never the newest one).

        The JSON is rewritten first (atomically) to say the state is rebuilt, then the
        tensors are deleted: a kill in between leaves only a leftover tensor file.
        Returns the bytes deleted.
        """
        if iteration < 1 or self.retention.full_checkpoint(iteration):
            return 0
        tensor_path, json_path = self._checkpoint_paths(iteration)
        previous_committed = (self.iteration_dir(iteration - 1) / "iteration.json").exists()
        if not json_path.exists() or not previous_committed:
            return 0
        meta = self._read_meta_json(json_path)
        if _SPARSE in meta or meta.get("rebuilt"):
            return 0  # already sparse, or rebuilt and cached on request
        # The RNG states go with the tensors (a rebuilt state has none: resume never
        # starts from one), so their JSON part goes too.
        stored = {k: v for k, v in meta.items() if k not in ("sha256", "bytes", "numpy_rng")}
        atomic_write_json(json_path, self._json({**stored, _SPARSE: _SPARSE_VALUE}), compact=True)
        freed = tensor_path.stat().st_size if tensor_path.exists() else 0
        tensor_path.unlink(missing_ok=True)
        return freed


def _json_safe(value: Any) -> Any:
    if isinstance(value, dict):
        return {str(k): _json_safe(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_json_safe(v) for v in value]
    if isinstance(value, float) and not math.isfinite(value):
        return str(value)
    if isinstance(value, torch.Tensor):
        return _json_safe(value.tolist())
    return value
