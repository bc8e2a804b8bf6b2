"""The training-dynamics page: entropy and information of representations across training (the DSE
paper's two claims), the entropy-collapse law of logged RL runs, and uncertainty against data size.

A thin view over :class:`explorer.analyses.training.TrainingAnalysis`: widgets come from its parameters;
training the bundled networks, measuring every checkpoint, fitting the law with its bootstrap and reading
uploads run in the page's :class:`JobRunner`, and the page reads cached results only
(``analysis.reading()``). The plots are Bokeh figures built once over ColumnDataSources the page owns:
new results refill them, and a move of the epoch slider, the diffusion time, the Vendi order, the
measure or the forecast share sets only the data that depends on it (no model is created).
"""

from __future__ import annotations

import html
from dataclasses import asdict

import numpy as np
import pandas as pd
import panel as pn
import param
from bokeh.models import ColorBar, ColumnDataSource, FixedTicker, HoverTool, LinearColorMapper, LogTicker, Span
from bokeh.plotting import figure

from explorer.analyses.training import (
    MEASURES,
    TrainingAnalysis,
    guessed_columns,
    offered_columns,
    suggested_columns,
)
from explorer.data.sources import DATA_SIZE_SOURCES, LOG_SOURCES, TRAINING_SOURCES
from explorer.data.training_logs import (
    BUNDLED_RL_DESCRIPTION,
    BUNDLED_RL_LOG,
    ColumnMap,
    is_tensorboard_file,
    log_columns,
)
from explorer.data.uploads import Upload
from explorer.errors import InputError
from explorer.views.diversity import LOG_TICKS
from explorer.views.jobs import JobRunner
from explorer.views.links import PageLinks
from explorer.views.server import adopt_warm_results
from explorer.views.shared import (
    AMBER,
    QuietChanges,
    GREY,
    MUTED,
    PALETTE,
    card,
    download_button,
    format_value,
    on_open,
    upload_widget,
    uploaded,
    warning_notes,
)

RESULTS_WIDTH = 760
MARKERS = ["circle", "triangle", "square", "diamond", "inverted_triangle", "hex"]
NOT_LOGGED = "(not logged)"
CHOOSE = "(choose a column)"
EVENT_STEP = "(event step)"
REPRESENTATION_SETTINGS = ("runs", "layer", "sigma", "clusters", "seed")
LAW_SETTINGS = ("logs", "bootstrap", "level", "seed")
DIGITS_NOTE = ("<b>Bundled reproduction</b>: a 64-256-256-10 ReLU MLP trained by minibatch Adam on scikit-learn's "
               "8x8 digits twice, on the true labels and on the same labels shuffled among the training rows (it can "
               "only memorise them); both hidden layers are saved on 500 held-out digits before training and after "
               "each of 60 epochs. DSMI with X uses k-means clusters of the probe inputs.")
DATA_SIZE_NOTE = ("<b>Uncertainty against data size</b> (Scaling Laws for Uncertainty in Deep Learning): deep ensembles "
                  "of 5 copies of the same MLP trained on nested subsets of 50 to 1,200 digits; on the 500 held-out "
                  "digits, the ensemble's predictive entropy H[mean p] and its mutual-information (epistemic) part "
                  "H[mean p] - mean H[p], with power laws y = c n^-k fitted on log-log axes (t intervals of k).")


def _figure(title: str, x_label: str, y_label: str, name: str, width: int = 370, height: int = 320, **kwargs):
    fig = figure(title=title, width=width, height=height, x_axis_label=x_label, y_axis_label=y_label,
                 tools="pan,wheel_zoom,box_zoom,reset,save", toolbar_location="right", name=name, **kwargs)
    fig.title.text_font_size = "12px"
    fig.toolbar.logo = None
    for axis, kind in ((fig.xaxis, kwargs.get("x_axis_type")), (fig.yaxis, kwargs.get("y_axis_type"))):
        if kind == "log":  # 1-2-5 ticks, as on the diversity page: Bokeh's own leave short log ranges unlabelled
            axis.ticker = FixedTicker(ticks=LOG_TICKS, minor_ticks=[])
    return fig


def _source(name: str, *columns: str) -> ColumnDataSource:
    return ColumnDataSource({column: [] for column in columns}, name=name)


def _fill(source: ColumnDataSource, frame: pd.DataFrame | dict | None) -> None:
    """Replace a source's data (same columns); None empties it."""
    if frame is None:
        source.data = {column: [] for column in source.data}
    else:
        source.data = {column: (frame[column].to_numpy() if isinstance(frame, pd.DataFrame) else frame[column])
                       for column in source.data}


def _legend_below(fig) -> None:
    """The legend under the plot, in one row (inside, it hides the curves it names)."""
    legend = fig.legend[0]
    legend.orientation, legend.margin, legend.padding, legend.spacing = "horizontal", 2, 2, 12
    fig.add_layout(legend, "below")


def _colours(names) -> dict[str, str]:
    return {name: PALETTE[i % len(PALETTE)] for i, name in enumerate(names)}


def _lines(frame: pd.DataFrame, x: str, y: str, colours: dict[str, str]) -> dict:
    """One line per run (multi_line columns ``xs``, ``ys``, ``run``, ``colour``)."""
    groups = [(run, part) for run, part in frame.groupby("run", sort=False)]
    return {"xs": [part[x].to_numpy() for _, part in groups], "ys": [part[y].to_numpy() for _, part in groups],
            "run": [run for run, _ in groups], "colour": [colours[run] for run, _ in groups]}


def _bands(frame: pd.DataFrame, x: str, low: str, high: str, colours: dict[str, str]) -> dict:
    """One closed polygon per run between ``low`` and ``high`` (patches columns)."""
    groups = [(run, part) for run, part in frame.groupby("run", sort=False)]
    return {"xs": [np.concatenate([part[x].to_numpy(), part[x].to_numpy()[::-1]]) for _, part in groups],
            "ys": [np.concatenate([part[low].to_numpy(), part[high].to_numpy()[::-1]]) for _, part in groups],
            "colour": [colours[run] for run, _ in groups]}


class TrainingDynamics(QuietChanges, pn.viewable.Viewer):
    """Entropy across training. ``TrainingDynamics()`` opens on the bundled digits reproduction, the bundled
    RL log and (on its tab) the bundled data-size ensembles; pass ``analysis=TrainingAnalysis(runs=...,
    logs=...)`` to study your own from code."""

    analysis = param.ClassSelector(class_=TrainingAnalysis)
    source = param.Selector(objects=TRAINING_SOURCES.options(), default="digits", label="Representations")
    log_source = param.Selector(objects=LOG_SOURCES.options(), default="rl_addition", label="Training log")
    measure = param.Selector(objects={label: key for key, label in MEASURES.items()}, default="dse",
                             label="Measure against epoch")

    def __init__(self, **params):
        given = "analysis" in params
        params.setdefault("analysis", TrainingAnalysis())
        super().__init__(**params)
        self.links = PageLinks(self, "training")   # before the page watches its own settings
        self._runs_loaded = False   # the first runs loaded take the epoch of the link the page opened from
        self.jobs = JobRunner()
        self._mapped: tuple[str, list[Upload]] | None = None   # the log files the column selects describe
        self._loaded = {"runs": None, "logs": None}   # the source each part was loaded from by the page
        self._bundled: dict[str, dict] = {}            # bundled representation runs loaded so far, by source
        self._src: dict[str, ColumnDataSource] = {}
        self._figures: dict = {}
        self._build_widgets()
        self._build_representation_figures()
        self._build_law_figures()
        self._build_size_figure()
        self._layout = self._build_layout()
        a = self.analysis
        a.param.watch(self._on_representation_settings, ["sigma", "clusters", "seed", "layer"])
        a.param.watch(lambda *_e: self._show_representations(), ["t", "q"])
        a.param.watch(lambda _e: self._show_epoch(), ["epoch"])
        a.param.watch(self._on_law_settings, ["bootstrap", "level", "seed"])
        a.param.watch(lambda _e: self._show_forecast(), ["fraction"])
        self.param.watch(lambda _e: self._show_measure(), ["measure"])
        self.param.watch(self._on_source, ["source"])
        self.param.watch(self._on_log_source, ["log_source"])
        self._show_all()
        if given and (a.runs or a.logs or a.data_size is not None):
            on_open(self._compute_given)
        else:
            if not self.links.share_id:   # loaded in this process already: shown in the first document sent
                self._load_runs(self.source, (), loaded_only=True)
            on_open(self._open)

    # ----------------------------------------------------------------------------- jobs
    def _open(self) -> None:
        """Load the chosen sources; files a share restored into the drop zones are loading already."""
        if not uploaded(self._upload) and self._loaded["runs"] is None:
            self._load_runs(self.source, ())
        if not uploaded(self._log_upload):
            self._load_logs(self.log_source, [], None)

    def _compute_given(self) -> None:
        a = self.analysis
        if a.runs:
            self._compute_representations()
        if a.logs:
            self._compute_laws()
        if a.data_size is not None:
            self._show_data_size()

    def _compute_representations(self) -> None:
        adopt_warm_results(self.analysis)   # the bundled runs' spectra, when the server computed them at start
        self._show_representations()
        if self.analysis.answers_from_cache(self.analysis.compute_representations):
            return
        self.jobs.submit(self.analysis.compute_representations, "Measuring every checkpoint", slot="spectra",
                         on_done=lambda _r: self._show_representations(),
                         on_error=lambda _e: self._show_representations())

    def _compute_laws(self) -> None:
        adopt_warm_results(self.analysis)
        self._show_laws()
        a = self.analysis
        self.jobs.submit(lambda progress: a.law_fits(progress=progress), "Fitting the entropy law", slot="fits",
                         on_done=lambda _r: self._show_laws())
        self.jobs.submit(lambda progress: a.forecasts(progress=progress), "Forecasting from the first steps",
                         slot="forecasts",
                         on_done=lambda _r: self._show_forecast())

    def _load_runs(self, key: str, uploads: tuple, loaded_only: bool = False) -> None:
        """Load a representation source (a bundled one once per page: its spectra stay cached), then measure
        it; ``loaded_only``: only if it is loaded in this process already (no job)."""
        label = "Loading the bundled training runs (trained on first use)" if key == "digits" else \
            f"Reading {len(uploads)} checkpoint file(s)"

        def loaded(runs):
            if key != "upload":
                self._bundled[key] = runs
            self._loaded["runs"] = key
            with self._quiet():
                self.source = key
                self.analysis.runs = runs   # (moves the epoch to their last checkpoint)
                self._apply_linked_epoch()
            self._configure_representation_widgets()
            self._compute_representations()
        ready = self._bundled.get(key) or TRAINING_SOURCES.loaded(key)   # (None for uploads)
        if ready is not None:
            loaded(ready)
            return
        if loaded_only:
            return
        self.jobs.submit(lambda progress: TRAINING_SOURCES.load(key, progress, uploads), label, slot="load-runs",
                         on_done=loaded)

    def _apply_linked_epoch(self) -> None:
        """The epoch of the link the page was opened from, on the first runs loaded (when they have it)."""
        first, self._runs_loaded = not self._runs_loaded, True
        epoch = self.links.applied.get("epoch")
        if not first or epoch is None:
            return
        if epoch in self.analysis.epochs():
            self.analysis.epoch = epoch
        else:
            self.links.message = " ".join(filter(None, [self.links.message, (
                "The link's epoch has no checkpoint in these runs: the spectrum shows the last epoch.")]))

    def _load_logs(self, key: str, uploads: list[Upload], columns: ColumnMap | None) -> None:
        """Read the log's columns, map them (``columns``, or the usual names), load the runs and fit them."""
        def job(progress):
            offered = offered_columns(uploads) if key == "upload" else log_columns(BUNDLED_RL_LOG)
            tensorboard = bool(uploads) and all(is_tensorboard_file(upload.name) for upload in uploads)
            mapping = asdict(columns) if columns else guessed_columns(offered, tensorboard)
            try:   # on an error the selects still show the columns and the mapping tried, to fix by hand
                chosen = columns or suggested_columns(offered, tensorboard)
                return offered, tensorboard, mapping, LOG_SOURCES.load(key, progress, uploads, columns=chosen), None
            except InputError as err:
                return offered, tensorboard, mapping, None, err

        def loaded(found):
            offered, tensorboard, mapping, logs, error = found
            self._mapped = (key, list(uploads))
            self._set_column_widgets(offered, tensorboard, mapping)
            if error is not None:
                self.jobs.show_error(error)
                return
            self._loaded["logs"] = key
            with self._quiet():
                self.log_source = key
                self.analysis.logs = logs
            self._compute_laws()
        what = "the bundled RL log" if key != "upload" else f"{len(uploads)} log file(s)"
        self.jobs.submit(job, f"Reading {what}", slot="load-logs", on_done=loaded)

    def _load_data_size(self) -> None:
        if self.analysis.data_size is not None or self.jobs.busy("load-size"):
            return

        def loaded(found):
            self.analysis.data_size = found
            self._show_data_size()
        self.jobs.submit(lambda progress: DATA_SIZE_SOURCES.load("digits", progress),
                         "Training the data-size ensembles (first use only)", slot="load-size", on_done=loaded)

    # ----------------------------------------------------------------------------- events
    def _on_source(self, _event) -> None:
        if self._quiet_depth:
            return
        files = uploaded(self._upload)
        if self.source == "upload" and not files:
            self.jobs.show_error("Drop the checkpoint files (one per epoch, or one Parquet file) to upload.")
            return
        self._load_runs(self.source, tuple(files or ()))

    def _on_upload(self, _event) -> None:
        files = uploaded(self._upload)
        if files:
            self._load_runs("upload", tuple(files))

    def _on_log_source(self, _event) -> None:
        if self._quiet_depth:
            return
        files = uploaded(self._log_upload)
        if self.log_source == "upload" and not files:
            self.jobs.show_error("Drop one or more log files (CSV, JSONL, Parquet or TensorBoard event files).")
            return
        self._load_logs(self.log_source, list(files or []), None)

    def _on_log_upload(self, _event) -> None:
        files = uploaded(self._log_upload)
        if files:
            self._load_logs("upload", list(files), None)

    def _on_columns(self, _event) -> None:
        """A column mapped by hand: load the files the selects describe with the new mapping."""
        if self._quiet_depth or self._mapped is None:
            return
        pick = {name: widget.value for name, widget in self._column_widgets.items()}
        if not pick["entropy"] or not pick["reward"]:
            return
        columns = ColumnMap(step=pick["step"] or "step", entropy=pick["entropy"], reward=pick["reward"],
                            covariance=pick["covariance"] or None, advantage=pick["advantage"] or None)
        self._load_logs(*self._mapped, columns)

    def _on_representation_settings(self, *_events) -> None:
        if self._quiet_depth or not self.analysis.runs:
            return
        self._configure_representation_widgets()
        self._compute_representations()

    def _on_law_settings(self, *_events) -> None:
        if not self._quiet_depth and self.analysis.logs:
            self._compute_laws()

    def _on_tab(self, event) -> None:
        if event.new == 2:
            self._load_data_size()

    # ----------------------------------------------------------------------------- widgets and layout
    def _build_widgets(self) -> None:
        a = self.analysis
        self._upload = upload_widget("Checkpoint files", ".npy,.npz,.parquet", "tr-upload", multiple=True)
        self._upload.param.watch(self._on_upload, "value")
        self._log_upload = upload_widget("Log files", ".csv,.jsonl,.parquet,tfevents", "tr-log-upload", multiple=True)
        self._log_upload.param.watch(self._on_log_upload, "value")
        self._epoch = pn.widgets.IntSlider.from_param(a.param.epoch, start=0, end=1, css_classes=["tr-epoch"])
        self._column_widgets = {
            name: pn.widgets.Select(label=label, options=[], css_classes=[f"tr-column-{name}"])
            for name, label in (("step", "Step column"), ("entropy", "Policy entropy"), ("reward", "Reward or accuracy"),
                                ("covariance", "Cov(log pi, advantage) (optional)"),
                                ("advantage", "Advantage statistic (optional)"))}
        for widget in self._column_widgets.values():
            widget.param.watch(self._on_columns, "value")
        self._verdict = pn.pane.HTML("<i>Loading the training runs…</i>", width=RESULTS_WIDTH, css_classes=["tr-verdict"])
        self._law_cards = pn.pane.HTML("<i>Loading the log…</i>", width=RESULTS_WIDTH, css_classes=["tr-law-cards"])
        self._log_about = pn.pane.HTML("", width=RESULTS_WIDTH, css_classes=["tr-log-about"])
        self._forecast_cards = pn.pane.HTML("", width=RESULTS_WIDTH, css_classes=["tr-forecast-cards"])
        self._size_cards = pn.pane.HTML("<i>Open this tab to load the ensembles.</i>", width=RESULTS_WIDTH,
                                        css_classes=["tr-size-cards"])
        self._size_table = pn.widgets.Tabulator(pd.DataFrame(), disabled=True, show_index=False, width=RESULTS_WIDTH,
                                                layout="fit_data_table", css_classes=["tr-size-table"])
        self._law_table = pn.widgets.Tabulator(pd.DataFrame(), disabled=True, show_index=False, width=RESULTS_WIDTH,
                                               layout="fit_data_table", css_classes=["tr-law-table"])

    def _configure_representation_widgets(self) -> None:
        """The epoch slider spans the runs' checkpoints (stepping by their stride)."""
        a = self.analysis
        if not a.runs:
            return
        epochs = a.epochs()
        step = int(np.diff(epochs).min()) if len(epochs) > 1 else 1
        self._epoch.param.update(start=int(epochs[0]), end=int(epochs[-1]), step=step, value=a.epoch)

    def _set_column_widgets(self, offered: list[str], tensorboard: bool, mapping: dict[str, str | None]) -> None:
        """Fill the column selects with the log's columns and the mapping in use (quietly)."""
        with self._quiet():
            for name, widget in self._column_widgets.items():
                if name == "step" and tensorboard:
                    widget.options, widget.value, widget.disabled = {EVENT_STEP: "step"}, "step", True
                    continue
                value = mapping.get(name)
                blank = NOT_LOGGED if name in ("covariance", "advantage") else CHOOSE
                widget.disabled = False
                widget.options = ({blank: ""} if blank == NOT_LOGGED or value not in offered else {}) | {
                    column: column for column in offered}
                widget.value = value if value in offered else ""

    def _build_layout(self):
        a = self.analysis
        representation_controls = pn.Column(
            pn.widgets.Select.from_param(self.param.source, css_classes=["tr-source"]),
            self._upload,
            pn.pane.HTML(f"<small style='color:{MUTED}'>One file per epoch (epoch number in the name: epoch_3.npy; "
                         "labels.npy and inputs.npy beside them), or one Parquet file with an epoch column.</small>"),
            pn.widgets.Select.from_param(a.param.layer, css_classes=["tr-layer"]),
            pn.widgets.Select.from_param(self.param.measure, css_classes=["tr-measure"]),
            pn.widgets.FloatInput.from_param(a.param.sigma, css_classes=["tr-sigma"]),
            pn.widgets.FloatSlider.from_param(a.param.t, css_classes=["tr-t"]),
            pn.widgets.DiscreteSlider.from_param(a.param.q, css_classes=["tr-q"]),
            pn.widgets.IntInput.from_param(a.param.clusters),
            self._epoch,
            download_button(self._measures_csv, "training_measures.csv", "Export measures (CSV)", width=280),
            width=310)
        representation_main = pn.Column(self._verdict, pn.Row(self._figures["measure"], self._figures["plane"]),
                                        self._figures["spectrum"], width=RESULTS_WIDTH + 20)
        law_controls = pn.Column(
            pn.widgets.Select.from_param(self.param.log_source, css_classes=["tr-log-source"]),
            self._log_upload,
            "#### Column mapping",
            *self._column_widgets.values(),
            pn.widgets.IntInput.from_param(a.param.bootstrap),
            pn.widgets.FloatInput.from_param(a.param.level),
            pn.widgets.DiscreteSlider.from_param(a.param.fraction, css_classes=["tr-fraction"]),
            download_button(self._fits_csv, "entropy_law_fits.csv", "Export fits (CSV)", width=280),
            download_button(self._forecast_csv, "entropy_law_forecast.csv", "Export forecast (CSV)", width=280),
            download_button(self._covariance_csv, "entropy_covariance.csv", "Export entropy change vs covariance (CSV)",
                            width=280),
            download_button(self._points_csv, "training_log.csv", "Export the mapped log (CSV)", width=280),
            width=310)
        # visibility is toggled on a box around the figure (toggling a Bokeh pane's own fails in Panel 1.9)
        self._covariance_box = pn.Column(self._figures["covariance"], margin=0, css_classes=["tr-covariance"])
        law_main = pn.Column(self._log_about, self._law_cards, self._law_table,
                             pn.Row(self._figures["law"], self._covariance_box),
                             self._forecast_cards, pn.Row(self._figures["forecast"], self._figures["error"]),
                             width=RESULTS_WIDTH + 20)
        size_main = pn.Column(pn.pane.HTML(DATA_SIZE_NOTE, width=RESULTS_WIDTH), self._size_cards,
                              self._figures["size"], self._size_table,
                              download_button(self._size_csv, "uncertainty_vs_data_size.csv",
                                              "Export table (CSV)", width=200), width=RESULTS_WIDTH + 20)
        tabs = pn.Tabs(("Representations across training", pn.Row(representation_controls, representation_main)),
                       ("Logged runs: the entropy law", pn.Row(law_controls, law_main)),
                       ("Uncertainty vs data size", size_main), css_classes=["tr-tabs"], dynamic=False)
        tabs.param.watch(self._on_tab, "active")
        self._tabs = tabs
        return pn.Column(self.jobs, tabs, sizing_mode="stretch_width")

    def __panel__(self):
        return self._layout

    # ----------------------------------------------------------------------------- figures
    def _build_representation_figures(self) -> None:
        src = self._src
        src["measure_lines"] = _source("tr-measure-lines", "xs", "ys", "run", "colour")
        src["measure_points"] = _source("tr-measure-points", "epoch", "value", "run", "colour")
        fig = _figure("DSE (bits) against epoch", "epoch", "DSE (bits)", "tr-measure-figure")
        fig.multi_line("xs", "ys", source=src["measure_lines"], color="colour", line_width=2, legend_field="run")
        dots = fig.scatter("epoch", "value", source=src["measure_points"], color="colour", size=4)
        fig.add_tools(HoverTool(renderers=[dots], tooltips=[("run", "@run"), ("epoch", "@epoch"),
                                                            ("value", "@value{0.000}")]))
        _legend_below(fig)
        self._epoch_span = Span(location=0, dimension="height", line_color="black", line_dash="dotted",
                                name="tr-epoch-span")
        fig.add_layout(self._epoch_span)
        self._figures["measure"] = fig

        src["plane_lines"] = _source("tr-plane-lines", "xs", "ys", "run", "colour")
        src["plane_points"] = _source("tr-plane-points", "x", "y", "epoch", "run", "marker")
        plane = _figure("Information plane (colour: epoch)", "DSMI(Z; X) with input clusters (bits)",
                        "DSMI(Z; Y) with the labels (bits)", "tr-plane-figure")
        plane.xaxis.ticker.desired_num_ticks = 4   # its labels are long on narrow ranges
        plane.multi_line("xs", "ys", source=src["plane_lines"], color="colour", line_width=1.5, alpha=0.6,
                         legend_field="run")
        self._epoch_colours = LinearColorMapper(palette="Viridis256", low=0, high=1)
        points = plane.scatter("x", "y", source=src["plane_points"], marker="marker", size=7,
                               color={"field": "epoch", "transform": self._epoch_colours}, line_color="black",
                               line_width=0.3)
        plane.add_layout(ColorBar(color_mapper=self._epoch_colours, title="epoch", width=8), "right")
        plane.add_tools(HoverTool(renderers=[points], tooltips=[("run", "@run"), ("epoch", "@epoch"),
                                                                ("DSMI(Z;X)", "@x{0.000}"), ("DSMI(Z;Y)", "@y{0.000}")]))
        _legend_below(plane)
        self._figures["plane"] = plane

        src["spectrum"] = _source("tr-spectrum", "xs", "ys", "run", "colour")
        spectrum = _figure("Diffusion spectrum at epoch 0", "rank", "μ_i = |λ_i|^t / Σ|λ_j|^t", "tr-spectrum-figure",
                           width=RESULTS_WIDTH, height=260, x_axis_type="log", y_axis_type="log")
        spectrum.yaxis.ticker = LogTicker()   # many decades: powers of ten read best
        spectrum.multi_line("xs", "ys", source=src["spectrum"], color="colour", line_width=2, legend_field="run")
        spectrum.legend.location = "top_right"
        self._figures["spectrum"] = spectrum

    def _build_law_figures(self) -> None:
        src = self._src
        src["law_points"] = _source("tr-law-points", "entropy", "reward", "step", "run", "colour")
        src["law_curves"] = _source("tr-law-curves", "xs", "ys", "run", "colour")
        src["law_bands"] = _source("tr-law-bands", "xs", "ys", "colour")
        src["law_ceiling"] = _source("tr-law-ceiling", "entropy", "ceiling", "low", "high", "run", "colour")
        law = _figure("Reward against entropy, R = -a exp(H) + b", "policy entropy H (nats)", "reward",
                      "tr-law-figure")
        law.patches("xs", "ys", source=src["law_bands"], color="colour", alpha=0.2, line_alpha=0)
        dots = law.scatter("entropy", "reward", source=src["law_points"], color="colour", size=3, alpha=0.35)
        law.multi_line("xs", "ys", source=src["law_curves"], color="colour", line_width=2.5, legend_field="run")
        law.segment("entropy", "low", "entropy", "high", source=src["law_ceiling"], color="black", line_width=2)
        ceiling = law.scatter("entropy", "ceiling", source=src["law_ceiling"], marker="diamond", size=11,
                              color="colour", line_color="black")
        law.add_tools(HoverTool(renderers=[dots], tooltips=[("run", "@run"), ("step", "@step"),
                                                            ("H", "@entropy{0.000}"), ("R", "@reward{0.000}")]),
                      HoverTool(renderers=[ceiling], tooltips=[("ceiling b - a", "@ceiling{0.000}"),
                                                               ("interval", "@low{0.000} to @high{0.000}")]))
        _legend_below(law)
        self._figures["law"] = law

        src["covariance_points"] = _source("tr-covariance-points", "covariance", "entropy_change", "step", "run",
                                           "colour")
        src["covariance_lines"] = _source("tr-covariance-lines", "xs", "ys", "run", "colour")
        cov = _figure("Entropy change per step against the covariance", "Cov(log π(a), A(a)) on the step's batch",
                      "H(step + 1) - H(step) (nats)", "tr-covariance-figure")
        dots = cov.scatter("covariance", "entropy_change", source=src["covariance_points"], color="colour", size=3,
                           alpha=0.4)
        cov.multi_line("xs", "ys", source=src["covariance_lines"], color="colour", line_width=2, line_dash="dashed",
                       legend_field="run")
        _legend_below(cov)
        cov.add_layout(Span(location=0, dimension="width", line_color=GREY))
        cov.add_tools(HoverTool(renderers=[dots], tooltips=[("run", "@run"), ("step", "@step"),
                                                            ("Cov", "@covariance{0.0000}"),
                                                            ("ΔH", "@entropy_change{0.00000}")]))
        self._figures["covariance"] = cov

        src["forecast_observed"] = _source("tr-forecast-observed", "step", "reward", "run", "colour")
        src["forecast_lines"] = _source("tr-forecast-lines", "xs", "ys", "run", "colour")
        src["forecast_bands"] = _source("tr-forecast-bands", "xs", "ys", "colour")
        src["forecast_split"] = _source("tr-forecast-split", "step", "low", "high", "run")
        forecast = _figure("Fit on the first 30% of steps, predict the rest", "step", "reward", "tr-forecast-figure")
        forecast.scatter("step", "reward", source=src["forecast_observed"], color="colour", size=2, alpha=0.3)
        forecast.patches("xs", "ys", source=src["forecast_bands"], color="colour", alpha=0.25, line_alpha=0)
        forecast.multi_line("xs", "ys", source=src["forecast_lines"], color="colour", line_width=2,
                            legend_field="run")
        forecast.segment("step", "low", "step", "high", source=src["forecast_split"], color="black",
                         line_dash="dashed")
        _legend_below(forecast)
        self._figures["forecast"] = forecast

        src["forecast_error"] = _source("tr-forecast-error", "step", "error", "run", "colour")
        error = _figure("Prediction error on the held-out steps", "step", "predicted - observed reward",
                        "tr-error-figure")
        error.scatter("step", "error", source=src["forecast_error"], color="colour", size=2, alpha=0.5)
        error.add_layout(Span(location=0, dimension="width", line_color="black"))
        self._figures["error"] = error

    def _build_size_figure(self) -> None:
        src = self._src
        src["size_points"] = _source("tr-size-points", "n", "predictive", "mutual_information")
        src["size_fits"] = _source("tr-size-fits", "n", "predictive_fit", "mutual_information_fit")
        fig = _figure("Uncertainty against training-set size (log-log)", "training digits n",
                      "mean over the probe digits (nats)", "tr-size-figure", width=RESULTS_WIDTH, height=330,
                      x_axis_type="log", y_axis_type="log")
        for column, colour, label in (("predictive", PALETTE[0], "predictive entropy"),
                                      ("mutual_information", AMBER, "mutual information (epistemic)")):
            fig.line("n", f"{column}_fit", source=src["size_fits"], color=colour, line_width=2, line_dash="dashed")
            fig.scatter("n", column, source=src["size_points"], color=colour, size=9, legend_label=label)
        _legend_below(fig)
        self._figures["size"] = fig

    # ----------------------------------------------------------------------------- showing cached results
    def _read(self, render, on_missing=None):
        """``render()`` from cached results only; ``on_missing(message)`` (or None) while they are computing
        or when they cannot be computed."""
        try:
            with self.analysis.reading():
                return render()
        except InputError as err:   # NotComputed too
            if on_missing is not None:
                on_missing(str(err))
            return None

    def _show_all(self) -> None:
        self._show_representations()
        self._show_laws()
        self._show_data_size()

    def _show_representations(self) -> None:
        with pn.io.hold(pn.state.curdoc):
            shown = self._read(self._render_representations, self._clear_representations)
            if shown:
                self._show_epoch()

    def _clear_representations(self, message: str) -> None:
        for name in ("measure_lines", "measure_points", "plane_lines", "plane_points", "spectrum"):
            _fill(self._src[name], None)
        busy = self.jobs.busy("spectra") or self.jobs.busy("load-runs")
        self._verdict.object = f"<i>{html.escape(message if not busy else 'Measuring every checkpoint…')}</i>"

    def _render_representations(self) -> bool:
        a = self.analysis
        table = a.measures()
        self._verdict.object = self._verdict_html(table, a.verdict())
        options = {label: key for key, label in a.measure_names().items()}
        self.param.measure.objects = options
        if self.measure not in options.values():
            with self._quiet():
                self.measure = "dse"
        self._show_measure()
        colours = self._run_colours()
        plane = a.information_plane().dropna()
        _fill(self._src["plane_lines"], _lines(plane, "dsmi_inputs", "dsmi_labels", colours))
        markers = {run: MARKERS[i % len(MARKERS)] for i, run in enumerate(a.runs)}
        _fill(self._src["plane_points"], {"x": plane["dsmi_inputs"].to_numpy(), "y": plane["dsmi_labels"].to_numpy(),
                                          "epoch": plane["epoch"].to_numpy(), "run": plane["run"].to_numpy(),
                                          "marker": [markers[run] for run in plane["run"]]})
        epochs = a.epochs()
        self._epoch_colours.update(low=int(epochs[0]), high=int(epochs[-1]))
        self._figures["plane"].title.text = ("Information plane (colour: epoch)" if len(plane) else
                                             "Information plane: needs the probe set's labels and inputs")
        return True

    def _run_colours(self) -> dict[str, str]:
        return _colours(self.analysis.runs)

    def _verdict_html(self, table: pd.DataFrame, lines: list[str]) -> str:
        cards = []
        for run, part in table.groupby("run", sort=False):
            part = part.sort_values("epoch")
            first, last = part.iloc[0], part.iloc[-1]
            key = f"{run}-dse"
            cards.append(card(f"DSE, {run}", f"{first['dse']:.2f} → {last['dse']:.2f}",
                              f"bits, epoch {first['epoch']} → {last['epoch']}", key=key, prefix="tr"))
            if part["dsmi_labels"].notna().all():
                cards.append(card(f"DSMI with labels, {run}", f"{first['dsmi_labels']:.2f} → {last['dsmi_labels']:.2f}",
                                  "bits", key=f"{run}-dsmi", prefix="tr"))
            if "test_accuracy" in part:
                train = f"train {last['train_accuracy']:.1%}" if "train_accuracy" in part else ""
                cards.append(card(f"Test accuracy, {run}", f"{last['test_accuracy']:.1%}", train,
                                  key=f"{run}-accuracy", prefix="tr"))
        a = self.analysis
        sigma = "median per checkpoint" if not a.sigma else f"{a.sigma:g}"
        header = (f"<div class='tr-summary'><b>{html.escape(', '.join(a.runs))}</b> · layer "
                  f"<b>{html.escape(str(a.layer))}</b> · σ = {sigma}, t = {a.t:g}, Vendi q = {format_value(a.q)}</div>")
        about = f"<div style='font-size:13px;margin:4px 0'>{DIGITS_NOTE}</div>" if self._loaded["runs"] == "digits" \
            else ""
        claims = "".join(f"<li class='tr-claim'>{html.escape(line)}</li>" for line in lines)
        return (f"<div class='tr-verdict-body'>{header}{about}<div>{''.join(cards)}</div>"
                f"<ul class='tr-claims' style='margin:4px 0'>{claims}</ul></div>")

    def _show_measure(self) -> None:
        def render():
            table = self.analysis.measures()
            column = self.measure if self.measure in table else "dse"
            colours = self._run_colours()
            shown = table[["run", "epoch", column]].dropna()
            _fill(self._src["measure_lines"], _lines(shown, "epoch", column, colours))
            _fill(self._src["measure_points"], {"epoch": shown["epoch"].to_numpy(), "value": shown[column].to_numpy(),
                                                "run": shown["run"].to_numpy(),
                                                "colour": [colours[run] for run in shown["run"]]})
            label = MEASURES.get(column, column)
            fig = self._figures["measure"]
            fig.title.text, fig.yaxis.axis_label = f"{label} against epoch", label
        with pn.io.hold(pn.state.curdoc):
            self._read(render)

    def _show_epoch(self) -> None:
        """An epoch move: the spectrum at that epoch and the marker on the measure plot (patched in place)."""
        def render():
            a = self.analysis
            frame = a.spectrum_at_epoch()
            frame = frame[frame["mu"] > 1e-15]   # below that, round-off of a rank-deficient spectrum
            _fill(self._src["spectrum"], _lines(frame, "rank", "mu", self._run_colours()))
            self._figures["spectrum"].title.text = (f"Diffusion spectrum of {a.layer} at epoch {a.epoch} "
                                                    f"(t = {a.t:g}; DSE is its entropy)")
            self._epoch_span.location = a.epoch
        with pn.io.hold(pn.state.curdoc):
            self._read(render)

    def _show_laws(self) -> None:
        with pn.io.hold(pn.state.curdoc):
            self._log_about.object = self._log_about_html()
            if self._read(self._render_laws, self._clear_laws):
                self._show_forecast()

    def _log_about_html(self) -> str:
        if not self.analysis.logs:
            return ""
        if self._loaded["logs"] == "rl_addition":
            return (f"<div class='tr-log-about-body' style='font-size:13px'><b>Bundled run</b>: "
                    f"{html.escape(BUNDLED_RL_DESCRIPTION)}</div>")
        runs = ", ".join(f"{run.name} ({run.steps} steps)" for run in self.analysis.logs)
        return f"<div class='tr-log-about-body' style='font-size:13px'><b>Logged runs</b>: {html.escape(runs)}</div>"

    def _clear_laws(self, message: str) -> None:
        for name in ("law_points", "law_curves", "law_bands", "law_ceiling", "covariance_points",
                     "covariance_lines"):
            _fill(self._src[name], None)
        self._law_table.value = pd.DataFrame()
        busy = self.jobs.busy("fits") or self.jobs.busy("load-logs")
        self._law_cards.object = f"<i>{html.escape(message if not busy else 'Fitting the entropy law…')}</i>"

    def _render_laws(self) -> bool:
        a = self.analysis
        colours = _colours(run.name for run in a.logs)
        table = a.law_table()
        self._law_cards.object = self._law_cards_html(table)
        self._law_table.value = table[["run", "steps", "a", "b", "ceiling", "ceiling_low", "ceiling_high", "r2",
                                       "reward_last", "note"]].round(4)
        points = a.log_points()
        _fill(self._src["law_points"], points.assign(colour=points["run"].map(colours)))
        curves = a.law_curves()
        _fill(self._src["law_curves"], _lines(curves, "entropy", "reward", colours))
        _fill(self._src["law_bands"], _bands(curves, "entropy", "low", "high", colours))
        fitted = table.dropna(subset=["ceiling"])
        _fill(self._src["law_ceiling"], fitted.assign(entropy=0.0, low=fitted["ceiling_low"], high=fitted["ceiling_high"],
                                                      colour=fitted["run"].map(colours)))
        self._show_covariance(colours)
        return True

    def _law_cards_html(self, table: pd.DataFrame) -> str:
        cards, notes = [], []
        level = table["level"].dropna()
        shown = f"{level.iloc[0]:.0%}" if len(level) else ""
        for row in table.itertuples():
            if row.note:
                notes.append(row.note)
                continue
            cards += [card(f"Ceiling b - a, {row.run}", f"{row.ceiling:.3f}",
                           f"{shown} interval {row.ceiling_low:.3f} to {row.ceiling_high:.3f}", key=f"{row.run}-ceiling",
                           prefix="tr"),
                      card(f"a, {row.run}", f"{row.a:.3f}", f"{row.a_low:.3f} to {row.a_high:.3f}",
                           key=f"{row.run}-a", prefix="tr"),
                      card(f"b, {row.run}", f"{row.b:.3f}", f"{row.b_low:.3f} to {row.b_high:.3f}",
                           key=f"{row.run}-b", prefix="tr"),
                      card(f"R², {row.run}", f"{row.r2:.3f}", f"{row.steps} steps, reward {row.reward_first:.2f} → "
                           f"{row.reward_last:.2f}", key=f"{row.run}-r2", prefix="tr")]
        caution = ("Intervals: bootstrap over steps (consecutive steps of a run are correlated, so they are on the "
                   "narrow side).")
        return (f"<div class='tr-law-body'><div>{''.join(cards)}</div>{warning_notes(notes, 'tr-law-note')}"
                f"<div style='font-size:12px;color:{MUTED}'>{caution}</div></div>")

    def _show_covariance(self, colours: dict[str, str]) -> None:
        a = self.analysis
        table = a.covariance_table()
        _fill(self._src["covariance_points"], table.assign(colour=table["run"].map(colours)))
        lines = []
        for run, part in table.groupby("run", sort=False):
            x = np.array([part["covariance"].min(), part["covariance"].max()])
            lines.append(pd.DataFrame({"run": run, "x": x, "y": part["slope"].iloc[0] * x}))
        _fill(self._src["covariance_lines"], _lines(pd.concat(lines), "x", "y", colours) if lines else None)
        summary = table.groupby("run", sort=False)[["correlation", "slope"]].first()
        self._covariance_box.visible = not summary.empty   # shown where the log has the covariance term
        self._figures["covariance"].title.text = "Entropy change vs covariance (Pearson r = " + ", ".join(
            f"{row.correlation:.2f}" for _, row in summary.iterrows()) + ")"

    def _show_forecast(self) -> None:
        def render():
            a = self.analysis
            colours = _colours(run.name for run in a.logs)
            table = a.forecast_table()
            summary = a.forecast_summary()
            points = a.log_points()
            _fill(self._src["forecast_observed"], points.assign(colour=points["run"].map(colours)))
            _fill(self._src["forecast_lines"], _lines(table, "step", "predicted", colours))
            _fill(self._src["forecast_bands"], _bands(table, "step", "low", "high", colours))
            _fill(self._src["forecast_error"], table.assign(colour=table["run"].map(colours)))
            fitted = summary[summary["note"] == ""] if "note" in summary else summary
            low, high = float(points["reward"].min()), float(points["reward"].max())
            _fill(self._src["forecast_split"], {"step": fitted.get("split_step", pd.Series(dtype=float)).to_numpy(),
                                                "low": [low] * len(fitted), "high": [high] * len(fitted),
                                                "run": fitted.get("run", pd.Series(dtype=str)).to_numpy()})
            self._figures["forecast"].title.text = f"Fit on the first {a.fraction:.0%} of steps, predict the rest"
            self._forecast_cards.object = self._forecast_html(summary)
        with pn.io.hold(pn.state.curdoc):
            self._read(render, self._clear_forecast)

    def _clear_forecast(self, message: str) -> None:
        for name in ("forecast_observed", "forecast_lines", "forecast_bands", "forecast_error", "forecast_split"):
            _fill(self._src[name], None)
        self._forecast_cards.object = f"<i>{html.escape(message)}</i>" if self.analysis.logs else ""

    def _forecast_html(self, summary: pd.DataFrame) -> str:
        cards, notes = [], []
        for row in summary.itertuples():
            if row.note:
                notes.append(row.note)
                continue
            cards += [card(f"Ceiling from the first {row.fitted_steps} steps, {row.run}", f"{row.ceiling:.3f}",
                           f"{row.ceiling_low:.3f} to {row.ceiling_high:.3f}", key=f"{row.run}-early-ceiling",
                           prefix="tr"),
                      card(f"Mean |error| on the other {row.held_out_steps}, {row.run}",
                           f"{row.mean_absolute_error:.3f}", "reward units", key=f"{row.run}-mae", prefix="tr")]
        return f"<div class='tr-forecast-body'><div>{''.join(cards)}</div>{warning_notes(notes, 'tr-forecast-note')}</div>"

    def _show_data_size(self) -> None:
        def render():
            a = self.analysis
            table = a.data_size_table()
            _fill(self._src["size_points"], table)
            _fill(self._src["size_fits"], table)
            fits = a.data_size_fits()
            self._size_cards.object = "<div class='tr-size-body'>" + "".join(
                card(f"Exponent k, {row.uncertainty}", f"{row.k:.3f}",
                     f"{row.level:.0%} interval {row.k_low:.3f} to {row.k_high:.3f}; R² {row.r2:.2f}",
                     key=f"k-{row.uncertainty}", prefix="tr") for row in fits.itertuples()) + "</div>"
            self._size_table.value = table[["n", "predictive", "expected", "mutual_information", "accuracy"]].round(5)
        with pn.io.hold(pn.state.curdoc):
            self._read(render)

    # ----------------------------------------------------------------------------- exports
    def _csv(self, table) -> str:
        found = self._read(table, self.jobs.show_error)
        return "" if found is None else found.to_csv(index=False)

    def _measures_csv(self) -> str:
        return self._csv(self.analysis.measures)

    def _fits_csv(self) -> str:
        return self._csv(self.analysis.law_table)

    def _forecast_csv(self) -> str:
        return self._csv(self.analysis.forecast_table)

    def _covariance_csv(self) -> str:
        return self._csv(self.analysis.covariance_table)

    def _points_csv(self) -> str:
        return self._csv(self.analysis.log_points)

    def _size_csv(self) -> str:
        return self._csv(self.analysis.data_size_table)
