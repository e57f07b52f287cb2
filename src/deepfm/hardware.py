"""What the machine can run: bfloat16 matrix products on a CPU or GPU, and whether CUDA is there.

Read by option validation (``--precision bf16``, ``--device cuda``) and by the training
precision layer, so both state the same reason in the same words.
"""

from __future__ import annotations

import torch


def cuda_available() -> bool:
    return torch.cuda.is_available()


def bf16_supported(device: str | torch.device) -> bool:
    """Whether ``device`` runs bfloat16 matrix products natively (CPU: AVX512-BF16 or AMX)."""
    device = torch.device(device)
    if device.type == "cuda":
        return torch.cuda.is_available() and torch.cuda.is_bf16_supported()
    probes = ("_is_avx512_bf16_supported", "_is_amx_tile_supported")
    return any(bool(getattr(torch.cpu, name, lambda: False)()) for name in probes)


def bf16_problem(device: str | torch.device) -> str | None:
    """Why ``--precision bf16`` cannot run on ``device`` (one line), or ``None`` when it can."""
    if bf16_supported(device):
        return None
    what = (
        "this CPU has neither AVX512-BF16 nor AMX"
        if torch.device(device).type == "cpu"
        else "this GPU does not support bfloat16"
    )
    return f"--precision bf16: {what}; use --precision fp32 (or auto)"
