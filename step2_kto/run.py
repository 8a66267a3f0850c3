"""KTO's run: the policy (a causal LM), a frozen reference, step 2's share of the data as labelled completions and
KTO's loss, saved as a plain causal LM."""
from __future__ import annotations

import argparse
from dataclasses import dataclass, field

from chatrlhf.step2_kto.kto_loss import KTOConfig
from chatrlhf.training import cli_args
from chatrlhf.training.lora import apply_lora
from chatrlhf.training.metrics_log import print_rank0
from chatrlhf.training.model_card import ModelCard
from chatrlhf.training.reference_model import LiveReference
from chatrlhf.training.run_setup import require_output_dir
from chatrlhf.training.saving import save_hf_model
from chatrlhf.training.step_runner import ModelSettings, StepRun
from chatrlhf.training.validation import ConfigError, check_data_flags, check_length, check_model_path
from chatrlhf.utils.data.collators import UnpairedCollator
from chatrlhf.utils.data.tokenized import StepData, build_step_data

JOB_NAME = "step2_model"
STEP_NAME = "step 2 (KTO)"


def check_kto_flags(config: KTOConfig, micro_batch_size: int, offload_reference: bool, adapters_off: bool) -> None:
    """Flag combinations under which KTO's reference point or the reference model would be meaningless."""
    if config.estimates_kl and micro_batch_size < 2:
        raise ConfigError(f"--per_device_train_batch_size {micro_batch_size}: --loss_type kto estimates its "
                          "reference point from each row's prompt with another row's completion, so a batch needs "
                          "at least 2 rows; raise it, or pass --loss_type apo_zero_unpaired")
    if offload_reference and adapters_off:
        raise ConfigError("--offload_reference_model: with --lora_dim and --only_optimize_lora the reference is the "
                          "policy with its adapters off, not a separate model, so there is nothing to offload; drop "
                          "the flag")


@dataclass
class KTORun(StepRun):
    card_tag = "kto"
    card_metrics = {"desirable_reward": "desirable reward", "undesirable_reward": "undesirable reward",
                    "reward_margin": "reward margin", "reward_accuracy": "pair reward accuracy", "kl": "KL estimate",
                    "loss": "eval loss"}

    loss: KTOConfig = field(default_factory=KTOConfig)
    offload_reference: bool = False
    fp32_loss: bool = False
    # Built by ``build_model``; the task scores the reference with it.
    live_reference: LiveReference | None = field(default=None, init=False, repr=False, compare=False)

    @classmethod
    def from_args(cls, args: argparse.Namespace) -> KTORun:
        check_model_path("--model_name_or_path", args.model_name_or_path)
        check_data_flags(tuple(args.data_path), (), args.data_split)
        if getattr(args, "margin_column", None) is not None:
            raise ConfigError("--margin_column feeds the reward model's --use_margin; KTO reads no pair margins, so "
                              "drop the flag")
        check_length(f"--max_seq_len {args.max_seq_len}", args.max_seq_len, args.model_name_or_path)
        loss = KTOConfig(args.loss_type, args.beta, args.desirable_weight, args.undesirable_weight)
        lora = cli_args.lora_settings(args)
        check_kto_flags(loss, args.per_device_train_batch_size, args.offload_reference_model,
                        lora.enabled and lora.only_optimize_lora)
        output_dir = require_output_dir(args.output_dir, STEP_NAME, args.overwrite_output_dir,
                                        resume=bool(args.resume or args.resume_from))
        run = cls(
            step=2,
            data=cli_args.data_config(args),
            model=ModelSettings(args.model_name_or_path, args.dropout, args.add_eot_token, args.eot_token),
            engine=cli_args.engine_settings(args, JOB_NAME),
            optim=cli_args.optim_settings(args),
            lora=lora,
            loop=cli_args.loop_settings(args, output_dir),
            loss=loss,
            offload_reference=args.offload_reference_model,
            fp32_loss=args.compute_fp32_loss,
        )
        run.info = {"kto": run.describe()}
        return run

    @property
    def reference_kind(self) -> str:
        """adapters_off (only the LoRA adapters train) or model (a frozen copy of the start, scored every step)."""
        return "adapters_off" if self.lora.enabled and self.lora.only_optimize_lora else "model"

    def describe(self) -> dict:
        """The KTO settings a report shows beside the metrics."""
        return {"loss_type": self.loss.loss_type, "beta": self.loss.beta,
                "desirable_weight": self.loss.desirable_weight, "undesirable_weight": self.loss.undesirable_weight,
                "reference": self.reference_kind, "reference_model": self.model.name_or_path}

    def build_data(self, tokenizer) -> StepData:
        """Step 2's share as labelled completions: pairs unpaired, unpaired rows as they are."""
        data = build_step_data(self.data, self.step, tokenizer, unpaired=True)
        labels = data.train["label"]
        print_rank0(f"KTO data: {sum(labels)} desirable / {len(labels) - sum(labels)} undesirable training "
                    "completions")
        return data

    def build_model(self, path: str, tokenizer):
        from chatrlhf.training.reference_model import load_reference
        from chatrlhf.utils.model.loading import load_causal_lm

        print_rank0(f"KTO: --loss_type {self.loss.loss_type}, reference: {self.reference_kind}")
        model = load_causal_lm(path, tokenizer, self.model_options())
        if self.reference_kind == "model":
            reference, _ = load_reference(path, tokenizer, self.model_options(), self.engine, self.offload_reference)
            self.live_reference = LiveReference(reference)
        else:
            self.live_reference = LiveReference(None)
        return apply_lora(model, self.lora) if self.lora.enabled else model

    def collator(self, tokenizer) -> UnpairedCollator:
        return UnpairedCollator(tokenizer.pad_token_id, self.data.max_seq_len, kl=self.loss.estimates_kl)

    def task(self, hidden_states):
        from chatrlhf.step2_kto.kto_task import KTOTask

        return KTOTask(self.loss, self.live_reference, fp32=self.fp32_loss, hidden_states=hidden_states)

    def frozen_models(self) -> list:
        return [] if self.live_reference is None else self.live_reference.frozen_models()

    def card_method(self) -> str:
        reference = ("the policy with its LoRA adapters off" if self.reference_kind == "adapters_off"
                     else f"`{self.model.name_or_path}`")
        point = ("against a reference point estimated from mismatched prompt/completion pairs of each batch"
                 if self.loss.estimates_kl else "without a reference point (APO-zero, unpaired)")
        return (f"Step 2, Kahneman-Tversky optimization: the `{self.loss.loss_type}` loss (beta {self.loss.beta}) "
                f"on completions labelled desirable or undesirable, {point}, with {reference} as the frozen "
                "reference. The rewards below are the implicit rewards of the held-out completions; pair reward "
                "accuracy counts the held-out pairs whose two answers were unpaired.")

    def card_settings(self) -> dict[str, object]:
        return {"loss type": self.loss.loss_type, "beta": self.loss.beta,
                "desirable weight": self.loss.desirable_weight, "undesirable weight": self.loss.undesirable_weight,
                "reference": self.reference_kind}

    def save(self, engine, tokenizer, data: StepData, card: ModelCard) -> None:
        save_hf_model(engine.module, tokenizer, self.loop.output_dir, zero_stage=self.engine.zero_stage, card=card,
                      adapter=self.lora.save_adapter)
