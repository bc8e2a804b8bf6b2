"""Question sets from a Hugging Face dataset repository (or a local folder laid out like one).

A dataset repository holds data files (Parquet, JSON Lines or CSV), often one folder per
configuration and one file (or several shards) per split, e.g. ``rc.nocontext/validation-00000-of-00001.parquet``.
:func:`pick_data_file` chooses one file: restricted to a sub-folder when one is given, the first
split found in :data:`SPLIT_PREFERENCE`, then Parquet before JSON Lines before CSV, then the first
shard. Files come from the Hub with ``huggingface_hub`` (online), from its local cache (offline), or
from a local folder; every failure is one :class:`InputError`.
"""

from __future__ import annotations

import re
import socket
from pathlib import Path
from urllib.parse import urlparse

from explorer.data.uploads import plain_words
from explorer.errors import InputError
from explorer.models.hub import HUB_TIMEOUT_S, hub_offline

PREFIX = "hf:"
FORMATS = (".parquet", ".jsonl", ".csv")
SPLIT_PREFERENCE = ("validation", "test", "train")
_REPO_ID = re.compile(r"^[A-Za-z0-9][\w.-]*/[\w.-]+$")


def parse_dataset_source(source: str) -> tuple[str, str]:
    """``hf:owner/name[/sub/path]`` -> (``owner/name``, ``sub/path`` or "")."""
    text = source[len(PREFIX):] if source.startswith(PREFIX) else source
    parts = [p for p in text.strip().strip("/").split("/") if p]
    if len(parts) < 2 or not _REPO_ID.match("/".join(parts[:2])):
        raise InputError(f"{source!r} is not a Hugging Face dataset id: write hf:owner/name "
                         "(optionally hf:owner/name/folder or hf:owner/name/path/to/file.parquet).")
    return "/".join(parts[:2]), "/".join(parts[2:])


def _split_of(path: str) -> str | None:
    for split in SPLIT_PREFERENCE:
        if re.search(rf"(^|[/_.-]){split}([/_.-]|$)", path):
            return split
    return None


def pick_data_file(files: list[str], subpath: str = "") -> str:
    """The data file to read among a repository's ``files`` (paths relative to its root)."""
    data = [f for f in files if f.lower().endswith(FORMATS) and not any(p.startswith(".") for p in f.split("/"))]
    if subpath:
        if subpath in data:
            return subpath
        data = [f for f in data if f.startswith(subpath.rstrip("/") + "/")]
        if not data:
            raise InputError(f"No Parquet, JSONL or CSV file under {subpath!r} in this dataset.")
    if not data:
        raise InputError(f"The dataset has no Parquet, JSONL or CSV file (files: {sorted(files)[:10]}).")

    def rank(path: str) -> tuple:
        split = _split_of(path)
        split_rank = SPLIT_PREFERENCE.index(split) if split else len(SPLIT_PREFERENCE)
        format_rank = next(k for k, suffix in enumerate(FORMATS) if path.lower().endswith(suffix))
        return split_rank, format_rank, path.count("/"), path
    return min(data, key=rank)


def _local_files(folder: Path) -> list[str]:
    return sorted(str(p.relative_to(folder)).replace("\\", "/") for p in folder.rglob("*") if p.is_file())


def _check_reachable() -> None:
    """Fail in seconds, not after the client's retries, when the Hub cannot be reached."""
    from huggingface_hub import constants

    url = urlparse(constants.ENDPOINT)
    try:
        socket.create_connection((url.hostname, url.port or (443 if url.scheme == "https" else 80)),
                                 timeout=HUB_TIMEOUT_S).close()
    except OSError as err:
        raise InputError(f"The Hugging Face Hub ({url.hostname}) cannot be reached from here ({err}). Offline, set "
                         "HF_HUB_OFFLINE=1 to use datasets already in the cache, or upload a Parquet/CSV/JSONL "
                         "file.") from err


def dataset_file(source: str) -> tuple[Path, str]:
    """Download (or find) the data file of ``source`` -> (local path, name to show).

    ``source``: ``hf:owner/name[/sub/path]`` or a local folder laid out like a dataset repository.
    """
    folder = Path(source).expanduser()
    if not source.startswith(PREFIX) and folder.is_dir():
        chosen = pick_data_file(_local_files(folder))
        return folder / chosen, f"{folder.name}/{chosen}"
    repo_id, subpath = parse_dataset_source(source)
    from huggingface_hub import HfApi, hf_hub_download, snapshot_download

    if hub_offline():
        try:
            cached = Path(snapshot_download(repo_id, repo_type="dataset", local_files_only=True))
        except Exception as err:  # noqa: BLE001 - not cached
            raise InputError(f"Dataset {repo_id!r} is not in the local Hugging Face cache and the Hub is off "
                             "(HF_HUB_OFFLINE=1). Go online once, or download a Parquet/CSV/JSONL file and "
                             "upload it.") from err
        chosen = pick_data_file(_local_files(cached), subpath)
        return cached / chosen, f"{repo_id}/{chosen}"
    _check_reachable()
    try:
        files = HfApi().list_repo_files(repo_id, repo_type="dataset")
    except Exception as err:  # noqa: BLE001 - unknown id, no network, gated: all the user's to fix
        raise InputError(f"Could not list the files of dataset {repo_id!r} on the Hugging Face Hub: "
                         f"{plain_words(err)}. "
                         "Check the id and your network (offline: set HF_HUB_OFFLINE=1 to use the cache), "
                         "or upload a file.") from err
    chosen = pick_data_file(files, subpath)
    try:
        path = hf_hub_download(repo_id, chosen, repo_type="dataset", etag_timeout=HUB_TIMEOUT_S)
    except Exception as err:  # noqa: BLE001
        raise InputError(f"Could not download {chosen} of dataset {repo_id!r}: {plain_words(err)}.") from err
    return Path(path), f"{repo_id}/{chosen}"


def is_dataset_source(source) -> bool:
    """True for ``hf:...`` strings and local folders (read as dataset repositories)."""
    if not isinstance(source, (str, Path)):
        return False
    text = str(source)
    return text.startswith(PREFIX) or Path(text).expanduser().is_dir()
