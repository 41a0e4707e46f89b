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
"""

from __future__ import annotations

import math
import shutil
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from rlattr.errors import CorruptRunLogError, FormatVersionError, RunLogError
from rlattr.record.io import (
    atomic_write_json,
    atomic_write_tensors,
    read_json,
    read_tensors,
    sha256_file,
)
from rlattr.record.plan import UpdatePlan
from rlattr.record.records import Records

FORMAT_NAME = "rlattr-runlog"
FORMAT_VERSION = 1
GROUND_TRUTH_FILE = "ground_truth.safetensors"


@dataclass(frozen=True)
class Retention:
    """Which iterations a run keeps on disk.

    Attributes:
        record_every: record iterations 0, m, 2m, ... (1 records every iteration).
        keep_last: keep only the newest ``keep_last`` recorded iterations (None keeps all).
    """

    record_every: int = 1
    keep_last: int | None = None

    def __post_init__(self) -> None:
        if self.record_every < 1:
            raise ValueError(f"record_every must be >= 1, got {self.record_every}")
        if self.keep_last is not None and self.keep_last < 1:
            raise ValueError(f"keep_last must be >= 1 or None, got {self.keep_last}")

    def records(self, iteration: int) -> bool:
        return iteration % self.record_every == 0


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
    """

    iterations: list[int] = field(default_factory=list)
    checkpoints: list[int] = field(default_factory=list)
    problems: list[str] = field(default_factory=list)
    leftovers: list[str] = field(default_factory=list)
    gaps: list[int] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return not self.problems


class BackgroundWriter:
    """Runs run-log writes one at a time, in order, on a worker thread.

    Serialising, hashing and fsync-ing an iteration costs about as much as a small PPO
    update; doing it while the next rollout is collected keeps recording nearly free.
    Order is preserved (one worker), so the commit protocol is unchanged: a kill loses at
    most the iterations still queued, which are uncommitted and discarded on resume.
    Errors surface at the next ``submit`` or at ``drain``.
    """

    def __init__(self) -> None:
        self._executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="rlattr-runlog")
        self._pending: list[Future[int]] = []
        self.bytes_written = 0

    def submit(self, fn: Any, *args: Any, **kwargs: Any) -> None:
        self._collect(block=False)
        self._pending.append(self._executor.submit(fn, *args, **kwargs))

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


class RunLog:
    """Read and write one run directory. Open an existing one with ``RunLog(path)``."""

    def __init__(self, path: str | Path):
        self.path = Path(path)
        run_json = self.path / "run.json"
        if not run_json.exists():
            raise RunLogError(f"{self.path} is not an rlattr run directory (no run.json)")
        self.meta = read_json(run_json)
        if self.meta.get("format") != FORMAT_NAME:
            raise FormatVersionError(f"{run_json} is not an rlattr run log")
        version = self.meta.get("format_version")
        if version != FORMAT_VERSION:
            raise FormatVersionError(
                f"{self.path} uses run-log format version {version}; this rlattr reads "
                f"version {FORMAT_VERSION}. Use the rlattr release that wrote it."
            )
        _check_run_meta(run_json, self.meta)
        try:
            self.retention = Retention(**self.meta.get("retention", {}))
        except (TypeError, ValueError) as err:
            raise CorruptRunLogError(
                f"{run_json} holds an invalid retention ({err}): the file is damaged or was "
                "edited; restore it from a copy of the run"
            ) from err

    # ----------------------------------------------------------------- creation
    @classmethod
    def create(
        cls, path: str | Path, meta: dict[str, Any], retention: Retention | None = None
    ) -> RunLog:
        """Start a new run directory. Refuses to overwrite one that already holds a run."""
        root = Path(path)
        if (root / "run.json").exists():
            raise RunLogError(
                f"{root} already holds a run; pass resume=True (CLI: --resume) to continue "
                "it, or choose another run directory"
            )
        retention = retention or Retention()
        payload = {
            **meta,
            "format": FORMAT_NAME,
            "format_version": FORMAT_VERSION,
            "retention": {"record_every": retention.record_every, "keep_last": retention.keep_last},
        }
        atomic_write_json(root / "run.json", payload)
        return cls(root)

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
        tensor_path, json_path = self._checkpoint_paths(iteration)
        digest, size = atomic_write_tensors(tensor_path, tensors)
        payload = {**meta, "iteration": iteration, "sha256": digest, "bytes": size}
        atomic_write_json(json_path, payload)
        return size

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
        k = records.iteration
        directory = self.iteration_dir(k)
        if (directory / "iteration.json").exists():
            raise RunLogError(f"iteration {k} is already committed in {self.path}")
        rec_sha, rec_bytes = atomic_write_tensors(
            directory / "records.safetensors", records.tensor_dict(observation_space)
        )
        plan_sha, plan_bytes = atomic_write_tensors(
            directory / "plan.safetensors", plan.tensor_dict()
        )
        written = rec_bytes + plan_bytes
        files = {
            "records.safetensors": {"sha256": rec_sha, "bytes": rec_bytes},
            "plan.safetensors": {"sha256": plan_sha, "bytes": plan_bytes},
        }
        if ground_truth:
            truth_sha, truth_bytes = atomic_write_tensors(
                directory / GROUND_TRUTH_FILE, dict(ground_truth)
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
            "plan": plan.json_dict(),
            "info": _json_safe(info),
        }
        atomic_write_json(directory / "iteration.json", payload)
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
        directory = self.iteration_dir(iteration) / "scores"
        record_ids = torch.arange(scores.numel(), dtype=torch.int64) + iteration * scores.numel()
        digest, size = atomic_write_tensors(
            directory / f"{name}.safetensors",
            {"scores": scores.to(torch.float64), "record_ids": record_ids},
        )
        atomic_write_json(
            directory / f"{name}.json",
            {**_json_safe(meta), "name": name, "iteration": iteration, "sha256": digest},
        )
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
        meta = read_json(json_path)
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
        return read_json(path)

    def _read_iteration_file(
        self, iteration: int, name: str, device: torch.device | str
    ) -> dict[str, torch.Tensor]:
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
        try:
            return Records.from_tensor_dict(tensors, iteration, meta["n_envs"], meta["n_steps"])
        except KeyError as err:
            raise CorruptRunLogError(f"records of iteration {iteration}: {err}") from err

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

    def load_checkpoint(
        self, iteration: int, device: torch.device | str = "cpu"
    ) -> tuple[dict[str, torch.Tensor], dict[str, Any]]:
        """The (tensors, meta) of the state at the start of ``iteration``."""
        tensor_path, json_path = self._checkpoint_paths(iteration)
        if not json_path.exists():
            raise RunLogError(
                f"no checkpoint for the start of iteration {iteration} in {self.path} "
                f"(checkpoints: {self.checkpoints()})"
            )
        meta = read_json(json_path)
        if not tensor_path.exists():
            raise CorruptRunLogError(f"{tensor_path} is missing")
        return read_tensors(tensor_path, meta["sha256"], device), meta

    # ----------------------------------------------------------------- integrity
    def verify(self) -> VerifyReport:
        """Recompute every checksum; list corrupt files and uncommitted leftovers."""
        report = VerifyReport(iterations=self.iterations(), checkpoints=self.checkpoints())
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
                    expected = read_json(score_json).get("sha256")
                except CorruptRunLogError as err:
                    report.problems.append(str(err))
                    continue
                path = score_json.with_suffix(".safetensors")
                if not path.exists() or sha256_file(path) != expected:
                    report.problems.append(f"{path}: missing or checksum mismatch")
        for k in report.checkpoints:
            tensor_path, json_path = self._checkpoint_paths(k)
            try:
                meta = read_json(json_path)
            except CorruptRunLogError as err:
                report.problems.append(str(err))
                continue
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
        """The iteration to restart from: the newest checkpoint whose predecessor finished.

        Returns None when the run has no checkpoint yet (start from scratch).
        """
        committed = set(self.iterations())
        for k in reversed(self.checkpoints()):
            previous_recorded = k > 0 and self.retention.records(k - 1)
            if not previous_recorded or (k - 1) in committed:
                return k
        return None

    def discard_after(self, iteration: int) -> None:
        """Remove everything a killed run left beyond the restart point ``iteration``."""
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

    def apply_retention(self, newest_checkpoint: int) -> None:
        """Delete iterations beyond ``keep_last`` and checkpoints nothing needs any more.

        A checkpoint k is kept while iteration k (to replay it) or k-1 (to check its replay
        against the state that followed) is kept, and the newest one always (to resume).
        """
        if self.retention.record_every == 1 and self.retention.keep_last is None:
            return  # everything is kept
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
