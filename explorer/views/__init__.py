"""Panel components, one per page; each renders alone in a notebook.

    from explorer.views import TokenEntropyLens
    TokenEntropyLens()

In a notebook, load the Panel extensions the pages use first: ``pn.extension(*EXTENSIONS)``.
Names are imported lazily so that ``import explorer.views`` stays cheap.
"""

from importlib import import_module

#: Panel extensions the pages use: ``pn.extension(*explorer.views.EXTENSIONS)`` in a notebook
EXTENSIONS = ("tabulator", "filedropper")

_COMPONENTS = {
    "TokenEntropyLens": "explorer.views.token_lens",
    "TemperatureSensitivity": "explorer.views.temperature",
    "EvaluationPanel": "explorer.views.run_evaluation",
    "DiversityExplorer": "explorer.views.diversity",
    "ConformalExplorer": "explorer.views.conformal",
    "TrainingDynamics": "explorer.views.training",
    "JobRunner": "explorer.views.jobs",
}

__all__ = list(_COMPONENTS)


def __getattr__(name):
    if name in _COMPONENTS:
        return getattr(import_module(_COMPONENTS[name]), name)
    raise AttributeError(f"module 'explorer.views' has no attribute {name!r}")
