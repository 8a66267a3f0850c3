"""The CPU speed layer: exact shortcuts for small fp32 models on a CPU, kept apart from the plain model code.

Who uses it: step 3's ``CpuFastForward`` backend (``step3_rlhf/forward_backend.py`` and the packed rows of
``step3_rlhf/packed_answers.py``), generation for chat and compare (``utils/model/generation.py``), and the
training loop's report of which shortcuts ran. Nothing else imports it (``tests/test_layering.py``), so the
plain path in ``utils/model`` reads as ordinary transformers code.

- ``shortcuts``: each shortcut's probe against the plain path, run once per process and family.
- ``packed_rows``: rows laid end to end with attention kept inside each row.
- ``packed_linear``: oneDNN-packed weights for the linear layers.
- ``last_layer``: the final decoder layer computed only where its outputs are read.
- ``kv_cache``: a decode cache preallocated for the whole rollout.
- ``fast_decode``: one decode step as a flat loop.
"""
from __future__ import annotations

from torch import nn

from chatrlhf.utils.model.cpu_fast import fast_decode, kv_cache, last_layer, packed_linear, packed_rows, shortcuts
from chatrlhf.utils.model.unwrap import base_model


def check(model: nn.Module) -> dict[str, bool]:
    """Decide now, once, which speed paths fit ``model`` on these library versions (each probe runs the first
    time its shortcut and family are asked for, then is remembered); the answers by path."""
    model_family = shortcuts.family(model)
    return {
        "packed_rows": packed_rows.packing_supported(model),
        "onednn": packed_linear.packing_supported(model),
        "last_layer": last_layer.trimmable(model),
        "kv_cache": kv_cache.preallocation_fits(model),
        "flat_decoder": (type(base_model(model)).__name__ in fast_decode.FAMILIES
                         and shortcuts.fits("flat_decoder", model_family)),
    }
