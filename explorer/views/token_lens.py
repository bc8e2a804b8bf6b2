"""The token entropy lens page: where is the model unsure, token by token, at any temperature.

A thin view over :class:`explorer.analyses.token_lens.TokenLensAnalysis`: widgets come from its
parameters, the model runs in the page's :class:`JobRunner` off the event loop, and the page only
reads cached results. A temperature or window move patches the curves' data source in place and
rewrites the coloured text (the measures at every slider temperature are precomputed after each
run); the plots that depend on the text alone are redrawn only when a run ends.
"""

from __future__ import annotations

import contextlib
import html
import time
import uuid

import holoviews as hv
import holoviews.plotting.bokeh  # noqa: F401 - registers the Bokeh backend (hv.extension would reset session hooks)
import numpy as np
import pandas as pd
import panel as pn
import param
from bokeh.models import (
    ColorBar, ColumnDataSource, CustomJS, Div, FactorRange, HoverTool, LinearAxis, LinearColorMapper, Range1d,
    SingleIntervalTicker, Span,
)
from bokeh.palettes import Viridis256
from bokeh.plotting import figure

from explorer.analyses.base import NotComputed
from explorer.analyses.token_lens import BUCKET_LABELS, RULE_SETTINGS, SMALL_MULTIPLE_TEMPERATURES, TokenLensAnalysis
from explorer.errors import InputError
from explorer.kernels.decoding import RULES
from explorer.kernels.divergence import ENTROPIX_THRESHOLDS
from explorer.models.language_model import MAX_SCORED_TOKENS
from explorer.views.jobs import JobRunner, error_message
from explorer.views.links import PageLinks
from explorer.views.server import adopt_warm_results
from explorer.views.shared import AMBER, GREY, INK, PALETTE, PURPLE, RED, TEAL, card, download_button, on_open

RESULTS_WIDTH = 740
MEASURE_COLOURS = {"entropy": TEAL, "surprisal": AMBER, "varentropy": PURPLE}
CURVE_COLUMNS = ("position", "token", *MEASURE_COLOURS, *(f"{m}_rolling" for m in MEASURE_COLOURS))
BUCKET_COLOURS = ("#bbf7d0", "#fde68a", "#fecaca", "#d8b4fe")  # GLTR-like: green, yellow, red, purple
DISPLAY_SETTINGS = ("temperature", "window", "colour_by")
#: the text boxes' own cut (the browser's maxlength drops what is pasted beyond it, silently) lies far
#: above any text the model can score (no token is 500 characters long): a longer paste reaches the
#: model's length check whole and is refused with a message, never cut and scored
TEXT_MAX_CHARS = 500 * MAX_SCORED_TOKENS
STALE = "<div class='lens-stale"
DECODING_NOTE = ("Generate from a prompt to see what the decoding rule removed at each step: the entropy of the full "
                 "distribution, of the truncated one, and how many tokens survived.")
TOKEN_CSS = """
<style>
.lens-text{font-family:ui-monospace,Menlo,Consolas,monospace;font-size:14px;line-height:1.9;white-space:pre-wrap;
  overflow-wrap:anywhere;max-width:100%;box-sizing:border-box;padding:6px}
.lens-tok{position:relative;border-radius:3px;padding:1px 0;cursor:help}
.lens-tok:hover{outline:2px solid #111827}
.lens-tok.lens-picked{outline:2px solid #dc2626;outline-offset:1px;font-weight:600}
.lens-tip{display:none;position:absolute;left:0;top:1.7em;z-index:50;background:#111827;color:#f9fafb;
  padding:6px 8px;border-radius:6px;font-size:12px;line-height:1.35;white-space:pre;min-width:220px;
  box-shadow:0 4px 12px rgba(0,0,0,.25)}
.lens-tok:hover .lens-tip{display:block}
.lens-legend{font-size:12px;color:#374151;margin:2px 6px}
.lens-context{color:#9ca3af}
.lens-legend span{padding:1px 6px;border-radius:3px;margin-right:6px}
</style>
"""


def _shade(values: np.ndarray, top: float) -> list[str]:
    """White-to-teal (low to high) background colours for values in [0, top]."""
    share = np.clip(values / max(top, 1e-9), 0, 1)
    red, green, blue = (255 - share * (255 - 45)).astype(int), (255 - share * (255 - 160)).astype(int), \
        (255 - share * (255 - 150)).astype(int)
    return [f"rgb({r},{g},{b})" for r, g, b in zip(red, green, blue)]


def _plot(element, **params) -> pn.pane.HoloViews:
    """A HoloViews pane whose axes are its own. Panel links the axes of every HoloViews plot of a page
    that share a dimension name ("position") by default, and redoes it for the whole page on every
    update of any of them: with these ten plots that was 1-2 s of event loop per run shown (each plot
    sets its own ranges anyway)."""
    return pn.pane.HoloViews(element, linked_axes=False, **params)


@contextlib.contextmanager
def _models_frozen():
    """Bokeh recomputes a served document's whole model graph after every plot replaced (0.1-0.2 s each
    for this page's 800 models); inside this block it does so once, at the end."""
    doc = pn.state.curdoc
    if doc is None:
        yield
        return
    with doc.models.freeze():
        yield


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
        self._multiples = [_plot(self._entropy_at(False, t), margin=0) for t in SMALL_MULTIPLE_TEMPERATURES]
        self._decoding_note = pn.pane.Markdown(DECODING_NOTE, width=RESULTS_WIDTH)
        self._decoding_entropy = _plot(None, visible=False)
        self._decoding_kept = _plot(None, visible=False)
        self._ranks = _plot(self._rank_histogram(False))
        self._heatmap = _plot(self._attention_heatmap(False))
        self._attention_line = _plot(self._attention_curve(False))
        self._layer = pn.widgets.IntInput.from_param(self.analysis.param.layer, width=90)
        self._head = pn.widgets.IntInput.from_param(self.analysis.param.head, width=90)
        self._deeper = DeeperLens(analysis=self.analysis, jobs=self.jobs)
        self._layout = self._build()
        self.analysis.param.watch(self._on_display, list(DISPLAY_SETTINGS))
        self.analysis.param.watch(self._on_attention_choice, ["layer", "head"])
        if not self._show_warm():
            on_open(self._score_on_open)

    def _show_warm(self) -> bool:
        """A page opened on the text the server scored at start shows it in the first document sent
        (its plots rendered once, with their data), without a job; False when there is none to show."""
        if self.links.applied.get("mode") == "generate" or not self.analysis.text.strip():
            return False
        self.analysis.mode = "score"
        adopt_warm_results(self.analysis)
        if not self.analysis.is_computed():
            return False
        self._show_run()
        return True

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
        adopt_warm_results(self.analysis)
        self.jobs.submit(self.analysis.compute, label, slot="run", on_done=self._show_run)   # a failed run keeps the page

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
        document update trips Bokeh's layout in hidden tabs; the server's model graph is recomputed
        once, at the end, instead of after each plot)."""
        with _models_frozen():
            self._show_plots()
        with pn.io.hold(pn.state.curdoc):
            self._show_measures()

    def _show_plots(self) -> None:
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
        self._deeper.show_run()

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
        self._tokens.object = self._tokens_html(frame, trace.logits.shape[-1], self._unscored_context(trace))
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
            pn.widgets.TextAreaInput.from_param(analysis.param.prompt, height=80, name="Prompt",
                                                max_length=TEXT_MAX_CHARS),
            pn.widgets.Checkbox.from_param(analysis.param.chat),
            pn.Row(pn.widgets.Select.from_param(analysis.param.decoding, width=130),
                   pn.widgets.FloatInput.from_param(analysis.param.generation_temperature, width=120)),
            *self._rule_widgets(),
            pn.Row(pn.widgets.IntInput.from_param(analysis.param.max_new_tokens, width=120),
                   pn.widgets.IntInput.from_param(analysis.param.seed, width=120)),
            generate,
            pn.widgets.TextAreaInput.from_param(analysis.param.text, height=110, max_length=TEXT_MAX_CHARS,
                                                name=f"Text to score (at most {MAX_SCORED_TOKENS:,} tokens)"),
            score,
            self.jobs,
            width=300, margin=(0, 10),
        )
        display = pn.Row(
            pn.widgets.FloatSlider.from_param(analysis.param.temperature, width=260, css_classes=["lens-temperature"]),
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
            dynamic=True, width=RESULTS_WIDTH,   # only the tab on screen is rendered (page opens, run ends)
        )
        plots = pn.Column(pn.pane.Bokeh(self._curves), details,
                          pn.Row(download_button(self._csv, "token_trace.csv", "Export CSV"),
                                 download_button(self._parquet, "token_trace.parquet", "Export PARQUET")),
                          width=RESULTS_WIDTH)
        results = pn.Column(display, self._summary, self._tokens, plots, self._deeper, width=RESULTS_WIDTH + 20)
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

    def _unscored_context(self, trace) -> str:
        """The start of a pasted text that is context only (the model predicts the tokens after it)."""
        return trace.context if trace.kind == "scored" and not self.analysis.prompt.strip() else ""

    def _tokens_html(self, frame: pd.DataFrame, vocabulary: int, context: str = "") -> str:
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
        picked = self._deeper.picked_positions()
        for row, colour in zip(frame.itertuples(index=False), colours):
            tip = (f"#{row.position} {row.token!r}\nentropy {row.entropy:.3f}  surprisal {row.surprisal:.3f}\n"
                   f"varentropy {row.varentropy:.3f}  rank {row.rank}\n— top 10 —\n"
                   + row.top_alternatives.replace("; ", "\n"))
            mark = " lens-picked" if row.position in picked else ""
            spans.append(f"<span class='lens-tok{mark}' data-pos='{row.position}' style='background:{colour}'>"
                         f"{html.escape(_visible(row.token))}<span class='lens-tip'>{html.escape(tip)}</span></span>")
        lead = (f"<span class='lens-context' title='context: the model predicts the tokens after it'>"
                f"{html.escape(_visible(context))}</span>") if context else ""
        return (f"{TOKEN_CSS}<div class='lens-legend'>{legend}</div>"
                f"<div class='lens-text lens-text-{self._deeper.uid}' {self._deeper.text_handlers()}>"
                f"{lead}{''.join(spans)}</div>")

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


# ====================================================================== the lens, deeper
DEEPER_TABS = ("regions", "lens", "branches", "compare", "reasoning")
DEEPER_TITLES = ("Entropy × varentropy", "Layer by layer", "Branches", "Two models", "Reasoning steps")
#: the job slot and the heavy result each tab needs (the regions tab needs none: it derives from the trace)
DEEPER_JOBS = {"lens": "lens_scored", "branches": "branches", "compare": "comparison", "reasoning": "reasoning"}
DEEPER_LABELS = {"lens": "Logit lens", "branches": "Branching", "compare": "Comparing two models",
                 "reasoning": "Reasoning steps"}
#: a temperature move re-scores the layers after this pause, so that a drag starts one job, not one per step
LENS_DEBOUNCE_S = 0.25
QUADRANT_COLOURS = ("#16a34a", AMBER, PURPLE, "#dc2626")   # low/low, high H, high V, both
BRANCH_SETTINGS = ("branch_position", "branches_k", "branch_tokens", "decoding", "generation_temperature", "seed",
                   *RULE_SETTINGS)
NOTE_STYLE = "font-size:13px;color:#374151;margin:4px 0;"
ERROR_STYLE = "background:#fef3c7;border-radius:6px;padding:6px 10px;color:#92400e;"
DEEPER_CSS = """
<style>
.lens-branch{font-family:ui-monospace,Menlo,Consolas,monospace;font-size:13px;line-height:1.8;margin:2px 0;
  white-space:pre-wrap;overflow-wrap:anywhere}
.lens-branch b{display:inline-block;min-width:78px;font-family:system-ui,sans-serif;font-size:12px;color:#374151}
.lens-branch .lens-context{color:#9ca3af}
.lens-step{font-size:13px;margin:3px 0;padding:3px 8px;border-radius:6px}
.lens-step.lens-step-marked{background:#fee2e2}
.lens-step i{color:#6b7280;font-style:normal;font-size:12px}
</style>
"""


def _token_events(uid: str) -> str:
    """Inline handlers for the coloured text (one per render, on its container): hovering a token rings
    its point in the entropy x varentropy scatter, in the browser only; clicking it sends its position
    to the server (through the ``clicks`` source) for the logit lens's column and the branch point."""
    find = ("const t=event.target.closest('.lens-tok[data-pos]');if(!t||!window.Bokeh)return;"
            "const i=+t.dataset.pos;for(const d of Bokeh.documents){")
    over = (find + f"const s=d.get_model_by_name('lens-{uid}-regions'),h=d.get_model_by_name('lens-{uid}-ring');"
            "if(s&&h&&i<s.data.position.length){h.data.x=[s.data.entropy_bits[i]];"
            "h.data.y=[s.data.varentropy_bits2[i]];h.change.emit();}}")
    out = (find + f"const h=d.get_model_by_name('lens-{uid}-ring');if(h){{h.data.x=[];h.data.y=[];h.change.emit();}}}}")
    click = (find + f"const c=d.get_model_by_name('lens-{uid}-clicks');"
             "if(c){c.data={position:[i],time:[Date.now()]};}}")
    return f'onmouseover="{over}" onmouseout="{out}" onclick="{click}"'


#: selecting points in the scatter outlines their tokens in the coloured text (which lives in a
#: shadow root of its own: every root is searched)
SELECTION_JS = """
const picked = new Set(source.selected.indices);
const walk = (root) => {
  root.querySelectorAll(`.lens-text-${uid} .lens-tok[data-pos]`).forEach(
    (t) => t.classList.toggle('lens-picked', picked.has(+t.dataset.pos)));
  root.querySelectorAll('*').forEach((e) => { if (e.shadowRoot) walk(e.shadowRoot); });
};
walk(document);
"""


class DeeperLens(pn.viewable.Viewer):
    """The lens, deeper, as tabs under the lens page: entropy against varentropy (linked both ways to
    the coloured text), layer by layer (logit lens), branches from one token, two models on the same
    text with Entropy Adaptive Decoding, and the answer's entropy along reasoning steps.

    A tab on screen shows its results from the analysis's cache and, when they are missing for the
    current settings, computes them in the page's job runner (slot = the tab). Display settings
    (thresholds, the heatmap's measure, the position) patch the figures' data sources in place.
    """

    analysis = param.ClassSelector(class_=TokenLensAnalysis)
    jobs = param.ClassSelector(class_=JobRunner)

    def __init__(self, **params):
        super().__init__(**params)
        self.uid = uuid.uuid4().hex[:8]
        self._notes = {tab: pn.pane.HTML("", width=RESULTS_WIDTH, margin=(0, 5), css_classes=[f"lens-note-{tab}"])
                       for tab in DEEPER_TABS}
        self._build_regions()
        self._build_lens()
        self._build_branches()
        self._build_compare()
        self._build_reasoning()
        # only the tab on screen is in the browser (a page opens with one tab's figures, not five); the
        # clicks source, which the coloured text writes to whatever tab is open, lives outside the tabs
        self._tabs = pn.Tabs(*zip(DEEPER_TITLES, (self._regions_tab, self._lens_tab, self._branches_tab,
                                                   self._compare_tab, self._reasoning_tab)),
                             dynamic=True, width=RESULTS_WIDTH, css_classes=["lens-deeper-tabs"])
        self._clicks_holder = pn.pane.Bokeh(Div(tags=[self._clicks], visible=False), visible=False, margin=0)
        self._tabs.param.watch(lambda _event: self.ensure(self.active_tab), "active")
        a = self.analysis
        a.param.watch(self._on_temperature, ["temperature"])
        a.param.watch(lambda *_e: self._show_regions(), ["quadrant_entropy_bits", "quadrant_varentropy_bits2"])
        a.param.watch(lambda _e: self._show("lens"), ["lens_measure"])
        a.param.watch(lambda _e: self._show_lens_column(), ["lens_position"])
        a.param.watch(lambda *_e: self._on_setting("branches"), list(BRANCH_SETTINGS))
        a.param.watch(lambda _e: self._on_setting("compare"), ["second_model"])
        a.param.watch(lambda _e: self._show_handover(), ["ead_threshold_bits"])
        a.param.watch(self._on_reasoning_setting, ["question", "chain", "split_by", "answer", "steps"])
        self._splitting = False
        self._split_chain()

    def __panel__(self):
        return pn.Column(pn.pane.HTML(f"{DEEPER_CSS}<h3 style='margin:14px 0 0'>The lens, deeper</h3>", margin=(0, 5)),
                         self._tabs, self._clicks_holder, width=RESULTS_WIDTH)

    @property
    def active_tab(self) -> str:
        return DEEPER_TABS[self._tabs.active]

    # ------------------------------------------------------------------ hooks for the coloured text
    def text_handlers(self) -> str:
        return _token_events(self.uid)

    def picked_positions(self) -> set[int]:
        """Positions selected in the entropy x varentropy scatter (outlined in the coloured text)."""
        return set(self._regions_source.selected.indices)

    # ------------------------------------------------------------------ when to compute
    def show_run(self) -> None:
        """A run ended: the scatter shows the new text; the other tabs drop the old one's results, and
        the tab on screen computes its own."""
        self._regions_source.selected.indices = []
        self._show_regions()
        for tab in ("lens", "branches", "compare"):
            self._clear(tab)
        self.ensure(self.active_tab)

    def ensure(self, tab: str, force: bool = False, delay: float = 0.0) -> None:
        """Show ``tab``'s results from the cache, or start the job that computes them. An automatic
        call leaves a job already running in the tab's slot alone; ``force`` (a button, a changed
        setting) replaces it (the newest wins)."""
        if tab == "regions":
            self._show_regions()
            return
        if self._show(tab):
            return
        reason = self._cannot_run(tab)
        if reason:
            self._note(tab, reason)
            return
        if self.jobs.busy(tab) and not force:
            return
        self._submit(tab, delay)

    def _cannot_run(self, tab: str) -> str:
        """Why ``tab`` cannot be computed now (empty: it can)."""
        a = self.analysis
        if tab != "reasoning" and not a.is_cached("trace"):
            return "Press Score text (or Generate) first: this tab works on the page's text."
        if tab == "compare" and not a.second_model.strip():
            return ("Type a second model (a Hugging Face id or a local directory) with the same tokenizer as "
                    f"{html.escape(a.model_name)}, then press Compare.")
        return ""

    def _submit(self, tab: str, delay: float = 0.0) -> None:
        read = getattr(self.analysis, DEEPER_JOBS[tab])

        def job(progress):
            if delay:
                time.sleep(delay)
                progress.check()
            return read(progress=progress)

        self._note(tab, self.analysis.not_computed_message(DEEPER_JOBS[tab]))
        self.jobs.submit(job, DEEPER_LABELS[tab], slot=tab, on_done=lambda _result: self._job_done(tab),
                         on_error=lambda err: self._fail(tab, err))

    def _job_done(self, tab: str) -> None:
        """Show the job's results; if the settings moved on meanwhile, the tab on screen computes again."""
        if self.active_tab == tab:
            self.ensure(tab)
        else:
            self._show(tab)

    def _run_now(self, tab: str) -> None:
        """A button: compute ``tab`` for the current settings (or show what is cached)."""
        self.ensure(tab, force=True)

    def _on_setting(self, tab: str) -> None:
        """A setting of ``tab`` changed: recompute it if it is on screen."""
        if self.active_tab == tab:
            self.ensure(tab, force=True)

    def _on_temperature(self, *_events) -> None:
        self._show_regions()
        if self.active_tab == "lens" and self.analysis.is_cached("logit_lens"):
            self.ensure("lens", force=True, delay=LENS_DEBOUNCE_S)

    def _on_click(self, _attr, _old, new) -> None:
        """A token was clicked in the coloured text: its position becomes the lens's column and the branch point."""
        positions = new.get("position") or []
        if positions:
            self.analysis.param.update(lens_position=max(int(positions[0]), 0), branch_position=int(positions[0]))

    def _on_cell(self, _attr, _old, new) -> None:
        """A heatmap cell was clicked: its position's column is drawn."""
        if new:
            self.analysis.lens_position = int(self._lens_source.data["position"][new[0]])

    def _show(self, tab: str) -> bool:
        """Show ``tab`` from cached results; False when they are not computed for the current settings."""
        try:
            with self.analysis.reading():
                {"lens": self._show_lens, "branches": self._show_branches, "compare": self._show_comparison,
                 "reasoning": self._show_reasoning}[tab]()
        except NotComputed:
            return False
        except InputError as err:   # e.g. the run failed: nothing to show
            self._fail(tab, err)
            return True
        return True

    def _note(self, tab: str, text: str, error: bool = False) -> None:
        """The tab's status line (``text`` is HTML; an error is plain text, shown as a warning)."""
        if error:
            self._notes[tab].object = (f"<div class='lens-deeper-note lens-deeper-error' style='{NOTE_STYLE}{ERROR_STYLE}'>"
                                       f"⚠ {html.escape(text)}</div>")
        else:
            self._notes[tab].object = f"<div class='lens-deeper-note' style='{NOTE_STYLE}'>{text}</div>"

    def _fail(self, tab: str, err: BaseException) -> None:
        """A tab's job failed: its old results go (they belong to other settings) and the message stays."""
        self._clear(tab)
        self._note(tab, error_message(err), error=True)

    def _clear(self, tab: str) -> None:
        """Empty a tab's figures (a new text: the old results no longer apply)."""
        sources = {"lens": (self._lens_source, self._column_source),
                   "branches": (self._alternatives_source, self._branch_source),
                   "compare": (self._compare_source,), "reasoning": (self._reasoning_source,)}[tab]
        for source in sources:
            source.data = {column: [] for column in source.data}
        for pane in {"lens": (), "branches": (self._branch_cards, self._branch_texts),
                     "compare": (self._compare_cards,),
                     "reasoning": (self._reasoning_cards, self._reasoning_steps)}[tab]:
            pane.object = ""
        self._note(tab, "")

    # ------------------------------------------------------------------ entropy x varentropy
    def _build_regions(self) -> None:
        a, uid = self.analysis, self.uid
        columns = ("position", "token", "entropy_bits", "varentropy_bits2", "quadrant_name", "entropix_name", "colour")
        self._regions_source = ColumnDataSource({c: [] for c in columns}, name=f"lens-{uid}-regions")
        self._ring = ColumnDataSource({"x": [], "y": []}, name=f"lens-{uid}-ring")
        self._clicks = ColumnDataSource({"position": [], "time": []}, name=f"lens-{uid}-clicks")
        self._clicks.on_change("data", self._on_click)
        fig = figure(title="Entropy against varentropy", width=RESULTS_WIDTH, height=420,
                     x_axis_label="entropy (bits)", y_axis_label="varentropy (bits²)",
                     tools="box_select,lasso_select,tap,pan,wheel_zoom,reset,save", active_drag="box_select",
                     name="lens-regions-figure", css_classes=["lens-regions-figure"])
        fig.toolbar.logo = None
        points = fig.scatter("entropy_bits", "varentropy_bits2", source=self._regions_source, size=9,
                             fill_color="colour", line_color="white", fill_alpha=0.85, legend_field="quadrant_name",
                             selection_line_color="#111827", selection_line_width=2, nonselection_fill_alpha=0.25)
        fig.scatter("x", "y", source=self._ring, size=24, fill_alpha=0, line_color="#dc2626", line_width=3)
        fig.add_tools(HoverTool(renderers=[points], tooltips=[
            ("position", "@position"), ("token", "@token"), ("entropy", "@entropy_bits{0.00} bits"),
            ("varentropy", "@varentropy_bits2{0.00} bits²"), ("quadrant", "@quadrant_name"),
            ("entropix", "@entropix_name")]))
        self._entropy_span = Span(location=a.quadrant_entropy_bits, dimension="height", line_dash="dashed",
                                  line_color=INK, line_width=1)
        self._varentropy_span = Span(location=a.quadrant_varentropy_bits2, dimension="width", line_dash="dashed",
                                     line_color=INK, line_width=1)
        fig.add_layout(self._entropy_span)
        fig.add_layout(self._varentropy_span)
        fig.add_layout(fig.legend[0], "below")
        fig.legend.orientation = "horizontal"
        fig.legend.label_text_font_size = "11px"
        self._regions_source.selected.js_on_change("indices", CustomJS(
            args={"source": self._regions_source, "uid": uid, "clicks": self._clicks}, code=SELECTION_JS))
        self._regions_figure = fig
        self._regions_counts = pn.pane.HTML("", width=RESULTS_WIDTH, css_classes=["lens-regions-counts"])
        defaults = (f"entropix's defaults: entropy {ENTROPIX_THRESHOLDS['medium_entropy']:g} bits (its medium "
                    f"entropy), varentropy {ENTROPIX_THRESHOLDS['high_varentropy']:g} bits² (its high varentropy)")
        self._regions_tab = pn.Column(
            pn.Row(pn.widgets.FloatInput.from_param(a.param.quadrant_entropy_bits, width=200),
                   pn.widgets.FloatInput.from_param(a.param.quadrant_varentropy_bits2, width=200),
                   pn.pane.HTML(f"<div style='{NOTE_STYLE}'>{defaults}</div>", width=300)),
            self._notes["regions"], self._regions_counts, pn.pane.Bokeh(fig),
            pn.pane.HTML(f"<div style='{NOTE_STYLE}'>Select points (box or lasso) to outline their tokens in the "
                         "text above; hover a token to ring its point; click a token to pick it for the layer "
                         "column and the branch point.</div>", width=RESULTS_WIDTH),
            width=RESULTS_WIDTH)

    def _show_regions(self) -> None:
        a = self.analysis
        self._entropy_span.location = a.quadrant_entropy_bits
        self._varentropy_span.location = a.quadrant_varentropy_bits2
        try:
            with a.reading():
                frame, counts = a.regions(), a.quadrant_counts()
        except InputError as err:
            self._note("regions", html.escape(str(err)))
            return
        self._note("regions", f"Every position of the text at T = {a.temperature:.2f}: high means above the "
                              "threshold; the colours are the four regions.")
        data = {c: frame[c].to_numpy() for c in ("position", "token", "entropy_bits", "varentropy_bits2",
                                                  "quadrant_name", "entropix_name")}
        data["colour"] = np.array(QUADRANT_COLOURS)[frame["quadrant"].to_numpy()]
        self._regions_source.data = data
        n = max(len(frame), 1)
        self._regions_counts.object = "".join(
            card(name, f"{count} ({100 * count / n:.0f}%)", prefix="lens-regions") for name, count in counts.items())
        self._regions_figure.title.text = f"Entropy against varentropy at T = {a.temperature:.2f}"

    # ------------------------------------------------------------------ layer by layer
    def _build_lens(self) -> None:
        a = self.analysis
        columns = ("x", "y", "value", "layer", "position", "token", "top_token", "top_prob", "entropy", "kl_to_final")
        self._lens_source = ColumnDataSource({c: [] for c in columns}, name=f"lens-{self.uid}-layers")
        self._lens_mapper = LinearColorMapper(palette=Viridis256, low=0, high=1)
        fig = figure(title="Logit lens: entropy of every layer's prediction", width=RESULTS_WIDTH, height=380,
                     x_axis_label="position", y_axis_label="layer (0 = embeddings)", tools="tap,pan,wheel_zoom,reset,save",
                     x_range=Range1d(-0.5, 0.5), y_range=Range1d(-0.5, 0.5), name="lens-layers-figure", css_classes=["lens-layers-figure"])
        fig.toolbar.logo = None
        cells = fig.rect("x", "y", 1, 1, source=self._lens_source, fill_color={"field": "value", "transform": self._lens_mapper},
                         line_color=None, selection_line_color="#dc2626", selection_line_width=2,
                         nonselection_fill_alpha=1.0, selection_fill_alpha=1.0)
        fig.add_tools(HoverTool(renderers=[cells], tooltips=[
            ("layer", "@layer"), ("position", "@position (@token)"), ("top token", "@top_token (p = @top_prob{0.000})"),
            ("entropy", "@entropy{0.000} nats"), ("KL to final", "@kl_to_final{0.000} nats")]))
        self._lens_colorbar = ColorBar(color_mapper=self._lens_mapper, width=10, title="nats")
        fig.add_layout(self._lens_colorbar, "right")
        self._lens_span = Span(location=a.lens_position, dimension="height", line_color="#dc2626", line_width=1,
                               line_dash="dashed")
        fig.add_layout(self._lens_span)
        fig.grid.visible = False
        self._lens_source.selected.on_change("indices", self._on_cell)
        self._lens_figure = fig
        self._column_source = ColumnDataSource({c: [] for c in ("layer_id", "layer", "entropy", "kl_to_final",
                                                                "top_token", "top_prob")})
        column = figure(title="One position across layers", width=RESULTS_WIDTH, height=250,
                        x_axis_label="layer (0 = embeddings)", y_axis_label="nats", tools="pan,wheel_zoom,reset,save",
                        name="lens-column-figure", css_classes=["lens-column-figure"])
        column.toolbar.logo = None
        entropy = column.line("layer_id", "entropy", source=self._column_source, color=TEAL, line_width=2.5,
                              legend_label="entropy")
        column.scatter("layer_id", "entropy", source=self._column_source, color=TEAL, size=5)
        column.line("layer_id", "kl_to_final", source=self._column_source, color=AMBER, line_width=2.5,
                    legend_label="KL to the final layer")
        column.add_tools(HoverTool(renderers=[entropy], mode="vline", tooltips=[
            ("layer", "@layer"), ("top token", "@top_token (p = @top_prob{0.000})"), ("entropy", "@entropy{0.000}"),
            ("KL to final", "@kl_to_final{0.000}")]))
        column.legend.location = "top_right"
        self._column_figure = column
        self._lens_tab = pn.Column(
            pn.Row(pn.widgets.RadioButtonGroup.from_param(a.param.lens_measure, width=330, margin=(22, 10)),
                   pn.widgets.IntInput.from_param(a.param.lens_position, width=120)),
            self._notes["lens"], pn.pane.Bokeh(fig), pn.pane.Bokeh(column), width=RESULTS_WIDTH)

    def _show_lens(self) -> None:
        """The heatmap at the display temperature (or T = 1 when the per-layer logits were not kept)."""
        a = self.analysis
        with a.reading():
            frame, lens = a.lens_frame(), a.lens_scored()
            follows = a.lens_follows_temperature()
        n_layers, n = lens.shape
        measure = a.lens_measure
        values = frame[measure].to_numpy()
        self._lens_source.data = {
            "x": frame["position"].to_numpy(), "y": frame["layer_id"].to_numpy(), "value": values,
            "layer": frame["layer"].to_numpy(), "position": frame["position"].to_numpy(),
            "token": np.array([repr(t) for t in frame["token"]]), "top_token": np.array([repr(t) for t in frame["top_token"]]),
            "top_prob": frame["top_prob"].to_numpy(), "entropy": frame["entropy"].to_numpy(),
            "kl_to_final": frame["kl_to_final"].to_numpy()}
        finite = values[np.isfinite(values)]
        self._lens_mapper.low, self._lens_mapper.high = 0.0, float(finite.max()) if len(finite) and finite.max() > 0 else 1.0
        self._lens_figure.x_range.start, self._lens_figure.x_range.end = -0.5, n - 0.5
        self._lens_figure.y_range.start, self._lens_figure.y_range.end = -0.5, max(frame["layer_id"]) + 0.5
        name = "entropy" if measure == "entropy" else "KL divergence to the final layer"
        self._lens_figure.title.text = f"Logit lens: {name} of every layer's prediction at T = {lens.temperature:g}"
        if follows:
            note = (f"Every layer decoded through the final norm and the output head ({n_layers} rows, {n} positions); "
                    f"the per-layer logits ({lens.logits_mb:.0f} MB) are kept, so the temperature slider re-scores "
                    "every layer. Hover a cell for its top token; click a cell or a token for its column.")
        else:
            note = (f"The per-layer logits ({lens.logits_mb:.0f} MB) are over the memory budget and were not kept: "
                    f"the layers are shown at T = {lens.temperature:g} and <b>the temperature slider applies to the "
                    "final layer only</b> (the text and curves above).")
        self._note("lens", note)
        self._show_lens_column()

    def _show_lens_column(self) -> None:
        a = self.analysis
        self._lens_span.location = a.lens_position
        try:
            with a.reading():
                column, lens = a.lens_column(), a.lens_scored()
        except InputError:
            return
        position = min(a.lens_position, lens.shape[1] - 1)
        self._column_source.data = {"layer_id": np.array(lens.layer_ids), "layer": column["layer"].to_numpy(),
                                    "entropy": column["entropy"].to_numpy(), "kl_to_final": column["kl_to_final"].to_numpy(),
                                    "top_token": np.array([repr(t) for t in column["top_token"]]),
                                    "top_prob": column["top_prob"].to_numpy()}
        self._column_figure.title.text = (f"Position {position} ({lens.tokens[position]!r}) across layers: "
                                          f"final top token {column['top_token'].iloc[-1]!r}")

    # ------------------------------------------------------------------ branches
    def _build_branches(self) -> None:
        a = self.analysis
        self._alternatives_source = ColumnDataSource({c: [] for c in ("label", "p", "p_kept", "colour")})
        alternatives = figure(title="p at the branch point (dark: after the rule)", width=300, height=330,
                              y_range=FactorRange(),
                              x_axis_label="probability", tools="save", name="lens-alternatives-figure", css_classes=["lens-alternatives-figure"])
        alternatives.toolbar.logo = None
        alternatives.hbar(y="label", right="p", height=0.8, source=self._alternatives_source, fill_color="colour",
                          line_color=None, fill_alpha=0.45)
        alternatives.hbar(y="label", right="p_kept", height=0.35, source=self._alternatives_source, fill_color=INK,
                          line_color=None)
        alternatives.add_tools(HoverTool(tooltips=[("token", "@label"), ("p", "@p{0.0000}"),
                                                   ("p after the rule", "@p_kept{0.0000}")]))
        alternatives.x_range.start = 0
        self._alternatives_figure = alternatives
        self._branch_source = ColumnDataSource({c: [] for c in ("xs", "ys", "colour", "width", "label")})
        curves = figure(title="Entropy after the branch point", width=440, height=330, x_axis_label="new token",
                        y_axis_label="entropy at the sampling temperature (nats)", tools="pan,wheel_zoom,reset,save",
                        name="lens-branches-figure", css_classes=["lens-branches-figure"])
        curves.toolbar.logo = None
        lines = curves.multi_line("xs", "ys", source=self._branch_source, line_color="colour", line_width="width",
                                  line_alpha=0.85)
        curves.add_tools(HoverTool(renderers=[lines], tooltips=[("", "@label")]))
        self._branch_figure = curves
        self._branch_cards = pn.pane.HTML("", width=RESULTS_WIDTH, css_classes=["lens-branch-cards"])
        self._branch_texts = pn.pane.HTML("", width=RESULTS_WIDTH, css_classes=["lens-branch-texts"])
        button = pn.widgets.Button(label="Branch here", color="primary", width=120, margin=(24, 10))
        button.on_click(lambda _event: self._run_now("branches"))
        self._branches_tab = pn.Column(
            pn.Row(pn.widgets.IntInput.from_param(a.param.branch_position, width=150),
                   pn.widgets.IntInput.from_param(a.param.branches_k, width=120),
                   pn.widgets.IntInput.from_param(a.param.branch_tokens, width=140), button),
            self._notes["branches"], self._branch_cards,
            pn.Row(pn.pane.Bokeh(alternatives), pn.pane.Bokeh(curves)), self._branch_texts, width=RESULTS_WIDTH)

    def _show_branches(self) -> None:
        a = self.analysis
        result, curves, alternatives = a.branches(), a.branch_curves(), a.branch_alternatives()
        position, trace = result.position, a.trace()
        labels = [f"{t!r}" + (" (text)" if own else "") for t, own in zip(alternatives["token"], alternatives["is_text_token"])]
        self._alternatives_source.data = {"label": labels[::-1], "p": alternatives["p"].to_numpy()[::-1],
                                          "p_kept": alternatives["p_kept"].to_numpy()[::-1],
                                          "colour": np.where(alternatives["is_text_token"], "#dc2626", TEAL)[::-1]}
        self._alternatives_figure.y_range.factors = labels[::-1]
        names = ["text", *(f"branch {b + 1}" for b in range(len(result.branches)))]
        groups = [curves[curves.curve == name] for name in names]
        colours = [INK, *(PALETTE[b % len(PALETTE)] for b in range(len(result.branches)))]
        self._branch_source.data = {"xs": [g["step"].to_numpy() for g in groups],
                                    "ys": [g["entropy"].to_numpy() for g in groups], "colour": colours,
                                    "width": [3.5] + [1.5] * len(result.branches), "label": names}
        t = result.branches[0].generation_temperature
        cards = [("branch point", f"#{position} {trace.tokens[position]!r}", "the text's token here"),
                 ("entropy there", f"{result.branch_point_entropy:.3f} nats", f"at T = {t:g}"),
                 ("p(text's token)", f"{result.original_prob:.3f}", f"{result.original_kept_prob:.3f} after the rule"),
                 ("mass of the alternatives", f"{1 - result.original_prob:.3f}", "1 − p(text's token)")]
        self._branch_cards.object = "".join(card(label, value, note, prefix="lens-branch") for label, value, note in cards)
        self._branch_texts.object = DEEPER_CSS + self._branch_texts_html(result, curves, colours)
        self._note("branches", f"{len(result.branches)} continuations of the prefix before position {position}, sampled "
                               f"in one batched call with {html.escape(result.decoding)} at T = {t:g}, seed {result.seed}"
                               " (the page's decoding settings). Click a token in the text above to branch there.")

    def _branch_texts_html(self, result, curves: pd.DataFrame, colours: list[str]) -> str:
        """The end of the prefix, then the text's own continuation and each branch, coloured by entropy."""
        prefix = "".join(self.analysis.trace().tokens[max(result.position - 8, 0):result.position])
        top = max(float(curves["entropy"].max()), 1e-9)
        rows = []
        for name, colour in zip(["text", *(f"branch {b + 1}" for b in range(len(result.branches)))], colours):
            group = curves[curves.curve == name]
            spans = "".join(f"<span style='background:{shade}'>{html.escape(_visible(token))}</span>"
                            for token, shade in zip(group["token"], _shade(group["entropy"].to_numpy(), top)))
            rows.append(f"<div class='lens-branch'><b style='color:{colour}'>{name}</b>"
                        f"<span class='lens-context'>…{html.escape(_visible(prefix))}</span>{spans}</div>")
        return "".join(rows)

    # ------------------------------------------------------------------ two models
    def _build_compare(self) -> None:
        a = self.analysis
        columns = ("position", "token", "entropy_a", "entropy_b", "entropy_difference", "kl_ab", "cross_entropy_ab",
                   "rolling_entropy_bits", "handed_over", "colour")
        self._compare_source = ColumnDataSource({c: [] for c in columns}, name=f"lens-{self.uid}-compare")
        tooltips = [("position", "@position"), ("token", "@token"), ("entropy A", "@entropy_a{0.000}"),
                    ("entropy B", "@entropy_b{0.000}"), ("KL(A‖B)", "@kl_ab{0.000}"),
                    ("cross-entropy", "@cross_entropy_ab{0.000}"), ("rolling bits", "@rolling_entropy_bits{0.00}")]
        entropies = figure(title="Entropy under each model (T = 1)", width=RESULTS_WIDTH, height=220,
                           y_axis_label="nats", tools="pan,wheel_zoom,reset,save", name="lens-compare-entropy", css_classes=["lens-compare-entropy"])
        kl = figure(title="KL(p_A ‖ p_B) and cross-entropy H(p_A, p_B)", width=RESULTS_WIDTH, height=200,
                    y_axis_label="nats", tools="pan,wheel_zoom,reset,save", x_range=entropies.x_range,
                    name="lens-compare-kl", css_classes=["lens-compare-kl"])
        ead = figure(title="Entropy Adaptive Decoding", width=RESULTS_WIDTH, height=230, x_axis_label="position",
                     y_axis_label="rolling entropy of A (bits)", tools="pan,wheel_zoom,reset,save",
                     x_range=entropies.x_range, name="lens-compare-ead", css_classes=["lens-compare-ead"])
        for fig in (entropies, kl, ead):
            fig.toolbar.logo = None
        first = entropies.line("position", "entropy_a", source=self._compare_source, color=TEAL, line_width=2,
                               legend_label="A (this page's model)")
        entropies.line("position", "entropy_b", source=self._compare_source, color=PURPLE, line_width=2,
                       legend_label="B (second model)")
        entropies.line("position", "entropy_difference", source=self._compare_source, color=GREY, line_dash="dashed",
                       legend_label="A − B")
        second = kl.line("position", "kl_ab", source=self._compare_source, color=RED, line_width=2,
                         legend_label="KL(A ‖ B)")
        kl.line("position", "cross_entropy_ab", source=self._compare_source, color=AMBER, line_width=2,
                legend_label="cross-entropy")
        ead.line("position", "rolling_entropy_bits", source=self._compare_source, color=INK, line_width=1.5)
        third = ead.scatter("position", "rolling_entropy_bits", source=self._compare_source, fill_color="colour",
                            line_color="colour", size=8)
        self._ead_span = Span(location=a.ead_threshold_bits, dimension="width", line_color=RED, line_dash="dashed")
        ead.add_layout(self._ead_span)
        for fig, renderer in ((entropies, first), (kl, second), (ead, third)):
            fig.add_tools(HoverTool(renderers=[renderer], mode="vline" if fig is not ead else "mouse",
                                    tooltips=tooltips + [("to model B", "@handed_over")] * (fig is ead)))
        for fig in (entropies, kl):
            fig.add_layout(fig.legend[0], "above")
            fig.legend.orientation = "horizontal"
            fig.legend.label_text_font_size = "11px"
        self._ead_figure = ead
        self._compare_cards = pn.pane.HTML("", width=RESULTS_WIDTH, css_classes=["lens-compare-cards"])
        button = pn.widgets.Button(label="Compare", color="primary", width=110, margin=(24, 10))
        button.on_click(lambda _event: self._run_now("compare"))
        self._compare_tab = pn.Column(
            pn.Row(pn.widgets.TextInput.from_param(a.param.second_model, width=330,
                                                   placeholder="Hugging Face id or local path"), button,
                   pn.widgets.FloatSlider.from_param(a.param.ead_threshold_bits, width=230)),
            self._notes["compare"], self._compare_cards, pn.pane.Bokeh(entropies), pn.pane.Bokeh(kl), pn.pane.Bokeh(ead),
            width=RESULTS_WIDTH)

    def _show_comparison(self) -> None:
        a = self.analysis
        comparison = a.comparison()
        self._show_handover()
        self._note("compare", f"A = {html.escape(comparison.model_a)}, B = {html.escape(comparison.model_b)}: both "
                              f"score the same {len(comparison.tokens)} tokens (the text alone, without the prompt) at "
                              "T = 1. Entropy Adaptive Decoding hands a step to B (the larger model) while the rolling "
                              f"mean of A's entropy over {comparison.window} tokens, in bits, is above the threshold.")

    def _show_handover(self) -> None:
        """Cards and the hand-over marks at the current threshold (the comparison is cached: no new pass)."""
        a = self.analysis
        self._ead_span.location = a.ead_threshold_bits
        try:
            with a.reading():
                comparison, frame = a.comparison(), a.handover()
        except InputError:
            return
        data = {c: frame[c].to_numpy() for c in frame.columns}
        data["token"] = np.array([repr(t) for t in frame["token"]])
        data["colour"] = np.where(frame["handed_over"], RED, GREY)
        self._compare_source.data = data
        handed = float(frame["handed_over"].mean()) if len(frame) else 0.0
        cards = [("D under A", f"{comparison.detection_a:+.3f}", comparison.model_a),
                 ("D under B", f"{comparison.detection_b:+.3f}", comparison.model_b),
                 ("mean KL(A ‖ B)", f"{float(frame['kl_ab'].mean()):.3f} nats", ""),
                 ("mean cross-entropy", f"{float(frame['cross_entropy_ab'].mean()):.3f} nats", "H(p_A, p_B)"),
                 ("handed to B", f"{100 * handed:.0f}% of steps",
                  f"{int(frame['handed_over'].sum())} of {len(frame)} at {a.ead_threshold_bits:g} bits")]
        self._compare_cards.object = "".join(card(label, value, note, key=f"compare {label}", prefix="lens")
                                             for label, value, note in cards)
        self._ead_figure.title.text = (f"Entropy Adaptive Decoding: {100 * handed:.0f}% of the steps go to B "
                                       f"(red: rolling mean > {a.ead_threshold_bits:g} bits)")

    # ------------------------------------------------------------------ reasoning steps
    def _build_reasoning(self) -> None:
        a = self.analysis
        columns = ("k", "step", "entropy_mean", "entropy_total", "reduction", "colour", "size")
        self._reasoning_source = ColumnDataSource({c: [] for c in columns}, name=f"lens-{self.uid}-reasoning")
        # total = mean x the answer's tokens (the same tokens for every k): one curve, read on either axis
        fig = figure(title="The answer's entropy after k steps", width=RESULTS_WIDTH, height=300,
                     x_axis_label="k (steps given)", y_axis_label="mean per answer token (nats)",
                     tools="pan,wheel_zoom,reset,save", y_range=Range1d(0, 1), name="lens-reasoning-figure",
                     css_classes=["lens-reasoning-figure"])
        fig.toolbar.logo = None
        fig.extra_y_ranges = {"total": Range1d(0, 1)}
        self._total_axis = LinearAxis(y_range_name="total", axis_label="total over the answer (nats)")
        fig.add_layout(self._total_axis, "right")
        fig.line("k", "entropy_mean", source=self._reasoning_source, color=TEAL, line_width=2.5)
        points = fig.scatter("k", "entropy_mean", source=self._reasoning_source, fill_color="colour", line_color="colour",
                             size="size")
        fig.add_tools(HoverTool(renderers=[points], tooltips=[
            ("k", "@k"), ("last step", "@step"), ("mean", "@entropy_mean{0.000} nats"),
            ("total", "@entropy_total{0.000} nats"), ("reduction", "@reduction{+0.000} nats")]))
        fig.xaxis.ticker = SingleIntervalTicker(interval=1)
        fig.xgrid.ticker = fig.xaxis.ticker
        self._reasoning_figure = fig
        self._reasoning_cards = pn.pane.HTML("", width=RESULTS_WIDTH, css_classes=["lens-reasoning-cards"])
        self._reasoning_steps = pn.pane.HTML("", width=RESULTS_WIDTH, css_classes=["lens-reasoning-steps"])
        button = pn.widgets.Button(label="Measure", color="primary", width=110, margin=(24, 10))
        button.on_click(lambda _event: self._run_now("reasoning"))
        self._reasoning_tab = pn.Column(
            pn.widgets.TextInput.from_param(a.param.question, width=RESULTS_WIDTH - 20),
            pn.widgets.TextAreaInput.from_param(a.param.chain, height=110, width=RESULTS_WIDTH - 20, max_length=TEXT_MAX_CHARS),
            pn.Row(pn.widgets.TextInput.from_param(a.param.answer, width=240),
                   pn.widgets.RadioButtonGroup.from_param(a.param.split_by, width=200, margin=(22, 10)), button),
            pn.widgets.TextAreaInput.from_param(a.param.steps, height=120, width=RESULTS_WIDTH - 20, max_length=TEXT_MAX_CHARS),
            self._notes["reasoning"], self._reasoning_cards, pn.pane.Bokeh(fig), self._reasoning_steps,
            width=RESULTS_WIDTH)

    def _on_reasoning_setting(self, *events) -> None:
        if self._splitting:
            return
        if {event.name for event in events} & {"chain", "split_by", "answer"}:
            self._split_chain()
        self._on_setting("reasoning")

    def _split_chain(self) -> None:
        """The chain, its split or the answer changed: the steps editor shows the new split (a regex, cheap)."""
        try:
            steps = "\n".join(self.analysis.chain_steps())
        except InputError as err:
            steps = ""
            # only the note here: clearing the figures (Bokeh sources) inside a widget's event failed in a
            # served session; the job that follows fails the same way and clears them on its own tick
            self._note("reasoning", error_message(err), error=True)
        self._splitting = True
        try:
            self.analysis.steps = steps
        finally:
            self._splitting = False

    def _show_reasoning(self) -> None:
        a = self.analysis
        result, frame = a.reasoning(), a.reasoning_frame()
        marked = frame["marked"].to_numpy()
        self._reasoning_source.data = {
            "k": frame["k"].to_numpy(), "step": frame["step"].to_numpy(), "entropy_mean": frame["entropy_mean"].to_numpy(),
            "entropy_total": frame["entropy_total"].to_numpy(), "reduction": frame["reduction"].to_numpy(),
            "colour": np.where(marked, RED, TEAL), "size": np.where(marked, 13, 7)}
        low, high = float(frame["entropy_mean"].min()), float(frame["entropy_mean"].max())
        pad = max(0.08 * (high - low), 0.02)
        self._reasoning_figure.y_range.update(start=max(low - pad, 0.0), end=high + pad)
        n = len(result.answer_tokens)
        self._reasoning_figure.extra_y_ranges["total"].update(start=max(low - pad, 0.0) * n, end=(high + pad) * n)
        self._total_axis.axis_label = f"total over the answer's {n} tokens (nats)"
        drops = result.reduction
        best = int(drops.argmax()) if len(drops) else 0
        cards = [("steps", f"{len(result.steps)}", f"answer: {len(result.answer_tokens)} tokens"),
                 ("with no step", f"{float(result.entropy_mean[0]):.3f} nats", "mean entropy per answer token"),
                 ("with every step", f"{float(result.entropy_mean[-1]):.3f} nats", ""),
                 ("largest drop", f"step {best + 1}", f"entropy {-float(drops[best]):+.3f} nats" if len(drops) else "")]
        self._reasoning_cards.object = "".join(card(label, value, note, prefix="lens-reasoning")
                                               for label, value, note in cards)
        rows = []
        for k, step, reduction, mark in zip(frame["k"][1:], frame["step"][1:], frame["reduction"][1:], marked[1:]):
            css = "lens-step lens-step-marked" if mark else "lens-step"
            flag = " ▼ reduces the answer's entropy most" if mark else ""
            rows.append(f"<div class='{css}'><b>{k}.</b> {html.escape(step)} <i>entropy {-reduction:+.3f} nats{flag}"
                        "</i></div>")
        self._reasoning_steps.object = DEEPER_CSS + "".join(rows)
        self._note("reasoning", f"The answer {html.escape(repr(result.answer))} scored after the question and the first k "
                                f"steps, k = 0..{len(result.steps)}, in one batched pass; red: the steps that reduce "
                                "its entropy most.")
