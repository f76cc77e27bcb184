"""Which device a model may be loaded on: one check, used by `load_model`, `Pipeline` and the server."""

from __future__ import annotations

import argparse

import torch


class DeviceError(ValueError, argparse.ArgumentTypeError):
    """A device this machine cannot load a model on. A ValueError (the CLI prints it as one line) and an
    ArgumentTypeError, so `check_device` can be an argparse `type=` and argparse shows its message."""


_DEVICE_FORMS = "cpu, cuda, cuda:N (N: the GPU's index), mps or xpu"


def check_device(device: str | torch.device | None) -> torch.device:
    """The device to load on, refused with one line if this machine cannot use it: an unknown name ('gpu'),
    or a kind or index it does not have (cuda without a CUDA GPU, cuda:3 with one GPU, mps where absent).
    None is the CPU. Called before anything is read, by `load_model`, `Pipeline` and the server."""
    if device is None:
        return torch.device("cpu")
    name = device.strip().lower() if isinstance(device, str) else str(device)
    try:
        dev = torch.device(name)
    except (RuntimeError, ValueError, TypeError):
        dev = None
    if dev is None or dev.type not in ("cpu", "cuda", "mps", "xpu"):
        raise DeviceError(f"device {name!r} is not a device: use {_DEVICE_FORMS}")
    if dev.type == "cpu":
        return dev
    if dev.type == "mps":
        if not torch.backends.mps.is_available():
            raise DeviceError(f"device {name!r}: this machine has no MPS (Apple GPU) device; use cpu")
        if dev.index not in (None, 0):
            raise DeviceError(f"device {name!r}: there is one MPS device, mps (or mps:0)")
        return dev
    backend = getattr(torch, dev.type, None)  # torch.cuda, torch.xpu
    count = backend.device_count() if backend is not None and backend.is_available() else 0
    kind = dev.type.upper()
    if count == 0:
        raise DeviceError(f"device {name!r}: this machine has no {kind} device (torch {torch.__version__}); "
                          "use cpu")
    if dev.index is not None and dev.index >= count:
        have = ", ".join(f"{dev.type}:{i}" for i in range(count))
        raise DeviceError(f"device {name!r}: this machine has {count} {kind} device{'s' if count > 1 else ''} "
                          f"({have}); use one of those")
    return dev
