"""The token entropy lens: settings in, a scored or generated text and everything derived from it out.

Constructing a :class:`TokenLensAnalysis` only stores settings. :meth:`compute` (long: loads the
model, one forward pass or one generation, one attention pass, then the measures at a grid of
temperatures) caches the :meth:`trace`; everything the page shows derives from it and is cached, so
a temperature on the grid is a lookup and any other one costs a log-softmax over the cached
logits, never a model call. The trace depends on the run's settings only (the text when scoring,
the decoding rule and its settings when generating): changing a display setting never re-runs it.
"""

from __future__ import annotations

import numpy as np
import pandas as pd
import param
import torch

from explorer.analyses.base import Analysis, result
from explorer.kernels.decoding import RULES
from explorer.models.trace import RANK_BUCKETS, TokenTrace, rank_bucket
from explorer.progress import Progress

SMALL_MULTIPLE_TEMPERATURES = (0.25, 0.5, 1.0, 1.5, 2.0, 3.0)
TEMPERATURE_STEP = 0.05
TEMPERATURE_GRID = tuple(round(TEMPERATURE_STEP * i, 2) for i in range(1, 101))   # the slider's values
BUCKET_LABELS = ("top 10", "top 100", "top 1000", "beyond")
RUN_SETTINGS = ("model_name", "mode", "prompt", "chat")


def _rule_settings() -> dict:
    """One parameter per decoding-rule setting (rules sharing a setting name share its meaning)."""
    settings = {}
    for rule in RULES.values():
        for name, spec in rule.params.items():
            if name in settings:
                assert settings[name].default == spec.default, f"decoding setting {name!r} defined twice"
                continue
            settings[name] = spec
    return settings


RULE_SETTINGS = _rule_settings()


def _rule_parameter(name: str) -> param.Parameter:
    spec = RULE_SETTINGS[name]
    kind = param.Integer if isinstance(spec.default, int) and not isinstance(spec.default, bool) else param.Number
    return kind(default=spec.default, softbounds=spec.bounds, doc=spec.doc, label=spec.label)


class TokenLensAnalysis(Analysis):
    """Score or generate a text with a causal LM and inspect it token by token.

    ``trace()`` is the model's cached logits over the text; ``attention()`` the entropy of every
    attention row ``[layers, heads, tokens]``; ``scored()``, ``frame()``, ``summary()``,
    ``entropy_at_temperatures()`` and the attention tables derive from them.
    """

    model_name = param.String(default="SmolLM2-135M-Instruct", label="Model",
                              doc="Hugging Face id or local directory; the default ships with the app.")
    mode = param.Selector(default="generate", objects=["generate", "score"], doc="Generate after a prompt "
                          "or score a pasted text (teacher-forced).")
    prompt = param.String(default="Explain in one sentence why the sky is blue.", doc="The prompt.")
    text = param.String(default="The quick brown fox jumps over the lazy dog. Entropy measures how unsure "
                        "the model is about the next token.", doc="Text to score (after the prompt, if any).")
    chat = param.Boolean(default=True, label="Chat template", doc="Wrap the prompt in the model's chat template.")
    decoding = param.Selector(default="top_p", objects=list(RULES), doc="Decoding rule applied after temperature.")
    # Typed settings have soft bounds only: a bad value reaches compute(), which explains what is wrong.
    generation_temperature = param.Number(default=1.0, label="Sampling temperature",
                                          doc="Temperature used when sampling (> 0).")
    max_new_tokens = param.Integer(default=48, label="Max new tokens", doc="Stop after this many tokens (1 to 2048).")
    seed = param.Integer(default=0)
    top_k = _rule_parameter("top_k")
    top_p = _rule_parameter("top_p")
    min_p = _rule_parameter("min_p")
    typical_p = _rule_parameter("typical_p")
    epsilon = _rule_parameter("epsilon")
    alpha = _rule_parameter("alpha")
    top_n = _rule_parameter("top_n")
    tau = _rule_parameter("tau")
    eta = _rule_parameter("eta")
    temperature = param.Number(default=1.0, bounds=(0.05, 5.0), step=TEMPERATURE_STEP, label="Re-score at temperature",
                               doc="Temperature at which the measures are shown (no new forward pass).")
    window = param.Integer(default=8, bounds=(1, 128), label="Rolling mean window")
    colour_by = param.Selector(default="entropy", objects=["entropy", "surprisal", "rank bucket"],
                               label="Colour tokens by")
    layer = param.Integer(default=0, bounds=(0, None), doc="Attention layer for the per-position curve.")
    head = param.Integer(default=0, bounds=(0, None), doc="Attention head for the per-position curve.")

    # ------------------------------------------------------------------ the long part
    def rule_settings(self) -> dict:
        """The chosen decoding rule's settings as keyword arguments."""
        return {name: getattr(self, name) for name in RULES[self.decoding].params}

    def _run_key(self) -> tuple:
        """What the trace depends on besides ``RUN_SETTINGS``: the text, or the generation settings."""
        if self.mode == "score":
            return ("score", self.text)
        return ("generate", self.decoding, self.generation_temperature, self.max_new_tokens, self.seed,
                tuple(sorted(self.rule_settings().items())))

    def not_computed_message(self, name: str) -> str:
        return "Press Score text (or Generate) to see this text's measures."

    def compute_steps(self):
        return [("Running the model", self.trace), ("Attention entropy", self.attention),
                ("Entropy at six temperatures", self.entropy_at_temperatures),
                ("Measures at every temperature of the slider", self.temperature_grid),
                ("Token table", lambda progress: self.frame())]

    def language_model(self):
        from explorer.models.language_model import load_language_model

        return load_language_model(self.model_name or None)

    @result(*RUN_SETTINGS, heavy=True, key="_run_key")
    def trace(self, progress: Progress | None = None) -> TokenTrace:
        """The scored or generated text with its cached logits."""
        progress = progress or Progress()
        progress.update(0, 1, f"loading {self.model_name}")
        model = self.language_model()
        if self.mode == "score":
            progress.update(0.2, 1, "scoring")
            return model.score(self.text, prompt=self.prompt if self.prompt.strip() else None, chat=self.chat)
        return model.generate(self.prompt, max_new_tokens=self.max_new_tokens, decoding=self.decoding,
                              temperature=self.generation_temperature, seed=self.seed, chat=self.chat,
                              progress=progress, **self.rule_settings())

    @result("trace", heavy=True)
    def attention(self, progress: Progress | None = None) -> torch.Tensor:
        """Entropy of every attention row over the text ``[layers, heads, tokens]`` (nats)."""
        return self.language_model().attention_entropy(self.trace())

    @result("trace", heavy=True)
    def temperature_grid(self, progress: Progress | None = None) -> dict[float, TokenTrace]:
        """The trace with its measures computed at every temperature of the slider (a move is a lookup)."""
        trace, grid = self.trace(), {}
        for done, t in enumerate(TEMPERATURE_GRID):
            scored = trace.at_temperature(t)
            scored.entropy  # noqa: B018 - computes the measures now, in the job
            grid[t] = scored
            if progress is not None and done % 10 == 0:
                progress.update(done, len(TEMPERATURE_GRID), f"measures at T = {t:g}")
        return grid

    # ------------------------------------------------------------------ derived, cached
    @result("trace", "temperature")
    def scored(self) -> TokenTrace:
        """The trace at the display temperature (from the grid when it is on it)."""
        t = round(float(self.temperature), 4)
        if t in TEMPERATURE_GRID and self.is_cached("temperature_grid"):
            return self.temperature_grid()[t]
        return self.trace().at_temperature(t)

    @result("scored", "window")
    def frame(self) -> pd.DataFrame:
        """One row per token with every measure at the display temperature and the rolling means."""
        frame = self.scored().to_frame(decode=self.decode)
        for column in ("entropy", "surprisal", "varentropy"):
            frame[f"{column}_rolling"] = frame[column].rolling(self.window, min_periods=1).mean()
        return frame

    @result("scored")
    def summary(self) -> dict[str, float]:
        return self.scored().summary()

    @result("trace")
    def rank_histogram(self) -> pd.DataFrame:
        """Ranks do not depend on the temperature: one count per GLTR bucket."""
        counts = np.bincount(rank_bucket(self.trace().rank).cpu().numpy(), minlength=len(RANK_BUCKETS) + 1)
        return pd.DataFrame({"bucket": BUCKET_LABELS, "tokens": counts})

    @result("trace", heavy=True)
    def entropy_at_temperatures(self, progress: Progress | None = None) -> pd.DataFrame:
        """Long frame (temperature, position, entropy) from one ``entropy_sweep`` over the cached logits."""
        temperatures = SMALL_MULTIPLE_TEMPERATURES
        sweep = self.trace().entropy_at(list(temperatures)).cpu().numpy()
        n = sweep.shape[1]
        return pd.DataFrame({"temperature": np.repeat(temperatures, n), "position": np.tile(np.arange(n), len(sweep)),
                             "entropy": sweep.ravel()})

    @result("attention")
    def attention_frame(self) -> pd.DataFrame:
        """Mean attention entropy over the text's tokens, one row per (layer, head)."""
        mean = self.attention().mean(-1).cpu().numpy()
        layers, heads = np.meshgrid(np.arange(mean.shape[0]), np.arange(mean.shape[1]), indexing="ij")
        return pd.DataFrame({"layer": layers.ravel(), "head": heads.ravel(), "entropy": mean.ravel()})

    @result("attention", "layer", "head")
    def attention_curve(self) -> pd.DataFrame:
        """Attention entropy of one layer and head at every position (layer and head clipped to the model)."""
        attention = self.attention()
        layer, head = min(self.layer, attention.shape[0] - 1), min(self.head, attention.shape[1] - 1)
        values = attention[layer, head].cpu().numpy()
        return pd.DataFrame({"position": np.arange(len(values)), "entropy": values, "token": self.trace().tokens})

    def decode(self, token_id: int) -> str:
        """The text of one token id (cached per id: the alternatives repeat across positions)."""
        texts = self._token_texts()
        if token_id not in texts:
            texts[token_id] = self._tokenizer().decode([token_id])
        return texts[token_id]

    @result("model_name", heavy=True)
    def _tokenizer(self):
        return self.language_model().tokenizer

    @result("model_name")
    def _token_texts(self) -> dict[int, str]:
        return {}

    # ------------------------------------------------------------------ report
    report_title = "Token entropy lens"

    def report_sections(self) -> list:
        """The page as data for :mod:`explorer.analyses.report`: cards, the coloured text, the curves,
        entropy at six temperatures, rank buckets, attention entropy, the decoding rule's effect and
        the token table."""
        from explorer.analyses import report as r

        trace, s, frame = self.trace(), self.summary(), self.frame()
        origin = f"generated with {trace.decoding}" if trace.kind == "generated" else "scored (teacher-forced)"
        parts = [r.Facts("Model and text", {"model": self.model_name, "text": origin, "tokens": len(trace),
                                            "prompt": self.prompt if self.prompt.strip() else "(none)",
                                            "chat template": self.chat, "shown at temperature": self.temperature}),
                 r.Cards([("tokens", s["tokens"], ""), ("mean entropy", s["mean_entropy"], "nats"),
                          ("log-perplexity", s["log_perplexity"], "nats"), ("perplexity", s["perplexity"], ""),
                          ("detection statistic D", s["detection_statistic"], "log-ppl − mean entropy"),
                          ("mean varentropy", s["mean_varentropy"], "")]),
                 r.Heading(f"The text, coloured by entropy at T = {self.temperature:g}"),
                 r.TokenText(frame["token"].tolist(), frame["entropy"].tolist(), float(np.log(trace.logits.shape[-1])),
                             "entropy (nats)")]
        curves = [r.Line(frame["position"], frame[m], m, c, 1, alpha=0.45) for m, c in
                  (("entropy", r.TEAL), ("surprisal", r.AMBER), ("varentropy", r.PURPLE))]
        curves += [r.Line(frame["position"], frame[f"{m}_rolling"], f"{m}, rolling mean ({self.window})", c, 2.5)
                   for m, c in (("entropy", r.TEAL), ("surprisal", r.AMBER), ("varentropy", r.PURPLE))]
        sweep = self.entropy_at_temperatures()
        parts += [r.Heading("Measures along the text"),
                  r.Plot(f"Per-token measures at T = {self.temperature:g}", "position", "nats", curves),
                  r.Plot("Entropy at six temperatures", "position", "entropy (nats)",
                         [r.Line(g["position"], g["entropy"], f"T = {t:g}", r.SERIES[i % len(r.SERIES)], 1.5)
                          for i, (t, g) in enumerate(sweep.groupby("temperature"))]),
                  r.Plot("Rank of the actual token (GLTR buckets)", "bucket", "tokens",
                         [r.Bars(list(BUCKET_LABELS), self.rank_histogram()["tokens"])], width=450)]
        heads = self.attention_frame()
        parts.append(r.Plot("Mean attention entropy over the text (nats)", "head", "layer",
                            [r.Heatmap(heads["head"], heads["layer"], heads["entropy"], "entropy")], height=420))
        if trace.truncated_entropy is not None:
            steps = np.arange(len(trace))
            parts.append(r.Plot(f"Entropy at the sampling temperature: {trace.decoding}", "position", "nats",
                                [r.Line(steps, trace.full_entropy.cpu().numpy(), "full distribution", r.INK),
                                 r.Line(steps, trace.truncated_entropy.cpu().numpy(), "after the rule", r.RED,
                                        dash="dashed")]))
        columns = ["position", "token", "entropy", "surprisal", "varentropy", "rank", "top_alternatives"]
        parts.append(r.Table("Tokens", frame[columns].round(4)))
        return parts
