"""Speed shortcuts that lean on a library's internals check themselves once per process before first use.

A minor transformers or PyTorch release can rename a keyword, move a cache's layers or drop a private
operator that a shortcut relies on, and the shortcut then crashes a user's run or, worse, quietly
computes something else. So the first time a shortcut is asked for, its probe runs it against the
plain path on a tiny model of the family (one forward or one decode step on a few tokens). If the
numbers disagree beyond the exactness tests' tolerances, or the probe raises, the shortcut stays off
for the rest of the process, one warning line names it and the library versions, and the callers take
the plain path. ``CHATRLHF_SHORTCUTS=off`` turns every shortcut off without probing.

Probes run with their own random-number state (``fork_rng``) and in eval mode, so a run that probes
draws the same numbers as one that does not (bit-exact resume depends on it).
"""
from __future__ import annotations

import importlib.metadata
import os
import sys
from collections.abc import Callable
from dataclasses import dataclass

import torch
from torch import nn

from chatrlhf.utils.model.unwrap import base_model

SWITCH = "CHATRLHF_SHORTCUTS"
OFF_VALUES = frozenset({"off", "0", "false", "no"})
TOLERANCE = {"rtol": 1e-4, "atol": 1e-5}

Probe = Callable[[str | None], None]


@dataclass(frozen=True)
class _Shortcut:
    probe: Probe
    library: str


@dataclass(frozen=True)
class _Verdict:
    works: bool
    reason: str = ""


_SHORTCUTS: dict[str, _Shortcut] = {}
_verdicts: dict[tuple[str, str | None], _Verdict] = {}


def switched_off() -> bool:
    """True when the user turned every shortcut off (``CHATRLHF_SHORTCUTS=off``)."""
    return os.environ.get(SWITCH, "").strip().lower() in OFF_VALUES


def shortcut(name: str, library: str) -> Callable[[Probe], Probe]:
    """Register ``probe`` for the shortcut ``name``; it raises when the shortcut does not match the plain path."""

    def register(probe: Probe) -> Probe:
        _SHORTCUTS[name] = _Shortcut(probe, library)
        return probe

    return register


def family(model: nn.Module) -> str:
    """The model family a family-specific shortcut is probed for (the config's ``model_type``)."""
    return base_model(model).config.model_type


def fits(name: str, model_family: str | None = None) -> bool:
    """Whether shortcut ``name`` may run (for ``model_family`` where it is family-specific).

    Probes once per process; while its probe runs, the shortcut counts as fitting, so the probe can
    exercise it through the same entry points the callers use.
    """
    if switched_off():
        return False
    key = (name, model_family)
    if key not in _verdicts:
        _verdicts[key] = _Verdict(True, "probing")
        _verdicts[key] = _probe(name, model_family)
    return _verdicts[key].works


def _probe(name: str, model_family: str | None) -> _Verdict:
    entry = _SHORTCUTS[name]
    try:
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(0)
            entry.probe(model_family)
    except Exception as error:  # any failure means: do not trust the shortcut on these versions
        reason = f"{type(error).__name__}: {str(error).strip().splitlines()[0] if str(error).strip() else ''}"
        _warn(name, model_family, entry.library, reason)
        return _Verdict(False, reason)
    return _Verdict(True)


def _warn(name: str, model_family: str | None, library: str, reason: str) -> None:
    from chatrlhf.utils.device import is_main_process

    if not is_main_process():
        return
    versions = ", ".join(f"{lib} {_version(lib)}" for lib in dict.fromkeys((library, "torch")))
    target = f" for {model_family}" if model_family else ""
    print(f"warning: speed shortcut '{name}'{target} does not fit {versions} ({reason[:200]}); "
          f"continuing on the plain path", file=sys.stderr, flush=True)


def _version(library: str) -> str:
    try:
        return importlib.metadata.version(library)
    except importlib.metadata.PackageNotFoundError:
        return "(not installed)"


def report() -> dict[str, str]:
    """Each shortcut asked for in this process and whether it ran: ``on``, ``off: reason``, or switched off."""
    if switched_off():
        return {"all": f"off: {SWITCH}={os.environ[SWITCH]}"}
    return {f"{name}[{fam}]" if fam else name: "on" if verdict.works else f"off: {verdict.reason}"
            for (name, fam), verdict in sorted(_verdicts.items(), key=lambda item: (item[0][0], item[0][1] or ""))}


def assert_same(got: torch.Tensor, want: torch.Tensor) -> None:
    """The probes' comparison: the exactness tests' tolerances."""
    torch.testing.assert_close(got, want, **TOLERANCE)


def tiny_model(model_family: str | None) -> nn.Module:
    """A small causal LM of ``model_family`` in eval mode, built from config (nothing downloaded).

    Its shapes exercise what the shortcuts special-case: OPT's projected embeddings, LLaMA's grouped
    key/value heads and scaled rotary positions.
    """
    from transformers import LlamaConfig, LlamaForCausalLM, OPTConfig, OPTForCausalLM

    if model_family == "opt":
        config = OPTConfig(vocab_size=64, hidden_size=32, ffn_dim=64, num_hidden_layers=2, num_attention_heads=4,
                           max_position_embeddings=32, word_embed_proj_dim=16, dropout=0.0, pad_token_id=0)
        return OPTForCausalLM(config).eval()
    if model_family == "llama":
        config = LlamaConfig(vocab_size=64, hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                             num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=32, pad_token_id=0,
                             rope_scaling={"rope_type": "linear", "factor": 2.0})
        return LlamaForCausalLM(config).eval()
    raise ValueError(f"no probe model for the {model_family!r} family")


def left_padded_prompts() -> tuple[torch.Tensor, torch.Tensor]:
    """Three prompts of 5, 3 and 4 tokens, left-padded to 5: the layout rollouts prefill."""
    ids = torch.randint(2, 64, (3, 5))
    mask = torch.ones_like(ids)
    mask[1, :2] = 0
    mask[2, :1] = 0
    return ids.masked_fill(mask == 0, 0), mask
