"""Diversity study of one embedding set: Vendi of any order, RKE, Renyi, effective rank, DSE, DSMI,
their curves, per-group scores, a 2-D projection and, for per-layer hidden states, the entropy of
the representations across depth.

Expensive results (the kernel spectrum, the diffusion spectra, the subsample and group spectra, the
projection, one spectrum pair per layer) are computed once per (data, settings) by :meth:`compute`
and cached; a change of ``q`` or ``t`` only re-reads them. Inside ``with analysis.reading():`` a
read that would have to compute raises :class:`NotComputed` instead, so a UI never computes on its
event loop.
"""

from __future__ import annotations

import math

import numpy as np
import pandas as pd
import param
import torch

from explorer.analyses.base import Analysis, NotComputed, _Identity, result
from explorer.data.embeddings import EmbeddingSet
from explorer.errors import InputError
from explorer.kernels.diversity import (
    KERNELS,
    Spectrum,
    diffusion_eigenvalues,
    dse_from_eigenvalues,
    dsmi_from_spectra,
    dsmi_spectra,
    kernel_spectrum,
    median_bandwidth,
    pairwise_kernel,
)
from explorer.progress import Progress

__all__ = ["DiversityAnalysis", "NotComputed", "comparison_frame"]

Q_VALUES = [0.0, 0.25, 0.5, 0.75, 1.0, 1.5, 2.0, 3.0, 5.0, 10.0, math.inf]
CURVE_Q = np.concatenate([np.linspace(0, 2, 21), np.linspace(2.5, 20, 36)])
CURVE_T = np.linspace(0.25, 10, 40)
DSMI_REPEATS = 5
KERNEL_SETTINGS = ("kernel", "sigma", "degree", "center", "method", "approx_above", "landmarks", "seed")
DIFFUSION_SETTINGS = ("dse_sigma", "approx_above", "seed")


class DiversityAnalysis(Analysis):
    """Settings of one diversity study of ``dataset``; results are lazy and cached.

    With ``layers`` (one :class:`EmbeddingSet` per layer of a model, same rows), ``layer`` picks the
    one under study and :meth:`depth_profile` gives the entropy of every layer's representations.
    Results computed for a data set are keyed by that object; those of a set no longer studied
    (neither ``dataset`` nor one of ``layers``) are released.
    """

    dataset = param.ClassSelector(class_=EmbeddingSet, allow_None=True, doc="The embeddings under study.")
    layers = param.List(default=[], item_type=EmbeddingSet, doc="Per-layer sets (hidden states); empty otherwise.")
    layer = param.Integer(default=0, bounds=(0, None), label="Layer (0 = token embeddings)")
    kernel = param.Selector(objects=list(KERNELS), default="cosine", doc="Similarity kernel for Vendi/RKE/Renyi.")
    sigma = param.Number(default=0.0, bounds=(0, None), softbounds=(0, 50), step=0.1,
                         label="RBF sigma (0 = median distance)")
    degree = param.Integer(default=3, bounds=(1, 6), label="Polynomial degree")
    center = param.Boolean(default=False, label="Centre the embeddings",
                           doc="Subtract the mean embedding before the kernel (RBF and DSE are unchanged): removes "
                               "a direction every sample shares, e.g. in language-model hidden states.")
    q = param.Selector(objects=Q_VALUES, default=1.0, label="Order q")
    t = param.Number(default=1.0, bounds=(0.25, 10), step=0.25, label="Diffusion time t")
    dse_sigma = param.Number(default=0.0, bounds=(0, None), softbounds=(0, 50), step=0.1,
                             label="DSE sigma (0 = median distance)")
    method = param.Selector(objects=["auto", "exact", "nystrom"], default="auto", label="Spectrum")
    approx_above = param.Integer(default=5000, bounds=(100, None), label="Approximate above n")
    landmarks = param.Integer(default=1000, bounds=(10, 10000), label="Nystrom landmarks")
    seed = param.Integer(default=0, label="Seed")

    def __init__(self, **params):
        super().__init__(**params)
        if self.layers:
            self._on_layers()

    # ------------------------------------------------------------------------------- data
    @param.depends("layers", watch=True)
    def _on_layers(self):
        """New per-layer sets: bound ``layer`` to them and study the chosen one."""
        self.param.layer.bounds = (0, max(len(self.layers) - 1, 0))
        layer = min(self.layer, max(len(self.layers) - 1, 0))
        if self.layers:
            self.param.update(layer=layer, dataset=self.layers[layer])

    @param.depends("layer", watch=True)
    def _on_layer(self):
        if self.layers:
            if not 0 <= self.layer < len(self.layers):
                raise InputError(f"Layer {self.layer} does not exist: choose 0 to {len(self.layers) - 1}.")
            self.dataset = self.layers[self.layer]

    @param.depends("dataset", "layers", watch=True)
    def _release(self):
        """Forget the results of data sets no longer studied (a layer of ``layers`` stays)."""
        studied = [self.dataset, *self.layers]
        self.forget(keep=lambda key: all(any(part.value is s for s in studied) for part in key[1]
                                         if isinstance(part, _Identity)))

    def _data(self, data: EmbeddingSet | None = None) -> EmbeddingSet:
        data = data if data is not None else self.dataset
        if data is None:
            raise InputError("No data loaded: choose a bundled set or upload a file.")
        return data

    def not_computed_message(self, name: str) -> str:
        return "computing…"

    def compute_steps(self):
        steps = [("Eigenvalues of the kernel", lambda progress: self.spectrum(progress)),
                 ("Eigenvalues of the diffusion matrix", lambda progress: self.diffusion_spectrum(progress)),
                 ("Diffusion spectra for DSMI", self._dsmi_spectra),
                 ("Vendi of seeded subsamples", self._subsample_spectra),
                 ("Spectra within each group", self._group_spectra),
                 ("Projection", self._projection)]
        if self.layers:
            steps.append(("Spectra of every layer", self._depth_spectra))
        return steps

    @result("center", heavy=True)
    def _features(self, data: EmbeddingSet) -> torch.Tensor:
        """The rows the kernel sees: ``X``, or ``X`` minus its mean when ``center``."""
        return data.X - data.X.double().mean(0).to(data.X.dtype) if self.center else data.X

    def _dse_rows(self, data: EmbeddingSet | None = None) -> torch.Tensor:
        """All rows, or a seeded subsample of ``approx_above`` rows when n is larger (DSE is O(n^3))."""
        data = self._data(data)
        if data.n <= self.approx_above:
            return torch.arange(data.n)
        return torch.randperm(data.n, generator=torch.Generator().manual_seed(self.seed))[:self.approx_above]

    @result(heavy=True)
    def _median(self, data: EmbeddingSet) -> float:
        return median_bandwidth(data.X)

    def _rbf_sigma(self, data: EmbeddingSet | None = None) -> float | None:
        if self.kernel != "rbf":
            return None
        return self.sigma or self._median(self._data(data))

    def _diffusion_sigma(self, data: EmbeddingSet | None = None) -> float:
        return self.dse_sigma or self._median(self._data(data))

    @property
    def rbf_sigma(self) -> float | None:
        """The RBF bandwidth in use (median heuristic when ``sigma`` is 0)."""
        return self._rbf_sigma()

    @property
    def diffusion_sigma(self) -> float:
        return self._diffusion_sigma()

    def _kernel_function(self):
        if self.kernel != "polynomial":
            return self.kernel
        degree = self.degree
        return lambda A, B: pairwise_kernel(A, B, "polynomial", degree=degree)

    # ------------------------------------------------------------------------------- spectra
    def spectrum(self, progress: Progress | None = None, data: EmbeddingSet | None = None) -> Spectrum:
        """The kernel spectrum of ``data`` (default: the data set) for the current kernel settings (cached)."""
        return self._spectrum_of(self._data(data), progress=progress)

    @result(*KERNEL_SETTINGS, heavy=True)
    def _spectrum_of(self, data: EmbeddingSet, progress: Progress | None = None) -> Spectrum:
        if progress is not None:
            progress.update(0, 1, f"Eigenvalues of the {self.kernel} kernel (n = {data.n})")
        return kernel_spectrum(self._features(data), kernel=self._kernel_function(), sigma=self._rbf_sigma(data),
                               method=self.method, landmarks=self.landmarks, approx_above=self.approx_above,
                               seed=self.seed)

    def diffusion_spectrum(self, progress: Progress | None = None, data: EmbeddingSet | None = None) -> torch.Tensor:
        """Eigenvalues of the diffusion matrix at the diffusion sigma (cached)."""
        return self._diffusion_of(self._data(data), progress=progress)

    @result(*DIFFUSION_SETTINGS, heavy=True)
    def _diffusion_of(self, data: EmbeddingSet, progress: Progress | None = None) -> torch.Tensor:
        if progress is not None:
            progress.update(0, 1, "Eigenvalues of the diffusion matrix")
        return diffusion_eigenvalues(data.X[self._dse_rows(data)].double(), self._diffusion_sigma(data))

    @result("dataset", *DIFFUSION_SETTINGS, heavy=True)
    def _dsmi_spectra(self, progress: Progress | None = None) -> list[tuple[float, torch.Tensor, list[torch.Tensor]]]:
        """Per class with >= 2 members: (share of rows, diffusion eigenvalues within the class, those of
        ``DSMI_REPEATS`` seeded random subsets of the same size), from
        :func:`explorer.kernels.diversity.dsmi_spectra`: DSMI at any t is then a cheap read."""
        data = self._data()
        if data.labels is None:
            return []
        rows = self._dse_rows()
        labels = [data.labels[i] for i in rows]
        report = None if progress is None else (
            lambda done, total: progress.update(done, total, "Diffusion spectra for DSMI"))
        return dsmi_spectra(data.X[rows].double(), labels, self._diffusion_sigma(), DSMI_REPEATS, self.seed,
                            on_class=report)

    def dsmi(self, progress: Progress | None = None) -> float | None:
        """DSMI with the labels in bits at the current t (None without labels), from cached spectra."""
        if self._data().labels is None:
            return None
        return dsmi_from_spectra(self._dsmi_spectra(progress=progress), self.t)

    # ------------------------------------------------------------------------------- scores
    def scores(self) -> dict:
        """The score cards: Vendi_q, RKE, Renyi_q (bits), effective rank, DSE_t, DSMI, n, exactness."""
        spec, data = self.spectrum(), self._data()
        return {
            "dataset": data.name, "n": data.n, "dim": data.dim, "kernel": self.kernel, "q": self.q, "t": self.t,
            "vendi": spec.vendi(self.q), "rke": spec.rke(), "renyi_bits": spec.renyi_bits(self.q),
            "effective_rank": spec.effective_rank(),
            "dse_bits": dse_from_eigenvalues(self.diffusion_spectrum(), self.t), "dsmi_bits": self.dsmi(),
            "spectrum": spec.method, "exact": spec.exact, "estimated_error": spec.vendi_error(self.q),
            "vendi_upper_bound": spec.vendi_upper_bound(self.q),
            "dse_rows": int(len(self._dse_rows())), "rbf_sigma": self.rbf_sigma, "dse_sigma": self.diffusion_sigma,
        }

    def scores_frame(self) -> pd.DataFrame:
        return pd.DataFrame([self.scores()])

    # ------------------------------------------------------------------------------- curves
    def spectrum_frame(self, top: int = 500) -> pd.DataFrame:
        """The largest ``top`` normalised eigenvalues (> 0), for a log-scale plot."""
        lam = self.spectrum().eigenvalues[:top].numpy()
        lam = lam[lam > 0]
        return pd.DataFrame({"index": np.arange(1, len(lam) + 1), "eigenvalue": lam})

    def vendi_curve(self) -> pd.DataFrame:
        spec = self.spectrum()
        return pd.DataFrame({"q": CURVE_Q, "vendi": [spec.vendi(float(q)) for q in CURVE_Q]})

    def dse_curve(self) -> pd.DataFrame:
        eig = self.diffusion_spectrum()
        return pd.DataFrame({"t": CURVE_T, "dse_bits": [dse_from_eigenvalues(eig, float(t)) for t in CURVE_T]})

    def subsample_sizes(self) -> list[int]:
        n = min(self._data().n, self.approx_above)
        return sorted({int(s) for s in np.unique(np.geomspace(2, n, 8).round()) if s >= 2})

    @result("dataset", *KERNEL_SETTINGS, heavy=True)
    def _subsample_spectra(self, progress: Progress | None = None) -> list[list[Spectrum]]:
        """Spectra of 5 seeded random subsets per size in :meth:`subsample_sizes` (any q reads them)."""
        data, gen, spectra = self._data(), torch.Generator().manual_seed(self.seed), []
        X = self._features(data)
        for done, size in enumerate(self.subsample_sizes()):
            if progress is not None:
                progress.update(done, len(self.subsample_sizes()), f"Vendi of seeded subsamples of {size}")
            spectra.append([kernel_spectrum(X[torch.randperm(data.n, generator=gen)[:size]].double(),
                                            kernel=self._kernel_function(), sigma=self.rbf_sigma, method="exact")
                            for _ in range(5)])
        return spectra

    def subsample_curve(self, progress: Progress | None = None, q: float | None = None) -> pd.DataFrame:
        """Vendi_q of seeded random subsets (mean, sd over 5 draws): biased low versus the full set."""
        q = self.q if q is None else q
        scores = np.array([[spec.vendi(q) for spec in row] for row in self._subsample_spectra(progress=progress)])
        return pd.DataFrame({"size": self.subsample_sizes(), "mean": scores.mean(1), "sd": scores.std(1)})

    @result("dataset", *KERNEL_SETTINGS, heavy=True)
    def _group_spectra(self, progress: Progress | None = None) -> dict:
        data = self._data()
        if data.labels is None:
            return {}
        if progress is not None:
            progress.update(0, 1, "Spectra within each group")
        labels = np.asarray(data.labels)
        groups, X = sorted(set(data.labels), key=str), self._features(data)
        return {group: kernel_spectrum(X[torch.from_numpy(np.flatnonzero(labels == group))].double(),
                                       kernel=self._kernel_function(), sigma=self.rbf_sigma, method=self.method,
                                       landmarks=self.landmarks, approx_above=self.approx_above)
                for group in groups}

    def group_scores(self, progress: Progress | None = None, q: float | None = None) -> pd.DataFrame:
        """Vendi_q within each label (exact when the group has at most ``approx_above`` rows)."""
        q = self.q if q is None else q
        spectra = self._group_spectra(progress=progress)
        return pd.DataFrame({"group": list(spectra), "n": [spec.n for spec in spectra.values()],
                             "vendi": [spec.vendi(q) for spec in spectra.values()]})

    def projection(self, max_points: int | None = None) -> pd.DataFrame:
        """First two principal components of every row (or a seeded ``max_points`` of them), with the
        group and the text (or "row i") for hover."""
        frame = self._projection()
        return frame.sample(max_points, random_state=0) if max_points and len(frame) > max_points else frame

    @result("dataset", heavy=True)
    def _projection(self, progress: Progress | None = None) -> pd.DataFrame:
        data = self._data()
        X = data.X.double()
        X = X - X.mean(0)
        _, vectors = torch.linalg.eigh(X.T @ X)        # exact and deterministic: d x d, not n x n
        V = vectors[:, -min(2, X.shape[1]):].flip(1)
        V = V * torch.sign(V[V.abs().argmax(0), torch.arange(V.shape[1])])   # one sign per component
        xy = (X @ V).numpy()
        if xy.shape[1] == 1:
            xy = np.column_stack([xy, np.zeros(len(xy))])
        return pd.DataFrame({"pc1": xy[:, 0], "pc2": xy[:, 1],
                             "group": data.labels if data.labels is not None else ["all"] * data.n,
                             "text": data.texts if data.texts is not None else [f"row {i}" for i in range(data.n)]})

    # ------------------------------------------------------------------------------- depth
    @result("layers", *KERNEL_SETTINGS, *DIFFUSION_SETTINGS, heavy=True)
    def _depth_spectra(self, progress: Progress | None = None) -> list[tuple[Spectrum, torch.Tensor]]:
        """(kernel spectrum, diffusion eigenvalues) of every layer, each at its own median sigma when
        sigma is 0 (hidden-state scales grow with depth)."""
        if not self.layers:
            raise InputError("The per-layer profile needs hidden states: choose the hidden-states source.")
        spectra = []
        for done, data in enumerate(self.layers):
            if progress is not None:
                progress.update(done, len(self.layers), f"Spectra of layer {done} of {len(self.layers) - 1}")
            spectra.append((self.spectrum(data=data), self.diffusion_spectrum(data=data)))
        return spectra

    def depth_profile(self, progress: Progress | None = None, q: float | None = None,
                      t: float | None = None) -> pd.DataFrame:
        """Per layer: Vendi_q, its Renyi entropy log2 Vendi_q and DSE_t, both in bits."""
        q, t = self.q if q is None else q, self.t if t is None else t
        spectra = self._depth_spectra(progress=progress)
        vendi = np.array([spec.vendi(q) for spec, _ in spectra])
        return pd.DataFrame({"layer": np.arange(len(spectra)), "vendi": vendi, "renyi_bits": np.log2(vendi),
                             "dse_bits": [dse_from_eigenvalues(eig, t) for _, eig in spectra]})

    # ------------------------------------------------------------------------------- every slider position
    @result("dataset", "layers", *KERNEL_SETTINGS, *DIFFUSION_SETTINGS)
    def order_table(self) -> pd.DataFrame:
        """Everything that moves with q, at every order of the q slider (``Q_VALUES``): Vendi, its
        estimated error and upper bound, Renyi bits, the subsample curve, the group scores and the depth
        profile; from the cached spectra, so a page can move q without asking the server."""
        spec = self.spectrum()
        rows = []
        for q in Q_VALUES:
            sub = self.subsample_curve(q=q)
            rows.append({"q": q, "vendi": spec.vendi(q), "renyi_bits": spec.renyi_bits(q),
                         "estimated_error": spec.vendi_error(q), "vendi_upper_bound": spec.vendi_upper_bound(q),
                         "sub_mean": sub["mean"].to_numpy(), "sub_sd": sub["sd"].to_numpy(),
                         "group_vendi": self.group_scores(q=q)["vendi"].to_numpy(),
                         "depth_vendi": self.depth_profile(q=q)["vendi"].to_numpy() if self.layers else np.array([])})
        return pd.DataFrame(rows)

    @result("dataset", "layers", *DIFFUSION_SETTINGS)
    def time_table(self) -> pd.DataFrame:
        """Everything that moves with t, at every diffusion time of the t slider (``CURVE_T``): DSE,
        DSMI with the labels and the per-layer DSE."""
        eig = self.diffusion_spectrum()
        dsmi = self._dsmi_spectra() if self._data().labels is not None else None
        depth = [e for _, e in self._depth_spectra()] if self.layers else []
        return pd.DataFrame({"t": CURVE_T, "dse_bits": [dse_from_eigenvalues(eig, float(t)) for t in CURVE_T],
                             "dsmi_bits": [None if dsmi is None else dsmi_from_spectra(dsmi, float(t)) for t in CURVE_T],
                             "depth_dse": [np.array([dse_from_eigenvalues(e, float(t)) for e in depth]) for t in CURVE_T]})

    # ------------------------------------------------------------------------------- report
    report_title = "Diversity"

    def report_sections(self, other: "DiversityAnalysis | None" = None, max_points: int = 5000) -> list:
        """The page as data for :mod:`explorer.analyses.report`: score cards (of ``other`` too, studied
        with these settings), Vendi vs q, the spectrum, DSE vs t, subsamples, groups, depth, the
        projection (a seeded ``max_points`` of it) and the scores table."""
        from explorer.analyses import report as r

        sets = [self] if other is None else [self, other]
        parts = []
        for tag, a in zip("AB", sets):
            s, data = a.scores(), a._data()
            exact = "exact" if s["exact"] else f"approximate ({s['spectrum']}, est. error {s['estimated_error']:.1%})"
            parts += [r.Facts(f"Data{' ' + tag if other is not None else ''}: {data.name}",
                              {"rows": data.n, "dimensions": data.dim, "labels": "yes" if data.labels else "no",
                               "notes": "; ".join(data.notes) or "none"}),
                      r.Cards([(f"Vendi (q = {_q_text(s['q'])})", s["vendi"], exact),
                               ("RKE (Vendi q = 2)", s["rke"], f"{s['kernel']} kernel"),
                               (f"Rényi entropy (α = {_q_text(s['q'])})", s["renyi_bits"], "bits"),
                               ("Effective rank", s["effective_rank"], "of the kernel features"),
                               ("DSE", s["dse_bits"], f"bits, t = {s['t']:g}, σ = {s['dse_sigma']:.3g}"),
                               ("DSMI with groups", s["dsmi_bits"], "bits" if s["dsmi_bits"] is not None else "no labels"),
                               ("Samples", s["n"], f"{s['dim']} dimensions")])]
        colours = (r.TEAL, r.AMBER)
        vendi = [r.Line(a.vendi_curve()["q"], a.vendi_curve()["vendi"], tag, c) for tag, a, c in zip("AB", sets, colours)]
        spectrum = [r.Line(a.spectrum_frame()["index"], a.spectrum_frame()["eigenvalue"], tag, c)
                    for tag, a, c in zip("AB", sets, colours)]
        dse = [r.Line(a.dse_curve()["t"], a.dse_curve()["dse_bits"], tag, c) for tag, a, c in zip("AB", sets, colours)]
        sub = self.subsample_curve()
        parts += [r.Heading("Curves"),
                  r.Plot("Vendi vs order q", "q", "Vendi", vendi + [r.Rule(min(self.q, 20.0), colour=r.INK)], y_log=True),
                  r.Plot("Eigenvalues of K / n (log-log)", "rank", "λ", spectrum, x_log=True, y_log=True),
                  r.Plot("DSE (bits) vs diffusion time t", "t", "DSE (bits)", dse + [r.Rule(self.t, colour=r.INK)]),
                  r.Plot(f"Vendi_q of seeded subsamples of A (± sd; biased low), q = {_q_text(self.q)}", "sample size",
                         "Vendi", [r.Band(sub["size"], sub["mean"] - sub["sd"], sub["mean"] + sub["sd"]),
                                   r.Line(sub["size"], sub["mean"]), r.Points(sub["size"], sub["mean"])], x_log=True)]
        if self._data().labels is not None:
            groups = self.group_scores()
            parts.append(r.Plot("Vendi_q within each group of A", "group", "Vendi",
                                [r.Bars([str(g) for g in groups["group"]], groups["vendi"])]))
        if self.layers:
            depth = self.depth_profile()
            parts.append(r.Plot("Entropy of the representations across depth", "layer", "bits",
                                [r.Line(depth["layer"], depth["renyi_bits"], "log2 Vendi_q (Rényi entropy)"),
                                 r.Line(depth["layer"], depth["dse_bits"], "DSE_t", r.AMBER),
                                 r.Rule(self.layer, colour=r.INK, dash="dotted")]))
        points = self.projection(max_points)
        groups = sorted(points["group"].astype(str).unique())
        colour = {g: r.SERIES[i % len(r.SERIES)] for i, g in enumerate(groups)}
        shown = "" if len(points) == self._data().n else f" (a seeded {len(points):,} of {self._data().n:,} points)"
        parts.append(r.Plot(f"PCA of A, coloured by group{shown}", "pc1", "pc2",
                            [r.Points(points["pc1"], points["pc2"], colour=[colour[str(g)] for g in points["group"]],
                                      size=5, hover={"group": points["group"].astype(str).tolist(),
                                                     "text": points["text"].astype(str).str.slice(0, 120).tolist()})],
                            height=450))
        table = comparison_frame(self, other) if other is not None else self.scores_frame().T.reset_index().set_axis(
            ["measure", "value"], axis=1)
        parts.append(r.Table("Scores", table))
        return parts


def _q_text(q: float) -> str:
    return "∞" if math.isinf(q) else f"{q:g}"


def comparison_frame(first: DiversityAnalysis, second: DiversityAnalysis) -> pd.DataFrame:
    """Scores of two data sets under the same settings, one column each."""
    keys = ["n", "vendi", "rke", "renyi_bits", "effective_rank", "dse_bits", "dsmi_bits", "spectrum"]
    a, b = first.scores(), second.scores()
    return pd.DataFrame({"measure": keys, a["dataset"]: [a[k] for k in keys], b["dataset"] + " ": [b[k] for k in keys]})
