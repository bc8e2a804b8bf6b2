"""One contract for every page's analysis: settings are parameters, the long part is ``compute``,
derived results are declared once with what they depend on and cached.

    class MyAnalysis(Analysis):
        data = param.ClassSelector(class_=EmbeddingSet, allow_None=True)
        sigma = param.Number(1.0)
        q = param.Number(1.0)

        @result("data", "sigma", heavy=True)      # the long part: computed by compute(), never on a UI read
        def spectrum(self, progress=None): ...

        @result("spectrum", "q")                  # cheap: computed on first read, then cached
        def score(self): ...

        def compute_steps(self):                  # what compute() runs, in order
            return [("Eigenvalues", self.spectrum)]

* Constructing an analysis only stores settings (no I/O, no model).
* ``@result(*depends)`` names parameters and other results; a result's cache entry is keyed by its
  arguments and the current values of every parameter it depends on, directly or through other
  results. A parameter watcher drops the entries that depend on a changed parameter, so memory
  follows the settings; the key is checked on every read as well.
* ``compute(progress)`` runs ``compute_steps()``; afterwards every result the page shows is a cache
  hit. Inside ``with analysis.reading():`` (in the calling thread) reading a *heavy* result that is
  not cached raises :class:`NotComputed` instead of computing it: a UI reads there and sends the
  long part to its job runner.
* A result computed while one of its settings changed (a widget moved during a job) is returned to
  its caller but not cached under the new settings.
* ``computations`` counts how often each result was actually computed.
"""

from __future__ import annotations

import collections
import contextlib
import functools
import inspect
import threading
from collections.abc import Callable, Hashable
from dataclasses import dataclass
from typing import Any

import param

from explorer.errors import InputError
from explorer.progress import Progress

Step = tuple[str, Callable[..., Any]]


class NotComputed(InputError, LookupError):
    """A read inside :meth:`Analysis.reading` needed a long result that is not cached yet (or there
    is nothing to compute from yet); the message says which, in words a page can show."""


@dataclass(frozen=True)
class ResultSpec:
    name: str
    depends: tuple[str, ...]
    heavy: bool
    key: str | None          # name of a method adding settings to the key (for conditional dependencies)
    takes_progress: bool


def result(*depends: str, heavy: bool = False, key: str | None = None):
    """Declare a cached derived result of an :class:`Analysis` (see the module docstring).

    ``depends``: parameter names and names of other results. ``heavy``: the long part (a read inside
    ``reading()`` raises :class:`NotComputed` instead of computing it). ``key``: the name of a method
    whose return value joins the cache key, for settings that matter only sometimes (such settings
    are not watched: an entry is replaced when recomputed). A ``progress`` keyword is passed through
    and is not part of the key.
    """
    def decorate(function):
        spec = ResultSpec(function.__name__, tuple(depends), heavy, key,
                          "progress" in inspect.signature(function).parameters)

        @functools.wraps(function)
        def read(self, *args, progress: Progress | None = None, **kwargs):
            return self._read_result(spec, function, args, kwargs, progress)

        read.result_spec = spec
        return read
    return decorate


class _Identity:
    """A cache-key part that compares by identity (data sets, tensors, models)."""

    __slots__ = ("value",)

    def __init__(self, value):
        self.value = value

    def __eq__(self, other):
        return isinstance(other, _Identity) and other.value is self.value

    def __hash__(self):
        return id(self.value)


def _frozen(value) -> Hashable:
    if value is None or isinstance(value, (bool, int, float, str, bytes)):
        return value
    if isinstance(value, (list, tuple)):
        return tuple(_frozen(v) for v in value)
    if isinstance(value, dict):
        return tuple(sorted((k, _frozen(v)) for k, v in value.items()))
    return _Identity(value)


class Analysis(param.Parameterized):
    """Base of every page's analysis (see the module docstring)."""

    __abstract = True

    def __init__(self, **params):
        super().__init__(**params)
        self._results: dict[tuple, tuple[tuple, Any]] = {}
        self._results_lock = threading.RLock()
        self._local = threading.local()
        self.computations: collections.Counter = collections.Counter()
        watched = sorted({p for spec in self.result_specs().values() for p in self._parameters_of(spec.name)})
        if watched:
            self.param.watch(self._invalidate, watched)

    # ------------------------------------------------------------------ declarations
    @classmethod
    def result_specs(cls) -> dict[str, ResultSpec]:
        """Every declared result of this class, by name."""
        if "_specs" not in cls.__dict__:
            specs = {}
            for klass in reversed(cls.__mro__):
                for name, member in vars(klass).items():
                    spec = getattr(member, "result_spec", None)
                    if spec is not None:
                        specs[name] = spec
            for spec in specs.values():
                unknown = [d for d in spec.depends if d not in specs and d not in cls.param]
                if unknown:
                    raise TypeError(f"{cls.__name__}.{spec.name} depends on unknown names {unknown}")
            cls._specs = specs
        return cls._specs

    @classmethod
    def _parameters_of(cls, name: str) -> frozenset[str]:
        """The parameters a result depends on, directly or through other results."""
        cache = cls.__dict__.get("_closure")
        if cache is None:
            cache = {}
            cls._closure = cache
        if name not in cache:
            specs = cls.result_specs()
            found: set[str] = set()
            for dep in specs[name].depends:
                found |= cls._parameters_of(dep) if dep in specs else {dep}
            cache[name] = frozenset(found)
        return cache[name]

    @classmethod
    def _keys_of(cls, name: str) -> tuple[str, ...]:
        """The key methods of a result and of every result it depends on."""
        specs = cls.result_specs()
        own = (specs[name].key,) if specs[name].key else ()
        return own + tuple(k for dep in specs[name].depends if dep in specs for k in cls._keys_of(dep))

    # ------------------------------------------------------------------ cache
    def _token(self, name: str) -> tuple:
        values = tuple((p, _frozen(getattr(self, p))) for p in sorted(self._parameters_of(name)))
        extra = tuple(_frozen(getattr(self, k)()) for k in dict.fromkeys(self._keys_of(name)))
        return values + extra

    def _read_result(self, spec: ResultSpec, function, args, kwargs, progress):
        key = (spec.name, _frozen(args), _frozen(kwargs))
        token = self._token(spec.name)
        with self._results_lock:
            entry = self._results.get(key)
        if entry is not None and entry[0] == token:
            return entry[1]
        if spec.heavy and self.is_reading:
            raise NotComputed(self.not_computed_message(spec.name))
        if spec.takes_progress:
            kwargs = {**kwargs, "progress": progress}
        value = function(self, *args, **kwargs)
        self.computations[spec.name] += 1
        if self._token(spec.name) == token:
            with self._results_lock:
                self._results[key] = (token, value)
        return value

    def _invalidate(self, *events) -> None:
        changed = {event.name for event in events}
        stale = {name for name in self.result_specs() if self._parameters_of(name) & changed}
        with self._results_lock:
            for key in [k for k in self._results if k[0] in stale]:
                del self._results[key]

    def forget(self, keep: Callable[[tuple], bool] | None = None) -> None:
        """Drop cached results (those whose ``(name, args, kwargs)`` key ``keep`` rejects, or all)."""
        with self._results_lock:
            for key in [k for k in self._results if keep is None or not keep(k)]:
                del self._results[key]

    def adopt_results(self, other: "Analysis") -> None:
        """Take over the cached results of ``other`` (an analysis of the same class, e.g. one a server
        computed at start) that were computed for this analysis's current settings. Results are
        shared, not copied: cached results are read-only."""
        if type(other) is not type(self):
            raise TypeError(f"cannot adopt results of a {type(other).__name__} into a {type(self).__name__}")
        with other._results_lock:
            entries = list(other._results.items())
        with self._results_lock:
            for key, (token, value) in entries:
                if key not in self._results and token == self._token(key[0]):
                    self._results[key] = (token, value)

    def is_cached(self, name: str, *args, **kwargs) -> bool:
        """True when result ``name`` for these arguments is cached for the current settings."""
        with self._results_lock:
            entry = self._results.get((name, _frozen(args), _frozen(kwargs)))
        return entry is not None and entry[0] == self._token(name)

    # ------------------------------------------------------------------ reading and computing
    @contextlib.contextmanager
    def reading(self):
        """Within this block (in this thread) reading an uncached heavy result raises :class:`NotComputed`."""
        before = self.is_reading
        self._local.read_only = True
        try:
            yield self
        finally:
            self._local.read_only = before

    @property
    def is_reading(self) -> bool:
        return getattr(self._local, "read_only", False)

    def not_computed_message(self, name: str) -> str:
        """What a page shows while result ``name`` is being computed."""
        return f"Computing {name.strip('_').replace('_', ' ')}…"

    def compute_steps(self) -> list[Step]:
        """``(label, reader)`` pairs that :meth:`compute` runs in order; a reader takes ``progress``."""
        return []

    def compute(self, progress: Progress | None = None):
        """The long part, for a background job: afterwards every result the page shows is cached."""
        steps = self.compute_steps()
        for done, (label, read) in enumerate(steps):
            if progress is not None:
                progress.update(done, len(steps), label)
            read(progress=progress)
        if progress is not None:
            progress.update(1, 1)
        return self

    def is_computed(self) -> bool:
        """True when every step of :meth:`compute` is cached for the current settings."""
        return all(self.answers_from_cache(read) for _label, read in self.compute_steps())

    def answers_from_cache(self, read: Callable[..., Any]) -> bool:
        """True when ``read(progress=None)`` (a step of :meth:`compute_steps`) needs no computation now."""
        try:
            with self.reading():
                read(progress=None)
        except InputError:   # NotComputed, or nothing to compute from yet (no data)
            return False
        return True

    def report_sections(self, **options) -> list:
        """What a report of this analysis shows, as data: cards, tables, plots, notes
        (:mod:`explorer.analyses.report`); reads results (cached after :meth:`compute`)."""
        raise NotImplementedError(f"{type(self).__name__} has no report")

    def report(self, path, title: str | None = None, **options):
        """Write a self-contained HTML report of this analysis to ``path`` (computes what is missing
        first); ``options`` go to :meth:`report_sections`. Returns the path."""
        from explorer.analyses.report import write_report

        return write_report(self, path, title, **options)

    def settings(self) -> dict[str, Any]:
        """The plain-valued settings (numbers, strings, booleans, lists of them): what a link or a
        report records."""
        plain = (bool, int, float, str, type(None))
        out = {}
        for name, value in self.param.values().items():
            if name == "name" or self.param[name].precedence is not None and self.param[name].precedence < 0:
                continue
            if isinstance(value, plain) or (isinstance(value, (list, tuple)) and all(isinstance(v, plain) for v in value)):
                out[name] = list(value) if isinstance(value, tuple) else value
        return out
