"""Shared view inputs kept on the server: what a short link ``?page=<page>&share=<id>`` restores.

A link holds a page's settings in its query (:mod:`explorer.views.links`); long texts and uploaded
files cannot travel in a URL, so the page's "Share" button stores them here and the link carries a
short id instead. What one share stores, under ``<data dir>/entropy-explorer/shares/`` (``<data
dir>`` is ``$XDG_DATA_HOME`` or ``~/.local/share``, the results database's directory):

* ``<id>.json``: the page key, the page's link settings as the strings a URL would hold (e.g. the
  lens's full text and prompt, a conformal alpha), and for each uploaded file its name, size and
  SHA-256; plus the time it was first shared. Plain JSON: nothing is pickled, nothing is executed.
* ``blobs/<sha256>``: each uploaded file's bytes, once however many shares use it.

The id is the first 16 hex digits of the SHA-256 of the canonical JSON of the page, settings and
file hashes (so it covers the files' bytes): sharing the same view twice gives the same link, and a
link cannot be altered to show something else. Nothing else is stored: not the results (a shared
link is computed again), not the user, not the results database (a temperature link names a run of
this server's database). The directory is created private to the server's user (mode 0700), so an
upload shared this way is visible only to users of the same server who are given the link (and who
pass its login, when one is set). :meth:`ShareStore.delete` removes a share (and files no other
share uses); its link then says that the share does not exist.
"""

from __future__ import annotations

import datetime as dt
import hashlib
import json
import os
import re
import tempfile
import threading
from dataclasses import dataclass, field
from pathlib import Path

import pandas as pd

from explorer.data.store import default_db_path
from explorer.data.uploads import MAX_UPLOAD_BYTES, Upload, human_size
from explorer.errors import InputError

SHARE_ID = re.compile(r"[0-9a-f]{16}")
BLOB_ID = re.compile(r"[0-9a-f]{64}")
FORMAT = 1
MAX_FIELD_CHARS = 200_000     # a share's text fields (the lens scores at most 2,048 tokens)


def default_shares_dir() -> Path:
    return default_db_path().parent / "shares"


@dataclass(frozen=True)
class Share:
    """One stored share: its page, its settings (URL strings) and its files by slot."""

    id: str
    page: str
    fields: dict[str, str]
    uploads: dict[str, list[Upload]] = field(default_factory=dict)
    created: str = ""


def _canonical(record: dict) -> bytes:
    return json.dumps(record, sort_keys=True, separators=(",", ":"), ensure_ascii=False).encode("utf-8")


def _write_atomic(path: Path, data: bytes) -> None:
    handle, staging = tempfile.mkstemp(prefix=".staging-", dir=path.parent)
    try:
        with os.fdopen(handle, "wb") as out:
            out.write(data)
        os.replace(staging, path)
    finally:
        if os.path.exists(staging):
            os.unlink(staging)


class ShareStore:
    """The shares of one server (see the module docstring); safe to use from several threads."""

    _lock = threading.Lock()

    def __init__(self, root: str | Path | None = None):
        self.root = Path(root) if root is not None else default_shares_dir()

    def _blobs(self) -> Path:
        path = self.root / "blobs"
        path.mkdir(mode=0o700, parents=True, exist_ok=True)
        os.chmod(self.root, 0o700)
        return path

    def _record_path(self, share_id: str) -> Path:
        if not isinstance(share_id, str) or not SHARE_ID.fullmatch(share_id):
            raise InputError("This share link is malformed: a share id is 16 hexadecimal digits.")
        return self.root / f"{share_id}.json"

    def save(self, page: str, fields: dict[str, str], uploads: dict[str, list[Upload]] | None = None) -> str:
        """Store a page's settings and files; returns the share id (the same for the same inputs)."""
        uploads = {slot: files for slot, files in (uploads or {}).items() if files}
        if not all(isinstance(k, str) and isinstance(v, str) for k, v in fields.items()):
            raise InputError("A share stores settings as text.")
        too_long = [k for k, v in fields.items() if len(v) > MAX_FIELD_CHARS]
        if too_long:
            raise InputError(f"Too long to share: {', '.join(too_long)} (at most {MAX_FIELD_CHARS:,} characters).")
        files = {}
        for slot, group in uploads.items():
            for upload in group:
                if len(upload.data) > MAX_UPLOAD_BYTES:
                    raise InputError(f"{upload.name} is {human_size(len(upload.data))}: too large to share.")
            files[slot] = [{"name": u.name, "bytes": len(u.data), "sha256": hashlib.sha256(u.data).hexdigest()}
                           for u in group]
        record = {"format": FORMAT, "page": page, "fields": dict(fields), "uploads": files}
        share_id = hashlib.sha256(_canonical(record)).hexdigest()[:16]
        with self._lock:
            blobs = self._blobs()
            for slot, group in uploads.items():
                for upload, entry in zip(group, files[slot]):
                    blob = blobs / entry["sha256"]
                    if not blob.exists():
                        _write_atomic(blob, upload.data)
            path = self._record_path(share_id)
            if not path.exists():
                stamp = dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds")
                _write_atomic(path, _canonical({**record, "created": stamp}))
        return share_id

    def load(self, share_id: str) -> Share:
        """The share ``share_id``; an :class:`InputError` when it does not exist (never shared, or
        deleted) or its files are missing or damaged."""
        path = self._record_path(share_id)
        if not path.exists():
            raise InputError(f"Share {share_id} does not exist on this server: it was deleted, or the link is "
                             "mistyped or from another server.")
        try:
            record = json.loads(path.read_text(encoding="utf-8"))
            fields, page, files = record["fields"], record["page"], record["uploads"]
        except (OSError, ValueError, KeyError, TypeError) as err:
            raise InputError(f"Share {share_id} is damaged and cannot be opened.") from err
        uploads = {}
        for slot, group in files.items():
            uploads[slot] = []
            for entry in group:
                uploads[slot].append(self._read_blob(share_id, entry))
        return Share(share_id, str(page), {str(k): str(v) for k, v in fields.items()}, uploads,
                     str(record.get("created", "")))

    def _read_blob(self, share_id: str, entry: dict) -> Upload:
        digest = str(entry.get("sha256", ""))
        blob = self.root / "blobs" / digest
        if not BLOB_ID.fullmatch(digest) or not blob.exists():
            raise InputError(f"Share {share_id}: the shared file {entry.get('name')!r} is missing on this server.")
        data = blob.read_bytes()
        if hashlib.sha256(data).hexdigest() != digest:
            raise InputError(f"Share {share_id}: the shared file {entry.get('name')!r} is damaged.")
        return Upload(str(entry.get("name", "upload")), data)

    def delete(self, share_id: str) -> None:
        """Remove a share and every file no other share uses; an unknown id is an :class:`InputError`."""
        path = self._record_path(share_id)
        with self._lock:
            if not path.exists():
                raise InputError(f"Share {share_id} does not exist on this server.")
            path.unlink()
            used = set()
            for other in self.root.glob("*.json"):
                try:
                    used |= {e["sha256"] for group in json.loads(other.read_text())["uploads"].values() for e in group}
                except (OSError, ValueError, KeyError, TypeError):
                    continue
            for blob in (self.root / "blobs").glob("*"):
                if BLOB_ID.fullmatch(blob.name) and blob.name not in used:
                    blob.unlink()

    def list(self) -> pd.DataFrame:
        """One row per share: id, page, created, settings, files and their total size."""
        rows = []
        for path in sorted(self.root.glob("*.json")) if self.root.exists() else []:
            try:
                record = json.loads(path.read_text(encoding="utf-8"))
                entries = [e for group in record["uploads"].values() for e in group]
                rows.append({"share": path.stem, "page": record["page"], "created": record.get("created", ""),
                             "settings": len(record["fields"]), "files": len(entries),
                             "bytes": sum(int(e["bytes"]) for e in entries)})
            except (OSError, ValueError, KeyError, TypeError):
                rows.append({"share": path.stem, "page": "(damaged)", "created": "", "settings": 0, "files": 0,
                             "bytes": 0})
        return pd.DataFrame(rows, columns=["share", "page", "created", "settings", "files", "bytes"])
