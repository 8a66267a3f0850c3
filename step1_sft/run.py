"""Step 1's run: a causal LM, the SFT collator and loss, saved as a Hugging Face directory."""
from __future__ import annotations

import argparse
from dataclasses import dataclass

from chatrlhf.training import cli_args
from chatrlhf.training.lora import apply_lora
from chatrlhf.training.model_card import ModelCard
from chatrlhf.training.run_setup import require_output_dir
from chatrlhf.training.saving import save_hf_model
from chatrlhf.training.step_runner import ModelSettings, StepRun
from chatrlhf.training.validation import check_data_flags, check_length, check_model_path
from chatrlhf.utils.data.collators import SFTCollator
from chatrlhf.utils.data.tokenized import StepData


@dataclass
class SFTRun(StepRun):
    card_tag = "sft"
    card_metrics = {"loss": "eval loss", "perplexity": "eval perplexity"}

    train_on_prompt: bool = False

    @classmethod
    def from_args(cls, args: argparse.Namespace) -> SFTRun:
        check_model_path("--model_name_or_path", args.model_name_or_path)
        check_data_flags(tuple(args.data_path), tuple(args.sft_only_data_path), args.data_split)
        check_length(f"--max_seq_len {args.max_seq_len}", args.max_seq_len, args.model_name_or_path)
        lora = cli_args.lora_settings(args)
        output_dir = require_output_dir(args.output_dir, "step 1", args.overwrite_output_dir,
                                    resume=bool(args.resume or args.resume_from))
        return cls(
            step=1,
            data=cli_args.data_config(args),
            model=ModelSettings(args.model_name_or_path, args.dropout, args.add_eot_token, args.eot_token),
            engine=cli_args.engine_settings(args, "step1_model"),
            optim=cli_args.optim_settings(args),
            lora=lora,
            loop=cli_args.loop_settings(args, output_dir),
            train_on_prompt=args.train_on_prompt,
        )

    def build_model(self, path: str, tokenizer):
        from chatrlhf.utils.model.loading import load_causal_lm

        model = load_causal_lm(path, tokenizer, self.model_options())
        return apply_lora(model, self.lora) if self.lora.enabled else model

    def collator(self, tokenizer) -> SFTCollator:
        return SFTCollator(tokenizer.pad_token_id, self.train_on_prompt)

    def task(self, hidden_states):
        from chatrlhf.step1_sft.sft_task import SFTTask

        return SFTTask(self.engine.compute_fp32_loss, hidden_states=hidden_states)

    def card_method(self) -> str:
        return ("Step 1, supervised fine-tuning: next-token cross-entropy on the responses"
                + (" and the prompts." if self.train_on_prompt else " (prompt tokens masked out of the loss)."))

    def save(self, engine, tokenizer, data: StepData, card: ModelCard) -> None:
        save_hf_model(engine.module, tokenizer, self.loop.output_dir, zero_stage=self.engine.zero_stage, card=card,
                      adapter=self.lora.save_adapter)
