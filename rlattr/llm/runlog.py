"""The run directory of language-model RL: every round can be replayed exactly from it.

Layout (tensors in safetensors, metadata in JSON, every write atomic, no pickle)::

    run.json                        format name and version, settings, package versions
    rounds/000003/batch.safetensors the round's pairs: ``input.<key>`` for every tensor of
                                    TRL's generation batch (token ids, masks, advantages,
                                    num_items_in_batch, old/ref log-probs when kept), and
                                    ``rewards``, ``start_logps`` (log-probs at θ_k),
                                    ``scores`` and ``keep`` when IIF ran
    rounds/000003/start.safetensors trainable parameters and optimiser state at θ_k
    rounds/000003/plan.safetensors  the update plan: rows of every micro-step (in order)
                                    and the torch RNG state at its start
    rounds/000003/round.json        checksums, per micro-step optimiser step, learning
                                    rates and accumulation, the round's statistics;
                                    written last (the commit marker)
    final.safetensors + final.json  trainable parameters when training ended
    lock.json                       the writer lock (``rlattr.record.io.LOCK_FILE``)

Round k's end state is round k+1's start state (or ``final``).

The same protections as the PPO run log (``rlattr.record.runlog``): one process writes a
run at a time (``create``, ``open_for_writing`` and every write take the directory's writer
lock; another process gets a ``RunLockedError`` naming the holder), ``run.json`` and each
``round.json`` are created exclusively (never overwritten), and every JSON file stores the
checksum of its content (``json_sha256``), checked on read (``CorruptRunLogError`` naming
the file) and by ``verify``. Runs written before (format 1.0: no ``format_minor``) still
read, their JSON unverified.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from rlattr.errors import CorruptRunLogError, FormatVersionError, RunLogError, UnsupportedError
from rlattr.llm.batch import SequenceBatch
from rlattr.record.io import (
    ProtectedRunDirectory,
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
from rlattr.versions import package_versions

FORMAT_NAME = "rlattr-llm-runlog"
FORMAT_VERSION = 1
# Minor version (``run.json["format_minor"]``, absent: 0). 1: every JSON file stores the
# checksum of its content (``JSON_CHECKSUM_KEY``); runs without it read unverified.
FORMAT_MINOR = 1
_INPUT, _PARAM, _OPTIM = "input.", "param.", "optim."


@dataclass(frozen=True)
class MicroStep:
    """One call of the trainer's loss: which rows, under which optimiser step and settings."""

    optimizer_step: int
    rows: torch.Tensor
    learning_rates: tuple[float, ...]
    accumulation: int
    rng_state: torch.Tensor
    cuda_rng_state: torch.Tensor | None = None
    """The model's CUDA generator state (dropout draws there) when the model is on CUDA."""


@dataclass
class RoundRecord:
    """Everything recorded about one round (as read back by ``LLMRunLog.read_round``)."""

    round: int
    inputs: dict[str, torch.Tensor]
    extras: dict[str, torch.Tensor]
    parameters: dict[str, torch.Tensor]
    optimizer_tensors: dict[str, torch.Tensor]
    optimizer_scalars: dict[str, dict[str, Any]]
    micro_steps: list[MicroStep]
    max_grad_norm: float
    stats: dict[str, Any] = field(default_factory=dict)

    def batch(self) -> SequenceBatch:
        """The round's pairs."""
        return SequenceBatch.from_inputs(self.inputs)

    def target_batch(self, prefix: str = "target.") -> SequenceBatch | None:
        """The validation completions the round's scores explain (None: batch target)."""
        if not any(name.startswith(prefix) for name in self.extras):
            return None
        return SequenceBatch.from_tensors(self.extras, prefix)

    def optimizer_steps(self) -> list[list[MicroStep]]:
        """Micro-steps grouped by the optimiser step they accumulate into, in order."""
        groups: list[list[MicroStep]] = []
        for step in self.micro_steps:
            if groups and groups[-1][0].optimizer_step == step.optimizer_step:
                groups[-1].append(step)
            else:
                groups.append([step])
        return groups


@dataclass
class LLMVerifyReport:
    """Outcome of ``LLMRunLog.verify``.

    Attributes:
        rounds: the committed rounds.
        problems: corrupt or missing files, and rounds missing between committed ones; any
            problem makes ``ok`` false.
        leftovers: uncommitted files (a round interrupted before its ``round.json``).
        metadata_verified: whether the JSON files carry checksums (format 1.1 on); False
            for runs written before, whose JSON is only parsed.
    """

    rounds: list[int] = field(default_factory=list)
    problems: list[str] = field(default_factory=list)
    leftovers: list[str] = field(default_factory=list)
    metadata_verified: bool = True

    @property
    def ok(self) -> bool:
        return not self.problems


def capture_optimizer(optimizer: Any) -> tuple[dict[str, torch.Tensor], dict[str, dict]]:
    """An optimiser's per-parameter state as (tensors, JSON scalars), keyed by position."""
    tensors: dict[str, torch.Tensor] = {}
    scalars: dict[str, dict[str, Any]] = {}
    for index, state in optimizer.state_dict()["state"].items():
        for key, value in state.items():
            if isinstance(value, torch.Tensor):
                tensors[f"{index}.{key}"] = value.detach().clone()
            else:
                scalars.setdefault(str(index), {})[key] = value
    return tensors, scalars


def restore_optimizer(
    optimizer: Any, tensors: dict[str, torch.Tensor], scalars: dict[str, dict[str, Any]]
) -> None:
    """Put a captured state back (hyperparameters stay the optimiser's own)."""
    state: dict[int, dict[str, Any]] = {}
    for name, value in tensors.items():
        index, _, key = name.partition(".")
        state.setdefault(int(index), {})[key] = value
    for index, values in scalars.items():
        state.setdefault(int(index), {}).update(values)
    full = optimizer.state_dict()
    full["state"] = state
    optimizer.load_state_dict(full)


def _name(index: int) -> str:
    return f"{index:06d}"


class LLMRunLog(ProtectedRunDirectory):
    """Reader and writer of a language-model run directory.

    ``LLMRunLog(path)`` reads (no lock). ``create`` and ``open_for_writing`` hold the
    directory's writer lock, and every write takes it first (see ``acquire_writer``).
    """

    def __init__(self, path: str | Path):
        self.path = Path(path)
        self._writer_lock: WriterLock | None = None
        run_json = self.path / "run.json"
        if not run_json.exists():
            raise RunLogError(f"{self.path} is not an rlattr LLM run directory (no run.json)")
        stored = read_json(run_json)
        if stored.get("format") != FORMAT_NAME:
            raise RunLogError(f"{run_json} is not an rlattr LLM run log")
        if stored.get("format_version") != FORMAT_VERSION:
            raise FormatVersionError(
                f"{run_json} has format version {stored.get('format_version')}; this "
                f"rlattr reads version {FORMAT_VERSION}"
            )
        self._meta = self._open_run_json(run_json, stored, stored.get("format_minor", 0))

    @property
    def meta(self) -> dict[str, Any]:
        """``run.json`` (without its checksum); a ``CorruptRunLogError`` naming the file when
        it does not match its checksum."""
        self._require_intact_run_json()
        return self._meta

    # -- the writer lock -------------------------------------------------------------------

    @classmethod
    def open_for_writing(cls, path: str | Path) -> LLMRunLog:
        """An existing run, opened to write to it, holding its writer lock
        (``RunLockedError`` naming the holder when another process holds it)."""
        log = cls(path)
        log.acquire_writer()
        return log

    @classmethod
    def create(cls, path: str | Path, settings: dict[str, Any]) -> LLMRunLog:
        """Start a run directory, holding its writer lock. The lock is taken first, so a
        directory another process writes is refused naming that process
        (``RunLockedError``); a run that exists is refused (runs are never overwritten):
        ``run.json`` is created only where none exists, all at once."""
        path = Path(path)
        payload = with_json_checksum(
            {
                "format": FORMAT_NAME,
                "format_version": FORMAT_VERSION,
                "format_minor": FORMAT_MINOR,
                "created": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
                "versions": package_versions(),
                "settings": settings,
            }
        )
        lock = acquire_writer_lock(path)
        try:
            if not atomic_create_json(path / "run.json", payload):
                raise RunLogError(f"{path} already holds a run; choose a new run directory")
            log = cls(path)
        except BaseException:
            lock.release()
            raise
        log._writer_lock = lock
        return log

    def round_dir(self, index: int) -> Path:
        return self.path / "rounds" / _name(index)

    def rounds(self) -> list[int]:
        """Committed rounds (those whose ``round.json`` exists), in order."""
        root = self.path / "rounds"
        if not root.exists():
            return []
        return sorted(int(d.name) for d in root.iterdir() if (d / "round.json").exists())

    # -- writing ---------------------------------------------------------------------------

    def write_start(
        self,
        index: int,
        inputs: dict[str, Any],
        extras: dict[str, torch.Tensor],
        parameters: dict[str, torch.Tensor],
        optimizer: Any,
    ) -> None:
        """Record a round's pairs and its starting state (before any of its updates)."""
        self.acquire_writer()
        self._refuse_committed(index)
        tensors: dict[str, torch.Tensor] = {}
        for key, value in inputs.items():
            if value is None:
                continue
            if not isinstance(value, torch.Tensor):
                raise UnsupportedError(f"cannot record batch value {key!r} of type {type(value)}")
            tensors[_INPUT + key] = value
        tensors.update(extras)
        directory = self.round_dir(index)
        optim_tensors, optim_scalars = capture_optimizer(optimizer)
        state = {_PARAM + n: p.detach() for n, p in parameters.items()}
        state.update({_OPTIM + n: t for n, t in optim_tensors.items()})
        batch_sha, _ = atomic_write_tensors(directory / "batch.safetensors", tensors)
        start_sha, _ = atomic_write_tensors(directory / "start.safetensors", state)
        self._pending = {
            "batch.safetensors": batch_sha,
            "start.safetensors": start_sha,
            "optimizer_scalars": optim_scalars,
        }

    def _refuse_committed(self, index: int, committed: bool | None = None) -> None:
        """A ``RunLogError`` when round ``index`` is committed (``committed`` None: look)."""
        if committed is None:
            committed = (self.round_dir(index) / "round.json").exists()
        if committed:
            raise RunLogError(
                f"round {index} is already committed in {self.path}; runs are never overwritten"
            )

    def commit_round(
        self,
        index: int,
        micro_steps: list[MicroStep],
        max_grad_norm: float,
        stats: dict[str, Any],
    ) -> None:
        """Write the round's update plan and its commit marker (after its last update)."""
        self.acquire_writer()
        self._refuse_committed(index)
        directory = self.round_dir(index)
        rows = [step.rows.to("cpu", torch.int64) for step in micro_steps]
        counts = torch.tensor([len(r) for r in rows], dtype=torch.int64)
        plan = {
            "rows": torch.cat(rows) if rows else torch.zeros(0, dtype=torch.int64),
            "row_counts": counts,
            "rng_states": torch.stack([s.rng_state for s in micro_steps])
            if micro_steps
            else torch.zeros(0, dtype=torch.uint8),
        }
        if micro_steps and all(s.cuda_rng_state is not None for s in micro_steps):
            plan["cuda_rng_states"] = torch.stack([s.cuda_rng_state.cpu() for s in micro_steps])
        plan_sha, _ = atomic_write_tensors(directory / "plan.safetensors", plan)
        pending = getattr(self, "_pending", {})
        created = atomic_create_json(
            directory / "round.json",
            self._json(
                {
                    "round": index,
                    "sha256": {
                        "batch.safetensors": pending.get("batch.safetensors"),
                        "start.safetensors": pending.get("start.safetensors"),
                        "plan.safetensors": plan_sha,
                    },
                    "optimizer_scalars": pending.get("optimizer_scalars", {}),
                    "max_grad_norm": max_grad_norm,
                    "micro_steps": [
                        {
                            "optimizer_step": s.optimizer_step,
                            "learning_rates": list(s.learning_rates),
                            "accumulation": s.accumulation,
                        }
                        for s in micro_steps
                    ],
                    "stats": stats,
                }
            ),
        )
        self._refuse_committed(index, committed=not created)

    def write_final(self, parameters: dict[str, torch.Tensor]) -> None:
        """The trainable parameters when training ended (a later ``train`` replaces them)."""
        self.acquire_writer()
        sha, _ = atomic_write_tensors(
            self.path / "final.safetensors", {n: p.detach() for n, p in parameters.items()}
        )
        atomic_write_json(self.path / "final.json", self._json({"sha256": sha}))

    # -- reading ---------------------------------------------------------------------------

    def read_round(self, index: int, device: torch.device | str = "cpu") -> RoundRecord:
        self._require_intact_run_json()
        directory = self.round_dir(index)
        if not (directory / "round.json").exists():
            raise RunLogError(
                f"round {index} is not committed in {self.path}; have {self.rounds()}"
            )
        meta = self._read_meta_json(directory / "round.json")
        sha = meta["sha256"]
        batch = read_tensors(directory / "batch.safetensors", sha["batch.safetensors"], device)
        start = read_tensors(directory / "start.safetensors", sha["start.safetensors"], device)
        plan = read_tensors(directory / "plan.safetensors", sha["plan.safetensors"])
        rows = torch.split(plan["rows"], plan["row_counts"].tolist())
        micro_steps = [
            MicroStep(
                optimizer_step=m["optimizer_step"],
                rows=r,
                learning_rates=tuple(m["learning_rates"]),
                accumulation=m["accumulation"],
                rng_state=plan["rng_states"][i].clone(),  # set_rng_state needs its own storage
                cuda_rng_state=plan["cuda_rng_states"][i].clone()
                if "cuda_rng_states" in plan
                else None,
            )
            for i, (m, r) in enumerate(zip(meta["micro_steps"], rows, strict=True))
        ]
        return RoundRecord(
            round=index,
            inputs={k[len(_INPUT) :]: v for k, v in batch.items() if k.startswith(_INPUT)},
            extras={k: v for k, v in batch.items() if not k.startswith(_INPUT)},
            parameters={k[len(_PARAM) :]: v for k, v in start.items() if k.startswith(_PARAM)},
            optimizer_tensors={
                k[len(_OPTIM) :]: v for k, v in start.items() if k.startswith(_OPTIM)
            },
            optimizer_scalars=meta["optimizer_scalars"],
            micro_steps=micro_steps,
            max_grad_norm=meta["max_grad_norm"],
            stats=meta.get("stats", {}),
        )

    def end_parameters(
        self, index: int, device: torch.device | str = "cpu"
    ) -> dict[str, torch.Tensor]:
        """Trainable parameters after round ``index`` (next round's start, or final)."""
        self._require_intact_run_json()
        following = self.round_dir(index + 1)
        if (following / "round.json").exists():
            sha = self._read_meta_json(following / "round.json")["sha256"]["start.safetensors"]
            start = read_tensors(following / "start.safetensors", sha, device)
            return {k[len(_PARAM) :]: v for k, v in start.items() if k.startswith(_PARAM)}
        if (self.path / "final.json").exists():
            sha = self._read_meta_json(self.path / "final.json")["sha256"]
            return read_tensors(self.path / "final.safetensors", sha, device)
        raise RunLogError(f"no end state of round {index} in {self.path}")

    # -- integrity -------------------------------------------------------------------------

    def verify(self) -> LLMVerifyReport:
        """Check every file the run wrote: each JSON file against its own checksum (when the
        run stores them: ``metadata_verified``) and each safetensors file against the
        checksum its JSON file recorded; list rounds missing between committed ones and
        uncommitted leftovers."""
        report = LLMVerifyReport(rounds=self.rounds(), metadata_verified=self.metadata_checksummed)
        if self._run_json_problem is not None:
            report.problems.append(self._run_json_problem)
        tensor_files: list[tuple[Path, Any]] = []
        for k in report.rounds:
            try:
                meta = self._read_meta_json(self.round_dir(k) / "round.json")
            except CorruptRunLogError as err:
                report.problems.append(str(err))
                continue
            for name, sha in meta.get("sha256", {}).items():
                tensor_files.append((self.round_dir(k) / name, sha))
        final_json = self.path / "final.json"
        if final_json.exists():
            try:
                tensor_files.append(
                    (
                        self.path / "final.safetensors",
                        self._read_meta_json(final_json).get("sha256"),
                    )
                )
            except CorruptRunLogError as err:
                report.problems.append(str(err))
        elif (self.path / "final.safetensors").exists():
            report.leftovers.append(str(self.path / "final.safetensors"))
        for path, sha in tensor_files:
            if not path.exists():
                report.problems.append(f"{path}: missing")
            elif sha is None:
                report.problems.append(f"{path}: no checksum recorded")
            elif sha256_file(path) != sha:
                report.problems.append(f"{path}: checksum mismatch (truncated or altered)")
        committed = set(report.rounds)
        gaps = [k for k in range(max(committed, default=0)) if k not in committed]
        for k in gaps:
            report.problems.append(
                f"{self.round_dir(k)}: round {k} is not committed although later ones are "
                "(deleted or damaged): it cannot be replayed"
            )
        root = self.path / "rounds"
        if root.exists():
            gap_dirs = {self.round_dir(k) for k in gaps}  # reported as problems
            for d in sorted(root.iterdir()):
                if not (d / "round.json").exists() and d not in gap_dirs:
                    report.leftovers.append(str(d))
        return report
