"""``--packing`` for steps 1 and 2: which padding-free forward a run uses, chosen once when its engine is built.

On CPU, for the families the speed layer serves, rows attend one by one (``cpu_fast.packed_rows``); elsewhere
(GPUs, ZeRO-3 across ranks, other families) transformers' own packed-sequence attention does it. Either is
checked on the run's own model against the padded forward before the first step; a model whose attention would
leak across rows keeps the padded forward, with one warning, rather than train on wrong numbers.
"""
from __future__ import annotations

from dataclasses import dataclass

from torch import nn

from chatrlhf.training.metrics_log import print_rank0
from chatrlhf.utils.model.cpu_fast import packed_rows
from chatrlhf.utils.model.packing import HiddenStates, packed_hidden, packing_mismatch
from chatrlhf.utils.model.unwrap import base_model

TOLERANCE = 1e-4
"""Largest relative difference from the padded forward that still counts as the same numbers (fp32 rounding of
differently shaped products is about 1e-6; a leak across rows is of order 1)."""


@dataclass(frozen=True)
class PackedForward:
    """The chosen forward, and its name for the log and ``metrics.json`` (None: padded batches)."""

    hidden_states: HiddenStates | None
    name: str


PADDED = PackedForward(None, "padded")


def choose_packed_forward(models: list[nn.Module], packing: bool) -> PackedForward:
    """The forward every model of the run (the trained one first, then frozen ones such as DPO's reference)
    takes under ``--packing``; the padded one without it, or when packing would change the numbers."""
    if not packing:
        return PADDED
    on_cpu = all(next(m.parameters()).device.type == "cpu" for m in models)
    if on_cpu and all(packed_rows.packing_supported(m) for m in models):
        chosen = PackedForward(packed_rows.span_packed_hidden, "packed rows, attention row by row (CPU)")
    else:
        chosen = PackedForward(packed_hidden, "packed rows, transformers' packed-sequence attention")
    for model in models:
        config = base_model(model).config
        mismatch = packing_mismatch(model, chosen.hidden_states, config.vocab_size)
        if not mismatch <= TOLERANCE:
            print_rank0(f"warning: --packing: the packed forward of this {config.model_type} model differs from the "
                        f"padded one by {mismatch:.2g} (attention reaches across packed rows in this transformers "
                        "release); training on padded batches instead")
            return PADDED
    print_rank0(f"--packing: {chosen.name}")
    return chosen
