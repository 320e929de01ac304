"""DeepSpeed's engine files loaded without running pickled code.

DeepSpeed writes its model and optimizer state with `torch.save` and reads it back
with `torch.load(weights_only=False)`, which would run any code a tampered file
carries. We swap in `torch.load(weights_only=True)`: PyTorch's restricted unpickler
builds tensors, containers and primitives, plus the three DeepSpeed value types
below that ZeRO's state refers to, and refuses every other global.
"""
from __future__ import annotations

import torch


def deepspeed_state_types() -> list:
    from deepspeed.runtime.fp16.loss_scaler import LossScaler
    from deepspeed.runtime.zero.config import ZeroStageEnum
    from deepspeed.utils.tensor_fragment import fragment_address

    return [ZeroStageEnum, LossScaler, fragment_address]


def load_without_code(path: str, map_location=None):
    """torch.load restricted to tensors, plain containers and DeepSpeed's state types."""
    with torch.serialization.safe_globals(deepspeed_state_types()):
        return torch.load(path, map_location=map_location, weights_only=True)


def use_restricted_loading(engine) -> None:
    """Make a DeepSpeed engine read its checkpoints with load_without_code."""
    from deepspeed.runtime.checkpoint_engine import TorchCheckpointEngine

    ce = engine.checkpoint_engine
    if type(ce) is not TorchCheckpointEngine:
        raise TypeError(f"expected DeepSpeed's TorchCheckpointEngine, got {type(ce).__name__}: "
                        "its loader would unpickle arbitrary code")
    ce.load = lambda path, map_location=None: load_without_code(path, map_location)
