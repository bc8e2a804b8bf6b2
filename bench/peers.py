"""Adapters to the peer packages that the tests and benchmarks compare our kernels with (not part of
the installed package).

The peers (MAPIE, vendi_score, dse-dsmi) are optional: test and bench dependencies only, imported
inside each function."""

from __future__ import annotations

import numpy as np


def stored_classifier(probs: np.ndarray):
    """A prefit scikit-learn classifier whose "features" are row indices into stored probabilities,
    so MAPIE can calibrate on outputs computed elsewhere."""
    from sklearn.base import BaseEstimator, ClassifierMixin

    class StoredOutputs(ClassifierMixin, BaseEstimator):
        def __init__(self, table=None):
            self.table = table

        def fit(self, X, y):
            return self

        def __sklearn_is_fitted__(self):
            return True

        @property
        def classes_(self):
            return np.arange(self.table.shape[1])

        def predict_proba(self, X):
            return self.table[np.asarray(X).ravel().astype(int)]

        def predict(self, X):
            return self.predict_proba(X).argmax(1)

    return StoredOutputs(probs)


def mapie_split_sets(probs: np.ndarray, labels: np.ndarray, n_cal: int, alpha: float, score: str,
                     include_last_label=True, seed: int = 0) -> tuple[np.ndarray, float]:
    """MAPIE 1.x ``SplitConformalClassifier`` (prefit) calibrated on the first ``n_cal`` rows: the
    prediction sets of the other rows (boolean, rows x classes) and its threshold."""
    from mapie.classification import SplitConformalClassifier

    rows = np.arange(len(labels)).reshape(-1, 1)
    mapie = SplitConformalClassifier(stored_classifier(probs), confidence_level=1 - alpha,
                                     conformity_score=score, prefit=True, random_state=seed)
    mapie.conformalize(rows[:n_cal], labels[:n_cal])
    _, sets = mapie.predict_set(rows[n_cal:], conformity_score_params={"include_last_label": include_last_label})
    return sets[:, :, 0], float(mapie._mapie_classifier.conformity_score_function_.quantiles_[0])
