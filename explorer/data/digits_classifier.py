"""A small torch network on scikit-learn's 8x8 digits, trained on first use and cached.

The 1,797 digits are split once (seeded): 500 rows train a 64-32-10 MLP (full-batch Adam, a
couple of seconds on a CPU); the other 1,297 rows are held out, and their outputs are what the
conformal page calibrates and tests on. The logits, labels and row indices are cached in the
user cache dir, so later loads read one small file.

The overconfident variant is the same network with its logits multiplied by 4 (temperature
1/4): identical predictions and accuracy, far too confident probabilities.
"""

from __future__ import annotations

import numpy as np
import torch

from explorer.data.classifier_outputs import ClassifierOutputs, cache_path, outputs_from_arrays
from explorer.progress import Progress

CACHE_FILE = "digits-mlp-v1.npz"
TRAIN_ROWS = 500
STEPS = 300
SEED = 0
OVERCONFIDENCE = 4.0


def _digits():
    from sklearn.datasets import load_digits

    digits = load_digits()
    return digits.images.astype(np.float32), digits.target.astype(np.int64)


def _train(features: torch.Tensor, labels: torch.Tensor, progress: Progress | None) -> torch.nn.Module:
    torch.manual_seed(SEED)
    network = torch.nn.Sequential(torch.nn.Linear(64, 32), torch.nn.ReLU(), torch.nn.Linear(32, 10))
    optimiser = torch.optim.Adam(network.parameters(), lr=0.01, weight_decay=1e-3)
    for step in range(STEPS):
        optimiser.zero_grad()
        loss = torch.nn.functional.cross_entropy(network(features), labels)
        loss.backward()
        optimiser.step()
        if progress is not None and step % 20 == 0:
            progress.update(step, STEPS, f"Training the digits network ({step}/{STEPS} steps)")
    return network.eval()


def _held_out_logits(progress: Progress | None) -> dict[str, np.ndarray]:
    """Train on the fixed training rows and return the held-out rows' logits, labels and indices."""
    images, targets = _digits()
    order = np.random.default_rng(SEED).permutation(len(targets))
    train, held_out = order[:TRAIN_ROWS], order[TRAIN_ROWS:]
    features = torch.from_numpy(images.reshape(len(images), -1) / 16.0)
    network = _train(features[train], torch.from_numpy(targets[train]), progress)
    with torch.no_grad():
        logits = network(features[held_out]).double().numpy()
    return {"logits": logits, "labels": targets[held_out], "rows": held_out}


def _cached_logits(progress: Progress | None) -> dict[str, np.ndarray]:
    path = cache_path(CACHE_FILE)
    if path.exists():
        try:
            with np.load(path, allow_pickle=False) as archive:
                return {key: archive[key] for key in ("logits", "labels", "rows")}
        except (OSError, ValueError, KeyError):
            path.unlink(missing_ok=True)  # a damaged cache is rebuilt
    arrays = _held_out_logits(progress)
    temporary = path.with_suffix(".tmp.npz")
    np.savez(temporary, **arrays)
    temporary.replace(path)
    return arrays


def load_digits_outputs(overconfident: bool = False, progress: Progress | None = None) -> ClassifierOutputs:
    """Held-out outputs of the digits network (trained and cached on first use)."""
    arrays = _cached_logits(progress)
    images, _ = _digits()
    scale = OVERCONFIDENCE if overconfident else 1.0
    name = "Digits MLP (overconfident: logits x 4)" if overconfident else "Digits MLP"
    outputs = outputs_from_arrays(arrays["logits"] * scale, arrays["labels"], kind="logits",
                                  class_names=[str(d) for d in range(10)], name=name,
                                  images=images[arrays["rows"]])
    description = (f"{outputs.num_rows} held-out handwritten digits (scikit-learn), a 64-32-10 MLP trained on "
                   f"{TRAIN_ROWS} others: accuracy {outputs.accuracy:.1%}, mean top probability "
                   f"{outputs.mean_confidence:.1%}.")
    if overconfident:
        description += " Same network with logits x 4: same predictions, miscalibrated probabilities."
    return ClassifierOutputs(outputs.probs, outputs.labels, outputs.class_names, name, description,
                             outputs.images, None)
