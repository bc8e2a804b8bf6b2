"""The token entropy lens page: where is the model unsure, token by token, at any temperature.

A thin view over :class:`explorer.analyses.token_lens.TokenLensAnalysis`: widgets come from its
parameters, the model runs in the page's :class:`JobRunner` off the event loop, and the page only
reads cached results. A temperature or window move patches the curves' data source in place and
rewrites the coloured text (the measures at every slider temperature are precomputed after each
run); the plots that depend on the text alone are redrawn only when a run ends.
"""

from __future__ import annotations

import html

import holoviews as hv
import holoviews.plotting.bokeh  # noqa: F401 - registers the Bokeh backend (hv.extension would reset session hooks)
import numpy as np
import pandas as pd
import panel as pn
import param
from bokeh.models import ColumnDataSource, HoverTool, Range1d
from bokeh.plotting import figure

from explorer.analyses.base import NotComputed
from explorer.analyses.token_lens import BUCKET_LABELS, RULE_SETTINGS, SMALL_MULTIPLE_TEMPERATURES, TokenLensAnalysis
from explorer.errors import InputError
from explorer.kernels.decoding import RULES
from explorer.views.jobs import JobRunner
from explorer.views.links import PageLinks
from explorer.views.shared import AMBER, INK, PURPLE, TEAL, card, download_button, on_open

RESULTS_WIDTH = 740
MEASURE_COLOURS = {"entropy": TEAL, "surprisal": AMBER, "varentropy": PURPLE}
CURVE_COLUMNS = ("position", "token", *MEASURE_COLOURS, *(f"{m}_rolling" for m in MEASURE_COLOURS))
BUCKET_COLOURS = ("#bbf7d0", "#fde68a", "#fecaca", "#d8b4fe")  # GLTR-like: green, yellow, red, purple
DISPLAY_SETTINGS = ("temperature", "window", "colour_by")
STALE = "<div class='lens-stale"
DECODING_NOTE = ("Generate from a prompt to see what the decoding rule removed at each step: the entropy of the full "
                 "distribution, of the truncated one, and how many tokens survived.")
TOKEN_CSS = """
<style>
.lens-text{font-family:ui-monospace,Menlo,Consolas,monospace;font-size:14px;line-height:1.9;white-space:pre-wrap;
  overflow-wrap:anywhere;max-width:100%;box-sizing:border-box;padding:6px}
.lens-tok{position:relative;border-radius:3px;padding:1px 0;cursor:help}
.lens-tok:hover{outline:2px solid #111827}
.lens-tip{display:none;position:absolute;left:0;top:1.7em;z-index:50;background:#111827;color:#f9fafb;
  padding:6px 8px;border-radius:6px;font-size:12px;line-height:1.35;white-space:pre;min-width:220px;
  box-shadow:0 4px 12px rgba(0,0,0,.25)}
.lens-tok:hover .lens-tip{display:block}
.lens-legend{font-size:12px;color:#374151;margin:2px 6px}
.lens-legend span{padding:1px 6px;border-radius:3px;margin-right:6px}
</style>
"""


def _shade(values: np.ndarray, top: float) -> list[str]:
    """White-to-teal (low to high) background colours for values in [0, top]."""
    share = np.clip(values / max(top, 1e-9), 0, 1)
    red, green, blue = (255 - share * (255 - 45)).astype(int), (255 - share * (255 - 160)).astype(int), \
        (255 - share * (255 - 150)).astype(int)
    return [f"rgb({r},{g},{b})" for r, g, b in zip(red, green, blue)]


def _visible(token: str) -> str:
    return token.replace("\n", "⏎\n").replace("\t", "⇥")


class TokenEntropyLens(pn.viewable.Viewer):
    """Score a pasted text or generate from a prompt and see its entropy, surprisal, varentropy and rank.

    ``TokenEntropyLens()`` renders the whole page (in ``panel serve`` or a notebook) and scores its
    text when shown; pass ``analysis=TokenLensAnalysis(...)`` to drive it from code.
    """

    analysis = param.ClassSelector(class_=TokenLensAnalysis)

    def __init__(self, **params):
        params.setdefault("analysis", TokenLensAnalysis())
        super().__init__(**params)
        self.links = PageLinks(self, "lens")
        self.jobs = JobRunner()
        self._summary = pn.pane.HTML(self._placeholder_summary(), width=RESULTS_WIDTH, css_classes=["lens-summary"])
        self._tokens = pn.pane.HTML("", width=RESULTS_WIDTH, css_classes=["lens-text-pane"])
        self._source = ColumnDataSource({column: [] for column in CURVE_COLUMNS}, name="lens-curves")
        self._curves = self._curve_figure()
        self._multiples = [pn.pane.HoloViews(self._entropy_at(False, t), margin=0) for t in SMALL_MULTIPLE_TEMPERATURES]
        self._decoding_note = pn.pane.Markdown(DECODING_NOTE, width=RESULTS_WIDTH)
        self._decoding_entropy = pn.pane.HoloViews(None, visible=False)
        self._decoding_kept = pn.pane.HoloViews(None, visible=False)
        self._ranks = pn.pane.HoloViews(self._rank_histogram(False))
        self._heatmap = pn.pane.HoloViews(self._attention_heatmap(False))
        self._attention_line = pn.pane.HoloViews(self._attention_curve(False))
        self._layer = pn.widgets.IntInput.from_param(self.analysis.param.layer, width=90)
        self._head = pn.widgets.IntInput.from_param(self.analysis.param.head, width=90)
        self._layout = self._build()
        self.analysis.param.watch(self._on_display, list(DISPLAY_SETTINGS))
        self.analysis.param.watch(self._on_attention_choice, ["layer", "head"])
        on_open(self._score_on_open)

    def _score_on_open(self) -> None:
        """The page opens on a scored text (the default one, or one linked from another page), or on
        the generation a link asks for."""
        if self.links.applied.get("mode") == "generate":
            self._run("generate")
        elif self.analysis.text.strip():
            self._run("score")

    # ------------------------------------------------------------------ actions (no computation here)
    def _run(self, mode: str) -> None:
        self.analysis.mode = mode
        label = "Generating" if mode == "generate" else "Scoring"
        self.jobs.submit(self.analysis.compute, label, slot="run", on_done=self._show_run, on_error=self._show_run)

    def _on_display(self, *_events) -> None:
        with pn.io.hold(pn.state.curdoc):
            self._show_measures()

    def _on_attention_choice(self, *_events) -> None:
        self._attention_line.object = self._read(self._attention_curve)

    # ------------------------------------------------------------------ showing cached results
    def _read(self, render, *args):
        """``render(True, *args)`` from cached results only, else ``render(False, *args)`` (the empty plot)."""
        try:
            with self.analysis.reading():
                self.analysis.trace()
                return render(True, *args)
        except InputError:   # NotComputed, or the last run failed
            return render(False, *args)

    def _show_run(self, _result=None) -> None:
        """A run ended: every part of the page shows the new text; the summary last, so that it shows
        the new run only when everything else does (the tabs' plots one by one: holding them in one
        document update trips Bokeh's layout in hidden tabs)."""
        for pane, t in zip(self._multiples, SMALL_MULTIPLE_TEMPERATURES):
            pane.object = self._read(self._entropy_at, t)
        self._show_decoding(self._read(self._decoding_effect))
        self._ranks.object = self._read(self._rank_histogram)
        self._heatmap.object = self._read(self._attention_heatmap)
        self._attention_line.object = self._read(self._attention_curve)
        try:
            with self.analysis.reading():
                layers, heads, _ = self.analysis.attention().shape
            self._layer.end, self._head.end = layers - 1, heads - 1
        except InputError:
            pass
        with pn.io.hold(pn.state.curdoc):
            self._show_measures()

    def _show_measures(self) -> None:
        """What depends on the display temperature and window: cards, coloured text, curves."""
        try:
            with self.analysis.reading():
                frame, summary, trace = self.analysis.frame(), self.analysis.summary(), self.analysis.trace()
        except NotComputed as note:   # the form changed since the last run: keep its results, say so
            shown = self._summary.object.split(STALE)[0]
            self._summary.object = f"{shown}{STALE} lens-legend'>{html.escape(str(note))}</div>"
            return
        except InputError:
            return
        self._summary.object = self._summary_html(trace, summary)
        self._tokens.object = self._tokens_html(frame, trace.logits.shape[-1])
        self._source.data = {column: frame[column].to_numpy() for column in CURVE_COLUMNS}
        values = frame[[c for c in CURVE_COLUMNS if c not in ("position", "token")]].to_numpy(dtype=float)
        top = float(np.nanmax(values)) if np.isfinite(values).any() else 1.0
        self._curves.x_range.start, self._curves.x_range.end = 0, max(len(frame) - 1, 1)
        self._curves.y_range.start, self._curves.y_range.end = 0, top * 1.05
        self._curves.title.text = f"Per-token measures at T = {self.analysis.temperature:.2f}"

    # ------------------------------------------------------------------ layout
    def _build(self) -> pn.viewable.Viewable:
        analysis = self.analysis
        generate = pn.widgets.Button(label="Generate", color="primary", width=110)
        score = pn.widgets.Button(label="Score text", color="primary", width=110)
        generate.on_click(lambda _event: self._run("generate"))
        score.on_click(lambda _event: self._run("score"))
        controls = pn.Column(
            pn.widgets.TextInput.from_param(analysis.param.model_name, placeholder="Hugging Face id or local path"),
            pn.widgets.TextAreaInput.from_param(analysis.param.prompt, height=80, name="Prompt"),
            pn.widgets.Checkbox.from_param(analysis.param.chat),
            pn.Row(pn.widgets.Select.from_param(analysis.param.decoding, width=130),
                   pn.widgets.FloatInput.from_param(analysis.param.generation_temperature, width=120)),
            *self._rule_widgets(),
            pn.Row(pn.widgets.IntInput.from_param(analysis.param.max_new_tokens, width=120),
                   pn.widgets.IntInput.from_param(analysis.param.seed, width=120)),
            generate,
            pn.widgets.TextAreaInput.from_param(analysis.param.text, height=110, name="Text to score"),
            score,
            self.jobs,
            width=300, margin=(0, 10),
        )
        display = pn.Row(
            pn.widgets.FloatSlider.from_param(analysis.param.temperature, width=260),
            pn.widgets.RadioButtonGroup.from_param(analysis.param.colour_by, width=260, margin=(22, 10)),
            pn.widgets.IntSlider.from_param(analysis.param.window, width=160),
        )
        details = pn.Tabs(
            ("Entropy at six temperatures", pn.GridBox(*self._multiples, ncols=3, width=RESULTS_WIDTH)),
            ("Decoding rule", pn.Column(self._decoding_note, self._decoding_entropy, self._decoding_kept,
                                        width=RESULTS_WIDTH)),
            ("Rank buckets", self._ranks),
            ("Attention entropy", pn.Row(self._heatmap, pn.Column(pn.Row(self._layer, self._head),
                                                                  self._attention_line))),
            dynamic=False, width=RESULTS_WIDTH,
        )
        plots = pn.Column(pn.pane.Bokeh(self._curves), details,
                          pn.Row(download_button(self._csv, "token_trace.csv", "Export CSV"),
                                 download_button(self._parquet, "token_trace.parquet", "Export PARQUET")),
                          width=RESULTS_WIDTH)
        results = pn.Column(display, self._summary, self._tokens, plots, width=RESULTS_WIDTH + 20)
        return pn.Row(controls, results)

    def __panel__(self):
        return self._layout

    def _rule_widgets(self) -> list:
        """One input per decoding-rule setting, shown only while its rule is chosen."""
        widgets = [pn.pane.Markdown("*Temperature only.*", margin=(0, 10),
                                    visible=self.analysis.param.decoding.rx() == "none")]
        for name, spec in RULE_SETTINGS.items():
            kind = pn.widgets.IntInput if isinstance(spec.default, int) else pn.widgets.FloatInput
            rules = [rule for rule, rule_spec in RULES.items() if name in rule_spec.params]
            widgets.append(kind.from_param(self.analysis.param[name], width=250,
                                           visible=self.analysis.param.decoding.rx().rx.in_(rules)))
        return widgets

    def _frame_or_empty(self) -> pd.DataFrame:
        try:
            with self.analysis.reading():
                return self.analysis.frame()
        except InputError:
            return pd.DataFrame()

    def _csv(self) -> str:
        return self._frame_or_empty().to_csv(index=False)

    def _parquet(self) -> bytes:
        frame = self._frame_or_empty()
        return frame.to_parquet(index=False) if len(frame) else b""

    # ------------------------------------------------------------------ renderers (read cached results)
    def _placeholder_summary(self) -> str:
        return "<p class='lens-legend'>Score a text or generate from a prompt to see its token entropy.</p>"

    def _summary_html(self, trace, s: dict) -> str:
        cards = [("tokens", f"{s['tokens']}", ""), ("mean entropy", f"{s['mean_entropy']:.3f} nats", ""),
                 ("log-perplexity", f"{s['log_perplexity']:.3f} nats", ""), ("perplexity", f"{s['perplexity']:.2f}", ""),
                 ("detection statistic D", f"{s['detection_statistic']:+.3f}", "log-ppl − mean entropy"),
                 ("mean varentropy", f"{s['mean_varentropy']:.3f}", "")]
        body = "".join(card(label, value, note, prefix="lens") for label, value, note in cards)
        origin = f"generated ({html.escape(trace.decoding)})" if trace.kind == "generated" else "scored"
        note = " · stopped early" if trace.stopped else ""
        return (f"<div style='display:flex;flex-wrap:wrap;align-items:center'>{body}"
                f"<div class='lens-legend'>{origin} · shown at T = {self.analysis.temperature:.2f}{note}</div></div>")

    def _tokens_html(self, frame: pd.DataFrame, vocabulary: int) -> str:
        colour_by = self.analysis.colour_by
        if colour_by == "rank bucket":
            colours = [BUCKET_COLOURS[b] for b in frame["rank_bucket"]]
            legend = "".join(f"<span style='background:{c}'>{label}</span>"
                             for c, label in zip(BUCKET_COLOURS, BUCKET_LABELS))
        else:
            values = frame[colour_by].to_numpy()
            top = float(np.log(vocabulary)) if colour_by == "entropy" else max(float(np.quantile(values, 0.95)), 1.0)
            colours = _shade(values, top)
            legend = f"<span style='background:{_shade(np.array([0.0]), 1)[0]}'>low</span>" \
                     f"<span style='background:{_shade(np.array([1.0]), 1)[0]}'>high {colour_by}</span>"
        spans = []
        for row, colour in zip(frame.itertuples(index=False), colours):
            tip = (f"#{row.position} {row.token!r}\nentropy {row.entropy:.3f}  surprisal {row.surprisal:.3f}\n"
                   f"varentropy {row.varentropy:.3f}  rank {row.rank}\n— top 10 —\n"
                   + row.top_alternatives.replace("; ", "\n"))
            spans.append(f"<span class='lens-tok' style='background:{colour}'>{html.escape(_visible(row.token))}"
                         f"<span class='lens-tip'>{html.escape(tip)}</span></span>")
        return f"{TOKEN_CSS}<div class='lens-legend'>{legend}</div><div class='lens-text'>{''.join(spans)}</div>"

    def _curve_figure(self):
        """Entropy, surprisal and varentropy along the text with their rolling means, over one data
        source the page refills (no new plot per move)."""
        fig = figure(title="Per-token measures", width=RESULTS_WIDTH, height=320, x_axis_label="position",
                     y_axis_label="nats", tools="pan,wheel_zoom,box_zoom,reset,save", x_range=Range1d(0, 1),
                     y_range=Range1d(0, 1), name="lens-curves-figure")
        fig.toolbar.logo = None
        lines = []
        for measure, colour in MEASURE_COLOURS.items():
            lines.append(fig.line("position", measure, source=self._source, color=colour, alpha=0.45, line_width=1,
                                  legend_label=measure))
            fig.line("position", f"{measure}_rolling", source=self._source, color=colour, line_width=2.5,
                     legend_label=f"{measure}, rolling mean")
        fig.add_tools(HoverTool(renderers=lines[:1], mode="vline", tooltips=[
            ("position", "@position"), ("token", "@token"), ("entropy", "@entropy{0.000}"),
            ("surprisal", "@surprisal{0.000}"), ("varentropy", "@varentropy{0.000}")]))
        fig.add_layout(fig.legend[0], "right")
        fig.legend.click_policy = "hide"
        return fig

    def _entropy_at(self, computed, temperature: float):
        """One small multiple: entropy along the text at ``temperature`` (from the cached sweep)."""
        sweep = self.analysis.entropy_at_temperatures() if computed else pd.DataFrame(
            {"temperature": [temperature], "position": [0], "entropy": [np.nan]})
        group = sweep[sweep.temperature == temperature]
        top = float(np.nanmax(sweep["entropy"])) * 1.05 if computed else 1.0
        mean = f" · mean {group['entropy'].mean():.2f} nats" if computed else ""
        return hv.Curve(group, "position", ("entropy", "entropy (nats)")).opts(
            title=f"T = {temperature:g}{mean}", height=170, width=240, color=TEAL, tools=["hover"],
            ylim=(0, top), xlim=(0, max(len(group) - 1, 1)), framewise=True, toolbar=None)

    def _show_decoding(self, plots) -> None:
        self._decoding_note.visible = plots is None
        self._decoding_entropy.visible = self._decoding_kept.visible = plots is not None
        if plots is not None:
            self._decoding_entropy.object, self._decoding_kept.object = plots

    def _decoding_effect(self, computed):
        """Full vs truncated entropy at the sampling temperature and tokens kept, per generated token
        (None for a scored text)."""
        trace = self.analysis.trace() if computed else None
        if trace is None or trace.truncated_entropy is None:
            return None
        frame = pd.DataFrame({"position": np.arange(len(trace)), "full": trace.full_entropy.cpu().numpy(),
                              "truncated": trace.truncated_entropy.cpu().numpy(),
                              "kept": trace.n_kept.cpu().numpy()})
        entropy = (hv.Curve(frame, "position", ("full", "nats"), label="full distribution").opts(color=INK)
                   * hv.Curve(frame, "position", ("truncated", "nats"), label="after the rule").opts(
                       color="#dc2626", line_dash="dashed")).opts(
            title=f"Entropy at the sampling temperature: {trace.decoding}", width=RESULTS_WIDTH, height=240,
            legend_position="top_left", tools=["hover"], show_grid=True)
        kept = hv.Curve(frame, "position", ("kept", "tokens kept")).opts(
            width=RESULTS_WIDTH, height=170, logy=True, color=TEAL, tools=["hover"], show_grid=True,
            title="Tokens that survived the rule (log scale)")
        return entropy, kept

    def _rank_histogram(self, computed):
        """Ranks do not depend on the temperature: this plot changes only with the text."""
        frame = self.analysis.rank_histogram() if computed else pd.DataFrame({"bucket": [], "tokens": []})
        return hv.Bars(frame, "bucket", "tokens").opts(title="Rank of the actual token (GLTR buckets)", height=330,
                                                       width=400, color=TEAL, tools=["hover"])

    def _attention_heatmap(self, computed):
        frame = self.analysis.attention_frame() if computed else pd.DataFrame({"head": [], "layer": [], "entropy": []})
        return hv.HeatMap(frame, ["head", "layer"], "entropy").opts(
            title="Mean attention entropy (nats)", cmap="viridis", colorbar=True, tools=["hover"],
            height=330, width=360, invert_yaxis=True)

    def _attention_curve(self, computed):
        frame = self.analysis.attention_curve() if computed else pd.DataFrame(
            {"position": [], "entropy": [], "token": []})
        return hv.Curve(frame, "position", "entropy").opts(
            title=f"Attention entropy of layer {self.analysis.layer}, head {self.analysis.head}", height=270,
            width=360, color=PURPLE, tools=["hover"], framewise=True)
