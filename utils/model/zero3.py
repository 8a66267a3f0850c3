"""What ZeRO-3 partitioning asks of code that runs a model outside DeepSpeed's training step."""
from __future__ import annotations

from torch import nn

from chatrlhf.utils import device


def zero3_partitioned(model: nn.Module) -> bool:
    """True when DeepSpeed ZeRO-3 holds ``model``'s parameters in partitions, gathered per module call."""
    return any(hasattr(param, "ds_id") for param in model.parameters())


def lockstep_needed(*models: nn.Module | None) -> bool:
    """True when every rank must make the same forward calls on these models in the same order.

    Under ZeRO-3 each module call gathers that module's parameters with a collective, so a rank that
    stops generating early, or cuts its rows into more length groups than another, leaves its peers
    waiting in a collective that never matches (a hang or a gloo size mismatch).
    """
    return device.world_size() > 1 and any(m is not None and zero3_partitioned(m) for m in models)
