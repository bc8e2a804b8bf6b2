"""Natural-language-inference models for semantic equivalence (Kuhn et al. 2023, "Semantic Uncertainty").

Two answers mean the same when each entails the other (bidirectional entailment). Any Hugging Face
sequence-classification model whose labels include an entailment class works (local directory, the
Hugging Face cache, or the Hub when online); its ``id2label`` names the classes. One model per
(source, device) is loaded per process and shared.
"""

from __future__ import annotations

import threading
from collections.abc import Sequence

import torch

from explorer.errors import InputError
from explorer.models.device import resolve_device
from explorer.models.fair_lock import FairLock
from explorer.models.hub import resolve_model_source
from explorer.models.libraries import IMPORT_LOCK, transformers_names

_CACHE: dict[tuple[str, str], "NLIModel"] = {}
_LOCK = threading.Lock()


def _label_index(id2label: dict, word: str) -> int | None:
    hits = [int(i) for i, label in id2label.items()
            if word in str(label).lower() and not str(label).lower().startswith(("not", "non"))]
    return hits[0] if len(hits) == 1 else None


class NLIModel:
    """Premise/hypothesis classifier with named entailment, neutral and contradiction classes."""

    def __init__(self, name: str, model, tokenizer, device: torch.device):
        self.name, self.model, self.tokenizer, self.device = name, model.eval().to(device), tokenizer, device
        labels = dict(model.config.id2label or {})
        self.entailment = _label_index(labels, "entail")
        self.contradiction = _label_index(labels, "contradict")
        self.neutral = _label_index(labels, "neutral")
        if self.entailment is None:
            raise InputError(f"{name} is not an NLI model: its labels {sorted(map(str, labels.values()))} name no "
                             "single entailment class.")
        self.lock = FairLock("the NLI model")

    def predict(self, premises: Sequence[str], hypotheses: Sequence[str], batch_size: int = 32) -> torch.Tensor:
        """The most probable class id for each (premise, hypothesis) pair, ``[P]`` long on the CPU."""
        if len(premises) != len(hypotheses):
            raise ValueError("premises and hypotheses must have the same length")
        out = []
        with self.lock, torch.inference_mode():
            for start in range(0, len(premises), batch_size):
                batch = self.tokenizer(list(premises[start:start + batch_size]),
                                       list(hypotheses[start:start + batch_size]),
                                       padding=True, truncation=True, return_tensors="pt")
                logits = self.model(**{k: v.to(self.device) for k, v in batch.items()}).logits
                out.append(logits.argmax(-1).cpu())
        return torch.cat(out) if out else torch.zeros(0, dtype=torch.long)

    def equivalence(self, answers: Sequence[str], question: str | None = None, strict: bool = True) -> torch.Tensor:
        """N x N boolean matrix: [a, b] when answers a and b mean the same.

        Each answer is prefixed by the question when one is given (as in Kuhn et al.). ``strict``:
        a entails b and b entails a. Otherwise (Farquhar et al.'s relaxed check): neither direction
        is a contradiction and not both are neutral. Identical texts are equivalent without a call.
        """
        texts = [f"{question} {a}".strip() if question else str(a) for a in answers]
        unique = list(dict.fromkeys(texts))
        position = {t: k for k, t in enumerate(unique)}
        pairs = [(i, j) for i in range(len(unique)) for j in range(len(unique)) if i != j]
        labels = torch.full((len(unique), len(unique)), self.entailment, dtype=torch.long)
        if pairs:
            predicted = self.predict([unique[i] for i, _ in pairs], [unique[j] for _, j in pairs])
            for (i, j), label in zip(pairs, predicted.tolist()):
                labels[i, j] = label
        forward, backward = labels, labels.T
        if strict:
            same = (forward == self.entailment) & (backward == self.entailment)
        else:
            contradiction = -1 if self.contradiction is None else self.contradiction
            neutral = -1 if self.neutral is None else self.neutral
            same = (forward != contradiction) & (backward != contradiction) & \
                ~((forward == neutral) & (backward == neutral))
        index = torch.tensor([position[t] for t in texts], dtype=torch.long)
        return same[index][:, index]

    def __repr__(self) -> str:
        return f"NLIModel({self.name!r}, device={self.device})"


def load_nli_model(name_or_path: str, device=None) -> NLIModel:
    """The shared NLI model for ``name_or_path``; a clear :class:`InputError` when it cannot be had
    (offline and not cached, unknown id, not a sequence classifier, no entailment label)."""
    source = resolve_model_source(name_or_path)
    dev = resolve_device(device)
    key = (source, str(dev))
    with _LOCK:
        if key not in _CACHE:
            names = transformers_names()
            try:
                with IMPORT_LOCK:  # from_pretrained imports the model's own modules on first use
                    tokenizer = names.AutoTokenizer.from_pretrained(source)
                    model = names.AutoModelForSequenceClassification.from_pretrained(source)
            except Exception as err:  # noqa: BLE001 - any loading failure is the user's to fix
                raise InputError(f"Could not load the NLI model {name_or_path!r}: {type(err).__name__}: "
                                 f"{str(err).splitlines()[0][:300]}") from err
            _CACHE[key] = NLIModel(name_or_path, model, tokenizer, dev)
        return _CACHE[key]
