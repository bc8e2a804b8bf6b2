"""One analysis per page, all on one contract (:mod:`explorer.analyses.base`): settings are
parameters, ``compute(progress)`` does the long part, derived results are cached and follow the
settings they depend on.

    from explorer.analyses import DiversityAnalysis
    analysis = DiversityAnalysis(dataset=my_embeddings, kernel="rbf").compute()
    analysis.scores()["vendi"]

Names are imported on first use.
"""

from importlib import import_module

_NAMES = {
    "Analysis": "explorer.analyses.base",
    "NotComputed": "explorer.analyses.base",
    "result": "explorer.analyses.base",
    "TokenLensAnalysis": "explorer.analyses.token_lens",
    "TemperatureAnalysis": "explorer.analyses.temperature",
    "parse_temperatures": "explorer.analyses.temperature",
    "resume_run": "explorer.analyses.temperature",
    "RunResults": "explorer.analyses.runs",
    "RunComparison": "explorer.analyses.runs",
    "list_runs": "explorer.analyses.runs",
    "export_run": "explorer.analyses.runs",
    "DiversityAnalysis": "explorer.analyses.diversity",
    "ConformalAnalysis": "explorer.analyses.conformal",
}

__all__ = sorted(_NAMES)


def __getattr__(name):
    if name in _NAMES:
        return getattr(import_module(_NAMES[name]), name)
    raise AttributeError(f"module 'explorer.analyses' has no attribute {name!r}")


def __dir__():
    return sorted(set(globals()) | set(_NAMES))
