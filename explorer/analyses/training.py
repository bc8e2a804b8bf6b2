"""Entropy across training, for the training-dynamics page: the entropy and information of a network's
representations at every checkpoint (DSE, DSMI with the labels and with input clusters, Vendi, effective
rank; the information plane; the DSE paper's two claims), the entropy-collapse law of logged RL runs
(fit, ceiling, forecast from the first steps, entropy change against the covariance term), and predictive
uncertainty against the training-set size.

The long parts are the spectra of every checkpoint (one diffusion eigendecomposition per checkpoint, and
the within-class / random-subset ones DSMI needs; Vendi's cosine spectrum) and the bootstrap fits of the
law. They are computed by :meth:`TrainingAnalysis.compute` (or per part: ``compute_representations``,
``law_fits``, ``forecasts``) and cached (the spectra also on disk, under a digest of the data and the
settings). DSE and DSMI at any diffusion time t, Vendi of any order q, the spectrum at any epoch and the
forecast at any share of the steps are then cheap reads: a t move recomputes every checkpoint's DSE and
DSMI from the cached eigenvalues in one batched call per class (:func:`batched_dse`).
"""

from __future__ import annotations

import hashlib
import math
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd
import param
import torch

from explorer.analyses.base import Analysis, NotComputed, _Identity, result
from explorer.analyses.diversity import DSMI_REPEATS, Q_VALUES
from explorer.data.training_logs import (
    ColumnMap,
    LoggedRun,
    RepresentationRun,
    fit_run_law,
    log_columns,
)
from explorer.data.training_runs import (
    FLAT_FRACTION,
    RUNS,
    DataSizeUncertainty,
    cached_arrays,
    dse_claims,
    input_clusters,
)
from explorer.data.uploads import Upload
from explorer.errors import InputError
from explorer.kernels.diversity import (
    Spectrum,
    diffusion_eigenvalues,
    dsmi_spectra,
    kernel_spectrum,
    median_bandwidth,
)
from explorer.kernels.training import (
    EntropyLawFit,
    EntropyLawForecast,
    batched_dse,
    entropy_change_vs_covariance,
    forecast_entropy_law,
)
from explorer.models.device import one_torch_thread
from explorer.progress import Progress

__all__ = [
    "FRACTIONS",
    "MEASURES",
    "LayerSpectra",
    "NotComputed",
    "TrainingAnalysis",
    "guessed_columns",
    "offered_columns",
    "suggested_columns",
]

FRACTIONS = tuple(round(0.1 + 0.05 * i, 2) for i in range(17))  # "fit on the first x % of steps": 10 % .. 90 %
FRACTION_LABELS = {f"{fraction:.0%}": fraction for fraction in FRACTIONS}
MEASURES = {"dse": "DSE (bits)", "dsmi_labels": "DSMI with the labels (bits)",
            "dsmi_inputs": "DSMI with input clusters (bits)", "vendi": "Vendi score (cosine)",
            "effective_rank": "Effective rank", "scale": "Median pairwise distance",
            "train_accuracy": "Train accuracy", "test_accuracy": "Test accuracy", "train_loss": "Train loss",
            "test_loss": "Test loss", "accuracy": "Accuracy", "loss": "Loss"}
SCALE_GROWTH_NOTE = 2.0   # a fixed sigma is flagged when the median distance changes by more than this factor
CURVE_POINTS = 200
SPECTRA_VERSION = 1   # bump when what the cached spectra hold changes
KEEP_RECENT = 1   # run sets kept cached besides the current one (the bundled runs while an upload is studied)
# usual names of each logged quantity (matched on the whole lower-cased name, then on its last "/" part)
COLUMN_NAMES = {
    "step": ("step", "global_step", "steps", "iteration", "iter", "update", "epoch"),
    "entropy": ("entropy", "policy_entropy", "entropy_mean", "mean_entropy", "actor_entropy", "ent"),
    "reward": ("reward", "reward_mean", "mean_reward", "rewards", "score", "accuracy", "acc", "return"),
    "covariance": ("covariance", "cov", "entropy_covariance", "logp_advantage_cov", "cov_logp_adv"),
    "advantage": ("advantage_abs_mean", "advantage", "advantage_mean", "adv", "advantages"),
}


@dataclass(frozen=True)
class LayerSpectra:
    """The spectra of one layer at every checkpoint of one run (rows follow ``epochs``).

    ``diffusion``: ``E x n`` eigenvalues of each checkpoint's diffusion matrix. ``labels`` / ``inputs``: what
    DSMI needs, per class with at least two members: ``(share n_c / N, E x n_c within-class eigenvalues,
    E x repeats x n_c eigenvalues of same-size random subsets)`` (empty without labels / inputs); the
    classes and the random subsets are the same rows at every checkpoint. ``cosine``: the cosine-kernel
    spectrum (Vendi). ``sigma``: the bandwidth used; ``scale``: the median pairwise distance."""

    epochs: np.ndarray
    diffusion: torch.Tensor
    labels: tuple[tuple[float, torch.Tensor, torch.Tensor], ...]
    inputs: tuple[tuple[float, torch.Tensor, torch.Tensor], ...]
    cosine: tuple[Spectrum, ...]
    effective_rank: np.ndarray
    sigma: np.ndarray
    scale: np.ndarray

    @staticmethod
    def arrays_of(epochs, checkpoints: list[dict]) -> dict[str, np.ndarray]:
        """The arrays (for an .npz) of per-checkpoint spectra (:meth:`TrainingAnalysis._checkpoint_spectra`)."""
        column = lambda key: [checkpoint[key] for checkpoint in checkpoints]
        arrays = {"epochs": np.asarray(epochs), "diffusion": torch.stack(column("diffusion")).numpy(),
                  "cosine": torch.stack([s.eigenvalues for s in column("cosine")]).numpy(),
                  "cosine_n": np.asarray(checkpoints[0]["cosine"].n),
                  "cosine_method": np.asarray(checkpoints[0]["cosine"].method),
                  **{key: np.asarray(column(key), dtype=np.float64) for key in ("effective_rank", "sigma", "scale")}}
        for kind in ("labels", "inputs"):
            parts = column(kind)
            arrays[f"{kind}_shares"] = np.asarray([share for share, _, _ in parts[0]], dtype=np.float64)
            for c in range(len(parts[0])):
                arrays[f"{kind}_{c}_within"] = torch.stack([p[c][1] for p in parts]).numpy()
                arrays[f"{kind}_{c}_random"] = torch.stack([torch.stack(p[c][2]) for p in parts]).numpy()
        return arrays

    @classmethod
    def from_arrays(cls, arrays: dict[str, np.ndarray]) -> LayerSpectra:
        tensor = lambda key: torch.from_numpy(np.asarray(arrays[key], dtype=np.float64))
        parts = lambda kind: tuple((float(share), tensor(f"{kind}_{c}_within"), tensor(f"{kind}_{c}_random"))
                                   for c, share in enumerate(arrays[f"{kind}_shares"]))
        n, method = int(arrays["cosine_n"]), str(arrays["cosine_method"])
        return cls(np.asarray(arrays["epochs"]), tensor("diffusion"), parts("labels"), parts("inputs"),
                   tuple(Spectrum(row, n, method=method) for row in tensor("cosine")),
                   np.asarray(arrays["effective_rank"]), np.asarray(arrays["sigma"]), np.asarray(arrays["scale"]))

    def dse(self, t: float) -> np.ndarray:
        return batched_dse(self.diffusion, t).numpy()

    def dsmi(self, parts, t: float) -> np.ndarray:
        """DSMI in bits at every checkpoint, ``sum_c share_c [mean_r DSE(random) - DSE(within)]``; NaN without parts."""
        if not parts:
            return np.full(len(self.epochs), math.nan)
        return sum(share * (batched_dse(random, t).mean(-1) - batched_dse(within, t)) for share, within, random in
                   parts).numpy()


def guessed_columns(columns: list[str], tensorboard: bool = False) -> dict[str, str | None]:
    """Each logged quantity's column (or TensorBoard tag) by its usual names: the whole lower-cased name
    first, then any part of an ``a/b`` tag; None where none matches. ``step`` is the event step for
    TensorBoard."""
    lowered = [column.lower() for column in columns]

    def find(field: str) -> str | None:
        for name in COLUMN_NAMES[field]:
            if name in lowered:
                return columns[lowered.index(name)]
        for name in COLUMN_NAMES[field]:
            for column, low in zip(columns, lowered):
                if name in low.split("/"):
                    return column
        return None

    return {field: "step" if field == "step" and tensorboard else find(field) for field in COLUMN_NAMES}


def suggested_columns(columns: list[str], tensorboard: bool = False) -> ColumnMap:
    """The :class:`ColumnMap` of :func:`guessed_columns`; an :class:`InputError` when no step, entropy or reward
    column is found."""
    chosen = guessed_columns(columns, tensorboard)
    for field in ("step", "entropy", "reward"):
        if chosen[field] is None:
            raise InputError(f"No {field} column found among {', '.join(columns[:20])}: choose it in the column "
                             "mapping.")
    return ColumnMap(**chosen)


def offered_columns(uploads: list[Upload]) -> list[str]:
    """The columns (TensorBoard: scalar tags) every one of the uploaded log files has, in the first file's order."""
    offered = None
    for upload in uploads:
        columns = log_columns(upload.data, upload.name)
        offered = columns if offered is None else [c for c in offered if c in set(columns)]
    if not offered:
        raise InputError("The log files share no column (or tag): upload files with the same columns.")
    return offered


class TrainingAnalysis(Analysis):
    """Entropy across training (see the module docstring). Three independent inputs: ``runs`` (the
    representations of a probe set at every checkpoint, one or several runs with the same layers),
    ``logs`` (logged RL runs) and ``data_size`` (ensemble uncertainty against the training-set size)."""

    runs = param.Dict(default={}, doc="Representation runs by name, overlaid (the same layers).")
    layer = param.Selector(objects=[], default=None, allow_None=True, label="Layer")
    sigma = param.Number(default=10.0, bounds=(0, None), softbounds=(0, 50), step=0.5,
                         label="DSE sigma (0 = median per checkpoint)",
                         doc="The diffusion kernel's bandwidth; 10 is the DSE paper's default.")
    t = param.Number(default=1.0, bounds=(0.25, 10), step=0.25, label="Diffusion time t")
    q = param.Selector(objects=Q_VALUES, default=1.0, label="Vendi order q")
    clusters = param.Integer(default=10, bounds=(2, 50), label="Input clusters (for DSMI with X)")
    seed = param.Integer(default=0, bounds=(0, None), label="Seed")
    epoch = param.Integer(default=0, bounds=(0, None), label="Epoch (spectrum)")
    logs = param.List(default=[], item_type=LoggedRun, doc="Logged runs (step, entropy, reward, ...).")
    bootstrap = param.Integer(default=1000, bounds=(100, 10000), label="Bootstrap resamples")
    level = param.Number(default=0.95, bounds=(0.5, 0.99), step=0.01, label="Interval level")
    fraction = param.Selector(objects=FRACTION_LABELS, default=0.3, label="Fit on the first share of steps")
    data_size = param.ClassSelector(class_=DataSizeUncertainty, allow_None=True,
                                    doc="Ensemble uncertainty against the training-set size.")

    def __init__(self, **params):
        super().__init__(**params)
        self._recent: list[dict] = []   # the run sets studied before the current one, newest last
        self.param.watch(self._release, "runs")
        self._on_runs()

    def _release(self, event) -> None:
        """Keep the spectra of the current runs and of the last ``KEEP_RECENT`` run sets studied before
        (switching back to them is instant); forget those of older ones."""
        if event.old:
            self._recent = ([runs for runs in self._recent if runs is not event.old] + [event.old])[-KEEP_RECENT:]
        kept = [run for runs in (self.runs, *self._recent) for run in runs.values()]
        self.forget(keep=lambda key: all(any(part.value is run for run in kept) for part in key[1]
                                         if isinstance(part, _Identity)))

    @param.depends("runs", watch=True)
    def _on_runs(self):
        """New runs: the layer choice follows their layers (the current one when they have it), the epoch
        goes to their last checkpoint."""
        layers = list(next(iter(self.runs.values())).layers) if self.runs else []
        layer = self.layer if self.layer in layers else (layers[-1] if layers else None)
        self.param.layer.objects = layers   # (a select showing the layers may pick its first one here)
        self.layer = layer
        if self.runs:   # the spectrum starts at the last checkpoint (at epoch 0 runs often share their weights)
            self.epoch = int(max(run.epochs.max() for run in self.runs.values()))

    def not_computed_message(self, name: str) -> str:
        return "Fitting the entropy law…" if name in ("law_fits", "forecasts") else \
            "Computing the spectra of every checkpoint…"

    # ------------------------------------------------------------------------- representations
    def _runs(self) -> dict[str, RepresentationRun]:
        if not self.runs:
            raise InputError("No representations loaded: choose the bundled runs or upload checkpoints.")
        layers = [set(run.layers) for run in self.runs.values()]
        if any(layer != layers[0] for layer in layers):
            raise InputError("The runs hold different layers; overlaid runs must hold the same ones.")
        return self.runs

    def epochs(self) -> np.ndarray:
        """Every epoch any run has a checkpoint at, ascending."""
        return np.unique(np.concatenate([run.epochs for run in self._runs().values()]))

    def compute_representations(self, progress: Progress | None = None) -> None:
        for run in self._runs().values():
            self.spectra(run, self.layer, progress=progress)

    def compute_steps(self):
        steps = []
        if self.runs:
            steps.append(("Spectra of every checkpoint", self.compute_representations))
        if self.logs:
            steps += [("Entropy-law fits", self.law_fits), ("Forecasts from the first steps", self.forecasts)]
        return steps

    @result("clusters", "seed", heavy=True)
    def _input_groups(self, run: RepresentationRun) -> np.ndarray | None:
        return None if run.inputs is None else input_clusters(run.inputs, self.clusters, self.seed)

    @result("sigma", "_input_groups", heavy=True)
    def spectra(self, run: RepresentationRun, layer: str, progress: Progress | None = None) -> LayerSpectra:
        """Every checkpoint's spectra of ``layer`` in ``run`` (the long part; see :class:`LayerSpectra`), kept in
        the cache dir under a digest of the run's data and the settings, so a run measured once (the bundled
        one) opens at once in every later session. Keyed by the run itself in memory: the runs studied just
        before stay cached (see :meth:`_release`)."""
        if layer not in run.layers:
            raise InputError(f"Run {run.name!r} has no layer {layer!r}; its layers are {', '.join(run.layers)}.")
        filename = f"training-spectra-{self._digest(run, layer)}.npz"
        return LayerSpectra.from_arrays(cached_arrays(filename, lambda: self._measured(run, layer, progress)))

    def _digest(self, run: RepresentationRun, layer: str) -> str:
        """A digest of what the spectra depend on: the checkpoints of ``layer``, labels, inputs, settings."""
        digest = hashlib.sha256(repr((SPECTRA_VERSION, self.sigma, self.clusters, self.seed, DSMI_REPEATS,
                                      run.epochs.tolist())).encode())
        for array in (run.layers[layer], run.labels, run.inputs):
            if array is not None:
                digest.update(np.ascontiguousarray(np.asarray(array).astype(str) if np.asarray(array).dtype == object
                                                   else np.asarray(array)).tobytes())
            digest.update(b"|")
        return digest.hexdigest()[:16]

    def _measured(self, run: RepresentationRun, layer: str, progress: Progress | None) -> dict[str, np.ndarray]:
        groups, stack, checkpoints = self._input_groups(run), run.layers[layer], []
        for i, epoch in enumerate(run.epochs):
            if progress is not None:
                progress.update(i, len(run.epochs), f"Spectra of {run.name}, {layer}: epoch {epoch} "
                                                     f"({i + 1}/{len(run.epochs)})")
            checkpoints.append(self._checkpoint_spectra(stack[i], run.labels, groups))
        return LayerSpectra.arrays_of(run.epochs, checkpoints)

    def _checkpoint_spectra(self, Z: torch.Tensor, labels, groups) -> dict:
        """One checkpoint's spectra, as :func:`explorer.kernels.training.representation_entropy` measures it."""
        scale = median_bandwidth(Z)
        sigma = self.sigma or scale
        dsmi = lambda classes: [] if classes is None else dsmi_spectra(Z, classes, sigma, DSMI_REPEATS, self.seed)
        return {"diffusion": diffusion_eigenvalues(Z, sigma), "labels": dsmi(labels), "inputs": dsmi(groups),
                "cosine": kernel_spectrum(Z, kernel="cosine"),
                "effective_rank": kernel_spectrum(Z, kernel="linear").effective_rank(), "sigma": sigma, "scale": scale}

    @result("runs", "spectra", "layer", "t", "q")
    def measures(self) -> pd.DataFrame:
        """One row per run and epoch of the chosen layer: DSE and DSMI (bits; DSMI with the labels and with
        ``clusters`` k-means clusters of the inputs, NaN where the run has none), Vendi of order q (cosine
        kernel), effective rank, the sigma used, the median pairwise distance (``scale``), and the run's
        logged metrics. The same numbers as :func:`explorer.data.training_runs.measure_run`."""
        frames = []
        for name, run in self._runs().items():
            s = self.spectra(run, self.layer)
            with one_torch_thread():   # read on a page's event loop: 35 ms, against 0.2-1.6 s on 2 busy threads
                columns = {"dse": s.dse(self.t), "dsmi_labels": s.dsmi(s.labels, self.t),
                           "dsmi_inputs": s.dsmi(s.inputs, self.t), "vendi": [c.vendi(self.q) for c in s.cosine]}
            frame = pd.DataFrame({"run": name, "epoch": s.epochs.astype(int), "layer": self.layer, **columns,
                                  "effective_rank": s.effective_rank, "sigma": s.sigma, "scale": s.scale})
            frames.append(frame if run.metrics is None else frame.merge(run.metrics, on="epoch", how="left"))
        return pd.concat(frames, ignore_index=True)

    def measure_names(self) -> dict[str, str]:
        """``{column: label}`` of the measures the runs have (metrics only where logged, DSMI where possible)."""
        table = self.measures()
        return {column: MEASURES.get(column, column) for column in table.columns
                if column not in ("run", "epoch", "layer", "sigma") and table[column].notna().any()
                and pd.api.types.is_numeric_dtype(table[column])}

    @result("runs", "spectra", "layer", "t", "epoch")
    def spectrum_at_epoch(self) -> pd.DataFrame:
        """The diffusion spectrum at the chosen epoch, per run: ``mu_i = |lambda_i|^t / sum_j |lambda_j|^t``
        in descending order (``rank`` from 1; DSE is its entropy), for the runs with a checkpoint there."""
        frames = []
        for name, run in self._runs().items():
            s = self.spectra(run, self.layer)
            rows = np.flatnonzero(s.epochs == self.epoch)
            if not rows.size:
                continue
            powered = s.diffusion[rows[0]].abs() ** self.t
            mu = (powered / powered.sum()).sort(descending=True).values.numpy()
            frames.append(pd.DataFrame({"run": name, "epoch": self.epoch, "rank": np.arange(1, len(mu) + 1),
                                        "mu": mu}))
        if not frames:
            raise InputError(f"No checkpoint at epoch {self.epoch}.")
        return pd.concat(frames, ignore_index=True)

    @result("measures", "sigma")
    def verdict(self) -> list[str]:
        """The DSE paper's two claims on the data shown, in plain words, from the measured numbers
        (:func:`explorer.data.training_runs.dse_claims`); for other runs, how DSE and DSMI moved."""
        table = self.measures()
        tables = {name: part for name, part in table.groupby("run", sort=False)}
        lines = []
        if set(tables) == set(RUNS):
            claims = dse_claims(tables, self.layer)
            lines += _claim_lines(claims)
        else:
            for name, part in tables.items():
                part = part.sort_values("epoch")
                moves = [f"{MEASURES[column]} {part[column].iloc[0]:.2f} → {part[column].iloc[-1]:.2f}"
                         for column in ("dse", "dsmi_labels", "dsmi_inputs") if part[column].notna().all()]
                lines.append(f"{name}, {self.layer}, epoch {part['epoch'].iloc[0]} → {part['epoch'].iloc[-1]}: "
                             + "; ".join(moves) + ".")
            lines.append("The DSE paper's claims compare a run on true labels with one on shuffled labels: the "
                         "bundled reproduction has both.")
        lines.append(_scale_line(tables, self.sigma))
        return lines

    def information_plane(self) -> pd.DataFrame:
        """DSMI(Z; X) (input clusters) against DSMI(Z; Y) (labels) per run and epoch, in epoch order."""
        table = self.measures()
        return table[["run", "epoch", "dsmi_inputs", "dsmi_labels"]].sort_values(["run", "epoch"], kind="stable")

    # ------------------------------------------------------------------------- logged runs
    def _logs(self) -> list[LoggedRun]:
        if not self.logs:
            raise InputError("No training log loaded: choose the bundled RL run or upload a log.")
        return self.logs

    @result("logs", "bootstrap", "level", "seed", heavy=True)
    def law_fits(self, progress: Progress | None = None) -> dict[str, EntropyLawFit | str]:
        """The entropy law ``R = -a exp(H) + b`` of every run with bootstrap intervals, or why it has none."""
        fits = {}
        with one_torch_thread():
            for i, run in enumerate(self._logs()):
                if progress is not None:
                    progress.update(i, len(self.logs), f"Fitting the entropy law of {run.name}")
                try:
                    fits[run.name] = fit_run_law(run, self.bootstrap, self.seed, self.level)
                except InputError as err:
                    fits[run.name] = str(err)
        return fits

    @result("logs", "bootstrap", "level", "seed", heavy=True)
    def forecasts(self, progress: Progress | None = None) -> dict[float, dict[str, EntropyLawForecast | str]]:
        """For every share in :data:`FRACTIONS`, every run's law fitted on its first steps, predicting the rest
        (or why it cannot)."""
        out = {}
        with one_torch_thread():
            for i, fraction in enumerate(FRACTIONS):
                if progress is not None:
                    progress.update(i, len(FRACTIONS), f"Fitting on the first {fraction:.0%} of the steps")
                out[fraction] = {run.name: self._forecast(run, fraction) for run in self._logs()}
        return out

    def _forecast(self, run: LoggedRun, fraction: float) -> EntropyLawForecast | str:
        try:
            return forecast_entropy_law(run.frame["entropy"].to_numpy(np.float64),
                                        run.frame["reward"].to_numpy(np.float64), fraction, self.bootstrap,
                                        self.seed, self.level)
        except ValueError as err:
            return f"run {run.name!r}: no forecast from the first {fraction:.0%} of the steps: {err}."

    @result("law_fits")
    def law_table(self) -> pd.DataFrame:
        """One row per run: the fitted a, b, the ceiling b - a with their intervals, R^2, the logged steps,
        the first and last logged reward (and why a run has no fit)."""
        rows = []
        for run in self._logs():
            fit = self.law_fits()[run.name]
            reward = run.frame["reward"]
            row = {"run": run.name, "steps": run.steps, "entropy_first": run.frame["entropy"].iloc[0],
                   "entropy_last": run.frame["entropy"].iloc[-1], "reward_first": reward.iloc[0],
                   "reward_last": reward.iloc[-1]}
            if isinstance(fit, str):
                rows.append({**row, "note": fit})
                continue
            rows.append({**row, "a": fit.a, "a_low": fit.a_interval[0], "a_high": fit.a_interval[1], "b": fit.b,
                         "b_low": fit.b_interval[0], "b_high": fit.b_interval[1], "ceiling": fit.ceiling,
                         "ceiling_low": fit.ceiling_interval[0], "ceiling_high": fit.ceiling_interval[1],
                         "r2": fit.r2, "level": fit.level, "bootstrap": fit.bootstrap, "note": ""})
        columns = ["run", "steps", "a", "a_low", "a_high", "b", "b_low", "b_high", "ceiling", "ceiling_low",
                   "ceiling_high", "r2", "level", "bootstrap", "entropy_first", "entropy_last", "reward_first",
                   "reward_last", "note"]
        return pd.DataFrame(rows).reindex(columns=columns)

    @result("law_fits")
    def law_curves(self) -> pd.DataFrame:
        """Per fitted run, the law and its bootstrap band on ``CURVE_POINTS`` entropies from 0 (the ceiling)
        to the largest logged entropy."""
        frames = []
        for run in self._logs():
            fit = self.law_fits()[run.name]
            if isinstance(fit, str):
                continue
            grid = torch.linspace(0, float(run.frame["entropy"].max()), CURVE_POINTS, dtype=torch.float64)
            low, high = fit.prediction_interval(grid)
            frames.append(pd.DataFrame({"run": run.name, "entropy": grid.numpy(), "reward": fit.predict(grid).numpy(),
                                        "low": low.numpy(), "high": high.numpy()}))
        return pd.concat(frames, ignore_index=True) if frames else pd.DataFrame(
            columns=["run", "entropy", "reward", "low", "high"])

    @result("logs")
    def log_points(self) -> pd.DataFrame:
        """Every logged step of every run, with a ``run`` column."""
        return pd.concat([run.frame.assign(run=run.name) for run in self._logs()], ignore_index=True)

    @result("forecasts", "fraction")
    def forecast_table(self) -> pd.DataFrame:
        """The held-out steps of every run at the chosen share: observed and predicted reward, the band,
        and the error (predicted - observed)."""
        frames = []
        for run in self._logs():
            forecast = self.forecasts()[self.fraction][run.name]
            if isinstance(forecast, str):
                continue
            held = run.frame.iloc[forecast.split:]
            frames.append(pd.DataFrame({"run": run.name, "step": held["step"].to_numpy(),
                                        "entropy": held["entropy"].to_numpy(), "observed": held["reward"].to_numpy(),
                                        "predicted": forecast.predicted.numpy(), "low": forecast.low.numpy(),
                                        "high": forecast.high.numpy(), "error": forecast.error.numpy()}))
        return pd.concat(frames, ignore_index=True) if frames else pd.DataFrame(
            columns=["run", "step", "entropy", "observed", "predicted", "low", "high", "error"])

    @result("forecasts", "fraction")
    def forecast_summary(self) -> pd.DataFrame:
        """Per run at the chosen share: the steps fitted, the step the forecast starts at, the ceiling
        predicted from those steps (with its interval), the mean absolute error on the rest, or why none."""
        rows = []
        for run in self._logs():
            forecast = self.forecasts()[self.fraction][run.name]
            if isinstance(forecast, str):
                rows.append({"run": run.name, "note": forecast})
                continue
            split_step = run.frame["step"].iloc[forecast.split] if forecast.split < run.steps else math.nan
            rows.append({"run": run.name, "fraction": self.fraction, "fitted_steps": forecast.split,
                         "held_out_steps": run.steps - forecast.split, "split_step": split_step,
                         "ceiling": forecast.fit.ceiling, "ceiling_low": forecast.fit.ceiling_interval[0],
                         "ceiling_high": forecast.fit.ceiling_interval[1],
                         "mean_absolute_error": forecast.mean_absolute_error, "note": ""})
        return pd.DataFrame(rows)

    @result("logs")
    def covariance_table(self) -> pd.DataFrame:
        """Entropy change per logged step against the covariance term, for the runs that log it
        (:func:`explorer.kernels.training.entropy_change_vs_covariance`)."""
        frames = []
        for run in self._logs():
            if "covariance" not in run.frame:
                continue
            found = entropy_change_vs_covariance(run.frame["entropy"].to_numpy(np.float64),
                                                 run.frame["covariance"].to_numpy(np.float64),
                                                 run.frame["step"].to_numpy(np.float64, copy=True))
            frames.append(pd.DataFrame({"run": run.name, "step": found.steps.numpy(),
                                        "entropy_change": found.entropy_change.numpy(),
                                        "covariance": found.covariance.numpy(), "correlation": found.correlation,
                                        "slope": found.slope}))
        return pd.concat(frames, ignore_index=True) if frames else pd.DataFrame(
            columns=["run", "step", "entropy_change", "covariance", "correlation", "slope"])

    # ------------------------------------------------------------------------- data size
    def _data_size(self) -> DataSizeUncertainty:
        if self.data_size is None:
            raise InputError("The data-size ensembles are not loaded yet.")
        return self.data_size

    @result("data_size")
    def data_size_table(self) -> pd.DataFrame:
        """Mean predictive entropy, expected entropy, mutual information (nats) and accuracy per training-set
        size, with the fitted power laws at each size."""
        found = self._data_size()
        sizes = found.table["n"].to_numpy(np.float64)
        return found.table.assign(predictive_fit=found.predictive_fit.predict(sizes).numpy(),
                                  mutual_information_fit=found.mutual_information_fit.predict(sizes).numpy())

    @result("data_size")
    def data_size_fits(self) -> pd.DataFrame:
        """The power laws ``y = c n^-k``: c, k and its interval, R^2, for both uncertainties."""
        found = self._data_size()
        return pd.DataFrame([{"uncertainty": name, "c": fit.c, "k": fit.k, "k_low": fit.k_interval[0],
                              "k_high": fit.k_interval[1], "level": fit.level, "r2": fit.r2}
                             for name, fit in (("predictive entropy", found.predictive_fit),
                                               ("mutual information", found.mutual_information_fit))])


    # ------------------------------------------------------------------------- report
    report_title = "Training dynamics"

    def report_sections(self, measure: str | None = None) -> list:
        """The page as data for :mod:`explorer.analyses.report`, one part per loaded input: the representations'
        DSE, DSMI and Vendi against epoch per run (and ``measure``, the page's choice, when it is another
        column), the verdict, the information plane and the spectrum at the chosen epoch; the entropy law of
        the logged runs with its parameters and intervals, entropy change against the covariance term and,
        once computed, the forecast from the first steps; uncertainty against data size. A part whose long
        results are not computed (or cannot be) says so and the others are shown."""
        from explorer.analyses import report as r

        parts = []
        for title, loaded, sections in (
                ("Representations across training", bool(self.runs), lambda: self._representation_report(measure)),
                ("Logged runs: the entropy law", bool(self.logs), self._law_report),
                ("Uncertainty against data size", self.data_size is not None, self._data_size_report)):
            if not loaded:
                continue
            parts.append(r.Heading(title))
            try:
                parts += sections()
            except NotComputed as err:
                parts.append(r.Note(f"Not computed yet when this report was made ({err})", warning=True))
            except InputError as err:
                parts.append(r.Note(str(err), warning=True))
        if not parts:
            raise InputError("No runs, logs or data-size ensembles loaded.")
        return parts

    def _representation_report(self, measure: str | None) -> list:
        from explorer.analyses import report as r

        table, names = self.measures(), self.measure_names()
        colours = {name: r.SERIES[i % len(r.SERIES)] for i, name in enumerate(self.runs)}
        epochs = self.epochs()
        parts = [r.Facts("Runs and settings", {
            "runs": ", ".join(self.runs), "layer": self.layer,
            "checkpoints": f"{len(epochs)} epochs, {epochs[0]} to {epochs[-1]}",
            "probe rows": ", ".join(str(run.layers[self.layer].shape[1]) for run in self.runs.values()),
            "DSE sigma": "median pairwise distance per checkpoint" if not self.sigma else self.sigma,
            "diffusion time t": self.t, "Vendi order q (cosine kernel)": self.q,
            "input clusters (DSMI with X)": self.clusters})]
        cards = []
        for run, part in table.groupby("run", sort=False):
            first, last = part.sort_values("epoch").iloc[[0, -1]].itertuples()
            cards.append((f"DSE, {run}", last.dse, f"bits at epoch {last.epoch}; {first.dse:.3g} at epoch {first.epoch}"))
            if not math.isnan(last.dsmi_labels):
                cards.append((f"DSMI with labels, {run}", last.dsmi_labels,
                              f"bits at epoch {last.epoch}; {first.dsmi_labels:.3g} at epoch {first.epoch}"))
            if "test_accuracy" in names and not math.isnan(last.test_accuracy):
                cards.append((f"Test accuracy, {run}", last.test_accuracy, f"at epoch {last.epoch}"))
        parts += [r.Cards(cards), *(r.Note(line) for line in self.verdict())]
        shown = [column for column in ("dse", "dsmi_labels", "dsmi_inputs", "vendi") if column in names]
        shown += [measure] if measure in names and measure not in shown else []
        for column in shown:
            label = MEASURES.get(column, column) + (f", q = {self.q:g}" if column == "vendi" else "")
            lines = [r.Line(part["epoch"], part[column], run, colours[run])
                     for run, part in table.dropna(subset=[column]).groupby("run", sort=False)]
            parts.append(r.Plot(f"{label} against epoch", "epoch", label,
                                lines + [r.Rule(self.epoch, colour=r.INK, dash="dotted")], height=260))
        plane = self.information_plane().dropna()
        if len(plane):
            marks = [mark for run, part in plane.groupby("run", sort=False) for mark in (
                r.Line(part["dsmi_inputs"], part["dsmi_labels"], run, colours[run], 1.5, alpha=0.6),
                r.Points(part["dsmi_inputs"], part["dsmi_labels"], colour=colours[run],
                         hover={"epoch": part["epoch"].tolist()}))]
            parts.append(r.Plot("Information plane (hover: epoch)", "DSMI(Z; X) with input clusters (bits)",
                                "DSMI(Z; Y) with the labels (bits)", marks, height=380))
        try:
            spectrum = self.spectrum_at_epoch()
        except InputError as err:   # no checkpoint at the chosen epoch
            parts.append(r.Note(str(err), warning=True))
        else:
            spectrum = spectrum[spectrum["mu"] > 1e-15]   # below that, round-off of a rank-deficient spectrum
            parts.append(r.Plot(f"Diffusion spectrum of {self.layer} at epoch {self.epoch} (t = {self.t:g}; DSE is "
                                "its entropy)", "rank", "μ_i = |λ_i|^t / Σ|λ_j|^t",
                                [r.Line(part["rank"], part["mu"], run, colours[run])
                                 for run, part in spectrum.groupby("run", sort=False)], x_log=True, y_log=True))
        parts.append(r.Table("Measures per run and epoch", table.drop(columns=["layer"]).round(5)))
        return parts

    def _law_report(self) -> list:
        from explorer.analyses import report as r

        fits = self.law_table()
        colours = {run.name: r.SERIES[i % len(r.SERIES)] for i, run in enumerate(self.logs)}
        parts = [r.Facts("Logged runs", {run.name: f"{run.steps:,} steps ({Path(run.source).name})"
                                         for run in self.logs})]
        cards, notes = [], []
        for row in fits.itertuples():
            if row.note:
                notes.append(r.Note(row.note, warning=True))
                continue
            cards += [(f"Ceiling b − a, {row.run}", row.ceiling,
                       f"{row.level:.0%} interval {row.ceiling_low:.4g} to {row.ceiling_high:.4g}"),
                      (f"a, {row.run}", row.a, f"{row.level:.0%} interval {row.a_low:.4g} to {row.a_high:.4g}"),
                      (f"b, {row.run}", row.b, f"{row.level:.0%} interval {row.b_low:.4g} to {row.b_high:.4g}"),
                      (f"R², {row.run}", row.r2, f"{row.steps} steps, reward {row.reward_first:.3g} → "
                                                 f"{row.reward_last:.3g}")]
        parts += [r.Cards(cards), *notes,
                  r.Note(f"Intervals: percentile bootstrap over steps ({self.bootstrap} resamples); consecutive steps "
                         "of a run are correlated, so they are on the narrow side.")]
        points, curves = self.log_points(), self.law_curves()
        marks = []
        for run in self.logs:
            colour, logged, curve = colours[run.name], points[points["run"] == run.name], \
                curves[curves["run"] == run.name]
            marks.append(r.Points(logged["entropy"], logged["reward"], colour=colour, size=3, alpha=0.35,
                                  hover={"step": logged["step"].tolist()}))
            if len(curve):
                fit = fits[fits["run"] == run.name].iloc[0]
                marks += [r.Band(curve["entropy"], curve["low"], curve["high"], colour),
                          r.Line(curve["entropy"], curve["reward"], run.name, colour, 2.5),
                          r.Points([0.0], [fit["ceiling"]], colour=colour, size=11, alpha=1.0,
                                   hover={"ceiling": [f"{fit['ceiling']:.4g} ({fit['ceiling_low']:.4g} to "
                                                      f"{fit['ceiling_high']:.4g})"]})]
        parts += [r.Plot("Reward against entropy, R = −a exp(H) + b (band: the bootstrap interval; at H = 0: the "
                         "ceiling)", "policy entropy H (nats)", "reward", marks, height=360),
                  r.Table("Entropy-law fits", fits.round(5))]
        covariance = self.covariance_table()
        if len(covariance):
            marks, pearson = [], []
            for run, part in covariance.groupby("run", sort=False):
                x = np.array([part["covariance"].min(), part["covariance"].max()])
                marks += [r.Points(part["covariance"], part["entropy_change"], colour=colours[run], size=3, alpha=0.4),
                          r.Line(x, part["slope"].iloc[0] * x, run, colours[run], dash="dashed")]
                pearson.append(f"{part['correlation'].iloc[0]:.2f}")
            parts.append(r.Plot(f"Entropy change per step against the covariance (Pearson r = {', '.join(pearson)})",
                                "Cov(log π(a), A(a)) on the step's batch", "H(step + 1) − H(step) (nats)",
                                marks + [r.Rule(0.0, "width", r.GREY, "solid")]))
        try:
            parts += self._forecast_report(colours)
        except NotComputed:
            parts.append(r.Note("The forecast from the first steps was not computed yet when this report was made.",
                                warning=True))
        return parts

    def _forecast_report(self, colours: dict[str, str]) -> list:
        from explorer.analyses import report as r

        summary, table, points = self.forecast_summary(), self.forecast_table(), self.log_points()
        cards, notes, marks, errors = [], [], [], []
        for row in summary.itertuples():
            if row.note:
                notes.append(r.Note(row.note, warning=True))
                continue
            cards += [(f"Ceiling from the first {row.fitted_steps} steps, {row.run}", row.ceiling,
                       f"interval {row.ceiling_low:.4g} to {row.ceiling_high:.4g}"),
                      (f"Mean |error| on the other {row.held_out_steps}, {row.run}", row.mean_absolute_error,
                       "reward units")]
            colour, held = colours[row.run], table[table["run"] == row.run]
            logged = points[points["run"] == row.run]
            marks += [r.Points(logged["step"], logged["reward"], colour=colour, size=2, alpha=0.3),
                      r.Band(held["step"], held["low"], held["high"], colour, alpha=0.25),
                      r.Line(held["step"], held["predicted"], row.run, colour)]
            marks += [r.Rule(row.split_step, colour=r.INK)] if math.isfinite(row.split_step) else []
            errors.append(r.Points(held["step"], held["error"], row.run, colour, size=2, alpha=0.5))
        parts = [r.Heading(f"Forecast: fit on the first {self.fraction:.0%} of the steps, predict the rest"),
                 r.Cards(cards), *notes]
        if marks:
            parts += [r.Plot(f"Fit on the first {self.fraction:.0%} of steps, predict the rest (dashed: where the "
                             "forecast starts)", "step", "reward", marks),
                      r.Plot("Prediction error on the held-out steps", "step", "predicted − observed reward",
                             errors + [r.Rule(0.0, "width", r.INK, "solid")])]
        return parts + [r.Table("Forecast per run", summary.round(5)),
                        r.Table("Forecast on the held-out steps", table.round(5))]

    def _data_size_report(self) -> list:
        from explorer.analyses import report as r

        table, fits = self.data_size_table(), self.data_size_fits()
        cards = [(f"Exponent k, {row.uncertainty}", row.k,
                  f"{row.level:.0%} interval {row.k_low:.4g} to {row.k_high:.4g}; R² {row.r2:.2f}")
                 for row in fits.itertuples()]
        marks = [mark for column, colour, label in (("predictive", r.TEAL, "predictive entropy"),
                                                    ("mutual_information", r.AMBER, "mutual information (epistemic)"))
                 for mark in (r.Points(table["n"], table[column], label, colour, size=9),
                              r.Line(table["n"], table[f"{column}_fit"], colour=colour, dash="dashed"))]
        return [r.Note("Deep ensembles trained on nested subsets of the training digits; on the held-out digits, the "
                       "ensemble's predictive entropy H[mean p] and its mutual-information (epistemic) part, with "
                       "power laws y = c n^-k fitted on log-log axes."),
                r.Cards(cards),
                r.Plot("Uncertainty against training-set size (log-log)", "training digits n",
                       "mean over the probe digits (nats)", marks, x_log=True, y_log=True),
                r.Table("Power laws", fits.round(5)), r.Table("Per training-set size", table.round(5))]


def _claim_lines(claims) -> list[str]:
    def pair(values: tuple[float, float]) -> str:
        return f"{values[0]:.2f} → {values[1]:.2f}"
    rises = claims.dse_increases
    dse = ", ".join(f"{run} {pair(claims.dse[run])}" for run in RUNS)
    dsmi = ", ".join(f"{run} {pair(claims.dsmi[run])}" for run in RUNS)
    if all(rises.values()):
        first = f"Claim 1, DSE rises during training: holds here ({dse} bits, first → last epoch)."
    else:
        falls = [run for run, up in rises.items() if not up]
        first = (f"Claim 1, DSE rises during training: does not hold here: DSE falls with {' and '.join(falls)} "
                 f"({dse} bits).")
    true_rises, shuffled_flat = claims.dsmi_rises_with_true_labels, claims.dsmi_flat_with_shuffled_labels
    shuffled = claims.dsmi["shuffled labels"]
    flat_words = ("stays flat" if shuffled_flat else
                  f"does not stay flat: it {'rises' if shuffled[1] > shuffled[0] else 'falls'} by "
                  f"{abs(shuffled[1] - shuffled[0]):.2f}, more than {FLAT_FRACTION:.0%} of the true-label rise")
    second = (f"Claim 2, DSMI with the labels rises when the network learns and stays flat when it memorises "
              f"shuffled labels: {'holds' if true_rises and shuffled_flat else 'does not hold'} here ({dsmi} bits): "
              f"with true labels it {'rises' if true_rises else 'does not rise'}; with shuffled labels it "
              f"{flat_words}.")
    return [first, second]


def _scale_line(tables: dict[str, pd.DataFrame], sigma: float) -> str:
    growth = {name: part.sort_values("epoch")["scale"].to_numpy() for name, part in tables.items()}
    moves = ", ".join(f"{name} {s[0]:.3g} → {s[-1]:.3g}" for name, s in growth.items())
    if not sigma:
        return (f"Sigma follows each checkpoint's median pairwise distance ({moves}), so the measures do not "
                "reflect the activations' overall scale.")
    largest = max(max(s[-1] / s[0], s[0] / s[-1]) for s in growth.values())
    if largest > SCALE_GROWTH_NOTE:
        return (f"Caution: the activations' scale (median pairwise distance) changes up to {largest:.0f}x over training "
                f"({moves}); with a fixed sigma = {sigma:g} the diffusion kernel mostly sees points moving apart, so "
                "much of the change in DSE reflects scale. Set sigma to 0 (median per checkpoint) to factor scale out.")
    return f"The median pairwise distance changes little over training ({moves}); a fixed sigma = {sigma:g} suits it."
