"""Where trials run: ``local`` (one after another in this process) or ``ray`` (Ray tasks).

A backend takes trial jobs and yields one ``Outcome`` per job as each finishes, in the
order they finish. Both retry a failed trial up to ``retries`` more times:

- ``ray``: one core task per trial (``num_cpus=1``). ``max_retries`` re-runs a trial whose
  worker died (killed, out of memory, ``os._exit``); ``retry_exceptions=True`` also re-runs
  one that raised (Ray retries only crashes otherwise). Without ``address`` it starts a
  local Ray instance on this machine's cores (no dashboard, no usage report) that listens
  on the loopback interface only (``loopback_only``); with one it joins that cluster,
  whose workers must import the same rlattr and find preset files at the same paths
  (shipped presets by name need nothing). Without a shared filesystem the driver writes
  each result file from the result the task returns; the run directories (TensorBoard
  events) then stay on the node that ran the trial.
- ``local``: a loop in this process with the same retry count for exceptions. A crash of
  the process ends the sweep; running it again resumes (finished trials are skipped).
"""

from __future__ import annotations

import contextlib
import importlib.util
import ipaddress
import logging
import os
import socket
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from typing import Any

from rlattr.sweep.spec import SweepError
from rlattr.sweep.trial import TrialJob

TrialFn = Callable[[TrialJob], dict[str, Any]]
# Ray's shared-memory object store holds only the trials' small result dicts: keep it
# small on a shared machine (Ray's default takes 30 % of the memory).
_OBJECT_STORE_BYTES = 200 * 1024**2
# Ray's switch between the machine's network address and the loopback address as the node
# address of a local instance (named for macOS and Windows, where loopback is the default).
RAY_CLUSTER_ADDRESS_VARIABLE = "RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER"


@dataclass(frozen=True)
class Outcome:
    """How one trial ended: its result (``status`` done) or the last attempt's error."""

    job: TrialJob
    payload: dict[str, Any] | None
    error: str | None = None

    @property
    def ok(self) -> bool:
        return self.error is None


def ray_available() -> bool:
    """Whether Ray is installed (the optional extra ``sweep``)."""
    return importlib.util.find_spec("ray") is not None


def init_ray(address: str | None = None, workers: int | None = None) -> None:
    """Start a local Ray instance on ``workers`` cores, or join the cluster at ``address``.

    Ray reports usage statistics over the network unless told not to: it is told not to
    (set ``RAY_USAGE_STATS_ENABLED`` yourself to decide otherwise).
    """
    if not ray_available():
        raise SweepError(
            "the ray backend needs Ray: pip install 'rlattr[sweep]', or use --backend local"
        )
    import ray

    os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")
    if address is not None:
        _check_reachable(address)
        try:
            ray.init(address=address, logging_level=logging.WARNING, log_to_driver=False)
        except ConnectionError as err:
            raise SweepError(
                f"no Ray cluster answers at {address!r} ({err}); start one with "
                "`ray start --head` or leave --address out to run on this machine"
            ) from err
        return
    # Ray announces on every start that it keeps token authentication on (a notice, not a
    # problem): the local default backend stays quiet about it; --address keeps it.
    notice = logging.getLogger("ray._private.authentication.authentication_token_setup")
    level = notice.level
    notice.setLevel(logging.ERROR)
    try:
        _init_local(workers)
    finally:
        notice.setLevel(level)


def _init_local(workers: int | None) -> None:
    import ray

    with loopback_only():
        ray.init(
            num_cpus=workers or os.cpu_count() or 1,
            include_dashboard=False,
            object_store_memory=_OBJECT_STORE_BYTES,
            logging_level=logging.WARNING,
            # Trials print nothing; Ray's own worker notices would break the progress
            # display (a failure reaches the driver as the task's exception, with its
            # traceback).
            log_to_driver=False,
        )
    node = ray.util.get_node_ip_address()
    if not ipaddress.ip_address(node.strip("[]")).is_loopback:
        ray.shutdown()
        raise SweepError(
            f"the local Ray instance took the network address {node}, so its servers would "
            "be reachable from other machines; use --backend local, or start Ray yourself "
            "and give its --address"
        )


@contextlib.contextmanager
def loopback_only() -> Iterator[None]:
    """A local Ray started inside listens on the loopback interface only.

    Where a Ray server listens follows the node's address: with the loopback address the
    GCS server, raylet, workers and agents listen on 127.0.0.1; with the machine's network
    address (Ray's choice on Linux) they listen on every interface (``*``, ``0.0.0.0``),
    ``include_dashboard=False`` notwithstanding. ``_node_ip_address="127.0.0.1"`` does not
    help: Ray turns a loopback address back into the network one. Ray takes loopback when
    ``RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER`` is off (the macOS and Windows default): set here
    for the processes Ray starts, and in the driver's copy of the constant Ray read when
    it was imported; both are restored afterwards, so that joining a cluster later in the
    same process still announces the network address.
    """
    try:  # Ray's own module: where another Ray keeps it elsewhere, the caller's check refuses
        from ray._private import ray_constants
    except ImportError:
        ray_constants = None
    saved_environment = os.environ.get(RAY_CLUSTER_ADDRESS_VARIABLE)
    saved_constant = getattr(ray_constants, "ENABLE_RAY_CLUSTER", None)
    os.environ[RAY_CLUSTER_ADDRESS_VARIABLE] = "0"
    if saved_constant is not None:
        ray_constants.ENABLE_RAY_CLUSTER = False
    try:
        yield
    finally:
        if saved_environment is None:
            os.environ.pop(RAY_CLUSTER_ADDRESS_VARIABLE, None)
        else:
            os.environ[RAY_CLUSTER_ADDRESS_VARIABLE] = saved_environment
        if saved_constant is not None:
            ray_constants.ENABLE_RAY_CLUSTER = saved_constant


def _check_reachable(address: str, timeout: float = 5.0) -> None:
    """Refuse a ``host:port`` that nothing answers at: ``ray.init`` would retry for minutes."""
    host, _, port = address.rpartition(":")
    if "://" in address or not host or not port.isdigit():
        return  # "auto", "ray://...": Ray resolves them itself
    try:
        socket.create_connection((host, int(port)), timeout=timeout).close()
    except OSError as err:
        raise SweepError(
            f"no Ray cluster answers at {address} ({err.strerror or err}); start one there "
            "with `ray start --head --port PORT`, or leave --address out to run on this machine"
        ) from err


def run_local(
    jobs: Sequence[TrialJob], trial_fn: TrialFn, retries: int, poll: Callable[[], None]
) -> Iterator[Outcome]:
    """Run the jobs one after another here; an exception is retried ``retries`` times."""
    del poll  # the engine's watcher thread reads progress from the result files
    for job in jobs:
        error = None
        for _attempt in range(retries + 1):
            try:
                payload = trial_fn(job)
            except Exception as err:  # any trial failure is reported and retried, not fatal
                error = f"{type(err).__name__}: {err}"
                continue
            yield Outcome(job, payload)
            break
        else:
            yield Outcome(job, None, error)


def _call(trial_fn: TrialFn, job: TrialJob) -> dict[str, Any]:
    return trial_fn(job)


def run_ray(
    jobs: Sequence[TrialJob],
    trial_fn: TrialFn,
    retries: int,
    poll: Callable[[], None],
    address: str | None = None,
    workers: int | None = None,
) -> Iterator[Outcome]:
    """Run every job as a Ray task; yield each outcome as it finishes.

    A Ray instance already initialised in this process (e.g. by a test) is used as it is
    and left running; one started here is shut down at the end (its workers with it).
    """
    if not ray_available():
        raise SweepError(
            "the ray backend needs Ray: pip install 'rlattr[sweep]', or use --backend local"
        )
    import ray

    started = not ray.is_initialized()
    if started:
        init_ray(address, workers)
    try:
        task = ray.remote(_call).options(
            num_cpus=1, max_retries=retries, retry_exceptions=True, name="rlattr-trial"
        )
        pending = {task.remote(trial_fn, job): job for job in jobs}
        while pending:
            ready, _ = ray.wait(list(pending), num_returns=1, timeout=1.0)
            poll()
            for ref in ready:
                job = pending.pop(ref)
                try:
                    yield Outcome(job, ray.get(ref))
                except ray.exceptions.RayError as err:
                    yield Outcome(job, None, _last_line(err))
    finally:
        if started:
            ray.shutdown()


def _last_line(err: BaseException) -> str:
    """The exception's own message (a RayTaskError's text is the worker's traceback)."""
    cause = getattr(err, "cause", None)
    if isinstance(cause, BaseException):
        return f"{type(cause).__name__}: {cause}".strip()
    lines = [line for line in str(err).splitlines() if line.strip()]
    return f"{type(err).__name__}: {lines[-1] if lines else ''}".strip()
