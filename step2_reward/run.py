"""Step 2's run: a reward model, the pair collator and ranking loss, saved with its score statistics."""
from __future__ import annotations

import argparse
from dataclasses import dataclass

from chatrlhf.training import cli_args
from chatrlhf.training.loop import make_loader
from chatrlhf.training.lora import apply_lora
from chatrlhf.training.metrics_log import print_rank0
from chatrlhf.training.model_card import ModelCard, Result
from chatrlhf.training.run_setup import require_output_dir
from chatrlhf.training.saving import save_hf_model
from chatrlhf.training.step_runner import ModelSettings, StepRun
from chatrlhf.training.validation import ConfigError, check_data_flags, check_length, check_model_path
from chatrlhf.utils.data.collators import PairCollator
from chatrlhf.utils.data.errors import DataError
from chatrlhf.utils.data.tokenized import StepData

JOB_NAME = "step2_model"


@dataclass
class RewardRun(StepRun):
    card_tag = "reward-model"
    card_metrics = {"accuracy": "reward accuracy", "margin": "mean margin (chosen - rejected)",
                    "chosen_score": "chosen score", "rejected_score": "rejected score", "loss": "eval loss"}

    use_margin: bool = False
    center_rewards_coef: float = 0.0
    lm_loss_coef: float = 0.0
    fp32_loss: bool = False

    @classmethod
    def from_args(cls, args: argparse.Namespace) -> RewardRun:
        check_model_path("--model_name_or_path", args.model_name_or_path)
        check_data_flags(tuple(args.data_path), (), args.data_split)
        check_length(f"--max_seq_len {args.max_seq_len}", args.max_seq_len, args.model_name_or_path)
        lora = cli_args.lora_settings(args)
        output_dir = require_output_dir(args.output_dir, "step 2", args.overwrite_output_dir,
                                    resume=bool(args.resume or args.resume_from))
        engine = cli_args.engine_settings(args, JOB_NAME)
        if args.lm_loss_coef < 0:
            raise ConfigError(f"--lm_loss_coef {args.lm_loss_coef}: must be 0 (off) or positive")
        if args.lm_loss_coef and engine.zero_stage == 3:
            raise ConfigError("--lm_loss_coef needs ZeRO stage 0, 1 or 2: under stage 3 the embedding matrix it "
                             "predicts with is partitioned outside the forward pass; drop the flag or use stage 2")
        dropout = 0.0 if args.disable_dropout else args.dropout
        return cls(
            step=2,
            data=cli_args.data_config(args),
            model=ModelSettings(args.model_name_or_path, dropout, args.add_eot_token),
            engine=engine,
            optim=cli_args.optim_settings(args),
            lora=lora,
            loop=cli_args.loop_settings(args, output_dir),
            use_margin=args.use_margin,
            center_rewards_coef=args.center_rewards_coef,
            lm_loss_coef=args.lm_loss_coef,
            # DeepSpeed-Chat computes a bf16 run's loss in fp32 unless --no_bf16_to_fp32_loss.
            fp32_loss=args.compute_fp32_loss or (engine.dtype == "bf16" and args.bf16_to_fp32_loss),
        )

    def build_model(self, path: str, tokenizer):
        from chatrlhf.step2_reward.tied_lm_head import check_tied_embeddings
        from chatrlhf.utils.model.reward_model import HEAD_NAME, load_reward_model

        model = load_reward_model(path, tokenizer, self.model_options(), seed=self.loop.seed)
        if self.lm_loss_coef:
            check_tied_embeddings(model, "--lm_loss_coef")
        return apply_lora(model, self.lora, trainable_modules=(HEAD_NAME,)) if self.lora.enabled else model

    def prepare_data(self, data: StepData, path: str, tokenizer) -> StepData:
        """With ``--use_margin``, refuse sources without margins: their pairs would train with a margin of 0. Refuse
        an empty held-out set before training, as the saved ``reward_stats.json`` is computed on it."""
        lacking = data.info.get("sources_without_margin", [])
        if self.use_margin and lacking:
            raise ConfigError(
                f"--use_margin needs each pair's margin, but --data_path {', '.join(lacking)} supplies none; give "
                "local pair files (json, jsonl, csv or parquet) with a numeric 'margin' column (or name the column "
                "with --margin_column), or drop --use_margin")
        if len(data.eval) == 0:
            raise DataError(
                "step 2 has no held-out pairs: the saved reward_stats.json (the score mean and std step 3 "
                "normalises with) is computed on them, and the run would fail at its final save",
                hint="Give --data_path a source with an eval split or more pairs (a source without one holds out "
                "10% of its prompts), and see the data report above for what was dropped.")
        return data

    def collator(self, tokenizer) -> PairCollator:
        return PairCollator(tokenizer.pad_token_id)

    def task(self, hidden_states):
        from chatrlhf.step2_reward.reward_task import RewardTask

        return RewardTask(self.fp32_loss, self.use_margin, self.center_rewards_coef, self.lm_loss_coef,
                          hidden_states=hidden_states)

    def card_method(self) -> str:
        loss = "-log sigmoid(r_chosen - r_rejected" + (" - margin)" if self.use_margin else ")")
        if self.center_rewards_coef:
            loss += f" + {self.center_rewards_coef} x mean((r_chosen + r_rejected)^2)"
        if self.lm_loss_coef:
            loss += f" + {self.lm_loss_coef} x the chosen answers' LM loss"
        return ("Step 2, reward model: a scalar `score` head on the backbone, trained on chosen/rejected pairs with "
                f"the pairwise ranking loss {loss}; the score is read at the last real token. It loads as "
                "`AutoModelForSequenceClassification` (`num_labels=1`).")

    def card_settings(self) -> dict[str, object]:
        return {"use margin": self.use_margin or None, "center rewards coef": self.center_rewards_coef or None,
                "LM loss coef": self.lm_loss_coef or None}

    def save(self, engine, tokenizer, data: StepData, card: ModelCard) -> None:
        """The model with ``reward_stats.json``: mean and std of its scores on the held-out pairs."""
        from chatrlhf.step2_reward.reward_task import reward_stats
        from chatrlhf.utils.model.reward_stats import REWARD_STATS_FILE

        loader = make_loader(
            data.eval, self.loop.per_device_eval_batch_size, self.collator(tokenizer), shuffle=False,
            seed=self.loop.seed,
        )
        stats = reward_stats(engine, loader)
        print_rank0(
            f"reward statistics on {stats.count} held-out pairs: mean {stats.mean:.4f} std {stats.std:.4f}"
            f" accuracy {stats.accuracy:.2%}"
        )
        card.results += [Result(f"reward accuracy, all {stats.count} held-out pairs", None, stats.accuracy),
                         Result("score mean (step 3 normalises with it)", None, stats.mean),
                         Result("score std", None, stats.std)]
        extra = {REWARD_STATS_FILE: stats.to_json()}
        save_hf_model(engine.module, tokenizer, self.loop.output_dir, zero_stage=self.engine.zero_stage,
                      extra_json=extra, card=card, adapter=self.lora.save_adapter)
