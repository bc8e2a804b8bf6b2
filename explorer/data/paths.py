"""Where a served app keeps its users' files, and the check that keeps typed paths inside it.

A shared server has one data directory (``explorer serve --data-dir DIR``; the environment variable
``ENTROPY_EXPLORER_DATA_DIR``; by default ``entropy-explorer`` in the user's data directory, e.g.
``~/.local/share/entropy-explorer``). When served, a path typed in a page (a results database, a
question file) is resolved against it, symlinks and ``..`` included, and refused when it lands
outside: a user of the server can neither read nor create files elsewhere on it. Notebooks, scripts
and the CLI are not restricted (see :func:`explorer.views.server.checked_path`).
"""

from __future__ import annotations

import os
from pathlib import Path

from explorer.errors import InputError

DATA_DIR_VARIABLE = "ENTROPY_EXPLORER_DATA_DIR"


def data_dir() -> Path:
    """The served app's data directory (see the module docstring), created on first use."""
    from platformdirs import user_data_dir

    root = Path(os.environ.get(DATA_DIR_VARIABLE) or user_data_dir("entropy-explorer")).expanduser()
    root.mkdir(parents=True, exist_ok=True)
    return root.resolve()


def inside(typed: str | Path, root: Path, what: str = "file") -> Path:
    """``typed`` as an absolute path inside ``root``: relative paths are taken from ``root``; ``~``,
    ``..`` and symlinks are resolved first, so none of them leads out. Anything outside is refused."""
    text = str(typed).strip()
    if not text:
        raise InputError(f"Type the {what}'s path (inside the server's data directory).")
    if "\x00" in text:
        raise InputError(f"The {what}'s path holds a NUL character.")
    root = root.resolve()
    path = Path(text).expanduser()
    resolved = (path if path.is_absolute() else root / path).resolve()
    if resolved != root and root not in resolved.parents:
        raise InputError(f"{text} is outside this server's data directory: the {what} must be inside it "
                         f"(type a path relative to it, e.g. {Path(text).name or 'runs.duckdb'}).")
    return resolved
