"""Diversity study of one embedding set: Vendi of any order, RKE, Renyi, effective rank, DSE, DSMI,
their curves, per-group scores and a 2-D projection.

Expensive results (the kernel spectrum, the diffusion spectrum, DSMI, subsample and group scores)
are computed once per (data, settings) and cached; a change of ``q`` or ``t`` only re-reads them.
"""

from __future__ import annotations

import math

import numpy as np
import pandas as pd
import param
import torch

from explorer.data.embeddings import EmbeddingSet
from explorer.errors import InputError
from explorer.kernels.diversity import (
    KERNELS,
    Spectrum,
    diffusion_eigenvalues,
    diffusion_spectral_mutual_information,
    dse_from_eigenvalues,
    kernel_spectrum,
    median_bandwidth,
)
from explorer.progress import Progress

Q_VALUES = [0.0, 0.25, 0.5, 0.75, 1.0, 1.5, 2.0, 3.0, 5.0, 10.0, math.inf]
CURVE_Q = np.concatenate([np.linspace(0, 2, 21), np.linspace(2.5, 20, 36)])
CURVE_T = np.linspace(0.25, 10, 40)


class DiversityAnalysis(param.Parameterized):
    """Settings of one diversity study of ``dataset``; results are lazy and cached."""

    dataset = param.ClassSelector(class_=EmbeddingSet, allow_None=True, doc="The embeddings under study.")
    kernel = param.Selector(objects=list(KERNELS), default="cosine", doc="Similarity kernel for Vendi/RKE/Renyi.")
    sigma = param.Number(default=0.0, bounds=(0, None), softbounds=(0, 50), step=0.1,
                         label="RBF sigma (0 = median distance)")
    degree = param.Integer(default=3, bounds=(1, 6), label="Polynomial degree")
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
        self._cache: dict = {}

    # ------------------------------------------------------------------------------- helpers
    def _data(self) -> EmbeddingSet:
        if self.dataset is None:
            raise InputError("No data loaded: choose a bundled set or upload a file.")
        return self.dataset

    def _cached(self, name: str, keys: tuple, compute):
        key = (name, id(self.dataset)) + keys
        if key not in self._cache:
            self._cache[key] = compute()
        return self._cache[key]

    def _kernel_keys(self) -> tuple:
        return (self.kernel, self.sigma, self.degree, self.method, self.approx_above, self.landmarks, self.seed)

    def _dse_rows(self) -> torch.Tensor:
        """All rows, or a seeded subsample of ``approx_above`` rows when n is larger (DSE is O(n^3))."""
        data = self._data()
        if data.n <= self.approx_above:
            return torch.arange(data.n)
        return torch.randperm(data.n, generator=torch.Generator().manual_seed(self.seed))[:self.approx_above]

    @property
    def rbf_sigma(self) -> float | None:
        """The RBF bandwidth in use (median heuristic when ``sigma`` is 0)."""
        if self.kernel != "rbf":
            return None
        return self.sigma or self._cached("median", (), lambda: median_bandwidth(self._data().X))

    @property
    def diffusion_sigma(self) -> float:
        return self.dse_sigma or self._cached("median", (), lambda: median_bandwidth(self._data().X))

    def _kernel_function(self):
        if self.kernel != "polynomial":
            return self.kernel
        from explorer.kernels.diversity import pairwise_kernel

        degree = self.degree
        return lambda A, B: pairwise_kernel(A, B, "polynomial", degree=degree)

    # ------------------------------------------------------------------------------- spectra
    def spectrum(self, progress: Progress | None = None) -> Spectrum:
        """The kernel spectrum for the current kernel settings (cached)."""
        def compute():
            if progress is not None:
                progress.update(0, 1, f"Eigenvalues of the {self.kernel} kernel (n = {self._data().n})")
            return kernel_spectrum(self._data().X, kernel=self._kernel_function(), sigma=self.rbf_sigma,
                                   method=self.method, landmarks=self.landmarks, approx_above=self.approx_above,
                                   seed=self.seed)
        return self._cached("spectrum", self._kernel_keys(), compute)

    def diffusion_spectrum(self, progress: Progress | None = None) -> torch.Tensor:
        """Eigenvalues of the diffusion matrix at ``diffusion_sigma`` (cached)."""
        def compute():
            if progress is not None:
                progress.update(0, 1, "Eigenvalues of the diffusion matrix")
            return diffusion_eigenvalues(self._data().X[self._dse_rows()].double(), self.diffusion_sigma)
        return self._cached("diffusion", (self.dse_sigma, self.approx_above, self.seed), compute)

    def dsmi(self, progress: Progress | None = None) -> float | None:
        """DSMI with the labels in bits (None without labels); cached per (sigma, t)."""
        data = self._data()
        if data.labels is None:
            return None
        def compute():
            if progress is not None:
                progress.update(0, 1, "Diffusion spectral mutual information with the labels")
            rows = self._dse_rows()
            return diffusion_spectral_mutual_information(data.X[rows].double(), [data.labels[i] for i in rows],
                                                         self.diffusion_sigma, self.t, seed=self.seed)
        return self._cached("dsmi", (self.dse_sigma, self.t, self.approx_above, self.seed), compute)

    def compute(self, progress: Progress | None = None) -> "DiversityAnalysis":
        """Everything expensive, for a background job; later reads are cache hits."""
        steps = [self.spectrum, self.diffusion_spectrum, self.dsmi, self.subsample_curve, self.group_scores]
        for done, step in enumerate(steps):
            if progress is not None:
                progress.update(done, len(steps))
            step(progress)
        return self

    # ------------------------------------------------------------------------------- scores
    def scores(self) -> dict:
        """The score cards: Vendi_q, RKE, Renyi_q (bits), effective rank, DSE_t, DSMI, n, exactness."""
        spec, data = self.spectrum(), self._data()
        return {
            "dataset": data.name, "n": data.n, "dim": data.dim, "kernel": self.kernel, "q": self.q, "t": self.t,
            "vendi": spec.vendi(self.q), "rke": spec.rke(), "renyi_bits": spec.renyi_bits(self.q),
            "effective_rank": spec.effective_rank(),
            "dse_bits": dse_from_eigenvalues(self.diffusion_spectrum(), self.t), "dsmi_bits": self.dsmi(),
            "spectrum": spec.method, "exact": spec.exact, "estimated_error": spec.error,
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

    def _subsample_spectra(self, progress: Progress | None = None) -> list[list[Spectrum]]:
        """Spectra of 5 seeded random subsets per size in :meth:`subsample_sizes` (cached; any q reads them)."""
        def compute():
            data, gen, spectra = self._data(), torch.Generator().manual_seed(self.seed), []
            for done, size in enumerate(self.subsample_sizes()):
                if progress is not None:
                    progress.update(done, len(self.subsample_sizes()), f"Vendi of seeded subsamples of {size}")
                spectra.append([kernel_spectrum(data.X[torch.randperm(data.n, generator=gen)[:size]].double(),
                                                kernel=self._kernel_function(), sigma=self.rbf_sigma, method="exact")
                                for _ in range(5)])
            return spectra
        return self._cached("subsample", self._kernel_keys(), compute)

    def subsample_curve(self, progress: Progress | None = None) -> pd.DataFrame:
        """Vendi_q of seeded random subsets (mean, sd over 5 draws): biased low versus the full set."""
        scores = np.array([[spec.vendi(self.q) for spec in row] for row in self._subsample_spectra(progress)])
        return pd.DataFrame({"size": self.subsample_sizes(), "mean": scores.mean(1), "sd": scores.std(1)})

    def _group_spectra(self, progress: Progress | None = None) -> dict:
        data = self._data()
        def compute():
            if progress is not None:
                progress.update(0, 1, "Spectra within each group")
            labels = np.asarray(data.labels)
            groups = sorted(set(data.labels), key=str)
            return {group: kernel_spectrum(data.X[torch.from_numpy(np.flatnonzero(labels == group))].double(),
                                           kernel=self._kernel_function(), sigma=self.rbf_sigma, method=self.method,
                                           landmarks=self.landmarks, approx_above=self.approx_above)
                    for group in groups}
        return {} if data.labels is None else self._cached("groups", self._kernel_keys(), compute)

    def group_scores(self, progress: Progress | None = None) -> pd.DataFrame:
        """Vendi_q within each label (exact when the group has at most ``approx_above`` rows)."""
        spectra = self._group_spectra(progress)
        return pd.DataFrame({"group": list(spectra), "n": [spec.n for spec in spectra.values()],
                             "vendi": [spec.vendi(self.q) for spec in spectra.values()]})

    def projection(self, max_points: int = 20000) -> pd.DataFrame:
        """First two principal components, with group and text for hover."""
        data = self._data()
        def compute():
            X = data.X.double()
            X = X - X.mean(0)
            _, _, V = torch.pca_lowrank(X, q=min(2, X.shape[1]), center=False, niter=4)
            xy = (X @ V).numpy()
            if xy.shape[1] == 1:
                xy = np.column_stack([xy, np.zeros(len(xy))])
            frame = pd.DataFrame({"pc1": xy[:, 0], "pc2": xy[:, 1],
                                  "group": data.labels if data.labels is not None else ["all"] * data.n,
                                  "text": data.texts if data.texts is not None else [f"row {i}" for i in range(data.n)]})
            return frame.sample(max_points, random_state=0) if len(frame) > max_points else frame
        return self._cached("projection", (), compute)


def comparison_frame(first: DiversityAnalysis, second: DiversityAnalysis) -> pd.DataFrame:
    """Scores of two data sets under the same settings, one column each."""
    keys = ["n", "vendi", "rke", "renyi_bits", "effective_rank", "dse_bits", "dsmi_bits", "spectrum"]
    a, b = first.scores(), second.scores()
    return pd.DataFrame({"measure": keys, a["dataset"]: [a[k] for k in keys], b["dataset"] + " ": [b[k] for k in keys]})
