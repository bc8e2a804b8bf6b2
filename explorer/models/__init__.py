"""Loading language models, embedders and NLI models, once per process, with clear errors.

    from explorer.models import load_language_model
    lm = load_language_model()                  # shared per process and device
    trace = lm.score("The cat sat on the mat.")

Names are imported on first use, so ``import explorer.models`` does not import transformers.
"""

from importlib import import_module

_NAMES = {
    "load_language_model": "explorer.models.language_model",
    "LanguageModel": "explorer.models.language_model",
    "DEFAULT_MODEL": "explorer.models.language_model",
    "MAX_SCORED_TOKENS": "explorer.models.language_model",
    "REQUEST_MEMORY_BYTES": "explorer.models.language_model",
    "token_limit": "explorer.models.language_model",
    "TokenTrace": "explorer.models.trace",
    "load_embedder": "explorer.models.embedder",
    "SentenceEmbedder": "explorer.models.embedder",
    "DEFAULT_EMBEDDER": "explorer.models.embedder",
    "load_nli_model": "explorer.models.nli",
    "NLIModel": "explorer.models.nli",
    "Sample": "explorer.models.sampling",
    "sample_answers": "explorer.models.sampling",
    "sample_many": "explorer.models.sampling",
    "resolve_device": "explorer.models.device",
    "available_devices": "explorer.models.device",
    "FairLock": "explorer.models.fair_lock",
    "import_model_libraries": "explorer.models.libraries",
}

__all__ = sorted(_NAMES)


def __getattr__(name):
    if name in _NAMES:
        return getattr(import_module(_NAMES[name]), name)
    raise AttributeError(f"module 'explorer.models' has no attribute {name!r}")


def __dir__():
    return sorted(set(globals()) | set(_NAMES))
