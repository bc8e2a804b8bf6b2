"""Pure torch kernels: tensors in, tensors out, on the input's device. No Panel, no I/O.

    from explorer.kernels import token_entropy, vendi_score, semantic_entropy_discrete, auroc

Each function's docstring gives its formula and its source (../shared/reference/formulas.md). The
modules: ``entropy`` (token measures, temperature sweeps), ``decoding`` (decoding rules),
``attention`` / ``attention_rows`` (attention entropy), ``divergence`` (KL, logit lens, entropy
regions), ``uncertainty`` (sequence-level measures, TSU), ``evaluation`` (ROC, PRR, AURC, ECE,
bootstrap), ``adaptive`` (adaptive sampling), ``diversity`` (Vendi, DSE, DSMI), ``conformal``
(split-conformal sets), ``training`` (entropy law, information plane, data-size power law),
``genetic`` (GAAP operators).
"""

from explorer.kernels.adaptive import adaptive_stop
from explorer.kernels.attention import attention_entropy
from explorer.kernels.conformal import calibrate, conformal_threshold, prediction_sets, rank_scores
from explorer.kernels.decoding import RULES, make_rule
from explorer.kernels.divergence import cross_entropy, entropy_quadrants, kl_divergence
from explorer.kernels.diversity import (diffusion_spectral_entropy, diffusion_spectral_mutual_information,
                                        kernel_spectrum, vendi_score)
from explorer.kernels.entropy import (entropy_sweep, log_probs, surprisal, token_entropy, token_rank, token_statistics,
                                      token_statistics_sweep, varentropy)
from explorer.kernels.evaluation import (aurc, auroc, bootstrap_ci, brier_score, expected_calibration_error, prr,
                                         risk_coverage, roc_curve)
from explorer.kernels.training import ensemble_uncertainty, fit_entropy_law, fit_power_law
from explorer.kernels.uncertainty import (eigv, inv_entropy, kernel_language_entropy, semantic_clusters,
                                          semantic_entropy_discrete, semantic_entropy_weighted, tsu)

__all__ = [
    "RULES", "adaptive_stop", "attention_entropy", "aurc", "auroc", "bootstrap_ci", "brier_score", "calibrate",
    "conformal_threshold", "cross_entropy", "diffusion_spectral_entropy", "diffusion_spectral_mutual_information",
    "eigv", "ensemble_uncertainty", "entropy_quadrants", "entropy_sweep", "expected_calibration_error",
    "fit_entropy_law", "fit_power_law", "inv_entropy", "kernel_language_entropy", "kernel_spectrum", "kl_divergence",
    "log_probs", "make_rule", "prediction_sets", "prr", "rank_scores", "risk_coverage", "roc_curve",
    "semantic_clusters", "semantic_entropy_discrete", "semantic_entropy_weighted", "surprisal", "token_entropy",
    "token_rank", "token_statistics", "token_statistics_sweep", "tsu", "varentropy", "vendi_score",
]
