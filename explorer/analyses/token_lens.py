"""The token entropy lens as a study: settings in, a cached :class:`TokenTrace` and its views out.

Constructing a :class:`TokenLensStudy` only stores settings. :meth:`TokenLensStudy.run` (long: loads
the model, one forward pass or one generation, one attention pass) sets ``trace`` and
``attention``; everything the page shows is derived from them and cached, so moving the
temperature slider or the window costs one log-softmax over the cached logits, not a model call.
"""

from __future__ import annotations

import numpy as np
import pandas as pd
import param
import torch

from explorer.errors import InputError
from explorer.kernels.decoding import RULES
from explorer.models.trace import RANK_BUCKETS, TokenTrace, rank_bucket
from explorer.progress import Progress

MAX_CACHED_TEMPERATURES = 64
SMALL_MULTIPLE_TEMPERATURES = (0.25, 0.5, 1.0, 1.5, 2.0, 3.0)
BUCKET_LABELS = ("top 10", "top 100", "top 1000", "beyond")


def _settings_class(rule: str, specs: dict) -> type[param.Parameterized]:
    """A Parameterized class with one parameter per decoding-rule setting (the UI builds widgets from it)."""
    parameters = {}
    for name, spec in specs.items():
        kind = param.Integer if isinstance(spec.default, int) and not isinstance(spec.default, bool) else param.Number
        parameters[name] = kind(default=spec.default, softbounds=spec.bounds, doc=spec.doc, label=spec.label)
    return param.parameterized_class(f"{rule.title().replace('_', '')}Settings", parameters)


DECODING_SETTINGS = {name: _settings_class(name, rule.params) for name, rule in RULES.items()}


class TokenLensStudy(param.Parameterized):
    """Score or generate a text with a causal LM and inspect it token by token.

    Settings are parameters; results are ``trace`` (the model's cached logits over the text) and
    ``attention`` (entropy of every attention row, ``[layers, heads, tokens]``). Derived views
    (``scored``, ``frame``, ``summary``, ``curves``, ``entropy_at_temperatures``) are computed from
    them on demand and cached per temperature.
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
    # Typed settings have soft bounds only: a bad value reaches run(), which explains what is wrong.
    generation_temperature = param.Number(default=1.0, label="Sampling temperature", doc="Temperature used when sampling (> 0).")
    max_new_tokens = param.Integer(default=48, label="Max new tokens", doc="Stop after this many tokens (1 to 2048).")
    seed = param.Integer(default=0)
    temperature = param.Number(default=1.0, bounds=(0.05, 5.0), step=0.05, label="Re-score at temperature",
                               doc="Temperature at which the measures are shown (no new forward pass).")
    window = param.Integer(default=8, bounds=(1, 128), label="Rolling mean window")
    colour_by = param.Selector(default="entropy", objects=["entropy", "surprisal", "rank bucket"],
                               label="Colour tokens by")
    layer = param.Integer(default=0, bounds=(0, None), doc="Attention layer for the per-position curve.")
    head = param.Integer(default=0, bounds=(0, None), doc="Attention head for the per-position curve.")

    trace = param.ClassSelector(class_=TokenTrace, default=None, allow_None=True, precedence=-1,
                                doc="Result: the scored or generated text with its cached logits.")
    attention = param.ClassSelector(class_=torch.Tensor, default=None, allow_None=True, precedence=-1,
                                    doc="Result: attention entropy [layers, heads, tokens] (nats).")

    def __init__(self, **params):
        super().__init__(**params)
        self.decoding_settings = {name: cls() for name, cls in DECODING_SETTINGS.items()}
        self._tokenizer, self._by_temperature, self._frames, self._decoded = None, {}, {}, {}

    # ------------------------------------------------------------------ the long part
    def run(self, progress: Progress | None = None) -> tuple:
        """Load the model, score or generate, then compute attention entropy.

        Does not assign them (the caller does, on the UI thread): see :meth:`set_results`.
        """
        from explorer.models.language_model import load_language_model

        progress = progress or Progress()
        progress.update(0, 1, f"loading {self.model_name}")
        model = load_language_model(self.model_name or None)
        if self.mode == "score":
            progress.update(0.2, 1, "scoring")
            trace = model.score(self.text, prompt=self.prompt if self.prompt.strip() else None, chat=self.chat)
        else:
            trace = model.generate(self.prompt, max_new_tokens=self.max_new_tokens, decoding=self.decoding,
                                   temperature=self.generation_temperature, seed=self.seed, chat=self.chat,
                                   progress=progress, **self.rule_settings())
        progress.update(0.95, 1, "attention entropy")
        return trace, model.attention_entropy(trace), model.tokenizer

    def rule_settings(self) -> dict:
        """The chosen decoding rule's settings as keyword arguments."""
        values = self.decoding_settings[self.decoding].param.values()
        return {name: value for name, value in values.items() if name != "name"}

    def set_results(self, results: tuple) -> None:
        """Store what :meth:`run` returned: the trace, its attention entropy and the tokenizer."""
        trace, attention, tokenizer = results
        self._tokenizer, self._by_temperature, self._frames, self._decoded = tokenizer, {}, {}, {}
        with param.parameterized.batch_call_watchers(self):
            self.layer = min(self.layer, attention.shape[0] - 1)
            self.head = min(self.head, attention.shape[1] - 1)
            self.param.layer.bounds = (0, attention.shape[0] - 1)
            self.param.head.bounds = (0, attention.shape[1] - 1)
            self.attention = attention
            self.trace = trace

    # ------------------------------------------------------------------ derived, cached
    @property
    def scored(self) -> TokenTrace:
        """The trace at the display temperature (cached per temperature; the measures cache inside it)."""
        if self.trace is None:
            raise InputError("Nothing scored yet: press Generate or Score.")
        temperature = round(float(self.temperature), 4)
        if temperature not in self._by_temperature:
            if len(self._by_temperature) >= MAX_CACHED_TEMPERATURES:
                self._by_temperature.pop(next(iter(self._by_temperature)))
            self._by_temperature[temperature] = self.trace.at_temperature(temperature)
        return self._by_temperature[temperature]

    def frame(self) -> pd.DataFrame:
        """One row per token with every measure at the display temperature and the rolling means (cached)."""
        key = (round(float(self.temperature), 4), self.window)
        if key not in self._frames:
            if len(self._frames) >= MAX_CACHED_TEMPERATURES:
                self._frames.pop(next(k for k in self._frames if k[0] != "sweep"))
            frame = self.scored.to_frame(decode=self.decode)
            for column in ("entropy", "surprisal", "varentropy"):
                frame[f"{column}_rolling"] = frame[column].rolling(self.window, min_periods=1).mean()
            self._frames[key] = frame
        return self._frames[key]

    def summary(self) -> dict[str, float]:
        return self.scored.summary()

    def rank_histogram(self) -> pd.DataFrame:
        counts = np.bincount(rank_bucket(self.scored.rank).cpu().numpy(), minlength=len(RANK_BUCKETS) + 1)
        return pd.DataFrame({"bucket": BUCKET_LABELS, "tokens": counts})

    def entropy_at_temperatures(self, temperatures=SMALL_MULTIPLE_TEMPERATURES) -> pd.DataFrame:
        """Long frame (temperature, position, entropy) from one ``entropy_sweep`` over the cached logits."""
        if self.trace is None:
            raise InputError("Nothing scored yet: press Generate or Score.")
        key = ("sweep", tuple(temperatures))
        if key not in self._frames:
            sweep = self.trace.entropy_at(list(temperatures)).cpu().numpy()
            n = sweep.shape[1]
            self._frames[key] = pd.DataFrame({"temperature": np.repeat(temperatures, n),
                                              "position": np.tile(np.arange(n), len(sweep)),
                                              "entropy": sweep.ravel()})
        return self._frames[key]

    def attention_frame(self) -> pd.DataFrame:
        """Mean attention entropy over the text's tokens, one row per (layer, head)."""
        mean = self.attention.mean(-1).cpu().numpy()
        layers, heads = np.meshgrid(np.arange(mean.shape[0]), np.arange(mean.shape[1]), indexing="ij")
        return pd.DataFrame({"layer": layers.ravel(), "head": heads.ravel(), "entropy": mean.ravel()})

    def attention_curve(self) -> pd.DataFrame:
        values = self.attention[self.layer, self.head].cpu().numpy()
        return pd.DataFrame({"position": np.arange(len(values)), "entropy": values,
                             "token": self.trace.tokens})

    def decode(self, token_id: int) -> str:
        """The text of one token id (cached: the alternatives repeat across positions)."""
        if token_id not in self._decoded:
            self._decoded[token_id] = self._tokenizer.decode([token_id])
        return self._decoded[token_id]
