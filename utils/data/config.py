"""The data settings of a run, parsed once from the command line."""
from __future__ import annotations

from dataclasses import dataclass, field

from chatrlhf.utils.data.options import SourceOptions


@dataclass(frozen=True)
class DataConfig:
    data_path: tuple[str, ...] = ("synthetic/tasks",)
    data_split: str = "2,4,4"
    sft_only_data_path: tuple[str, ...] = ()
    data_output_path: str = "/tmp/data_files/"
    seed: int = 1234
    max_seq_len: int = 512
    max_prompt_seq_len: int = 256
    skip_bad_records: bool = False
    strict_data: bool = False
    eval_fraction: float = 0.1
    # Split each source on its own, as DeepSpeed-Chat does, even when a prompt is in two sources.
    allow_cross_step_duplicates: bool = False
    # Processes tokenising the cache (``--preprocessing_num_workers``); None tokenises in this one.
    preprocessing_num_workers: int | None = None
    # Train on another step's share of --data_split (``--data_share``); None: the step's own. Step 1 on step 2's
    # share is the likelihood-only ablation of a preference step: the same prompts, the chosen answers alone.
    data_share: int | None = None
    source: SourceOptions = field(default_factory=SourceOptions)
