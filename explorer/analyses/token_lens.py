"""The token entropy lens: settings in, a scored or generated text and everything derived from it out.

Constructing a :class:`TokenLensAnalysis` only stores settings. :meth:`compute` (long: loads the
model, one forward pass or one generation, one attention pass, then the measures at a grid of
temperatures) caches the :meth:`trace`; everything the page shows derives from it and is cached, so
a temperature on the grid is a lookup and any other one costs a log-softmax over the cached
logits, never a model call. The trace depends on the run's settings only (the text when scoring,
the decoding rule and its settings when generating): changing a display setting never re-runs it.

The lens, deeper (:mod:`explorer.models.lens_tools`), each a heavy result computed by its own job
and cheap results derived from it: ``logit_lens``/``lens_scored`` (every layer, re-scored at the
display temperature from the kept per-layer logits when they fit the budget), ``regions`` (entropy x
varentropy quadrants, cheap), ``branches`` (k continuations from one position, one batched call),
``comparison``/``handover`` (a second model on the same text; a threshold move is a lookup) and
``reasoning`` (the answer's entropy after each number of reasoning steps).
"""

from __future__ import annotations

import numpy as np
import pandas as pd
import param
import torch

from explorer.analyses.base import Analysis, result
from explorer.kernels.decoding import RULES
from explorer.kernels.divergence import ENTROPIX_STATES, ENTROPIX_THRESHOLDS, QUADRANTS
from explorer.kernels.entropy import token_entropy
from explorer.models.lens_tools import (
    EAD_THRESHOLD_BITS, KEEP_LOGITS_MB, MAX_BRANCHES, QUADRANT_ENTROPY_BITS, QUADRANT_VARENTROPY_BITS2, Branches, LogitLens,
    ModelComparison, ReasoningEntropy, compare_models, entropy_regions, split_steps,
)
from explorer.models.trace import RANK_BUCKETS, TokenTrace, rank_bucket
from explorer.progress import Progress

SMALL_MULTIPLE_TEMPERATURES = (0.25, 0.5, 1.0, 1.5, 2.0, 3.0)
TEMPERATURE_STEP = 0.05
TEMPERATURE_GRID = tuple(round(TEMPERATURE_STEP * i, 2) for i in range(1, 101))   # the slider's values
BUCKET_LABELS = ("top 10", "top 100", "top 1000", "beyond")
RUN_SETTINGS = ("model_name", "mode", "prompt", "chat")
#: the page keeps every layer's logits up to this size (MB), so that the slider re-scores every layer
LENS_KEEP_LOGITS_MB = KEEP_LOGITS_MB
LENS_MEASURES = {"entropy": "entropy", "KL to the final layer": "kl_to_final"}
#: what a deeper view's page shows while its job runs (``not_computed_message``)
DEEPER_MESSAGES = {
    "logit_lens": "Decoding every layer through the output head (logit lens)…",
    "lens_scored": "Re-scoring every layer at the new temperature…",
    "branches": "Sampling the branches…",
    "comparison": "Scoring the text with both models…",
    "reasoning": "Scoring the answer after each number of steps…",
}
REASONING_QUESTION = "A shop sells pencils at 3 for 45 cents. How much do 10 pencils cost?"
REASONING_CHAIN = ("One pencil costs 45 / 3 = 15 cents.\nTen pencils cost 10 times as much as one.\n"
                   "10 * 15 = 150 cents.\n150 cents is one dollar and fifty cents.\nSo the answer is $1.50.")
REASONING_ANSWER = "$1.50"


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

    # ------------------------------------------------------------------ the lens, deeper: settings
    # Positions, k and the second model have no hard bounds: a bad value reaches the job, which says
    # what is wrong (a branch point past the end, k = 0 or k > 64, a model that cannot be loaded).
    lens_measure = param.Selector(default="entropy", objects=LENS_MEASURES, label="Layer heatmap",
                                  doc="Entropy of each layer's distribution, or its KL divergence to the final layer's.")
    lens_position = param.Integer(default=0, bounds=(0, None), label="Position",
                                  doc="The position whose column across layers is drawn (click a cell or a token).")
    quadrant_entropy_bits = param.Number(default=QUADRANT_ENTROPY_BITS, bounds=(0, None), softbounds=(0, 16),
                                         step=0.1, label="Entropy threshold (bits)",
                                         doc=f"High entropy: above this (entropix's medium entropy, "
                                             f"{ENTROPIX_THRESHOLDS['medium_entropy']:g} bits).")
    quadrant_varentropy_bits2 = param.Number(default=QUADRANT_VARENTROPY_BITS2, bounds=(0, None),
                                             softbounds=(0, 40), step=0.5, label="Varentropy threshold (bits²)",
                                             doc=f"High varentropy: above this (entropix's high varentropy, "
                                                 f"{ENTROPIX_THRESHOLDS['high_varentropy']:g} bits²).")
    branch_position = param.Integer(default=0, label="Branch at position",
                                    doc="Continuations start here: the prefix is everything before this token.")
    branches_k = param.Integer(default=8, label="Branches (k)", doc=f"How many continuations (1 to {MAX_BRANCHES}).")
    branch_tokens = param.Integer(default=24, label="Tokens per branch", doc="The most new tokens per branch.")
    second_model = param.String(default="", label="Second model",
                                doc="Hugging Face id or local directory of a model with the same tokenizer.")
    ead_threshold_bits = param.Number(default=EAD_THRESHOLD_BITS, bounds=(0, 20), softbounds=(0, 12), step=0.1,
                                      label="Hand-over threshold (bits)",
                                      doc="Entropy Adaptive Decoding hands a step to the larger model while the "
                                          "rolling mean of the small model's entropy is above this.")
    question = param.String(default=REASONING_QUESTION, doc="The question the reasoning answers.")
    chain = param.String(default=REASONING_CHAIN, label="Reasoning chain",
                         doc="The reasoning, ending with the answer: it is cut at the answer's last occurrence.")
    answer = param.String(default=REASONING_ANSWER, doc="The final answer whose entropy is measured.")
    split_by = param.Selector(default="lines", objects=["lines", "sentences"], label="Split the chain by")
    steps = param.String(default="", label="Steps (one per line)",
                         doc="The steps scored, one per line; empty: the chain split by lines or sentences.")

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
        if name in DEEPER_MESSAGES and (name == "reasoning" or self.is_cached("trace")):
            return DEEPER_MESSAGES[name]
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
            return model.score(self.text, prompt=self.prompt if self.prompt.strip() else None, chat=self.chat,
                               progress=progress)
        return model.generate(self.prompt, max_new_tokens=self.max_new_tokens, decoding=self.decoding,
                              temperature=self.generation_temperature, seed=self.seed, chat=self.chat,
                              progress=progress, **self.rule_settings())

    @result("trace", heavy=True)
    def attention(self, progress: Progress | None = None) -> torch.Tensor:
        """Entropy of every attention row over the text ``[layers, heads, tokens]`` (nats)."""
        return self.language_model().attention_entropy(self.trace(), progress=progress)

    @result("trace", heavy=True)
    def temperature_grid(self, progress: Progress | None = None) -> dict[float, tuple[TokenTrace, pd.DataFrame]]:
        """The trace with its measures and its token table at every temperature of the slider (a move
        is then a lookup)."""
        grid = {}
        for done, scored in enumerate(self.trace().at_temperatures(TEMPERATURE_GRID)):
            grid[scored.temperature] = (scored, scored.to_frame(decode=self.decode))
            if progress is not None and done % 10 == 0:
                progress.update(done, len(TEMPERATURE_GRID), f"token table at T = {scored.temperature:g}")
        return grid

    # ------------------------------------------------------------------ derived, cached
    @result("trace", "temperature")
    def scored(self) -> TokenTrace:
        """The trace at the display temperature (from the grid when it is on it)."""
        grid = self._grid_entry()
        return grid[0] if grid is not None else self.trace().at_temperature(round(float(self.temperature), 4))

    def _grid_entry(self) -> tuple[TokenTrace, pd.DataFrame] | None:
        t = round(float(self.temperature), 4)
        return self.temperature_grid()[t] if t in TEMPERATURE_GRID and self.is_cached("temperature_grid") else None

    @result("scored", "window")
    def frame(self) -> pd.DataFrame:
        """One row per token with every measure at the display temperature and the rolling means."""
        grid = self._grid_entry()
        frame = grid[1].copy() if grid is not None else self.scored().to_frame(decode=self.decode)
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

    # ------------------------------------------------------------------ the lens, deeper
    # Heavy results (a job each, never a widget callback): logit_lens, lens_scored, branches,
    # comparison, reasoning. Everything else here is cheap and derived from them.
    @result("trace", heavy=True)
    def logit_lens(self, progress: Progress | None = None) -> LogitLens:
        """Every layer of the text decoded through the final norm and the head, at T = 1; the per-layer
        logits are kept when they fit :data:`LENS_KEEP_LOGITS_MB` (then the slider re-scores every layer)."""
        if progress is not None:
            progress.update(0, 1, "decoding every layer (logit lens)")
        return self.language_model().logit_lens(self.trace(), temperature=1.0, keep_logits_mb=LENS_KEEP_LOGITS_MB)

    @result("logit_lens", "temperature", heavy=True)
    def lens_scored(self, progress: Progress | None = None) -> LogitLens:
        """The logit lens at the display temperature, from the kept per-layer logits; without them (over
        the memory budget) the lens at T = 1: the slider then applies to the final layer only."""
        lens, t = self.logit_lens(), round(float(self.temperature), 4)
        return lens if lens.logits is None or t == lens.temperature else lens.at_temperature(t)

    def lens_follows_temperature(self) -> bool:
        """Whether the slider re-scores every layer (the per-layer logits fit the budget); needs the lens."""
        return self.logit_lens().logits is not None

    @result("lens_scored")
    def lens_frame(self) -> pd.DataFrame:
        """One row per (layer, position) cell of the lens at the display temperature."""
        return self.lens_scored().to_frame()

    @result("lens_scored", "lens_position")
    def lens_column(self) -> pd.DataFrame:
        """The chosen position across layers (the position clipped to the text)."""
        lens = self.lens_scored()
        return lens.column(min(self.lens_position, lens.shape[1] - 1))

    @result("scored", "quadrant_entropy_bits", "quadrant_varentropy_bits2")
    def regions(self) -> pd.DataFrame:
        """Every position's entropy (bits) and varentropy (bits²) at the display temperature, its
        quadrant at the chosen thresholds and entropix's sampler state at entropix's own thresholds."""
        frame = entropy_regions(self.scored(), self.quadrant_entropy_bits, self.quadrant_varentropy_bits2)
        frame["quadrant_name"] = [QUADRANTS[q] for q in frame["quadrant"]]
        frame["entropix_name"] = [ENTROPIX_STATES[s] for s in frame["entropix_state"]]
        return frame

    @result("regions")
    def quadrant_counts(self) -> dict[str, int]:
        counts = np.bincount(self.regions()["quadrant"].to_numpy(), minlength=len(QUADRANTS))
        return dict(zip(QUADRANTS, counts.tolist()))

    def _branch_key(self) -> tuple:
        return tuple(sorted(self.rule_settings().items()))

    @result("trace", "branch_position", "branches_k", "branch_tokens", "decoding", "generation_temperature", "seed",
            heavy=True, key="_branch_key")
    def branches(self, progress: Progress | None = None) -> Branches:
        """k continuations from the prefix before ``branch_position``, sampled in one batched call with
        the page's decoding rule, sampling temperature and seed."""
        return self.language_model().branch(
            self.trace(), self.branch_position, k=self.branches_k, max_new_tokens=self.branch_tokens, seed=self.seed,
            decoding=self.decoding, temperature=self.generation_temperature, progress=progress,
            **self.rule_settings())

    @result("branches")
    def branch_curves(self) -> pd.DataFrame:
        """Long frame (curve, step, token, entropy): the text's own continuation from the branch point
        (as many tokens as a branch may have) and each branch, entropy of the full distribution at the
        sampling temperature (nats), so that the curves compare like with like."""
        result = self.branches()
        t = result.branches[0].generation_temperature
        end = result.position + self.branch_tokens
        original = token_entropy(self.trace().logits[result.position:end], t).cpu().numpy()
        rows = [("text", i, token, float(h)) for i, (token, h) in enumerate(zip(result.original_tokens, original))]
        for b, branch in enumerate(result.branches):
            rows += [(f"branch {b + 1}", i, token, float(h))
                     for i, (token, h) in enumerate(zip(branch.tokens, branch.full_entropy.cpu().numpy()))]
        return pd.DataFrame(rows, columns=["curve", "step", "token", "entropy"])

    @result("branches")
    def branch_alternatives(self) -> pd.DataFrame:
        """The most likely tokens at the branch point: p under the full distribution at the sampling
        temperature and under the decoding rule; the text's own token is marked (added when not among them)."""
        result = self.branches()
        frame = pd.DataFrame({"token": result.alternative_tokens, "token_id": result.alternative_ids.cpu().tolist(),
                              "p": result.alternative_probs.cpu().numpy(),
                              "p_kept": result.alternative_kept_probs.cpu().numpy()})
        frame["is_text_token"] = frame["token_id"] == result.original_id
        if not frame["is_text_token"].any():
            own = pd.DataFrame({"token": [result.original_tokens[0]], "token_id": [result.original_id],
                                "p": [result.original_prob], "p_kept": [result.original_kept_prob],
                                "is_text_token": [True]})
            frame = pd.concat([frame, own], ignore_index=True)
        return frame

    def comparison_text(self) -> str:
        """The text both models score: the pasted text, or the generated one (without the prompt)."""
        trace = self.trace()
        return self.text if trace.kind == "scored" else trace.text

    @result("trace", "second_model", heavy=True)
    def comparison(self, progress: Progress | None = None) -> ModelComparison:
        """The page's model (A) and ``second_model`` (B) on the same text at T = 1."""
        if progress is not None:
            progress.update(0, 1, f"loading {self.second_model.strip() or 'the second model'}")
        return compare_models(self.comparison_text(), self.language_model(), self.second_model.strip())

    @result("comparison", "ead_threshold_bits")
    def handover(self) -> pd.DataFrame:
        """The comparison per position, with the steps Entropy Adaptive Decoding hands to model B at
        ``ead_threshold_bits`` (the kept rolling mean > threshold, as ``adaptive_handover``): a threshold
        move needs no new pass."""
        comparison = self.comparison()
        frame = comparison.to_frame()
        frame["handed_over"] = (comparison.rolling_entropy_bits > float(self.ead_threshold_bits)).cpu().numpy()
        return frame

    @result("chain", "split_by", "answer")
    def chain_steps(self) -> list[str]:
        """The chain cut at the answer's last occurrence and split by lines or sentences."""
        return split_steps(self.chain, by=self.split_by, answer=self.answer)

    def reasoning_steps(self) -> list[str]:
        """The steps scored: the edited ones (one per line) or else the chain split. The chain is checked
        either way (empty, or without the answer: ``InputError``)."""
        split = self.chain_steps()
        edited = [line.strip() for line in self.steps.splitlines() if line.strip()]
        return edited or split

    @result("model_name", "question", "chain", "split_by", "answer", "steps", heavy=True)
    def reasoning(self, progress: Progress | None = None) -> ReasoningEntropy:
        """The answer's entropy given the question and the first k steps, k = 0..K, in one batched pass."""
        steps = self.reasoning_steps()
        if progress is not None:
            progress.update(0, 1, f"scoring the answer after 0 to {len(steps)} steps")
        return self.language_model().reasoning_entropy(self.question, steps, self.answer)

    @result("reasoning")
    def reasoning_frame(self) -> pd.DataFrame:
        return self.reasoning().to_frame()

    # ------------------------------------------------------------------ report
    report_title = "Token entropy lens"

    def report_sections(self) -> list:
        """The page as data for :mod:`explorer.analyses.report`: cards, the coloured text, the curves,
        entropy at six temperatures, rank buckets, attention entropy, the decoding rule's effect and
        the token table; then the lens, deeper: the entropy x varentropy regions, and the logit lens,
        branches, two-model comparison and reasoning steps when they are computed (never run here)."""
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
        return parts + self._deeper_report()

    def _deeper_report(self) -> list:
        """The lens, deeper: the entropy x varentropy regions (cheap, from the trace), then each deeper result
        that is already computed for the current settings (a report never runs the model for them)."""
        parts = self._regions_report()
        if self.is_cached("lens_scored") or self.is_cached("logit_lens"):
            parts += self._logit_lens_report()
        for name, section in (("branches", self._branches_report), ("comparison", self._comparison_report),
                              ("reasoning", self._reasoning_report)):
            if self.is_cached(name):
                parts += section()
        return parts

    def _regions_report(self) -> list:
        from explorer.analyses import report as r

        frame, counts = self.regions(), self.quadrant_counts()
        n = max(len(frame), 1)
        colours = ("#16a34a", r.AMBER, r.PURPLE, r.RED)
        points = [r.Points(part["entropy_bits"], part["varentropy_bits2"], QUADRANTS[q], colours[q], size=8,
                           hover={"position": part["position"].tolist(), "token": part["token"].tolist(),
                                  "entropix": part["entropix_name"].tolist()})
                  for q, part in frame.groupby("quadrant")]
        return [r.Heading(f"Entropy × varentropy at T = {self.temperature:g}"),
                r.Note(f"High means above the threshold: entropy {self.quadrant_entropy_bits:g} bits, varentropy "
                       f"{self.quadrant_varentropy_bits2:g} bits² (entropix's defaults: "
                       f"{ENTROPIX_THRESHOLDS['medium_entropy']:g} bits, {ENTROPIX_THRESHOLDS['high_varentropy']:g} "
                       "bits²)."),
                r.Cards([(name, count, f"{100 * count / n:.0f}% of the positions") for name, count in counts.items()]),
                r.Plot("Entropy against varentropy", "entropy (bits)", "varentropy (bits²)",
                       points + [r.Rule(self.quadrant_entropy_bits, colour=r.INK),
                                 r.Rule(self.quadrant_varentropy_bits2, "width", r.INK)], height=420)]

    def _logit_lens_report(self) -> list:
        from explorer.analyses import report as r

        # the lens at the display temperature, else the one computed at T = 1 (the slider moved since)
        lens = self.lens_scored() if self.is_cached("lens_scored") else self.logit_lens()
        frame, label = lens.to_frame(), next(k for k, v in LENS_MEASURES.items() if v == self.lens_measure)
        position = min(self.lens_position, lens.shape[1] - 1)
        column = lens.column(position)
        stale = [] if lens.temperature == round(float(self.temperature), 4) else [r.Note(
            f"Computed at T = {lens.temperature:g}: the layers were not re-scored at the display temperature "
            f"{self.temperature:g}.", warning=True)]
        return [r.Heading(f"Layer by layer (logit lens) at T = {lens.temperature:g}"), *stale,
                r.Plot(f"Logit lens: {label} of every layer's prediction (nats)", "position", "layer (0 = embeddings)",
                       [r.Heatmap(frame["position"], frame["layer_id"], frame[self.lens_measure], "nats")], height=460),
                r.Plot(f"Position {position} ({lens.tokens[position]!r}) across layers", "layer (0 = embeddings)",
                       "nats", [r.Line(lens.layer_ids, column["entropy"], "entropy"),
                                r.Line(lens.layer_ids, column["kl_to_final"], "KL to the final layer", r.AMBER)]),
                r.Table(f"Position {position} across layers", column.round(4))]

    def _branches_report(self) -> list:
        from explorer.analyses import report as r

        result, curves, alternatives = self.branches(), self.branch_curves(), self.branch_alternatives()
        t, position = result.branches[0].generation_temperature, result.position
        names = ["text", *(f"branch {b + 1}" for b in range(len(result.branches)))]
        groups = [curves[curves["curve"] == name] for name in names]
        lines = [r.Line(group["step"], group["entropy"], name, r.INK if name == "text" else r.SERIES[i % len(r.SERIES)],
                        3.5 if name == "text" else 1.5) for i, (name, group) in enumerate(zip(names, groups))]
        continuations = pd.DataFrame({"curve": names, "text": ["".join(g["token"]) for g in groups],
                                      "mean entropy (nats)": [g["entropy"].mean() for g in groups]})
        return [r.Heading(f"Branches from position {position}"),
                r.Note(f"{len(result.branches)} continuations of the prefix before position {position}, sampled in one "
                       f"batched call with {result.decoding} at T = {t:g}, seed {result.seed}."),
                r.Cards([("branch point", f"#{position} {self.trace().tokens[position]!r}", "the text's token here"),
                         ("entropy there", result.branch_point_entropy, f"nats at T = {t:g}"),
                         ("p(text's token)", result.original_prob, f"{result.original_kept_prob:.3f} after the rule"),
                         ("mass of the alternatives", 1 - result.original_prob, "1 − p(text's token)")]),
                r.Plot("Entropy after the branch point", "new token", "entropy at the sampling temperature (nats)",
                       lines),
                r.Table("The most likely tokens at the branch point", alternatives.drop(columns=["token_id"]).round(4)),
                r.Table("Continuations", continuations.round(4))]

    def _comparison_report(self) -> list:
        from explorer.analyses import report as r

        comparison, frame = self.comparison(), self.handover()
        handed = frame["handed_over"].to_numpy()
        share = float(handed.mean()) if len(frame) else 0.0
        x = frame["position"]
        return [r.Heading(f"Two models: A = {comparison.model_a}, B = {comparison.model_b}"),
                r.Note(f"Both score the same {len(frame)} tokens (the text alone, without the prompt) at T = 1. Entropy "
                       "Adaptive Decoding hands a step to B while the rolling mean of A's entropy over "
                       f"{comparison.window} tokens, in bits, is above {self.ead_threshold_bits:g} bits."),
                r.Cards([("D under A", comparison.detection_a, comparison.model_a),
                         ("D under B", comparison.detection_b, comparison.model_b),
                         ("mean KL(A ‖ B)", frame["kl_ab"].mean(), "nats"),
                         ("mean cross-entropy", frame["cross_entropy_ab"].mean(), "nats, H(p_A, p_B)"),
                         ("handed to B", f"{100 * share:.0f}% of steps",
                          f"{int(handed.sum())} of {len(frame)} at {self.ead_threshold_bits:g} bits")]),
                r.Plot("Entropy under each model (T = 1)", "position", "nats",
                       [r.Line(x, frame["entropy_a"], "A", r.TEAL), r.Line(x, frame["entropy_b"], "B", r.PURPLE),
                        r.Line(x, frame["entropy_difference"], "A − B", r.GREY, dash="dashed")]),
                r.Plot("KL(p_A ‖ p_B) and cross-entropy H(p_A, p_B)", "position", "nats",
                       [r.Line(x, frame["kl_ab"], "KL(A ‖ B)", r.RED),
                        r.Line(x, frame["cross_entropy_ab"], "cross-entropy", r.AMBER)]),
                r.Plot(f"Entropy Adaptive Decoding: {100 * share:.0f}% of the steps go to B (red)", "position",
                       "rolling entropy of A (bits)",
                       [r.Line(x, frame["rolling_entropy_bits"], colour=r.INK, width=1.5),
                        r.Points(x, frame["rolling_entropy_bits"], colour=[r.RED if h else r.GREY for h in handed],
                                 hover={"token": frame["token"].tolist()}),
                        r.Rule(self.ead_threshold_bits, "width", r.RED)])]

    def _reasoning_report(self) -> list:
        from explorer.analyses import report as r

        result, frame = self.reasoning(), self.reasoning_frame()
        drops = result.reduction
        best = int(drops.argmax()) if len(drops) else 0
        marked = frame["marked"].to_numpy()
        return [r.Heading("Reasoning steps"),
                r.Facts("Question and answer", {"question": result.question, "answer": result.answer,
                                                "answer tokens": len(result.answer_tokens)}),
                r.Cards([("steps", len(result.steps), ""),
                         ("with no step", float(result.entropy_mean[0]), "nats, mean per answer token"),
                         ("with every step", float(result.entropy_mean[-1]), "nats"),
                         ("largest drop", f"step {best + 1}",
                          f"entropy {-float(drops[best]):+.3f} nats" if len(drops) else "")]),
                r.Plot("The answer's entropy after k steps (red: the steps that reduce it most)", "k (steps given)",
                       "mean per answer token (nats)",
                       [r.Line(frame["k"], frame["entropy_mean"]),
                        r.Points(frame["k"], frame["entropy_mean"], colour=[r.RED if m else r.TEAL for m in marked],
                                 size=9, hover={"step": frame["step"].tolist()})]),
                r.Table("The answer's entropy after each step", frame.round(4))]
