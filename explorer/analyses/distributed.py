"""Temperature sweeps on a Dask cluster (the ``distributed`` package).

    explorer sweep ... --cluster local:4                   # a LocalCluster: 4 worker processes, one thread each
    explorer sweep ... --scheduler tcp://HOST:8786         # the workers of a running scheduler

On Slurm or PBS, start the scheduler and workers with dask-jobqueue (``SLURMCluster(...).scale(jobs=8)``,
``cluster.scheduler_address``) or ``dask scheduler`` / ``dask worker`` in a job script, then pass the
address; every worker needs this project installed (the same version) and the model reachable.

* The unit of work is a :class:`~explorer.analyses.temperature.Batch` (a few questions at one
  temperature, seeded by the batch): :func:`run_batch` samples it on a worker with
  :func:`~explorer.analyses.temperature.sample_batch`, exactly what the single-process run does.
* Each worker loads the model once: :class:`SweepWorkerPlugin` loads it when the worker joins (on
  its own device: with k GPUs, worker i uses ``cuda:(i mod k)``), and the per-process model cache
  serves every later batch. A worker whose project differs from the client's (``__version__`` or
  the hash of any source file) or that cannot load the model is refused with a message naming the
  difference (at registration; a worker joining later fails its first batch with that message).
* The client is the only writer: it stores each batch as it completes (:class:`DaskExecutor`),
  in one transaction as before, so the store's resume semantics hold; a stopped or crashed
  client resumes with ``--resume`` (on a cluster or not).
* A worker that dies has its batches re-run elsewhere by the scheduler; batches are pure
  functions of their seed, so the re-run returns the same answers and the client stores each key
  once.
* Bit-for-bit equality with a single-process run needs the same arithmetic: the same device type,
  and on a CPU the same number of torch threads (Dask workers run one, ``OMP_NUM_THREADS=1``; a
  process with 2 threads sums the matrix products in another order, ~1e-5 nats apart in the
  log-probabilities, which in a rare near-tie can change a sampled token).
"""

from __future__ import annotations

import contextlib
import functools
import hashlib
import logging
import os
import re
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pandas as pd

import explorer
from explorer.analyses.temperature import Batch, sample_batch
from explorer.errors import InputError
from explorer.progress import Cancelled, Progress

CONNECT_TIMEOUT_S = 10
POLL_S = 0.25                 # how often a waiting client checks for Stop
log = logging.getLogger(__name__)


# ---------------------------------------------------------------------- the project's fingerprint

@functools.lru_cache(maxsize=1)
def fingerprint() -> dict:
    """This process's project: its version and a hash of every source file of the package."""
    root = Path(explorer.__file__).resolve().parent
    files = {path.relative_to(root).as_posix(): hashlib.sha256(path.read_bytes()).hexdigest()[:16]
             for path in sorted(root.rglob("*.py"))}
    digest = hashlib.sha256(repr(sorted(files.items())).encode()).hexdigest()[:16]
    return {"version": explorer.__version__, "digest": digest, "files": files}


def fingerprint_difference(expected: dict, found: dict) -> str | None:
    """How ``found`` differs from ``expected`` in words (None when they are the same project)."""
    if found["version"] == expected["version"] and found["digest"] == expected["digest"]:
        return None
    parts = []
    if found["version"] != expected["version"]:
        parts.append(f"explorer {found['version']} (client: {expected['version']})")
    mine, theirs = expected["files"], found["files"]
    changed = sorted(f for f in mine.keys() & theirs.keys() if mine[f] != theirs[f])
    missing, extra = sorted(mine.keys() - theirs.keys()), sorted(theirs.keys() - mine.keys())
    for label, names in (("different", changed), ("missing", missing), ("extra", extra)):
        if names:
            shown = ", ".join(names[:5]) + (f" and {len(names) - 5} more" if len(names) > 5 else "")
            parts.append(f"{label} source files: {shown}")
    return "; ".join(parts)


def _refuse_other_projects(expected: dict, where: str) -> None:
    difference = fingerprint_difference(expected, fingerprint())
    if difference is not None:
        raise InputError(f"Dask worker {where} runs another version of the project than this client: {difference}. "
                         "Install the same version on every worker.")


# ---------------------------------------------------------------------- worker side

_WORKER_DEVICE: dict[str, str] = {}


def worker_device(worker_name) -> str:
    """The device of one worker: with k CUDA devices, worker i (its name, when a number) uses
    ``cuda:(i mod k)``; else the best available (:func:`explorer.models.device.resolve_device`)."""
    import torch

    count = torch.cuda.device_count() if torch.cuda.is_available() else 0
    if count > 1:
        index = int(worker_name) if str(worker_name).isdigit() else 0
        return f"cuda:{index % count}"
    from explorer.models.device import resolve_device
    return str(resolve_device(None))


try:
    from distributed.diagnostics.plugin import WorkerPlugin
except ImportError:  # the package is optional until a cluster is asked for (see sweep_client)
    WorkerPlugin = object


class SweepWorkerPlugin(WorkerPlugin):
    """Set up a worker for a sweep: refuse another project version, then load the model once."""

    def __init__(self, expected: dict, model_name: str = "", load_model: bool = True):
        self.expected, self.model_name, self.load_model = expected, model_name, load_model
        self.name = f"explorer-sweep-{expected['digest']}-{model_name or 'default'}"

    def setup(self, worker) -> None:
        _refuse_other_projects(self.expected, worker.address)
        device = _WORKER_DEVICE.setdefault(self.model_name, worker_device(worker.name))
        if self.load_model:
            from explorer.models.language_model import load_language_model
            try:
                load_language_model(self.model_name or None, device=device)
            except InputError as err:
                raise InputError(f"Dask worker {worker.address} cannot load the model: {err}") from err


def run_batch(batch: Batch, model_name: str, expected: dict) -> pd.DataFrame:
    """The task: one batch sampled on this worker with its once-loaded model."""
    from distributed import get_worker

    worker = get_worker()
    _refuse_other_projects(expected, worker.address)
    lm = None
    if batch.kind != "gaap":
        from explorer.models.language_model import load_language_model
        device = _WORKER_DEVICE.setdefault(model_name, worker_device(worker.name))
        lm = load_language_model(model_name or None, device=device)
    return sample_batch(batch, lm)


# ---------------------------------------------------------------------- client side

def _distributed():
    try:
        import distributed
    except ImportError as err:
        raise InputError("Sweeps on a Dask cluster need the distributed package: pip install distributed") from err
    return distributed


def local_workers(spec: str) -> int:
    """N from ``local:N`` (N >= 1)."""
    match = re.fullmatch(r"\s*local:(\d+)\s*", spec)
    if match is None or int(match.group(1)) < 1:
        raise InputError(f"A local cluster is given as local:N with N >= 1 worker processes, got {spec!r}.")
    return int(match.group(1))


def connect(address: str, timeout_s: float = CONNECT_TIMEOUT_S):
    """A client of the scheduler at ``address``; an :class:`InputError` within ``timeout_s`` when it
    does not answer."""
    distributed = _distributed()
    address = address.strip()
    if "://" not in address:
        address = "tcp://" + address
    try:
        return distributed.Client(address, timeout=timeout_s, set_as_default=False)
    except (OSError, TimeoutError) as err:
        raise InputError(f"The Dask scheduler at {address} did not answer within {timeout_s:g} s ({err}). Is "
                         "`dask scheduler` running there, and is its port reachable from here?") from err
    except ValueError as err:
        raise InputError(f"{address!r} is not a Dask scheduler address (tcp://HOST:8786): {err}") from err


@contextlib.contextmanager
def local_cluster(workers: int):
    """A LocalCluster of ``workers`` processes with one thread each, closed on exit."""
    distributed = _distributed()
    cluster = distributed.LocalCluster(n_workers=workers, threads_per_worker=1, processes=True,
                                       dashboard_address="127.0.0.1:0", silence_logs=logging.ERROR)
    try:
        yield cluster
    finally:
        cluster.close()


@contextlib.contextmanager
def sweep_client(cluster: str = "", scheduler: str = "", model_name: str = "", load_model: bool = True
                 ) -> Iterator["DaskExecutor"]:
    """An executor on ``local:N`` (started here) or on the scheduler at ``scheduler``, with every worker
    set up by :class:`SweepWorkerPlugin` (``load_model``: load the model there now)."""
    with contextlib.ExitStack() as stack:
        if cluster.strip():
            workers = local_workers(cluster)
            client = _distributed().Client(stack.enter_context(local_cluster(workers)), set_as_default=False)
        else:
            client = connect(scheduler)
        stack.callback(client.close)
        expected = fingerprint()
        try:
            client.register_plugin(SweepWorkerPlugin(expected, model_name, load_model))
        except Exception as err:  # noqa: BLE001 - a worker's failure arrives as its own type
            if isinstance(err, InputError):
                raise
            raise InputError(f"A Dask worker could not be set up: {type(err).__name__}: {err}") from err
        yield DaskExecutor(client, model_name, expected)


def _result(future, batch: Batch) -> pd.DataFrame:
    """A finished batch's rows; a batch that kept killing its workers is a clear :class:`InputError`."""
    from distributed.scheduler import KilledWorker

    try:
        return future.result()
    except KilledWorker as err:
        tries = getattr(err, "allowed_failures", None)
        raise InputError(f"Batch {batch.key} was running on every worker that died"
                         + (f" ({tries + 1} workers)" if isinstance(tries, int) else "")
                         + "; it may need more memory than a worker has. Finished batches are stored: fix and "
                           "--resume.") from err


class DaskExecutor:
    """Runs batches on a Dask client's workers and hands each result to the caller as it completes."""

    def __init__(self, client, model_name: str = "", expected: dict | None = None):
        self.client, self.model_name = client, model_name
        self.expected = expected or fingerprint()

    @property
    def dashboard_link(self) -> str:
        return self.client.dashboard_link

    def workers(self) -> int:
        return len(self.client.scheduler_info(n_workers=-1)["workers"])

    def execute(self, batches: list[Batch], done: Callable[[Batch, pd.DataFrame], None],
                progress: Progress | None = None) -> None:
        """Submit every batch, then call ``done(batch, rows)`` here for each as it completes. A Stop
        (``progress`` cancelled) cancels what is left; a failed batch cancels the rest and raises."""
        stamp = f"{os.getpid()}-{time.monotonic_ns()}"
        futures = {self.client.submit(run_batch, batch, self.model_name, self.expected, pure=False,
                                      key=f"explorer-batch-{batch.key}-{stamp}"): batch for batch in batches}
        try:
            while futures:
                if progress is not None and progress.cancelled:
                    raise Cancelled("stopped by the user")
                ready = [future for future in futures if future.done()]
                if not ready:
                    time.sleep(POLL_S)
                for future in ready:
                    batch = futures.pop(future)
                    done(batch, _result(future, batch))
                    future.release()
        finally:
            if futures:
                self.client.cancel(list(futures))
