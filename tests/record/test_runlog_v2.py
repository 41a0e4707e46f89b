"""Run-log format 2: narrow dtypes, derived minibatches, sparse checkpoints rebuilt by exact
replay, format 1 still readable, and clean errors when what a rebuild needs is damaged.

The ground truth for "what training produced" is a format-1 run of the same model and seed:
recording does not perturb training, and format 1 keeps every checkpoint full.
"""

from __future__ import annotations

import json
from dataclasses import replace
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from rlattr import IIF, AttributedPPO, Intervention, Retention, ReturnTarget, RunLog
from rlattr.errors import CorruptRunLogError, RunLogError
from rlattr.record import build_policy, load_iteration, replay
from rlattr.record.io import atomic_write_tensors, read_tensors
from rlattr.record.plan import DERIVED, UpdatePlan
from rlattr.record.runlog import writing_format

SMALL = {"n_steps": 32, "device": "cpu", "seed": 0}
# Format 2's default checkpoint spacing is what these tests study (tests/conftest.py).
pytestmark = pytest.mark.sparse_checkpoints


def _state(tensors: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Policy and optimiser tensors (what a rebuilt checkpoint holds; no RNG state)."""
    return {k: v for k, v in tensors.items() if k.startswith(("policy.", "optim."))}


def _assert_same_state(got: dict[str, torch.Tensor], want: dict[str, torch.Tensor]) -> None:
    got, want = _state(got), _state(want)
    assert got.keys() == want.keys()
    for name in want:
        assert got[name].dtype == want[name].dtype, name
        assert torch.equal(got[name], want[name]), name


def _train_both(tmp_path: Path, iterations: int, checkpoint_every: int, **kwargs) -> tuple:
    """The same run recorded in format 1 (every checkpoint full) and format 2."""
    logs = []
    for version in (1, 2):
        run_dir = tmp_path / f"v{version}"
        with writing_format(version):
            model = AttributedPPO(
                "MlpPolicy",
                "CartPole-v1",
                run_dir=run_dir,
                retention=Retention(checkpoint_every=checkpoint_every),
                **SMALL,
                **kwargs,
            )
        model.learn(iterations * 32)
        logs.append(RunLog(run_dir))
    return logs[0], logs[1]


CASES = {
    "adam-minibatches": {"batch_size": 8, "n_epochs": 2},
    "sgd": {
        "batch_size": 16,
        "n_epochs": 2,
        "policy_kwargs": {"optimizer_class": torch.optim.SGD},
        "learning_rate": 0.01,
    },
    "iif-as-drawn": {
        "batch_size": 8,
        "n_epochs": 2,
        "iif": IIF(rule="random", fraction=0.3, seed=1, minibatching="as_drawn"),
    },
    "iif-recut": {
        "batch_size": 8,
        "n_epochs": 2,
        "iif": IIF(rule="neg_bottom", fraction=0.5, minibatching="recut"),
    },
    # A learning-rate schedule and target_kl early stops (steps per iteration vary).
    "schedule-target-kl": {
        "batch_size": 8,
        "n_epochs": 4,
        "learning_rate": lambda progress: 3e-3 * progress,
        "target_kl": 0.002,
    },
    # Down-weighted records: the plan stores fractional loss weights.
    "weighted-intervention": {
        "batch_size": 8,
        "n_epochs": 2,
        "intervention": Intervention(target=ReturnTarget(), budget=0.25, weight=0.5),
    },
}


@pytest.mark.parametrize("case", list(CASES))
def test_every_iteration_of_a_sparse_run_replays_bit_identically(tmp_path: Path, case: str) -> None:
    v1, v2 = _train_both(tmp_path, iterations=7, checkpoint_every=3, **CASES[case])
    assert v1.format_version == 1 and v2.format_version == 2
    assert v2.checkpoints() == v1.checkpoints() == list(range(8))
    full = [k for k in v2.checkpoints() if v2.is_full_checkpoint(k)]
    assert full == [0, 3, 6, 7]  # the grid, and the newest (resume starts there)
    assert not (v2.path / "checkpoints" / "000002.safetensors").exists()
    # A fresh log reaches the farthest sparse checkpoint through two replays at once.
    tensors, meta = RunLog(v2.path).load_checkpoint(5)
    assert meta["rebuilt"] and meta["counters"] == v1.load_checkpoint(5)[1]["counters"]
    _assert_same_state(tensors, v1.load_checkpoint(5)[0])
    # Every iteration, loaded in order as the analyses load them, starts from what
    # training had and replays to what training produced.
    policy = build_policy(v2)
    for k in v2.iterations():
        data = load_iteration(v2, k)
        _assert_same_state(data.start_tensors, v1.load_checkpoint(k)[0])
        expected_plan = v1.load_plan(k)
        for name in expected_plan.tensor_names():
            assert torch.equal(getattr(data.plan, name), getattr(expected_plan, name)), name
            assert getattr(data.plan, name).dtype == getattr(expected_plan, name).dtype
        replay(data, policy)
        for name, value in policy.state_dict().items():
            assert torch.equal(value, v1.load_checkpoint(k + 1)[0]["policy." + name]), (k, name)
    assert v2.verify().ok and v1.verify().ok


@pytest.mark.parametrize("case", ["iif-as-drawn", "iif-recut"])
def test_minibatches_around_dropped_records_are_cut_again(tmp_path: Path, case: str) -> None:
    v1, v2 = _train_both(tmp_path, iterations=3, checkpoint_every=2, **CASES[case])
    plan = v2.load_plan(2)
    assert not bool(plan.keep_mask.all())  # the filter dropped records
    assert v2.iteration_meta(2)["plan"]["minibatches"] == DERIVED
    assert "minibatch_indices" not in load_file(v2.iteration_dir(2) / "plan.safetensors")
    assert torch.equal(plan.minibatch_indices, v1.load_plan(2).minibatch_indices)
    assert torch.equal(plan.minibatch_sizes, v1.load_plan(2).minibatch_sizes)


def test_minibatches_that_are_not_a_cut_are_stored(tmp_path: Path) -> None:
    _, v2 = _train_both(tmp_path, iterations=1, checkpoint_every=2, batch_size=8, n_epochs=2)
    plan = v2.load_plan(0)
    shuffled = replace(plan, minibatch_indices=plan.minibatch_indices.flip(0))
    tensors, meta = shuffled.stored_tensor_dict()
    assert "minibatches" not in meta and "minibatch_indices" in tensors
    path = tmp_path / "plan.safetensors"
    digest, _ = atomic_write_tensors(path, tensors, narrow=True)
    back = UpdatePlan.from_stored(meta, read_tensors(path, digest))
    assert back.minibatch_indices.dtype == torch.int64
    assert torch.equal(back.minibatch_indices, shuffled.minibatch_indices)


def test_cached_rebuild_becomes_a_full_checkpoint(tmp_path: Path) -> None:
    v1, v2 = _train_both(tmp_path, iterations=4, checkpoint_every=4, batch_size=16, n_epochs=1)
    log = RunLog(v2.path, cache_checkpoints=True)
    assert not log.is_full_checkpoint(2)
    tensors, _ = log.load_checkpoint(2)
    assert log.is_full_checkpoint(2)
    # Full now, but made by replay: not an independent check of one (rlattr replay).
    assert not log.is_logged_checkpoint(2) and log.is_logged_checkpoint(4)
    _assert_same_state(RunLog(v2.path).load_checkpoint(2)[0], v1.load_checkpoint(2)[0])
    _assert_same_state(tensors, v1.load_checkpoint(2)[0])
    assert log.verify().ok
    assert RunLog(v2.path).load_checkpoint(3, cache=False)[1]["rebuilt"]
    assert not RunLog(v2.path).is_full_checkpoint(3)


def test_format_1_run_is_written_as_before_and_read(tmp_path: Path) -> None:
    v1, _ = _train_both(tmp_path, iterations=3, checkpoint_every=2, batch_size=16, n_epochs=2)
    meta = json.loads((v1.path / "run.json").read_text())
    assert meta["format_version"] == 1 and "checkpoint_every" not in meta["retention"]
    plan_file = load_file(v1.iteration_dir(1) / "plan.safetensors")
    assert plan_file["epoch_permutations"].dtype == torch.int64
    assert plan_file["minibatch_indices"].dtype == torch.int64
    assert "record_ids" in load_file(v1.iteration_dir(1) / "records.safetensors")
    assert all(v1.is_full_checkpoint(k) for k in v1.checkpoints())
    assert all((v1.path / "checkpoints" / f"{k:06d}.safetensors").exists() for k in range(4))
    policy = build_policy(v1)
    for k in v1.iterations():
        replay(load_iteration(v1, k), policy)
        for name, value in policy.state_dict().items():
            assert torch.equal(value, v1.load_checkpoint(k + 1)[0]["policy." + name])


def test_format_2_stores_indices_narrow_and_leaves_out_derivable_ones(tmp_path: Path) -> None:
    v1, v2 = _train_both(tmp_path, iterations=2, checkpoint_every=2, batch_size=8, n_epochs=2)
    plan_file = load_file(v2.iteration_dir(1) / "plan.safetensors")
    assert plan_file["epoch_permutations"].dtype == torch.uint8  # 32 records
    assert "minibatch_indices" not in plan_file  # the permutations cut again
    records_file = load_file(v2.iteration_dir(1) / "records.safetensors")
    assert not {"record_ids", "advantages", "returns"} & records_file.keys()
    assert v2.iteration_meta(1)["derived_records"] == ["advantages", "returns"]
    assert records_file["episode_starts"].dtype == torch.bool
    records, expected = v2.load_records(1), v1.load_records(1)
    assert torch.equal(records.record_ids, torch.arange(32, 64))
    for name in ("observations", "actions", "rewards", "episode_starts", "values", "log_probs"):
        assert getattr(records, name).dtype == getattr(expected, name).dtype, name
        assert torch.equal(getattr(records, name), getattr(expected, name)), name
    for name in ("advantages", "returns"):  # GAE again, bit for bit
        got, want = getattr(records, name), getattr(expected, name)
        assert torch.equal(got.view(torch.int32), want.view(torch.int32)), name


def test_rewritten_advantages_are_stored(tmp_path: Path) -> None:
    """Advantages that GAE would not give back (rewritten by something) stay in the file."""
    _, v2 = _train_both(tmp_path, iterations=1, checkpoint_every=2, batch_size=8, n_epochs=1)
    records = v2.load_records(0)
    changed = replace(records, iteration=5, advantages=records.advantages + 1.0)
    v2.write_iteration(changed, v2.load_plan(0), {})
    assert "derived_records" not in v2.iteration_meta(5)
    assert torch.equal(v2.load_records(5).advantages, changed.advantages)


@pytest.mark.parametrize(
    ("values", "stored"),
    [
        (torch.arange(256), torch.uint8),
        (torch.arange(257), torch.uint16),
        (torch.arange(65_537), torch.uint32),
        (torch.tensor([0, 2**32]), torch.int64),
        (torch.tensor([-3, 100]), torch.int8),
        (torch.tensor([-1000, 7]), torch.int16),
        (torch.tensor([0.0, 1.0, 1.0]), torch.bool),
        (torch.tensor([0.0, 2.0, 255.0]), torch.uint8),
        (torch.tensor([0.1, 2.0]), torch.float32),
        (torch.tensor([0.1, 2.0], dtype=torch.float32).double(), torch.float32),
        (torch.tensor([0.1], dtype=torch.float64), torch.float64),
        (torch.tensor([True, False]), torch.bool),
        (torch.zeros(0, dtype=torch.int64), torch.int64),
    ],
)
def test_narrow_round_trip(tmp_path: Path, values: torch.Tensor, stored: torch.dtype) -> None:
    path = tmp_path / "t.safetensors"
    digest, _ = atomic_write_tensors(path, {"x": values}, narrow=True)
    assert load_file(path)["x"].dtype == stored
    back = read_tensors(path, digest)["x"]
    assert back.dtype == values.dtype
    assert torch.equal(back, values)


def test_narrow_keeps_every_bit(tmp_path: Path) -> None:
    """-0.0, subnormals and NaN payloads survive: the dtype is chosen by a bitwise round trip
    (float16 holds -0.0 but flushes the smallest float32 subnormal and drops NaN payloads)."""

    def from_bits(*bits: int) -> torch.Tensor:
        return torch.tensor(bits, dtype=torch.int32).view(torch.float32)

    values = {
        "signed_zero": (torch.tensor([0.0, -0.0, 1.0]), torch.float16),
        "subnormal": (from_bits(1, 0), torch.float32),
        "nan_payload": (from_bits(0x7FC00001, 0), torch.float32),
    }
    for name, (value, stored) in values.items():
        path = tmp_path / f"{name}.safetensors"
        atomic_write_tensors(path, {"x": value}, narrow=True)
        assert load_file(path)["x"].dtype == stored, name
        back = read_tensors(path)["x"]
        assert torch.equal(back.view(torch.int32), value.view(torch.int32)), name


def test_corrupt_or_missing_inputs_of_a_rebuild_are_named(tmp_path: Path) -> None:
    _, v2 = _train_both(tmp_path, iterations=4, checkpoint_every=4, batch_size=16, n_epochs=1)
    records = v2.iteration_dir(1) / "records.safetensors"
    records.write_bytes(records.read_bytes()[:-9])
    with pytest.raises(CorruptRunLogError, match="checksum"):
        RunLog(v2.path).load_checkpoint(3)
    RunLog(v2.path).load_checkpoint(1)  # what precedes the damage still loads
    (v2.iteration_dir(0) / "iteration.json").unlink()
    with pytest.raises(CorruptRunLogError, match="replaying iteration 0, which is not recorded"):
        RunLog(v2.path).load_checkpoint(2)
    report = RunLog(v2.path).verify()
    assert not report.ok
    assert any("000001.json: rebuilt by replaying iteration 0" in p for p in report.problems)
    (v2.path / "checkpoints" / "000000.safetensors").unlink()
    with pytest.raises(CorruptRunLogError, match=r"000000\.safetensors is missing"):
        RunLog(v2.path).load_checkpoint(0)


def test_resume_continues_a_sparse_run_exactly(tmp_path: Path) -> None:
    """Stop after 3 iterations, resume for 3 more: the first part is the uninterrupted run's,
    and replays across the restart land bit for bit on the full checkpoints after it."""
    kwargs = {"batch_size": 16, "n_epochs": 1, "retention": Retention(checkpoint_every=2)}
    straight = tmp_path / "straight"
    AttributedPPO("MlpPolicy", "CartPole-v1", run_dir=straight, **SMALL, **kwargs).learn(6 * 32)
    split = tmp_path / "split"
    AttributedPPO("MlpPolicy", "CartPole-v1", run_dir=split, **SMALL, **kwargs).learn(3 * 32)
    assert RunLog(split).resume_point() == 3 and RunLog(split).is_full_checkpoint(3)
    resumed = AttributedPPO(
        "MlpPolicy", "CartPole-v1", run_dir=split, resume=True, **SMALL, **kwargs
    )
    resumed.learn(3 * 32, reset_num_timesteps=False)
    a, b = RunLog(straight), RunLog(split)
    assert b.iterations() == list(range(6)) and b.verify().ok
    assert [b.is_full_checkpoint(k) for k in range(7)] == [1, 0, 1, 0, 1, 0, 1]
    for k in range(4):  # before the restart: the uninterrupted run's states
        _assert_same_state(b.load_checkpoint(k)[0], a.load_checkpoint(k)[0])
    policy = build_policy(b)
    for k in (3, 5):  # from a rebuilt start to the full checkpoint after it
        replay(load_iteration(b, k), policy)
        for name, value in policy.state_dict().items():
            assert torch.equal(value, b.load_checkpoint(k + 1)[0]["policy." + name]), (k, name)


def test_a_kill_while_a_checkpoint_turns_sparse_leaves_a_leftover_that_resume_removes(
    tmp_path: Path,
) -> None:
    """``_make_sparse`` rewrites the JSON, then deletes the tensors: a kill between the two
    leaves the tensor file of a sparse checkpoint, which verify names and resume deletes."""
    kwargs = {"batch_size": 16, "n_epochs": 1, "retention": Retention(checkpoint_every=4)}
    run_dir = tmp_path / "run"
    AttributedPPO("MlpPolicy", "CartPole-v1", run_dir=run_dir, **SMALL, **kwargs).learn(3 * 32)
    log = RunLog(run_dir)
    assert not log.is_full_checkpoint(2)
    full = log._checkpoint_paths(0)[0]  # any tensor file stands for the undeleted one
    leftover = log._checkpoint_paths(2)[0]
    leftover.write_bytes(full.read_bytes())
    report = log.verify()
    assert report.ok and report.leftovers == [str(leftover)]
    resumed = AttributedPPO(
        "MlpPolicy", "CartPole-v1", run_dir=run_dir, resume=True, **SMALL, **kwargs
    )
    assert not leftover.exists()
    resumed.learn(32, reset_num_timesteps=False)
    report = RunLog(run_dir).verify()
    assert report.ok and not report.leftovers


def test_a_sparse_checkpoint_is_rebuilt_on_the_device_that_trained(tmp_path: Path) -> None:
    """Replay is bit-exact only on the training device: a run recorded on CUDA is not
    silently rebuilt on the CPU (on a machine without CUDA: a clear error)."""
    kwargs = {"batch_size": 16, "n_epochs": 1, "retention": Retention(checkpoint_every=4)}
    run_dir = tmp_path / "run"
    AttributedPPO("MlpPolicy", "CartPole-v1", run_dir=run_dir, **SMALL, **kwargs).learn(3 * 32)
    log = RunLog(run_dir)
    assert not log.is_full_checkpoint(1)
    log.load_checkpoint(1)  # trained on the CPU: rebuilt here
    log.meta["algorithm"]["device"] = "cuda:0"  # as if trained on a GPU
    if torch.cuda.is_available():
        tensors, _ = log.load_checkpoint(1)
        assert all(t.device.type == "cpu" for t in tensors.values())
    else:
        with pytest.raises(RunLogError, match="on the device the run trained on"):
            log.load_checkpoint(1)


def test_default_spacing_is_fixed_per_run_from_its_rollout(tmp_path: Path) -> None:
    """About one full checkpoint per 8192 environment steps, stored in run.json."""
    assert Retention().resolved({"n_steps": 32, "n_envs": 8}).checkpoint_every == 32
    assert Retention().resolved({"n_steps": 2048, "n_envs": 1}).checkpoint_every == 4
    assert Retention().resolved({"n_steps": 2048, "n_envs": 16}).checkpoint_every == 1
    assert (
        Retention(checkpoint_every=3).resolved({"n_steps": 32, "n_envs": 8}).checkpoint_every == 3
    )
    AttributedPPO("MlpPolicy", "CartPole-v1", run_dir=tmp_path / "r", **SMALL).learn(32)
    stored = json.loads((tmp_path / "r" / "run.json").read_text())["retention"]
    assert stored["checkpoint_every"] == 256 and RunLog(tmp_path / "r").retention == Retention(
        checkpoint_every=256
    )


def test_bytes_reported_written_are_the_bytes_on_disk(tmp_path: Path) -> None:
    """What the board shows as the run log's size (the writer's count) is net of the
    tensors sparse checkpoints gave back: every safetensors file on disk but checkpoint 0,
    which is written before training, outside the writer."""
    model = AttributedPPO(
        "MlpPolicy",
        "CartPole-v1",
        run_dir=tmp_path / "r",
        retention=Retention(checkpoint_every=3),
        batch_size=16,
        n_epochs=1,
        **SMALL,
    )
    model.learn(7 * 32)
    on_disk = sum(p.stat().st_size for p in (tmp_path / "r").rglob("*.safetensors"))
    first = (tmp_path / "r" / "checkpoints" / "000000.safetensors").stat().st_size
    assert model._writer.bytes_written == on_disk - first
