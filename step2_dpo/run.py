"""DPO's run: the policy (a causal LM), its reference, step 2's pairs and the preference loss, saved as a plain
causal LM."""
from __future__ import annotations

import argparse
from dataclasses import dataclass, field

from chatrlhf.training import cli_args
from chatrlhf.training.lora import apply_lora
from chatrlhf.training.metrics_log import print_rank0
from chatrlhf.training.model_card import ModelCard
from chatrlhf.training.preference_losses import LossConfig
from chatrlhf.training.reference_model import LiveReference
from chatrlhf.training.run_setup import require_output_dir
from chatrlhf.training.saving import save_hf_model
from chatrlhf.training.step_runner import ModelSettings, StepRun
from chatrlhf.training.validation import ConfigError, check_data_flags, check_length, check_model_path
from chatrlhf.utils.data.collators import PairCollator
from chatrlhf.utils.data.tokenized import StepData
from chatrlhf.utils.model.resolve import resolve_model

JOB_NAME = "step2_model"
STEP_NAME = "step 2 (DPO)"


@dataclass(frozen=True)
class ReferenceSettings:
    """Which reference DPO compares with, and how it runs."""

    path: str | None = None  # None: the model the policy starts from
    precompute: bool = False
    offload: bool = False


def check_reference_flags(loss: LossConfig, reference: ReferenceSettings, adapters_off: bool) -> None:
    """Flag combinations that would load a reference nobody uses, or offload one that does not exist."""
    if loss.reference_free:
        for flag, given in (("--precompute_ref_log_probs", reference.precompute),
                            ("--offload_reference_model", reference.offload),
                            ("--reference_model_name_or_path", reference.path is not None)):
            if given:
                raise ConfigError(f"{flag}: --loss_type {loss.loss_type} uses no reference model, so the flag "
                                  "would do nothing; drop it, or pick a loss with a reference (sigmoid, ipo, hinge, "
                                  "robust)")
    if reference.offload and adapters_off and not reference.precompute:
        raise ConfigError("--offload_reference_model: with --lora_dim and --only_optimize_lora the reference is the "
                          "policy with its adapters off, not a separate model, so there is nothing to offload; drop "
                          "the flag")


@dataclass
class DPORun(StepRun):
    card_tag = "dpo"
    card_metrics = {"reward_accuracy": "reward accuracy", "reward_margin": "reward margin",
                    "chosen_reward": "chosen reward", "rejected_reward": "rejected reward", "loss": "eval loss"}

    loss: LossConfig = field(default_factory=LossConfig)
    reference: ReferenceSettings = field(default_factory=ReferenceSettings)
    fp32_loss: bool = False
    # Built by ``build_model`` when the reference is scored every step; the task scores with it.
    live_reference: LiveReference | None = field(default=None, init=False, repr=False, compare=False)

    @classmethod
    def from_args(cls, args: argparse.Namespace) -> DPORun:
        check_model_path("--model_name_or_path", args.model_name_or_path)
        if args.reference_model_name_or_path is not None:
            check_model_path("--reference_model_name_or_path", args.reference_model_name_or_path)
        check_data_flags(tuple(args.data_path), (), args.data_split)
        if getattr(args, "margin_column", None) is not None:
            raise ConfigError("--margin_column feeds the reward model's --use_margin; DPO reads no pair margins, so "
                              "drop the flag")
        check_length(f"--max_seq_len {args.max_seq_len}", args.max_seq_len, args.model_name_or_path)
        loss = LossConfig(args.loss_type, args.beta, args.label_smoothing, args.simpo_gamma)
        reference = ReferenceSettings(args.reference_model_name_or_path, args.precompute_ref_log_probs,
                                      args.offload_reference_model)
        lora = cli_args.lora_settings(args)
        check_reference_flags(loss, reference, _adapters_off(lora.enabled and lora.only_optimize_lora, reference))
        output_dir = require_output_dir(args.output_dir, STEP_NAME, args.overwrite_output_dir,
                                    resume=bool(args.resume or args.resume_from))
        engine = cli_args.engine_settings(args, JOB_NAME)
        run = cls(
            step=2,
            data=cli_args.data_config(args),
            model=ModelSettings(args.model_name_or_path, args.dropout, args.add_eot_token, args.eot_token),
            engine=engine,
            optim=cli_args.optim_settings(args),
            lora=lora,
            loop=cli_args.loop_settings(args, output_dir),
            loss=loss,
            reference=reference,
            fp32_loss=args.compute_fp32_loss,
        )
        run.info = {"dpo": run.describe()}
        return run

    @property
    def adapters_off(self) -> bool:
        """The live reference is the LoRA policy with its adapters off (only the adapters train)."""
        return _adapters_off(self.lora.enabled and self.lora.only_optimize_lora, self.reference)

    @property
    def reference_kind(self) -> str:
        """none (reference-free loss), precomputed, adapters_off, or model (a frozen copy scored every step)."""
        if self.loss.reference_free:
            return "none"
        if self.reference.precompute:
            return "precomputed"
        return "adapters_off" if self.adapters_off else "model"

    def describe(self) -> dict:
        """The DPO settings a report shows beside the metrics."""
        return {"loss_type": self.loss.loss_type, "beta": self.loss.beta, "label_smoothing": self.loss.label_smoothing,
                "simpo_gamma": self.loss.simpo_gamma, "reference": self.reference_kind,
                "reference_model": self.reference.path or self.model.name_or_path}

    def _reference_path(self, path: str, tokenizer) -> str:
        """The reference's directory; a separate one must tokenise exactly as the policy does."""
        if self.reference.path is None:
            return path
        from chatrlhf.utils.data.fingerprint import tokenizer_fingerprint

        resolved = resolve_model(self.reference.path, self.data)
        if tokenizer_fingerprint(self.load_tokenizer(resolved)) != tokenizer_fingerprint(tokenizer):
            raise ConfigError(f"--reference_model_name_or_path {self.reference.path}: its tokenizer differs from "
                              f"--model_name_or_path {self.model.name_or_path}'s, so their log-probs of the same "
                              "tokens cannot be compared; give a reference trained from the same base model")
        return resolved

    def _load_reference(self, path: str, tokenizer):
        from chatrlhf.training.reference_model import load_reference

        return load_reference(self._reference_path(path, tokenizer), tokenizer, self.model_options(), self.engine,
                              self.reference.offload)

    def build_model(self, path: str, tokenizer):
        from chatrlhf.utils.model.loading import load_causal_lm

        print_rank0(f"DPO: --loss_type {self.loss.loss_type}, reference: {self.reference_kind}")
        model = load_causal_lm(path, tokenizer, self.model_options())
        if self.reference_kind == "model":
            self.live_reference = LiveReference(self._load_reference(path, tokenizer)[0])
        elif self.reference_kind == "adapters_off":
            self.live_reference = LiveReference(None)
        return apply_lora(model, self.lora) if self.lora.enabled else model

    def prepare_data(self, data: StepData, path: str, tokenizer) -> StepData:
        """With ``--precompute_ref_log_probs``: the reference's log-probs of every pair, from the cache or one pass."""
        if self.reference_kind != "precomputed":
            return data
        from chatrlhf.step2_dpo.reference import precomputed_reference

        reference, identity = self._load_reference(path, tokenizer)
        return precomputed_reference(data, reference, identity, self.collator(tokenizer),
                                     self.loop.per_device_eval_batch_size, fp32=self.fp32_loss)

    def collator(self, tokenizer) -> PairCollator:
        return PairCollator(tokenizer.pad_token_id)

    def task(self, hidden_states):
        from chatrlhf.step2_dpo.dpo_task import DPOTask

        return DPOTask(self.loss, self.live_reference, fp32=self.fp32_loss, hidden_states=hidden_states)

    def frozen_models(self) -> list:
        return [] if self.live_reference is None else self.live_reference.frozen_models()

    def card_method(self) -> str:
        reference = {"none": "no reference model", "precomputed": "reference log-probs computed once before training",
                     "adapters_off": "the policy with its LoRA adapters off as the reference",
                     "model": f"`{self.reference.path or self.model.name_or_path}` as the frozen reference"}
        return (f"Step 2, direct preference optimization: the `{self.loss.loss_type}` preference loss (beta "
                f"{self.loss.beta}) on chosen/rejected pairs, with {reference[self.reference_kind]}. The rewards "
                "below are the loss's implicit rewards of the held-out chosen and rejected answers.")

    def card_settings(self) -> dict[str, object]:
        return {"loss type": self.loss.loss_type, "beta": self.loss.beta,
                "label smoothing": self.loss.label_smoothing or None, "SimPO gamma": self.loss.simpo_gamma,
                "reference": self.reference_kind}

    def save(self, engine, tokenizer, data: StepData, card: ModelCard) -> None:
        save_hf_model(engine.module, tokenizer, self.loop.output_dir, zero_stage=self.engine.zero_stage, card=card,
                      adapter=self.lora.save_adapter)


def _adapters_off(only_lora_trains: bool, reference: ReferenceSettings) -> bool:
    return only_lora_trains and reference.path is None
