"""Bundled training reproductions on scikit-learn's 8x8 digits, trained by our own code on first use and
cached in the user cache dir (.npz, never pickled).

**Representations across training** (the DSE paper's two claims): a 64-256-256-10 ReLU MLP trained by
minibatch Adam twice, once on the true labels and once on the same labels shuffled among the training
rows (it can only memorise them). 500 held-out digits are the probe set: the outputs of both hidden
layers on them are saved before training (epoch 0) and after every epoch, with train / test accuracy and
loss (the shuffled run's train accuracy is against its shuffled labels, its test accuracy against the
true ones). :func:`measure_run` computes DSE, DSMI with the labels and with input clusters, Vendi score
and effective rank per epoch and layer; :func:`dse_claims` says whether the claims hold.

**Uncertainty against data size** (Scaling Laws for Uncertainty in Deep Learning): the same network as a
deep ensemble of 5 members trained on nested subsets of 50 to 1,200 training rows; predictive entropy
and its mutual-information (epistemic) part on the 500 probe digits against n, with power-law fits.
"""

from __future__ import annotations

import hashlib
import tempfile
import threading
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import pandas as pd
import torch

from explorer.cache import cache_dir
from explorer.data.training_logs import RepresentationRun
from explorer.kernels.training import (
    PowerLawFit,
    ensemble_uncertainty,
    fit_power_law,
    representation_entropy,
)
from explorer.models.device import one_torch_thread
from explorer.progress import Progress

RUNS = ("true labels", "shuffled labels")
LAYERS = ("hidden 1", "hidden 2")
METRICS = ("train_accuracy", "test_accuracy", "train_loss", "test_loss")
FLAT_FRACTION = 0.25  # "stays flat": the shuffled run's DSMI change is under this share of the true run's rise
_BUILD_LOCK = threading.Lock()


@dataclass(frozen=True)
class DigitsTraining:
    """The reproduction's settings (the defaults memorise the shuffled labels in ~50 epochs)."""

    width: int = 256
    epochs: int = 60
    learning_rate: float = 0.002
    batch_size: int = 32
    probe_rows: int = 500
    train_rows: int | None = None  # None: every digit outside the probe set (1,297)
    seed: int = 0

    def key(self) -> str:
        return hashlib.sha256(repr(sorted(asdict(self).items())).encode()).hexdigest()[:10]


@dataclass(frozen=True)
class DataSizeTraining:
    """Settings of the uncertainty-against-data-size ensembles: nested subsets, each member trained for a
    fixed number of epochs with a floor on the optimiser steps."""

    sizes: tuple[int, ...] = (50, 100, 200, 400, 800, 1200)
    members: int = 5
    width: int = 256
    epochs: int = 30  # passes over the subset, and at least min_steps optimiser steps
    min_steps: int = 300
    learning_rate: float = 0.002
    batch_size: int = 64
    probe_rows: int = 500
    seed: int = 0

    def key(self) -> str:
        return hashlib.sha256(repr(sorted(asdict(self).items())).encode()).hexdigest()[:10]


# ------------------------------------------------------------------------------------------- data
def _digits() -> tuple[np.ndarray, np.ndarray]:
    from sklearn.datasets import load_digits

    digits = load_digits()
    return (digits.data / 16.0).astype(np.float32), digits.target.astype(np.int64)


def _split(probe_rows: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """(probe rows, training pool rows) of one seeded permutation of the 1,797 digits."""
    order = np.random.default_rng(seed).permutation(1797)
    return order[:probe_rows], order[probe_rows:]


def _network(width: int, seed: int) -> torch.nn.Sequential:
    torch.manual_seed(seed)
    return torch.nn.Sequential(torch.nn.Linear(64, width), torch.nn.ReLU(), torch.nn.Linear(width, width),
                               torch.nn.ReLU(), torch.nn.Linear(width, 10))


def _hidden_layers(network: torch.nn.Sequential, X: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    first = network[1](network[0](X))
    return first, network[3](network[2](first))


# ------------------------------------------------------------------------- representations per epoch
def _train_run(setup: DigitsTraining, shuffled: bool, progress: Progress | None) -> dict[str, np.ndarray]:
    """Train one run and return its cached arrays: hidden layers of the probe set per epoch, metrics."""
    X, y = _digits()
    probe, pool = _split(setup.probe_rows, setup.seed)
    train = pool[:setup.train_rows] if setup.train_rows else pool
    train_labels = np.random.default_rng(setup.seed + 1).permutation(y[train]) if shuffled else y[train]
    Xt, yt = torch.from_numpy(X[train]), torch.from_numpy(train_labels)
    Xp, yp = torch.from_numpy(X[probe]), torch.from_numpy(y[probe])
    network = _network(setup.width, setup.seed)
    optimiser = torch.optim.Adam(network.parameters(), lr=setup.learning_rate)
    order = torch.Generator().manual_seed(setup.seed)
    snapshots = [_snapshot(network, Xt, yt, Xp, yp)]
    for epoch in range(setup.epochs):
        for batch in torch.randperm(len(Xt), generator=order).split(setup.batch_size):
            optimiser.zero_grad()
            with torch.enable_grad():   # whatever the caller's thread has set (no_grad, inference_mode)
                torch.nn.functional.cross_entropy(network(Xt[batch]), yt[batch]).backward()
            optimiser.step()
        snapshots.append(_snapshot(network, Xt, yt, Xp, yp))
        if progress is not None:
            progress.update(epoch + 1, setup.epochs, f"Training on {'shuffled' if shuffled else 'true'} labels "
                                                     f"(epoch {epoch + 1}/{setup.epochs})")
    arrays = {key: np.stack([s[key] for s in snapshots]) for key in snapshots[0]}
    return {**arrays, "epochs": np.arange(setup.epochs + 1), "labels": y[probe], "inputs": X[probe]}


def _snapshot(network, Xt, yt, Xp, yp) -> dict[str, np.ndarray]:
    with torch.no_grad():
        first, second = _hidden_layers(network, Xp)
        probe_logits, train_logits = network[4](second), network(Xt)
    accuracy = lambda logits, labels: float((logits.argmax(1) == labels).double().mean())
    loss = lambda logits, labels: float(torch.nn.functional.cross_entropy(logits, labels))
    return {"hidden_1": first.numpy().copy(), "hidden_2": second.numpy().copy(),
            "train_accuracy": accuracy(train_logits, yt), "test_accuracy": accuracy(probe_logits, yp),
            "train_loss": loss(train_logits, yt), "test_loss": loss(probe_logits, yp)}


def cached_arrays(filename: str, build) -> dict[str, np.ndarray]:
    """Arrays of ``filename`` in the cache dir (.npz, never pickled), built by ``build()`` on one torch thread
    (once per process at a time) when absent or damaged."""
    path = cache_dir() / filename
    with _BUILD_LOCK:
        if path.exists():
            try:
                with np.load(path, allow_pickle=False) as archive:
                    return {key: archive[key] for key in archive.files}
            except (OSError, ValueError, KeyError, EOFError):
                path.unlink(missing_ok=True)  # a damaged cache is rebuilt
        with one_torch_thread():  # small matrices (64 x 256): 2 ms against 40-80 ms per step on 2 loaded cores
            arrays = build()
        with tempfile.NamedTemporaryFile(dir=path.parent, suffix=".npz", delete=False) as handle:
            np.savez_compressed(handle, **arrays)
        Path(handle.name).replace(path)
        return arrays


def load_digits_runs(setup: DigitsTraining = DigitsTraining(), progress: Progress | None = None
                     ) -> dict[str, RepresentationRun]:
    """Both runs ("true labels", "shuffled labels"), trained on first use and cached."""
    runs = {}
    for name in RUNS:
        shuffled = name == "shuffled labels"
        arrays = cached_arrays(f"digits-training-{'shuffled' if shuffled else 'true'}-{setup.key()}.npz",
                         lambda: _train_run(setup, shuffled, progress))  # noqa: B023 - called at once
        runs[name] = _as_run(f"digits MLP, {name}", arrays)
    return runs


def _as_run(name: str, arrays: dict[str, np.ndarray]) -> RepresentationRun:
    metrics = pd.DataFrame({"epoch": arrays["epochs"], **{key: arrays[key] for key in METRICS}})
    layers = {layer: torch.from_numpy(arrays[layer.replace(" ", "_")]) for layer in LAYERS}
    return RepresentationRun(name, arrays["epochs"], layers, arrays["labels"], torch.from_numpy(arrays["inputs"]),
                             metrics)


def input_clusters(inputs: torch.Tensor, k: int = 10, seed: int = 0) -> np.ndarray:
    """Seeded k-means (scikit-learn, 4 restarts) of the probe inputs: the discrete stand-in for X in
    DSMI(Z; X) (the information plane's I(Z; X))."""
    from sklearn.cluster import KMeans

    return KMeans(n_clusters=min(k, len(inputs)), random_state=seed, n_init=4).fit_predict(inputs.double().numpy())


def measure_run(run: RepresentationRun, sigma: float | None = None, t: float = 1.0, q: float = 1.0,
                clusters: int = 10, repeats: int = 5, seed: int = 0, progress: Progress | None = None) -> pd.DataFrame:
    """One row per (epoch, layer): DSE and DSMI in bits (DSMI with the labels and with ``clusters`` k-means
    clusters of the inputs, NaN where the run has none), Vendi score of order ``q`` (cosine kernel), effective
    rank and the sigma used (``None``: each checkpoint's median distance), with the run's metrics."""
    groups = None if run.inputs is None else input_clusters(run.inputs, clusters, seed)
    rows, total = [], len(run.epochs) * len(run.layers)
    for layer, stack in run.layers.items():
        for i, epoch in enumerate(run.epochs):
            measures = representation_entropy(stack[i], sigma, t, run.labels, groups, q, repeats=repeats, seed=seed)
            rows.append({"epoch": int(epoch), "layer": layer, **asdict(measures)})
            if progress is not None:
                progress.update(len(rows), total, f"Entropy of {layer}, epoch {epoch} ({len(rows)}/{total})")
    table = pd.DataFrame(rows)
    return table if run.metrics is None else table.merge(run.metrics, on="epoch", how="left")


@dataclass(frozen=True)
class DseClaims:
    """The DSE paper's two claims on one layer, with the numbers behind them. Claim 1: DSE at the last
    epoch above the first, per run. Claim 2: DSMI with the labels rises in the true-label run and stays
    flat in the shuffled one (its change under ``FLAT_FRACTION`` of the true run's rise)."""

    layer: str
    dse: dict[str, tuple[float, float]]  # run -> (first epoch, last epoch)
    dsmi: dict[str, tuple[float, float]]

    @property
    def dse_increases(self) -> dict[str, bool]:
        return {run: last > first for run, (first, last) in self.dse.items()}

    @property
    def dsmi_rises_with_true_labels(self) -> bool:
        first, last = self.dsmi["true labels"]
        return last > first

    @property
    def dsmi_flat_with_shuffled_labels(self) -> bool:
        rise = self.dsmi["true labels"][1] - self.dsmi["true labels"][0]
        first, last = self.dsmi["shuffled labels"]
        return rise > 0 and abs(last - first) <= FLAT_FRACTION * rise

    def summary(self) -> str:
        def pair(values: tuple[float, float]) -> str:
            return f"{values[0]:.2f} -> {values[1]:.2f}"
        claim_1 = "holds" if all(self.dse_increases.values()) else "does not hold for every run"
        claim_2 = self.dsmi_rises_with_true_labels and self.dsmi_flat_with_shuffled_labels
        return (f"{self.layer}: DSE (bits, first -> last epoch) true labels {pair(self.dse['true labels'])}, "
                f"shuffled {pair(self.dse['shuffled labels'])}; DSMI with the labels true "
                f"{pair(self.dsmi['true labels'])}, shuffled {pair(self.dsmi['shuffled labels'])}. "
                f"Claim 1 (DSE rises): {claim_1}; claim 2 (DSMI rises with true labels, flat with shuffled): "
                f"{'holds' if claim_2 else 'does not hold'}.")


def dse_claims(tables: dict[str, pd.DataFrame], layer: str) -> DseClaims:
    """The claims on ``layer`` from :func:`measure_run` tables of both runs (keys as in :data:`RUNS`)."""
    def ends(table: pd.DataFrame, column: str) -> tuple[float, float]:
        rows = table[table["layer"] == layer].sort_values("epoch")
        return float(rows[column].iloc[0]), float(rows[column].iloc[-1])
    return DseClaims(layer, {run: ends(tables[run], "dse") for run in RUNS},
                     {run: ends(tables[run], "dsmi_labels") for run in RUNS})


# -------------------------------------------------------------------------- uncertainty vs data size
@dataclass(frozen=True)
class DataSizeUncertainty:
    """Mean over the probe digits, per training-set size: predictive entropy, expected entropy, mutual
    information (nats) and the ensemble's accuracy; power laws fitted to the predictive entropy and the
    mutual information against n. ``probs``: ``sizes x members x probe x 10``."""

    table: pd.DataFrame
    predictive_fit: PowerLawFit
    mutual_information_fit: PowerLawFit
    probs: torch.Tensor


def _train_member(X: torch.Tensor, y: torch.Tensor, setup: DataSizeTraining, seed: int) -> torch.nn.Module:
    network = _network(setup.width, seed)
    optimiser = torch.optim.Adam(network.parameters(), lr=setup.learning_rate)
    draws = torch.Generator().manual_seed(seed)
    for _ in range(max(setup.min_steps, -(-setup.epochs * len(X) // setup.batch_size))):
        batch = torch.randint(len(X), (min(setup.batch_size, len(X)),), generator=draws)
        optimiser.zero_grad()
        torch.nn.functional.cross_entropy(network(X[batch]), y[batch]).backward()
        optimiser.step()
    return network


def _ensemble_probs(setup: DataSizeTraining, progress: Progress | None) -> dict[str, np.ndarray]:
    X, y = _digits()
    probe, pool = _split(setup.probe_rows, setup.seed)
    if max(setup.sizes) > len(pool):
        raise ValueError(f"the largest subset ({max(setup.sizes)}) exceeds the {len(pool)} training digits")
    Xp = torch.from_numpy(X[probe])
    probs = np.zeros((len(setup.sizes), setup.members, len(probe), 10), dtype=np.float32)
    for i, size in enumerate(setup.sizes):
        rows = pool[:size]  # nested subsets of one seeded order
        for member in range(setup.members):
            network = _train_member(torch.from_numpy(X[rows]), torch.from_numpy(y[rows]), setup,
                                    setup.seed * 1000 + member)
            with torch.no_grad():
                probs[i, member] = torch.softmax(network(Xp), 1).numpy()
            if progress is not None:
                done = i * setup.members + member + 1
                progress.update(done, len(setup.sizes) * setup.members,
                                f"Ensemble member {member + 1}/{setup.members} on {size} digits")
    return {"probs": probs, "sizes": np.asarray(setup.sizes), "labels": y[probe]}


def uncertainty_vs_data_size(setup: DataSizeTraining = DataSizeTraining(),
                             progress: Progress | None = None) -> DataSizeUncertainty:
    """Deep-ensemble uncertainty on the probe digits against the training-set size (trained and cached)."""
    arrays = cached_arrays(f"digits-data-size-{setup.key()}.npz", lambda: _ensemble_probs(setup, progress))
    probs = torch.from_numpy(arrays["probs"]).double()
    labels = torch.from_numpy(arrays["labels"])
    rows = []
    for size, member_probs in zip(arrays["sizes"].tolist(), probs):
        parts = ensemble_uncertainty(member_probs)
        rows.append({"n": size, "predictive": float(parts.predictive.mean()), "expected": float(parts.expected.mean()),
                     "mutual_information": float(parts.mutual_information.mean()),
                     "accuracy": float((member_probs.mean(0).argmax(1) == labels).double().mean())})
    table = pd.DataFrame(rows)
    fit = lambda column: fit_power_law(table["n"].to_numpy(np.float64), table[column].to_numpy(np.float64))
    return DataSizeUncertainty(table, fit("predictive"), fit("mutual_information"), probs)
