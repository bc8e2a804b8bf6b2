"""Entropy Explorer: see the uncertainty, entropy and diversity of your models.

Layers (each imports only the ones above it): ``explorer.kernels`` (pure torch),
``explorer.models`` / ``explorer.data`` (loading and validation), ``explorer.analyses``
(param classes holding a study's settings and cached results), ``explorer.views`` (Panel
components) and ``apps/`` (the ``panel serve`` entry points).
"""

__version__ = "0.1.0"
