"""The torch device a stage runs on: ``auto`` picks CUDA when present; asking for CUDA without one is an error."""

from __future__ import annotations

import torch

DEVICES = ("auto", "cpu", "cuda")


def resolve_device(name: str | None = "auto") -> torch.device:
    """``"auto"``/None -> cuda if available else cpu; ``"cpu"``; ``"cuda"`` (ValueError when no GPU is visible)."""
    name = name or "auto"
    if name not in DEVICES:
        raise ValueError(f"device must be one of {'|'.join(DEVICES)}, got {name!r}")
    if name == "cuda" and not torch.cuda.is_available():
        raise ValueError("device=cuda but torch sees no CUDA device (use device=auto or cpu)")
    if name == "auto":
        name = "cuda" if torch.cuda.is_available() else "cpu"
    return torch.device(name)
