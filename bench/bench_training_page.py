"""The training page's diffusion-time move: DSE and DSMI (with the labels and with input clusters) of every
checkpoint of one layer at a new t, from the cached spectra with one batched call per class
(:func:`explorer.kernels.training.batched_dse`), against a loop of the one-spectrum kernels
(dse_from_eigenvalues, dsmi_from_spectra) over the same cached spectra, and against measuring the run
again from its activations at the new t (measure_run, what the page would do without cached spectra).
Side by side in one process.

    python bench/bench_training_page.py [--quick] [--device cuda]
"""

from __future__ import annotations

import argparse
import os
import time

import numpy as np
import torch

from explorer.analyses.training import TrainingAnalysis
from explorer.data.training_logs import RepresentationRun
from explorer.data.training_runs import DigitsTraining, load_digits_runs, measure_run
from explorer.kernels.diversity import dse_from_eigenvalues, dsmi_from_spectra
from explorer.kernels.training import batched_dse

LAYER = "hidden 2"
T_NEW = 2.0
REPEATS = 20


def _timed(function, repeats: int = 1):
    start = time.perf_counter()
    for _ in range(repeats):
        result = function()
    return result, (time.perf_counter() - start) / repeats


def _case(case, ours_s, baseline, baseline_s, error, note="") -> dict:
    return {"bench": "training_page", "case": case, "ours_s": ours_s, "baseline": baseline, "baseline_s": baseline_s,
            "ratio": baseline_s / ours_s, "error": error, "note": note}


def _batched(spectra, device: str) -> np.ndarray:
    """DSE, DSMI(labels), DSMI(inputs) of every checkpoint at ``T_NEW`` (rows), on ``device``."""
    move = lambda x: x.to(device)
    dsmi = lambda parts: sum(share * (batched_dse(move(random), T_NEW).mean(-1) - batched_dse(move(within), T_NEW))
                             for share, within, random in parts)
    found = torch.stack([batched_dse(move(spectra.diffusion), T_NEW), dsmi(spectra.labels), dsmi(spectra.inputs)])
    if device == "cuda":
        torch.cuda.synchronize()
    return found.cpu().numpy()


def _looped(diffusion: list, labels: list, inputs: list) -> np.ndarray:
    """The same from the one-spectrum kernels, one checkpoint (and class) at a time."""
    return np.array([[dse_from_eigenvalues(d, T_NEW) for d in diffusion],
                     [dsmi_from_spectra(parts, T_NEW) for parts in labels],
                     [dsmi_from_spectra(parts, T_NEW) for parts in inputs]])


def _per_checkpoint(parts, epochs: int) -> list:
    """Stacked DSMI spectra back to one list of (share, within, [random...]) per checkpoint."""
    return [[(share, within[e], list(random[e])) for share, within, random in parts] for e in range(epochs)]


def run(device: str = "cpu", quick: bool = False) -> list[dict]:
    if device == "cuda" and not torch.cuda.is_available():
        return []
    setup = DigitsTraining(epochs=4) if quick else DigitsTraining()
    full = load_digits_runs(setup)["true labels"]
    run_ = RepresentationRun(full.name, full.epochs, {LAYER: full.layers[LAYER]}, full.labels, full.inputs)
    analysis = TrainingAnalysis(runs={"true labels": run_}, layer=LAYER)
    analysis.compute()                                          # the cached spectra (not timed)
    spectra = analysis.spectra(run_, LAYER)
    epochs = len(spectra.epochs)
    diffusion = list(spectra.diffusion)
    labels, inputs = _per_checkpoint(spectra.labels, epochs), _per_checkpoint(spectra.inputs, epochs)
    _batched(spectra, device)                                   # warm-up (CUDA context, dispatch)
    ours, ours_s = _timed(lambda: _batched(spectra, device), REPEATS)
    loop, loop_s = _timed(lambda: _looped(diffusion, labels, inputs), 3)
    size = f"{epochs} checkpoints of {tuple(run_.layers[LAYER].shape[1:])}, {len(spectra.labels)} classes"
    cases = [_case(f"t move: DSE + 2 DSMI of every checkpoint, bundled digits {LAYER} ({size})", ours_s,
                   "dse_from_eigenvalues / dsmi_from_spectra loop", loop_s, float(np.abs(ours - loop).max()),
                   "same cached spectra")]
    measured, naive_s = _timed(lambda: measure_run(run_, sigma=analysis.sigma, t=T_NEW, clusters=analysis.clusters))
    naive = measured[["dse", "dsmi_labels", "dsmi_inputs"]].to_numpy().T
    cases.append(_case(f"t move: DSE + 2 DSMI of every checkpoint, bundled digits {LAYER} ({size})", ours_s,
                       "measure_run from the activations", naive_s, float(np.abs(ours - naive).max()),
                       "what a t move costs without cached spectra"))
    return cases


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true")
    parser.add_argument("--device", default="cpu")
    args = parser.parse_args()
    for case in run(args.device, args.quick):
        error = "-" if case["error"] is None else f"{case['error']:.1e}"
        print(f"{case['case']}: ours {case['ours_s'] * 1e3:.2f} ms | {case['baseline']} "
              f"{case['baseline_s'] * 1e3:.1f} ms | ratio {case['ratio']:.1f}x | max diff {error}"
              + (f" | {case['note']}" if case["note"] else ""))
    print(f"device={args.device}, torch threads={torch.get_num_threads()}, load average "
          f"{' '.join(f'{v:.2f}' for v in os.getloadavg())}")


if __name__ == "__main__":
    main()
