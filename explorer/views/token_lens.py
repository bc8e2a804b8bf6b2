"""The token entropy lens page: where is the model unsure, token by token, at any temperature.

A thin view over :class:`explorer.analyses.token_lens.TokenLensStudy`: widgets come from the study's
parameters, plots are HoloViews ``DynamicMap`` s bound to them, and the only long work (the model)
runs in a :class:`BackgroundTask` off the event loop.
"""

from __future__ import annotations

import html
import io

import holoviews as hv
import holoviews.plotting.bokeh  # noqa: F401 - registers the Bokeh backend (hv.extension would reset session hooks)
import numpy as np
import pandas as pd
import panel as pn
import param

from explorer.analyses.token_lens import BUCKET_LABELS, SMALL_MULTIPLE_TEMPERATURES, TokenLensStudy
from explorer.views.task import BackgroundTask


RESULTS_WIDTH = 740
MEASURE_COLOURS = {"entropy": "#0f766e", "surprisal": "#b45309", "varentropy": "#6d28d9"}
BUCKET_COLOURS = ("#bbf7d0", "#fde68a", "#fecaca", "#d8b4fe")  # GLTR-like: green, yellow, red, purple
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

    ``TokenEntropyLens()`` renders the whole page (in ``panel serve`` or a notebook); pass a
    ``TokenLensStudy`` to drive it from code.
    """

    study = param.ClassSelector(class_=TokenLensStudy)

    def __init__(self, **params):
        params.setdefault("study", TokenLensStudy())
        super().__init__(**params)
        self._fill_from_url()
        self.task = BackgroundTask()
        self._layout = self._build()
        if pn.state.curdoc is not None and pn.state.curdoc.session_context is not None:
            pn.state.onload(self._score_on_open)  # served: score the text as soon as the page is shown

    async def _score_on_open(self) -> None:
        """The page opens on a scored text (the default one, or one linked from another page)."""
        if self.study.text.strip() and self.study.trace is None:
            await self._run("score")

    def _fill_from_url(self) -> None:
        """``?text=...&prompt=...&temperature=...`` (a link from another page) fill the form."""
        args = pn.state.session_args or {}

        def arg(name: str) -> str | None:
            values = args.get(name)
            return values[0].decode("utf-8", "replace") if values else None

        if arg("text") is not None:
            self.study.prompt, self.study.text, self.study.mode = arg("prompt") or "", arg("text"), "score"
        if arg("temperature") is not None:
            try:
                self.study.temperature = float(arg("temperature"))
            except ValueError:
                pass   # a malformed or out-of-range temperature in the URL keeps the default

    # ------------------------------------------------------------------ actions (no computation here)
    async def _run(self, mode: str) -> None:
        self.study.mode = mode
        label = "Generating" if mode == "generate" else "Scoring"
        await self.task.run(self.study.run, on_done=self.study.set_results, label=label)

    async def _on_generate(self, _event) -> None:
        await self._run("generate")

    async def _on_score(self, _event) -> None:
        await self._run("score")

    # ------------------------------------------------------------------ layout
    def _build(self) -> pn.viewable.Viewable:
        study = self.study
        generate = pn.widgets.Button(label="Generate", color="primary", width=110)
        score = pn.widgets.Button(label="Score text", color="primary", width=110)
        generate.on_click(self._on_generate)
        score.on_click(self._on_score)
        controls = pn.Column(
            pn.widgets.TextInput.from_param(study.param.model_name, placeholder="Hugging Face id or local path"),
            pn.widgets.TextAreaInput.from_param(study.param.prompt, height=80, name="Prompt"),
            pn.widgets.Checkbox.from_param(study.param.chat),
            pn.Row(pn.widgets.Select.from_param(study.param.decoding, width=130),
                   pn.widgets.FloatInput.from_param(study.param.generation_temperature, width=120)),
            pn.panel(pn.bind(self._rule_settings, study.param.decoding)),
            pn.Row(pn.widgets.IntInput.from_param(study.param.max_new_tokens, width=120),
                   pn.widgets.IntInput.from_param(study.param.seed, width=120)),
            generate,
            pn.widgets.TextAreaInput.from_param(study.param.text, height=110, name="Text to score"),
            score,
            self.task,
            width=300, margin=(0, 10),
        )
        display = pn.Row(
            pn.widgets.FloatSlider.from_param(study.param.temperature, width=260),
            pn.widgets.RadioButtonGroup.from_param(study.param.colour_by, width=260, margin=(22, 10)),
            pn.widgets.IntSlider.from_param(study.param.window, width=160),
        )
        details = pn.Tabs(
            ("Entropy at six temperatures", pn.GridBox(*[
                pn.pane.HoloViews(hv.DynamicMap(pn.bind(self._entropy_at, study.param.trace, temperature=t)), margin=0)
                for t in SMALL_MULTIPLE_TEMPERATURES], ncols=3, width=RESULTS_WIDTH)),
            ("Decoding rule", pn.panel(pn.bind(self._decoding_effect, study.param.trace))),
            ("Rank buckets", pn.pane.HoloViews(pn.bind(self._rank_histogram, study.param.trace))),
            ("Attention entropy", pn.Row(
                pn.pane.HoloViews(pn.bind(self._attention_heatmap, study.param.attention)),
                pn.Column(pn.Row(pn.widgets.IntInput.from_param(study.param.layer, width=90),
                                 pn.widgets.IntInput.from_param(study.param.head, width=90)),
                          pn.pane.HoloViews(hv.DynamicMap(pn.bind(
                              self._attention_curve, study.param.attention, study.param.layer,
                              study.param.head)))))),
            dynamic=False, width=RESULTS_WIDTH,
        )
        plots = pn.Column(
            pn.pane.HoloViews(hv.DynamicMap(pn.bind(self._curves, study.param.trace, study.param.temperature,
                                                    study.param.window))),
            details,
            pn.Row(self._download("csv"), self._download("parquet")),
            width=RESULTS_WIDTH,
        )
        results = pn.Column(
            display,
            pn.pane.HTML(pn.bind(self._summary_html, study.param.trace, study.param.temperature),
                         width=RESULTS_WIDTH, css_classes=["lens-summary"]),
            pn.pane.HTML(pn.bind(self._tokens_html, study.param.trace, study.param.temperature,
                                 study.param.colour_by), width=RESULTS_WIDTH, css_classes=["lens-text-pane"]),
            plots,
            width=RESULTS_WIDTH + 20,
        )
        return pn.Row(controls, results)

    def __panel__(self):
        return self._layout

    def _rule_settings(self, decoding: str):
        settings = self.study.decoding_settings[decoding]
        if not settings.param.values().keys() - {"name"}:
            return pn.pane.Markdown("*Temperature only.*", margin=(0, 10))
        return pn.Param(settings, show_name=False, widgets={
            name: pn.widgets.FloatInput if isinstance(value, float) else pn.widgets.IntInput
            for name, value in settings.param.values().items() if name != "name"})

    def _download(self, kind: str) -> pn.widgets.FileDownload:
        def payload():
            if self.study.trace is None:
                return io.BytesIO(b"")
            frame = self.study.frame()
            buffer = io.BytesIO()
            if kind == "csv":
                buffer.write(frame.to_csv(index=False).encode())
            else:
                frame.to_parquet(buffer, index=False)
            buffer.seek(0)
            return buffer

        return pn.widgets.FileDownload(callback=payload, filename=f"token_trace.{kind}", label=f"Export {kind.upper()}",
                                       color="light", width=150)

    # ------------------------------------------------------------------ renderers (read cached results)
    def _summary_html(self, trace, temperature) -> str:
        if trace is None:
            return "<p class='lens-legend'>Score a text or generate from a prompt to see its token entropy.</p>"
        s = self.study.summary()
        cards = [("tokens", f"{s['tokens']}"), ("mean entropy", f"{s['mean_entropy']:.3f} nats"),
                 ("log-perplexity", f"{s['log_perplexity']:.3f} nats"), ("perplexity", f"{s['perplexity']:.2f}"),
                 ("detection statistic D", f"{s['detection_statistic']:+.3f}"),
                 ("mean varentropy", f"{s['mean_varentropy']:.3f}")]
        body = "".join(f"<div style='padding:6px 12px;border:1px solid #e5e7eb;border-radius:8px;margin-right:8px'>"
                       f"<div style='font-size:11px;color:#6b7280'>{label}</div>"
                       f"<div class='lens-card-{label.replace(' ', '-')}' style='font-size:18px;font-weight:600'>{value}"
                       f"</div></div>" for label, value in cards)
        origin = f"generated ({html.escape(trace.decoding)})" if trace.kind == "generated" else "scored"
        note = " · stopped early" if trace.stopped else ""
        return (f"<div style='display:flex;flex-wrap:wrap;align-items:center'>{body}"
                f"<div class='lens-legend'>{origin} · shown at T = {temperature:.2f}{note}</div></div>")

    def _tokens_html(self, trace, temperature, colour_by) -> str:
        if trace is None:
            return ""
        frame = self.study.frame()
        if colour_by == "rank bucket":
            colours = [BUCKET_COLOURS[b] for b in frame["rank_bucket"]]
            legend = "".join(f"<span style='background:{c}'>{label}</span>"
                             for c, label in zip(BUCKET_COLOURS, BUCKET_LABELS))
        else:
            values = frame[colour_by].to_numpy()
            top = float(np.log(self.study.trace.logits.shape[-1])) if colour_by == "entropy" else \
                max(float(np.quantile(values, 0.95)), 1.0)
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

    def _curves(self, trace, temperature, window):
        options = dict(height=320, width=RESULTS_WIDTH, tools=["hover"], show_grid=True, legend_position="right",
                       framewise=True,
                       xlabel="position", ylabel="nats", title=f"Per-token measures at T = {temperature:.2f}")
        if trace is None:
            frame = pd.DataFrame({"position": pd.Series(dtype=int), "token": pd.Series(dtype=str),
                                  **{f"{m}{suffix}": pd.Series(dtype=float) for m in MEASURE_COLOURS
                                     for suffix in ("", "_rolling")}})
        else:
            frame = self.study.frame()
        curves = []
        for measure in ("entropy", "surprisal", "varentropy"):
            colour = MEASURE_COLOURS[measure]
            curves.append(hv.Curve(frame, "position", (measure, "nats"), label=measure)
                          .opts(color=colour, alpha=0.45, line_width=1))
            curves.append(hv.Curve(frame, "position", (f"{measure}_rolling", "nats"),
                                   label=f"{measure}, rolling mean").opts(color=colour, line_width=2.5))
        plotted = [f"{m}{suffix}" for m in MEASURE_COLOURS for suffix in ("", "_rolling")]
        values = frame[plotted].astype(float)
        top = float(np.nanmax(values.to_numpy())) if len(frame) and np.isfinite(values.to_numpy()).any() else 1.0
        limits = dict(xlim=(0, max(len(frame) - 1, 1)), ylim=(0, top * 1.05))
        return hv.Overlay([curve.opts(framewise=True, **limits) for curve in curves]).opts(**options)

    def _entropy_at(self, trace, temperature: float):
        """One small multiple: entropy along the text at ``temperature`` (from the cached sweep)."""
        sweep = self.study.entropy_at_temperatures() if trace is not None else pd.DataFrame(
            {"temperature": [temperature], "position": [0], "entropy": [np.nan]})
        group = sweep[sweep.temperature == temperature]
        top = float(np.nanmax(sweep["entropy"])) * 1.05 if trace is not None else 1.0
        mean = f" · mean {group['entropy'].mean():.2f} nats" if trace is not None else ""
        return hv.Curve(group, "position", ("entropy", "entropy (nats)")).opts(
            title=f"T = {temperature:g}{mean}", height=170, width=240, color="#0f766e", tools=["hover"],
            ylim=(0, top), xlim=(0, max(len(group) - 1, 1)), framewise=True, toolbar=None)

    def _decoding_effect(self, trace):
        """Full vs truncated entropy at the sampling temperature and tokens kept, per generated token."""
        if trace is None or trace.truncated_entropy is None:
            return pn.pane.Markdown("Generate from a prompt to see what the decoding rule removed at each step: "
                                    "the entropy of the full distribution, of the truncated one, and how many "
                                    "tokens survived.", width=RESULTS_WIDTH)
        frame = pd.DataFrame({"position": np.arange(len(trace)), "full": trace.full_entropy.cpu().numpy(),
                              "truncated": trace.truncated_entropy.cpu().numpy(),
                              "kept": trace.n_kept.cpu().numpy()})
        entropy = (hv.Curve(frame, "position", ("full", "nats"), label="full distribution").opts(color="#111827")
                   * hv.Curve(frame, "position", ("truncated", "nats"), label="after the rule").opts(
                       color="#dc2626", line_dash="dashed")).opts(
            title=f"Entropy at the sampling temperature: {trace.decoding}", width=RESULTS_WIDTH, height=240,
            legend_position="top_left", tools=["hover"], show_grid=True)
        kept = hv.Curve(frame, "position", ("kept", "tokens kept")).opts(
            width=RESULTS_WIDTH, height=170, logy=True, color="#0f766e", tools=["hover"], show_grid=True,
            title="Tokens that survived the rule (log scale)")
        return pn.Column(pn.pane.HoloViews(entropy), pn.pane.HoloViews(kept))

    def _rank_histogram(self, trace):
        """Ranks do not depend on the temperature: this plot changes only with the text."""
        frame = self.study.rank_histogram() if trace is not None else pd.DataFrame({"bucket": [], "tokens": []})
        return hv.Bars(frame, "bucket", "tokens").opts(title="Rank of the actual token (GLTR buckets)", height=330,
                                                       width=400, color="#0f766e", tools=["hover"])

    def _attention_heatmap(self, attention):
        frame = self.study.attention_frame() if attention is not None else pd.DataFrame(
            {"head": [], "layer": [], "entropy": []})
        return hv.HeatMap(frame, ["head", "layer"], "entropy").opts(
            title="Mean attention entropy (nats)", cmap="viridis", colorbar=True, tools=["hover"],
            height=330, width=360, invert_yaxis=True)

    def _attention_curve(self, attention, layer, head):
        frame = self.study.attention_curve() if attention is not None else pd.DataFrame(
            {"position": [], "entropy": [], "token": []})
        return hv.Curve(frame, "position", "entropy").opts(
            title=f"Attention entropy of layer {layer}, head {head}", height=270, width=360, color="#6d28d9",
            tools=["hover"], framewise=True)
