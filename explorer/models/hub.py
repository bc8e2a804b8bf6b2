"""Where a model comes from: a local directory, the Hugging Face cache, or the Hub (online only).

Every failure becomes one :class:`~explorer.errors.InputError` that says what was tried, so an
unknown id offline fails in well under a second instead of hanging or showing a stack trace.
"""

from __future__ import annotations

import os
from pathlib import Path

from explorer.errors import InputError

HUB_TIMEOUT_S = 10


def hub_offline() -> bool:
    """True when the user asked the Hugging Face libraries to stay offline."""
    return any(os.environ.get(var, "").lower() in {"1", "true", "yes"}
               for var in ("HF_HUB_OFFLINE", "TRANSFORMERS_OFFLINE"))


def resolve_model_source(name_or_path: str) -> str:
    """Return ``name_or_path`` if a model can be loaded from it, else raise a clear ``InputError``.

    Order: an existing local directory; a snapshot already in the Hugging Face cache; the Hub,
    unless offline (``HF_HUB_OFFLINE=1``) or unreachable.
    """
    name = (name_or_path or "").strip()
    if not name:
        raise InputError("No model given: type a Hugging Face id (org/name) or a local directory.")
    path = Path(name).expanduser()
    if path.exists():
        if not (path / "config.json").exists() and not any(path.glob("*.gguf")):
            raise InputError(f"{path} exists but holds no config.json or .gguf file: not a model directory.")
        return str(path)
    if name.startswith(("/", "./", "../", "~")):
        raise InputError(f"No such directory: {name}")

    from huggingface_hub import hf_hub_download
    from huggingface_hub.errors import HFValidationError

    try:
        hf_hub_download(name, "config.json", local_files_only=True)
        return name
    except HFValidationError as err:
        raise InputError(f"{name!r} is neither a local directory nor a valid Hugging Face id ({err}).") from err
    except Exception:  # noqa: BLE001 - not cached: try the Hub below
        pass
    if hub_offline():
        raise InputError(f"Model {name!r} is not in the local Hugging Face cache and the Hub is off "
                         "(HF_HUB_OFFLINE=1). Use a local directory, or go online once to download it.")
    try:
        hf_hub_download(name, "config.json", etag_timeout=HUB_TIMEOUT_S)
    except Exception as err:  # noqa: BLE001 - any hub failure is the user's to fix
        raise InputError(f"Could not fetch model {name!r} from the Hugging Face Hub: "
                         f"{type(err).__name__}: {str(err).splitlines()[0][:300]}. "
                         "Check the id and your network, or use a local directory.") from err
    return name
