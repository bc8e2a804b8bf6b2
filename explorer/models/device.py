"""Choosing the torch device: CUDA, then Apple's MPS, then the CPU."""

from __future__ import annotations

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
