"""Choosing the torch device: CUDA, then Apple's MPS, then the CPU; running small CPU work on one thread."""

from __future__ import annotations

import contextlib

import torch

from explorer.errors import InputError


def available_devices() -> list[str]:
    """The devices this process can run kernels on, best first."""
    devices = []
    if torch.cuda.is_available():
        devices.append("cuda")
    mps = getattr(torch.backends, "mps", None)
    if mps is not None and mps.is_available():
        devices.append("mps")
    devices.append("cpu")
    return devices


def resolve_device(device: str | torch.device | None = None) -> torch.device:
    """``None`` or ``"auto"`` picks the best available device; anything else is checked."""
    if device is None or device == "auto":
        return torch.device(available_devices()[0])
    try:
        resolved = torch.device(device)
    except RuntimeError as err:
        raise InputError(f"Unknown device {device!r}: use one of {available_devices()}.") from err
    if resolved.type not in available_devices():
        raise InputError(
            f"Device {device!r} is not available here; available: {available_devices()}."
        )
    return resolved



@contextlib.contextmanager
def one_torch_thread():
    """Run torch on one intra-op thread inside this block, then restore the setting. OpenMP keeps it per
    thread, so a job thread's setting leaves the others alone. For many small matrices (a 500 x 500
    eigendecomposition, a 64 x 256 layer) a second thread only adds synchronisation, and on a loaded 2-core
    machine its spin-waiting made them 10-30x slower (measured: 16 s against 0.6 s per checkpoint of the
    training page's spectra; 40-80 ms against 2 ms per training step)."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(threads)
