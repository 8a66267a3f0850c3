"""What steps 1 and 2 (SFT, reward model, DPO) share: model, data, engine and trainer, run through the run frame."""
from __future__ import annotations

import os
import time
from dataclasses import dataclass, field
from typing import ClassVar

from chatrlhf.training.config import EngineSettings, LoopSettings, LoraSettings, OptimSettings
from chatrlhf.training.engine import init_train_engine
from chatrlhf.training.loop import Trainer, TrainResult, make_loader, total_optimizer_steps
from chatrlhf.training.metrics_log import MetricsLogger, print_rank0
from chatrlhf.training.model_card import ModelCard, eval_results, tokens_seen
from chatrlhf.training.packing import choose_packed_forward
from chatrlhf.training.run_frame import RunFrame, begin_run
from chatrlhf.utils import device
from chatrlhf.utils.data.config import DataConfig
from chatrlhf.utils.data.tokenized import CUT_REASONS, StepData, build_step_data, sample_lengths
from chatrlhf.utils.model.packing import HiddenStates
from chatrlhf.utils.model.resolve import resolve_model


@dataclass(frozen=True)
class ModelSettings:
    name_or_path: str = "tiny-opt"
    dropout: float | None = None
    add_eot_token: bool = False
    eot_token: str = "<|endoftext|>"


@dataclass
class StepRun:
    """One training step's settings; subclasses say which model, data, collator and task they use."""

    # The model card's tag for this step and the held-out metrics it shows (metric key -> label).
    card_tag: ClassVar[str] = ""
    card_metrics: ClassVar[dict[str, str]] = {}

    step: int
    data: DataConfig
    model: ModelSettings
    engine: EngineSettings
    optim: OptimSettings
    lora: LoraSettings
    loop: LoopSettings
    info: dict = field(default_factory=dict)

    def model_options(self):
        from chatrlhf.utils.device import resolve_dtype
        from chatrlhf.utils.model.loading import ModelOptions

        return ModelOptions(
            dropout=self.model.dropout,
            dtype=resolve_dtype(self.engine.dtype),
            add_eot_token=self.model.add_eot_token,
            eot_token=self.model.eot_token,
        )

    def load_tokenizer(self, path: str):
        from chatrlhf.utils.model.loading import load_tokenizer

        return load_tokenizer(path, self.model_options())

    def build_model(self, path: str, tokenizer):
        raise NotImplementedError

    def build_data(self, tokenizer) -> StepData:
        """The step's tokenised data (KTO's unpaired rows instead of pairs)."""
        return build_step_data(self.data, self.step, tokenizer)

    def prepare_data(self, data: StepData, path: str, tokenizer) -> StepData:
        """The data as the task needs it, once the model is built (DPO adds precomputed reference log-probs)."""
        return data

    def collator(self, tokenizer):
        raise NotImplementedError

    def task(self, hidden_states: HiddenStates | None):
        """The step's loss and evaluation; ``hidden_states`` is the forward ``--packing`` chose (None: padded)."""
        raise NotImplementedError

    def frozen_models(self) -> list:
        """Models the task runs besides the trained one (DPO's reference): ``--packing`` must fit them too."""
        return []

    def card_method(self) -> str:
        """How this step trains, for the model card."""
        raise NotImplementedError

    def card_settings(self) -> dict[str, object]:
        """This step's own settings for the model card, after the ones every step shares."""
        return {}

    def model_card(self, result: TrainResult, data: StepData) -> ModelCard:
        """The card of the model this run saves, from what the loop recorded."""
        lora = self.lora
        settings = {
            "learning rate": self.optim.learning_rate,
            "batch size": f"{self.engine.micro_batch_size} per device x {self.engine.gradient_accumulation_steps} "
                          f"accumulation x {device.world_size()} devices",
            "epochs": self.loop.num_train_epochs,
            "max steps": self.loop.max_steps or None,
            "max sequence length": self.data.max_seq_len,
            "precision": self.engine.dtype,
            "ZeRO stage": self.engine.zero_stage,
            "LoRA": (f"rank {lora.dim} on `{lora.module_name}`, learning rate {lora.learning_rate}, "
                     + ("adapters only" if lora.only_optimize_lora else "with the base weights")
                     + (", adapter saved in `adapter/`" if lora.save_adapter else "")) if lora.enabled else None,
            "seed": self.loop.seed,
            **self.card_settings(),
        }
        training = {"optimizer steps": result.steps, "tokens seen": tokens_seen(result.history),
                    "training samples": data.info.get("num_train"), "held-out samples": data.info.get("num_eval")}
        return ModelCard(
            tags=(self.card_tag,), title=os.path.basename(os.path.normpath(self.loop.output_dir)),
            method=self.card_method(), base_model=self.model.name_or_path, step=self.step,
            sources=self.data.data_path, sft_only_sources=self.data.sft_only_data_path,
            data_split=self.data.data_split, settings=settings, training=training,
            results=eval_results(result.evals, self.card_metrics))

    def save(self, engine, tokenizer, data: StepData, card: ModelCard) -> None:
        raise NotImplementedError

    def run(self, record: dict | None = None) -> dict:
        """Train and save through the run frame; ``record`` (``config_file.run_record``) is saved beside the model
        as its flags."""
        started = begin_run(self.loop.seed)
        path = resolve_model(self.model.name_or_path, self.data)
        tokenizer = self.load_tokenizer(path)
        data = self.build_data(tokenizer)
        self._report_data(data)
        model = self.build_model(path, tokenizer)
        data = self.prepare_data(data, path, tokenizer)
        collate = self.collator(tokenizer)
        lengths = sample_lengths(data.train, self.step) if self.loop.group_by_length else None
        train_loader = make_loader(data.train, self.engine.micro_batch_size, collate, shuffle=True, seed=self.loop.seed,
                                   lengths=lengths)
        eval_loader = make_loader(
            data.eval, self.loop.per_device_eval_batch_size, collate, shuffle=False, seed=self.loop.seed
        )
        steps = total_optimizer_steps(len(train_loader), self.engine.gradient_accumulation_steps, self.loop)
        engine = init_train_engine(model, self.engine, self.optim, self.lora, steps)
        logger = MetricsLogger(self.engine.enable_tensorboard, self.engine.tensorboard_path, self.engine.job_name)
        # ZeRO-3 leaves each rank an empty placeholder per parameter; ds_numel keeps the full size.
        num_params = sum(getattr(p, "ds_numel", p.numel()) for p in model.parameters())
        forward = choose_packed_forward([engine.module, *self.frozen_models()], self.loop.packing)
        self.info["forward"] = forward.name
        trainer = Trainer(engine, self.task(forward.hidden_states), train_loader, eval_loader, self.loop, logger,
                          num_params)
        batches = {"data": os.path.basename(data.info["cache_dir"]), "seed": self.loop.seed,
                   "batch size": self.engine.micro_batch_size, "group by length": self.loop.group_by_length,
                   "gradient accumulation": self.engine.gradient_accumulation_steps, "ranks": device.world_size()}
        frame = RunFrame(self.loop, batches, {"model": engine}, logger)
        result = frame.run(trainer, lambda result: self.save(engine, tokenizer, data, self.model_card(result, data)),
                           record)
        elapsed = time.perf_counter() - started
        summary = {"wall_time_s": elapsed, "data": data.info, **self.info}
        frame.finish(result, summary)
        print_rank0(f"saved the model to {self.loop.output_dir} ({result.steps} steps, {elapsed:.1f} s)")
        return {"result": result, **summary}

    def _report_data(self, data: StepData) -> None:
        info = data.info
        print_rank0(
            f"step {self.step} data: {info['num_train']} train / {info['num_eval']} eval samples"
            f" ({'cached' if info.get('cache_hit') else 'built'} at {info['cache_dir']})"
        )
        for line in info.get("drops", []):
            print_rank0(f"  dropped: {line}")
        for split, reasons in info.get("dropped_by_length", {}).items():
            for reason, count in reasons.items():
                print_rank0(f"  {'cut' if reason in CUT_REASONS else 'dropped'} ({split}): {reason}: {count}")
