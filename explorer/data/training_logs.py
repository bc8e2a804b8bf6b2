"""Training logs and representations across training, from files.

Logged runs (for the entropy law): ``.csv``, ``.jsonl`` (one JSON object per line), ``.parquet``, or
TensorBoard event files (``events.out.tfevents.*``, read with TensorBoard's own event accumulator). One
file holds one run, or several with a ``run`` column; several files are one run each. The user maps the
columns (:class:`ColumnMap`; for TensorBoard, the scalar tags); the step of a TensorBoard scalar is its
event step.

Representations (for DSE / DSMI across training): a folder (or uploaded files) of ``.npy`` / ``.npz`` /
``.parquet`` files, one per epoch or step with the number in the file name (``epoch_03.npy``); an ``.npz``
may hold several layers (one 2-D array each) plus ``labels`` and ``inputs``; ``labels.npy`` /
``inputs.npy`` beside them are the probe set's labels and inputs. Or one Parquet file with an ``epoch``
(or ``step``) column, an optional label column, and one numeric column per dimension.

Every bad input becomes one :class:`InputError` in plain words; files are read through
:mod:`explorer.data.uploads` (nothing is ever unpickled); each file, and a folder's files together, must be
under ``MAX_UPLOAD_BYTES``.
"""

from __future__ import annotations

import itertools
import re
import tempfile
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd
import torch

from explorer.data.embeddings import LABEL_NAMES
from explorer.data.uploads import MAX_UPLOAD_BYTES, Upload, human_size, read_npy, read_npz, read_table, upload_from
from explorer.errors import InputError
from explorer.kernels.training import MIN_FIT_POINTS, EntropyLawFit, fit_entropy_law

LOG_SUFFIXES = (".csv", ".jsonl", ".parquet")
REPRESENTATION_SUFFIXES = (".npy", ".npz", ".parquet")
SIDE_ARRAYS = ("labels", "inputs")  # per-probe arrays, not layers
EPOCH_COLUMNS = ("epoch", "step")
Source = str | Path | bytes


# ------------------------------------------------------------------------------------ logged runs
@dataclass(frozen=True)
class ColumnMap:
    """Which column (or TensorBoard tag) holds each quantity; None = not logged. ``run``: the column that
    names the run in a file holding several (a column named ``run`` is used when present)."""

    step: str = "step"
    entropy: str = "entropy"
    reward: str = "reward"
    covariance: str | None = None
    advantage: str | None = None
    run: str | None = None

    def fields(self) -> dict[str, str]:
        """Standard name -> the user's column, for the quantities that are mapped."""
        names = ("step", "entropy", "reward", "covariance", "advantage")
        return {name: getattr(self, name) for name in names if getattr(self, name) is not None}


@dataclass(frozen=True)
class LoggedRun:
    """One run: ``frame`` has the columns step, entropy, reward (and covariance / advantage when mapped),
    one row per logged step, steps strictly increasing, every value finite."""

    name: str
    frame: pd.DataFrame
    source: str

    @property
    def steps(self) -> int:
        return len(self.frame)


BUNDLED_RL_LOG = Path(__file__).resolve().parents[2] / "data" / "rl_addition_log.csv"
BUNDLED_RL_DESCRIPTION = (
    "A real RL fine-tuning run made by scripts/make_rl_log.py: a small softmax policy over the 99 answers "
    "0..98 (an MLP on the digits of a and b) answers a + b for a, b in 0..49 and earns reward 1 only for the "
    "exact sum. Pretrained on a noisy teacher, then 3,000 steps of GRPO-style policy gradient (64 prompts x "
    "8 sampled answers per step, group-normalised advantages, no entropy bonus). Entropy: the policy's "
    "mean answer entropy over all 2,500 prompts (nats); reward: mean over the step's sampled answers.")


def load_bundled_rl_log(reward: str = "reward") -> LoggedRun:
    """The bundled RL log (``BUNDLED_RL_DESCRIPTION``), with ``reward`` = "reward" (sampled) or "accuracy"
    (greedy) as the performance column."""
    columns = ColumnMap(reward=reward, covariance="covariance", advantage="advantage_abs_mean")
    return load_training_log(BUNDLED_RL_LOG, columns=columns)[0]


def is_tensorboard_file(name: str) -> bool:
    return "tfevents" in Path(name).name


def log_columns(source: Source, filename: str | None = None) -> list[str]:
    """The columns (or TensorBoard scalar tags) a log offers, for the user to map."""
    name = _name(source, filename)
    if is_tensorboard_file(name):
        return sorted(_tensorboard_scalars(source, name))
    return [str(c) for c in _log_table(source, name).columns]


def load_training_log(source: Source, filename: str | None = None, columns: ColumnMap = ColumnMap()) -> list[LoggedRun]:
    """The runs in one log file (several when it has a run column)."""
    name = _name(source, filename)
    if is_tensorboard_file(name):
        return [_validated_run(_run_name(name), _tensorboard_table(source, name, columns), name)]
    table = _log_table(source, name)
    run_column = columns.run or ("run" if "run" in table.columns else None)
    if run_column is None:
        return [_validated_run(_run_name(name), _mapped(table, columns, name), name)]
    if run_column not in table.columns:
        raise InputError(f"{name}: no run column {run_column!r}; columns are {_listed(table.columns)}.")
    return [_validated_run(str(run), _mapped(part, columns, name), name)
            for run, part in table.groupby(run_column, sort=False)]


def load_training_logs(sources: Sequence[Source] | Mapping[str, bytes],
                       columns: ColumnMap = ColumnMap()) -> list[LoggedRun]:
    """Several files (paths, a folder, or uploads ``{filename: bytes}``), one run each unless a file has a
    run column. Run names are made unique."""
    items = list(sources.items()) if isinstance(sources, Mapping) else [(None, s) for s in sources]
    files = [(filename, path) for filename, source in items for path in _expanded(source, filename)]
    if not files:
        raise InputError("No log files given: choose .csv, .jsonl, .parquet or TensorBoard event files.")
    runs, seen = [], {}
    for filename, source in files:
        for run in load_training_log(source, filename, columns):
            count = seen.get(run.name, 0)
            seen[run.name] = count + 1
            runs.append(run if count == 0 else LoggedRun(f"{run.name} ({count + 1})", run.frame, run.source))
    return runs


def fit_run_law(run: LoggedRun, bootstrap: int = 1000, seed: int = 0, level: float = 0.95) -> EntropyLawFit:
    """The entropy law of one run; a run the law cannot be fitted to gives an :class:`InputError`."""
    try:
        return fit_entropy_law(run.frame["entropy"].to_numpy(np.float64), run.frame["reward"].to_numpy(np.float64),
                               bootstrap, seed, level)
    except ValueError as err:
        raise InputError(f"run {run.name!r}: no entropy-law fit: {err}.") from err


def _expanded(source, filename: str | None) -> list:
    """A folder becomes its log files (TensorBoard event files at any depth); anything else is itself."""
    if isinstance(source, bytes) or not Path(source).is_dir():
        return [source]
    folder = Path(source)
    found = sorted(p for p in folder.rglob("*") if p.is_file() and
                   (p.suffix.lower() in LOG_SUFFIXES or is_tensorboard_file(p.name)))
    if not found:
        raise InputError(f"{folder}: no .csv, .jsonl, .parquet or TensorBoard event files in this folder.")
    return found


def _name(source: Source, filename: str | None) -> str:
    if filename:
        return filename
    if isinstance(source, bytes):
        raise InputError("An uploaded log needs its file name (to tell its format).")
    return str(source)


def _run_name(name: str) -> str:
    path = Path(name)
    if is_tensorboard_file(name):  # event files are named by time and host: the folder names the run
        return path.parent.name or path.name
    return path.stem


def _listed(values) -> str:
    values = [str(v) for v in values]
    return ", ".join(values[:20]) + (f" and {len(values) - 20} more" if len(values) > 20 else "")


def _log_table(source: Source, name: str) -> pd.DataFrame:
    suffix = Path(name).suffix.lower()
    if suffix not in LOG_SUFFIXES:
        raise InputError(f"{Path(name).name}: unsupported log type {suffix or '(none)'}; use .csv, .jsonl, .parquet "
                         "or a TensorBoard event file (events.out.tfevents.*).")
    table = read_table(upload_from(source, Path(name).name))
    if table.empty:
        raise InputError(f"{Path(name).name}: the log has no rows.")
    return table


def _mapped(table: pd.DataFrame, columns: ColumnMap, name: str) -> pd.DataFrame:
    """The mapped columns under their standard names, checked to be numbers."""
    mapped = {}
    for standard, column in columns.fields().items():
        if column not in table.columns:
            raise InputError(f"{Path(name).name}: no column {column!r} for the {standard}; columns are "
                             f"{_listed(table.columns)}.")
        mapped[standard] = _numeric(table[column], column, Path(name).name)
    return pd.DataFrame(mapped).reset_index(drop=True)


def _numeric(values: pd.Series, column: str, name: str) -> pd.Series:
    """Numbers as float64 (true/false as 1/0; numbers written as text are read); anything else is an error."""
    if not pd.api.types.is_numeric_dtype(values):
        converted = pd.to_numeric(values, errors="coerce")
        bad = values[converted.isna() & values.notna()]
        if len(bad):
            raise InputError(f"{name}: column {column!r} is not numeric (e.g. the value {bad.iloc[0]!r}); map a "
                             "column of numbers.")
        values = converted
    return values.astype(np.float64)


def _validated_run(run: str, frame: pd.DataFrame, source: str) -> LoggedRun:
    where = f"{Path(source).name}, run {run!r}"
    if len(frame) < MIN_FIT_POINTS:
        raise InputError(f"{where}: {len(frame)} logged step(s); the entropy law needs at least {MIN_FIT_POINTS}.")
    values = frame.to_numpy(np.float64)
    bad = ~np.isfinite(values)
    if bad.any():
        row, col = map(int, np.argwhere(bad)[0])
        raise InputError(f"{where}: column {frame.columns[col]!r} has {int(bad[:, col].sum())} NaN or infinite "
                         f"value(s) (first at row {row + 1}); remove or fill those steps.")
    steps = frame["step"].to_numpy()
    back = np.flatnonzero(np.diff(steps) <= 0)
    if back.size:
        i = int(back[0])
        raise InputError(f"{where}: the step column must increase: step {steps[i + 1]:g} (row {i + 2}) follows "
                         f"step {steps[i]:g}. Sort the log, or split restarted runs with a run column.")
    return LoggedRun(run, frame.reset_index(drop=True), source)


# ------------------------------------------------------------------------------------- TensorBoard
def _tensorboard_scalars(source: Source, name: str) -> dict[str, pd.Series]:
    """Every scalar tag of one event file as a Series indexed by step (the last value when a step repeats)."""
    from tensorboard.backend.event_processing.event_accumulator import SCALARS, EventAccumulator

    raw = upload_from(source, Path(name).name).data
    with tempfile.TemporaryDirectory() as folder:
        path = Path(folder) / Path(name).name
        path.write_bytes(raw)
        try:
            accumulator = EventAccumulator(str(path), size_guidance={SCALARS: 0})
            accumulator.Reload()
            tags = accumulator.Tags().get(SCALARS, [])
            scalars = {tag: pd.Series({event.step: event.value for event in accumulator.Scalars(tag)},
                                      dtype=np.float64) for tag in tags}
        except Exception as err:  # a damaged event file
            raise InputError(f"{Path(name).name}: could not read it as a TensorBoard event file: {err}") from err
    if not scalars:
        raise InputError(f"{Path(name).name}: no scalar values in this TensorBoard event file.")
    return scalars


def _tensorboard_table(source: Source, name: str, columns: ColumnMap) -> pd.DataFrame:
    """The mapped tags joined on their event steps (steps where every mapped tag was logged)."""
    scalars = _tensorboard_scalars(source, name)
    wanted = {k: v for k, v in columns.fields().items() if k != "step"}
    missing = [tag for tag in wanted.values() if tag not in scalars]
    if missing:
        raise InputError(f"{Path(name).name}: no scalar tag {missing[0]!r} in this TensorBoard file; its tags are "
                         f"{_listed(sorted(scalars))}.")
    table = pd.concat({standard: scalars[tag] for standard, tag in wanted.items()}, axis=1, join="inner").sort_index()
    if table.empty:
        raise InputError(f"{Path(name).name}: the tags {_listed(wanted.values())} were never logged at the same step.")
    return table.rename_axis("step").reset_index().astype(np.float64)[["step", *wanted]]


# -------------------------------------------------------------------------- representations per epoch
@dataclass
class RepresentationRun:
    """Representations of one probe set at every checkpoint: ``layers[name]`` is an ``epochs x n x d``
    float32 tensor; ``labels`` (n) and ``inputs`` (n x d_in) describe the probe set when known;
    ``metrics`` has one row per epoch (an ``epoch`` column, then e.g. train/test accuracy and loss)."""

    name: str
    epochs: np.ndarray
    layers: dict[str, torch.Tensor]
    labels: np.ndarray | None = None
    inputs: torch.Tensor | None = None
    metrics: pd.DataFrame | None = None
    notes: list[str] = field(default_factory=list)

    @property
    def n(self) -> int:
        return int(next(iter(self.layers.values())).shape[1])


def load_representation_run(source: str | Path | Mapping[str, bytes], name: str | None = None) -> RepresentationRun:
    """Representations across training from a folder, uploaded files ``{filename: bytes}``, or one Parquet
    file with an epoch column (see the module docstring)."""
    if not isinstance(source, Mapping) and Path(source).is_file():
        path = Path(source)
        return _from_long_parquet(path.name, upload_from(path).data, name or path.stem)
    files = _representation_files(source)
    if len(files) == 1 and Path(next(iter(files))).suffix.lower() == ".parquet":
        filename, raw = next(iter(files.items()))
        return _from_long_parquet(filename, raw, name or Path(filename).stem)
    side = {key: _side_array(files.pop(filename), filename) for filename in list(files)
            if (key := Path(filename).stem.lower()) in SIDE_ARRAYS}
    if not files:
        raise InputError("No representation files: give one .npy, .npz or .parquet file per epoch (epoch_0.npy, ...).")
    by_epoch = {}
    for filename, raw in files.items():
        epoch = _epoch_of(filename)
        if epoch is None:
            raise InputError(f"{filename}: cannot tell its epoch; put the epoch or step number in the file name "
                             "(epoch_3.npy).")
        if epoch in by_epoch:
            raise InputError(f"{filename} and {by_epoch[epoch][0]} both hold epoch {epoch}.")
        by_epoch[epoch] = (filename, raw)
    epochs = _checked_epochs(sorted(by_epoch))
    checkpoints = [(by_epoch[e][0], _checkpoint_arrays(*by_epoch[e])) for e in epochs]
    run_name = name or (Path(source).name if not isinstance(source, Mapping) else "uploaded representations")
    return _assembled(run_name, epochs, checkpoints, side.get("labels"), side.get("inputs"))


def _representation_files(source) -> dict[str, bytes]:
    if isinstance(source, Mapping):
        files = dict(source)
        for filename, raw in files.items():
            upload_from(raw, filename)  # size and emptiness
    else:
        folder = Path(source)
        if not folder.is_dir():
            raise InputError(f"{folder}: no such folder or file.")
        paths = sorted(p for p in folder.iterdir() if p.is_file() and p.suffix.lower() in REPRESENTATION_SUFFIXES)
        files = {p.name: upload_from(p).data for p in paths}
    unsupported = [f for f in files if Path(f).suffix.lower() not in REPRESENTATION_SUFFIXES]
    if unsupported:
        raise InputError(f"{unsupported[0]}: unsupported type; representations are .npy, .npz or .parquet files.")
    if not files:
        where = "" if isinstance(source, Mapping) else f" in {source}"
        raise InputError(f"No .npy, .npz or .parquet files{where}: give one representation file per epoch.")
    total = sum(len(raw) for raw in files.values())
    if total > MAX_UPLOAD_BYTES:
        raise InputError(f"The representation files hold {human_size(total)} together (limit "
                         f"{human_size(MAX_UPLOAD_BYTES)}); keep fewer epochs or a smaller probe set.")
    return files


def _epoch_of(filename: str) -> int | None:
    numbers = re.findall(r"\d+", Path(filename).stem)
    return int(numbers[-1]) if numbers else None


def _checked_epochs(epochs: list[int]) -> list[int]:
    if len(epochs) < 2:
        raise InputError(f"Only one checkpoint (epoch {epochs[0]}): representations across training need at "
                         "least two.")
    stride = min(np.diff(epochs))
    for before, after in itertools.pairwise(epochs):
        if after - before != stride:
            raise InputError(f"Epoch {before + stride} is missing: the checkpoints go every {stride} up to "
                             f"{before}, then jump to {after}. Add the missing file(s) or remove the later ones.")
    return epochs


def _side_array(raw: bytes, filename: str) -> np.ndarray:
    if Path(filename).suffix.lower() != ".npy":
        raise InputError(f"{filename}: labels and inputs must be a plain .npy array.")
    return read_npy(Upload(filename, raw))


def _checkpoint_arrays(filename: str, raw: bytes) -> dict[str, np.ndarray]:
    """Layer name -> 2-D array, plus ``labels`` / ``inputs`` when the file carries them."""
    suffix = Path(filename).suffix.lower()
    if suffix == ".npy":
        return {"representation": read_npy(Upload(filename, raw))}
    if suffix == ".npz":
        arrays = read_npz(Upload(filename, raw))
        if not any(key not in SIDE_ARRAYS for key in arrays):
            raise InputError(f"{filename}: no representation array in the .npz (only {_listed(arrays)}).")
        return arrays
    table = _parquet(filename, raw)
    label = next((c for c in table.columns if str(c).lower() in LABEL_NAMES), None)
    arrays = {"representation": _feature_matrix(table.drop(columns=[label] if label else []), filename)}
    if label:
        arrays["labels"] = table[label].to_numpy()
    return arrays


def _parquet(filename: str, raw: bytes) -> pd.DataFrame:
    table = read_table(Upload(filename, raw))
    if table.empty:
        raise InputError(f"{filename}: the table has no rows.")
    return table


def _feature_matrix(table: pd.DataFrame, filename: str) -> np.ndarray:
    non_numeric = [str(c) for c in table.columns if not pd.api.types.is_numeric_dtype(table[c])]
    if non_numeric:
        raise InputError(f"{filename}: non-numeric columns {_listed(non_numeric)}; keep one numeric column per "
                         f"dimension plus one label column ({'/'.join(LABEL_NAMES)}).")
    if table.shape[1] == 0:
        raise InputError(f"{filename}: no representation columns.")
    return table.to_numpy(np.float64)


def _from_long_parquet(filename: str, raw: bytes, name: str) -> RepresentationRun:
    table = _parquet(filename, raw)
    epoch_column = next((c for c in table.columns if str(c).lower() in EPOCH_COLUMNS), None)
    if epoch_column is None:
        raise InputError(f"{filename}: one Parquet file for all epochs needs an epoch (or step) column; columns are "
                         f"{_listed(table.columns)}.")
    epoch_values = _numeric(table[epoch_column], str(epoch_column), filename)
    if epoch_values.isna().any() or (epoch_values != epoch_values.round()).any():
        raise InputError(f"{filename}: the {epoch_column} column must hold whole numbers.")
    label = next((c for c in table.columns if str(c).lower() in LABEL_NAMES), None)
    features = table.drop(columns=[c for c in (epoch_column, label) if c is not None])
    epochs = _checked_epochs(sorted(epoch_values.astype(int).unique().tolist()))
    checkpoints = []
    for epoch in epochs:
        rows = (epoch_values == epoch).to_numpy()
        arrays = {"representation": _feature_matrix(features[rows], f"{filename}, epoch {epoch}")}
        if label is not None:
            arrays["labels"] = table.loc[rows, label].to_numpy()
        checkpoints.append((f"{filename}, epoch {epoch}", arrays))
    return _assembled(name, epochs, checkpoints, None, None)


def _assembled(name: str, epochs: list[int], checkpoints: list[tuple[str, dict[str, np.ndarray]]],
               labels: np.ndarray | None, inputs: np.ndarray | None) -> RepresentationRun:
    """Check every checkpoint against the first (layers, rows, dimensions, labels) and stack them."""
    first_name, first = checkpoints[0]
    layer_names = [k for k in first if k not in SIDE_ARRAYS]
    stacks = {layer: [] for layer in layer_names}
    for filename, arrays in checkpoints:
        layers = [k for k in arrays if k not in SIDE_ARRAYS]
        if set(layers) != set(layer_names):
            raise InputError(f"{filename} holds the layers {_listed(layers)} but {first_name} holds "
                             f"{_listed(layer_names)}: every checkpoint must hold the same layers.")
        for layer in layer_names:
            where = f"{filename} ({layer})" if len(layer_names) > 1 else filename
            stacks[layer].append(_layer_matrix(arrays[layer], where))
        if "labels" in arrays:
            labels = _same_labels(labels, arrays["labels"], filename)
        if "inputs" in arrays:
            inputs = arrays["inputs"] if inputs is None else inputs
    for layer, matrices in stacks.items():
        for (filename, _), matrix in zip(checkpoints, matrices):
            if matrix.shape[0] != matrices[0].shape[0]:
                raise InputError(f"{filename} has {matrix.shape[0]} rows but {first_name} has {matrices[0].shape[0]}: "
                                 "every checkpoint must hold the same probe set.")
            if matrix.shape[1] != matrices[0].shape[1]:
                raise InputError(f"{filename}: layer {layer!r} has {matrix.shape[1]} dimensions but "
                                 f"{matrices[0].shape[1]} in {first_name}.")
    n = stacks[layer_names[0]][0].shape[0]
    if labels is not None and len(labels) != n:
        raise InputError(f"{len(labels)} labels for a probe set of {n} rows; they must match.")
    if inputs is not None:
        inputs = _layer_matrix(np.asarray(inputs), "inputs")
        if inputs.shape[0] != n:
            raise InputError(f"{inputs.shape[0]} input rows for a probe set of {n} rows; they must match.")
    return RepresentationRun(name, np.asarray(epochs, dtype=np.int64),
                             {layer: torch.from_numpy(np.stack(matrices).astype(np.float32))
                              for layer, matrices in stacks.items()},
                             None if labels is None else np.asarray(labels),
                             None if inputs is None else torch.from_numpy(inputs.astype(np.float32)))


def _layer_matrix(array: np.ndarray, where: str) -> np.ndarray:
    if array.dtype == object or not np.issubdtype(array.dtype, np.number):
        raise InputError(f"{where}: the representation must be numbers, got {array.dtype}.")
    if array.ndim != 2:
        raise InputError(f"{where}: expected a 2-D array (probe rows x dimensions), got shape {array.shape}.")
    if array.shape[0] < 2 or array.shape[1] < 1:
        raise InputError(f"{where}: needs at least 2 rows and 1 dimension, got shape {array.shape}.")
    bad = np.argwhere(~np.isfinite(array))
    if bad.size:
        raise InputError(f"{where}: {len(bad)} NaN or infinite value(s) (first at row {int(bad[0][0])}); fix the "
                         "checkpoint.")
    return array


def _same_labels(known: np.ndarray | None, labels: np.ndarray, filename: str) -> np.ndarray:
    labels = np.asarray(labels)
    if labels.ndim != 1:
        raise InputError(f"{filename}: labels must be 1-D, got shape {labels.shape}.")
    if known is not None and (len(known) != len(labels) or not np.array_equal(known.astype(str), labels.astype(str))):
        raise InputError(f"{filename}: its labels differ from the other checkpoints'; the probe set must be the same.")
    return labels
