"""The frozen reference a preference step compares its policy with: a copy of a model scored every step, or the LoRA
policy with its adapters off. Shared by DPO and KTO (steps never import each other)."""
from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass

from torch import nn

from chatrlhf.training.config import EngineSettings
from chatrlhf.training.engine import init_eval_engine
from chatrlhf.utils import device
from chatrlhf.utils.data.fingerprint import weights_fingerprint


@contextmanager
def adapters_off(policy: nn.Module) -> Iterator[nn.Module]:
    """The LoRA policy with its adapters off and dropout off: the model it started from (``--only_optimize_lora``)."""
    was_training = policy.training
    policy.eval()
    try:
        with policy.disable_adapter():
            yield policy
    finally:
        policy.train(was_training)


@dataclass
class LiveReference:
    """The reference scored every step: a frozen model, or (``model`` None) the policy with its adapters off."""

    model: nn.Module | None = None

    def frozen_models(self) -> list[nn.Module]:
        """The separate model this reference runs, if any: ``--packing`` checks its forward too."""
        return [] if self.model is None else [self.model]

    @contextmanager
    def scoring(self, policy: nn.Module) -> Iterator[nn.Module]:
        if self.model is not None:
            yield self.model
            return
        with adapters_off(policy) as reference:
            yield reference


def load_reference(path: str, tokenizer, options, engine: EngineSettings, offload: bool) -> tuple[nn.Module, str]:
    """The frozen reference and the hash of its weights.

    Under ZeRO-3 it is sharded like the policy; ``offload`` (``--offload_reference_model``) keeps its
    parameters on the CPU through ZeRO-3 parameter offload, whatever the policy's stage. Otherwise it is a plain
    module on the device.
    """
    from chatrlhf.utils.model.loading import load_causal_lm

    model = load_causal_lm(path, tokenizer, options)
    identity = weights_fingerprint(model)
    if engine.zero_stage == 3 or offload:
        settings = EngineSettings(zero_stage=3, offload=offload, dtype=engine.dtype,
                                  micro_batch_size=engine.micro_batch_size)
        return init_eval_engine(model, settings).module, identity
    model.requires_grad_(False)
    return model.to(device.local_device()).eval(), identity
