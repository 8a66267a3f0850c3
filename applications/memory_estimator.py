"""``chatrlhf memory``: estimate per-GPU and host memory of an SFT, reward or step-3 (PPO, GRPO, RLOO, REINFORCE++)
run before launching it.

Library use::

    from chatrlhf.applications.memory_estimator import RunSettings, cpu_process_bytes, estimate_memory
    from chatrlhf.utils.model_specs import load_model_spec
    estimate = estimate_memory(load_model_spec("opt-1.3b"), RunSettings(step=1, zero_stage=3, gpus_per_node=8))
    estimate.gpu_peak, estimate.host_peak, estimate.rows["activations"], estimate.fits
    grpo = RunSettings(step=3, algorithm="grpo", num_samples_per_prompt=8, reward_fn=True)  # no critic, no reward model
    peak_rss = cpu_process_bytes(model.config.to_dict(), RunSettings(dtype="fp32", train_batch_size=2))

Any Hugging Face causal-LM family: parameter counts come from the model built on the meta device from its config;
model states agree with DeepSpeed's ZeRO estimators; activations, the generation KV cache and communication
buffers are added on top (``activation_memory``: formulas for OPT and LLaMA, a scaled autograd trace for other
families; ``zero_memory``). The command line is ``memory_cli``.
"""
from __future__ import annotations

import os
from collections.abc import Mapping
from dataclasses import dataclass, field, replace
from typing import Any, Literal

from chatrlhf.step3_rlhf import algorithms
from chatrlhf.step3_rlhf.config import AlgorithmConfig
from chatrlhf.utils.activation_memory import (
    Attention,
    TrainingActivations,
    experience_bytes,
    kv_cache_bytes,
    traced_activations,
    training_activation_bytes,
)
from chatrlhf.utils.model_specs import KNOWN_MODELS, ModelSpec, as_model_spec, family_members
from chatrlhf.utils.zero_memory import (
    CPU_BUFFER_FACTOR,
    REDUCE_BUCKET_SIZE,
    EngineStates,
    Placement,
    ZeroSettings,
    frozen_engine,
    trained_engine,
)

Device = Literal["cuda", "cpu"]
DTYPE_BYTES = {"fp32": 4, "fp16": 2, "bf16": 2}
GIB = 2**30
STEP_NAMES = {1: "SFT", 2: "reward model", 3: "PPO"}
# What a training process holds before any model: Python, torch, transformers, DeepSpeed and its process group,
# the tokenizer, the data set and TensorBoard. Measured on the project's 2-core CPU machine (torch 2.13 CPU,
# transformers 5.23, deepspeed 0.19.8) as the peak RSS of a step-1 run of a 2.6-thousand-parameter model
# (571,802 KiB; step 3 with that model as all four: 584,909 KiB). The imports alone are 268,012 KiB.
BASELINE_PROCESS_BYTES = 571_802 * 1024
# DeepSpeed-Chat README: GPU GB / 3 = billions of parameters for step 1 with ZeRO-3 + LoRA + gradient
# checkpointing (step 2 trains one model, so the same); GPU GB / 6 for actor plus critic in step 3. A critic-free
# step 3 trains one model, the actor, so it gets the single-model rule (see ``rule_of_thumb_divisor``).
RULE_OF_THUMB_DIVISOR = {1: 3, 2: 3, 3: 6}
ROWS = (
    "weights",
    "gradients",
    "optimizer states",
    "activations",
    "generation KV cache",
    "buffers",
    "model loading (start-up)",
    "runtime (python + torch)",
)


def host_ram_gib() -> float:
    return os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") / GIB


@dataclass(frozen=True)
class RunSettings:
    """Everything but the trained model: hardware, DeepSpeed and training flags (DeepSpeed-Chat defaults)."""

    step: int = 1
    device: Device = "cuda"
    gpus_per_node: int = 1
    num_nodes: int = 1
    memory_gib: float = 80.0
    """Memory per GPU; with ``device="cpu"`` the host RAM the whole run must fit in."""
    host_memory_gib: float | None = None
    """Host RAM per node to check as well on GPU runs (not checked when None)."""
    dtype: str = "bf16"
    """Compute dtype; chatrlhf trains in bf16 on GPUs and fp32 on the CPU (fp16 costs the same as bf16)."""
    zero_stage: int = 0
    offload: bool = False
    lora_dim: int = 0
    critic_lora_dim: int | None = None
    """Step 3: the critic's LoRA rank (``chatrlhf ppo --critic_lora_dim``); None: ``lora_dim``, as the actor's."""
    gradient_checkpointing: bool = False
    attention: Attention = "sdpa"
    train_batch_size: int = 16
    generation_batch_size: int = 16
    max_seq_len: int = 512
    max_prompt_seq_len: int = 256
    max_answer_seq_len: int = 256
    critic: ModelSpec = field(default_factory=lambda: KNOWN_MODELS["opt-350m"])
    offload_reference_model: bool = False
    offload_reward_model: bool = False
    algorithm: str = algorithms.DEFAULT
    """Step 3's algorithm (``chatrlhf ppo --algorithm``): only ppo loads and trains a critic."""
    num_samples_per_prompt: int | None = None
    """Step 3: completions per prompt; a rollout holds ``generation_batch_size`` prompts x this many. None: the
    algorithm's default (2 for online_dpo, 1 for the others), as ``chatrlhf ppo`` takes it."""
    reward_model: ModelSpec | None = None
    """Step 3's frozen reward model (``--reward_model_name_or_path``). None: ``critic``'s model, as ``chatrlhf ppo``
    defaults it, unless ``reward_fn`` (then there is no reward model)."""
    reward_fn: bool = False
    """Step 3 takes (part of) its reward from a Python function (``--reward_fn``): no reward model is loaded unless
    ``reward_model`` names one."""
    reduce_bucket_size: int = REDUCE_BUCKET_SIZE
    cpu_buffer_factor: float = CPU_BUFFER_FACTOR
    zero: ZeroSettings = field(init=False, repr=False, compare=False)
    algorithm_config: AlgorithmConfig = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        checks = {
            f"--step must be 1, 2 or 3, got {self.step}": self.step in STEP_NAMES,
            f"--device must be cuda or cpu, got {self.device!r}": self.device in ("cuda", "cpu"),
            f"--dtype must be one of {', '.join(DTYPE_BYTES)}, got {self.dtype!r}": self.dtype in DTYPE_BYTES,
            f"--attention must be sdpa or eager, got {self.attention!r}": self.attention in ("sdpa", "eager"),
            f"--lora_dim must be >= 0, got {self.lora_dim}": self.lora_dim >= 0,
            f"--critic_lora_dim must be >= 0, got {self.critic_lora_dim}": self.critic_lora >= 0,
            f"--gpu_memory_gb must be > 0, got {self.memory_gib}": self.memory_gib > 0,
            "batch sizes and sequence lengths must be >= 1": min(
                self.train_batch_size, self.generation_batch_size, self.max_seq_len,
                self.max_prompt_seq_len, self.max_answer_seq_len,
            ) >= 1,
        }
        if self.step != 3:
            step3_only = {
                f"--algorithm {self.algorithm}": self.algorithm != algorithms.DEFAULT,
                f"--num_samples_per_prompt {self.num_samples_per_prompt}": self.num_samples_per_prompt not in (None, 1),
                "--reward_model_name_or_path": self.reward_model is not None,
                "--reward_fn": self.reward_fn,
                "--critic_lora_dim": self.critic_lora_dim is not None,
            }
            checks.update({f"{flag} applies to --step 3 only (got --step {self.step})": not given
                           for flag, given in step3_only.items()})
        failed = [message for message, ok in checks.items() if not ok]
        if failed:
            raise ValueError("; ".join(failed))
        # chatrlhf ppo's own checks: a known --algorithm, and 2+ samples per prompt for grpo and rloo.
        object.__setattr__(self, "algorithm_config", AlgorithmConfig(
            name=self.algorithm, num_samples_per_prompt=self.num_samples_per_prompt))
        object.__setattr__(self, "num_samples_per_prompt", self.algorithm_config.num_samples_per_prompt)
        zero = ZeroSettings(  # validates stage, offload and GPU counts
            stage=self.zero_stage, offload=self.offload, gpus_per_node=self.gpus_per_node, num_nodes=self.num_nodes,
            reduce_bucket_size=self.reduce_bucket_size, cpu_buffer_factor=self.cpu_buffer_factor,
            device_is_host=self.device == "cpu",
        )
        object.__setattr__(self, "zero", zero)

    @property
    def dtype_bytes(self) -> int:
        return DTYPE_BYTES[self.dtype]

    @property
    def critic_lora(self) -> int:
        return self.lora_dim if self.critic_lora_dim is None else self.critic_lora_dim

    @property
    def uses_critic(self) -> bool:
        """Step 3 with ``--algorithm ppo``: the critic-free algorithms load no critic at all."""
        return self.step == 3 and self.algorithm_config.uses_critic

    @property
    def reward_spec(self) -> ModelSpec | None:
        """Step 3's reward model as ``chatrlhf ppo`` picks it: ``--reward_model_name_or_path``, else the critic's
        model unless ``--reward_fn`` is given; None when there is none (or before step 3)."""
        if self.step != 3:
            return None
        if self.reward_model is not None:
            return self.reward_model
        return None if self.reward_fn else self.critic

    @property
    def rollout_rows(self) -> int:
        """Sequences of one rollout: ``generation_batch_size`` prompts x ``num_samples_per_prompt`` completions."""
        return self.generation_batch_size * self.num_samples_per_prompt

    @property
    def seq_len(self) -> int:
        """Tokens per training sequence: the SFT/reward length, or prompt + answer in PPO."""
        return self.max_seq_len if self.step < 3 else self.max_prompt_seq_len + self.max_answer_seq_len


@dataclass(frozen=True)
class MemoryEstimate:
    """Breakdown of one run: ``rows`` hold per-GPU (per process) and per-node host bytes by category."""

    model: ModelSpec
    run: RunSettings
    engines: tuple[EngineStates, ...]
    rows: dict[str, Placement]
    training_activations: tuple[TrainingActivations, ...]

    @property
    def gpu_peak(self) -> int:
        """Per GPU: training activations and the generation KV cache are never live together."""
        gpu = {name: placement.gpu for name, placement in self.rows.items()}
        phase = max(gpu["activations"], gpu["generation KV cache"])
        return sum(gpu.values()) - gpu["activations"] - gpu["generation KV cache"] + phase

    @property
    def host_peak(self) -> int:
        """Per node."""
        return sum(placement.cpu for placement in self.rows.values())

    @property
    def model_states(self) -> Placement:
        """What DeepSpeed's ``estimate_zero{2,3}_model_states_mem_needs`` cover: device weights, gradients and
        optimizer states; on the host those plus the start-up load peak, times ``additional_buffer_factor``."""
        states = [self.rows[name] for name in ("weights", "gradients", "optimizer states")]
        host_extra = self.rows["model loading (start-up)"].cpu + self.rows["buffers"].cpu
        return Placement(gpu=sum(p.gpu for p in states), cpu=sum(p.cpu for p in states) + host_extra)

    @property
    def process_bytes(self) -> int:
        """One training process's peak with ``device="cpu"``: its own "device" memory plus its share of the host."""
        return self.gpu_peak + self.host_peak // self.run.gpus_per_node

    @property
    def compared_bytes(self) -> int:
        """Per GPU on GPUs; with ``device="cpu"`` the whole node: every process plus the shared host memory."""
        if self.run.device == "cpu":
            return self.run.gpus_per_node * self.gpu_peak + self.host_peak
        return self.gpu_peak

    @property
    def capacity_bytes(self) -> int:
        return int(self.run.memory_gib * GIB)

    @property
    def fits(self) -> bool:
        host_ok = self.run.host_memory_gib is None or self.host_peak <= self.run.host_memory_gib * GIB
        return self.compared_bytes <= self.capacity_bytes and host_ok


def _engines(model: ModelSpec, run: RunSettings) -> tuple[EngineStates, ...]:
    zero, w = run.zero, run.dtype_bytes
    if run.step == 1:
        return (trained_engine("model", model, "lm", zero, dtype_bytes=w, lora_dim=run.lora_dim),)
    if run.step == 2:
        return (trained_engine("model", model, "reward", zero, dtype_bytes=w, lora_dim=run.lora_dim),)
    engines = [
        trained_engine("actor", model, "lm", zero, dtype_bytes=w, lora_dim=run.lora_dim),
        frozen_engine("reference", model, "lm", zero, dtype_bytes=w, offload=run.offload_reference_model),
    ]
    if run.uses_critic:
        engines.append(trained_engine("critic", run.critic, "reward", zero, dtype_bytes=w, lora_dim=run.critic_lora))
    if run.reward_spec is not None:
        engines.append(frozen_engine("reward", run.reward_spec, "reward", zero, dtype_bytes=w,
                                     offload=run.offload_reward_model))
    return tuple(engines)


def _training_activations(model: ModelSpec, run: RunSettings) -> tuple[TrainingActivations, ...]:
    """Step 1: one SFT micro-batch. Step 2: chosen + rejected, ``2b`` sequences. Step 3: actor, then the critic
    (PPO only); training micro-batches are ``train_batch_size`` rows whatever ``num_samples_per_prompt``."""
    common = {
        "seq": run.seq_len, "dtype_bytes": run.dtype_bytes, "attention": run.attention,
        "gradient_checkpointing": run.gradient_checkpointing, "lora_dim": run.lora_dim,
        "dropout_mask_bytes": run.dtype_bytes if run.device == "cpu" else 1,
    }
    b = run.train_batch_size
    if run.step == 1:
        return (training_activation_bytes(model, "lm", batch=b, **common),)
    if run.step == 2:
        return (training_activation_bytes(model, "reward", batch=2 * b, **common),)
    actor = training_activation_bytes(model, "lm", batch=b, fp32_loss=False, **common)
    if not run.uses_critic:
        return (actor,)
    return actor, training_activation_bytes(run.critic, "reward", batch=b, **{**common, "lora_dim": run.critic_lora})


def check_positions(model: ModelSpec, run: RunSettings) -> None:
    """Sequences longer than the position table cannot run at all, so refuse to estimate them."""
    models = [model] + ([run.critic] if run.uses_critic else []) + [s for s in (run.reward_spec,) if s is not None]
    for spec in models:
        if spec.max_positions is not None and run.seq_len > spec.max_positions:
            flags = "--max_seq_len" if run.step < 3 else "--max_prompt_seq_len + --max_answer_seq_len"
            raise ValueError(
                f"{flags} = {run.seq_len} tokens exceeds {spec.name}'s {spec.max_positions} positions; "
                "use shorter sequences"
            )


def estimate_memory(model: ModelSpec, run: RunSettings) -> MemoryEstimate:
    """Per-GPU and per-node host bytes of a run, by category (see ``ROWS``)."""
    check_positions(model, run)
    engines = _engines(model, run)
    training = _training_activations(model, run)
    activations = max(act.total for act in training)
    kv_cache = 0
    if run.step == 3:
        seq, gen_batch = run.seq_len, run.rollout_rows  # generation and scoring hold the whole rollout
        activations = max(activations, experience_bytes(model, gen_batch, seq, run.dtype_bytes, run.attention))
        kv_cache = kv_cache_bytes(model, gen_batch, seq, run.dtype_bytes)

    def total(attribute: str) -> Placement:
        return sum((getattr(engine, attribute) for engine in engines), Placement())

    weights, gradients, optimizer = total("weights"), total("gradients"), total("optimizer")
    resident_host = weights.cpu + gradients.cpu + optimizer.cpu
    # Models load one after another, so only the largest load can exceed what is already resident.
    loading = max(0, max(engine.load_peak_cpu for engine in engines) - resident_host)
    host_slack = int((run.cpu_buffer_factor - 1) * (resident_host + loading))
    rows = {
        "weights": weights,
        "gradients": gradients,
        "optimizer states": optimizer,
        "activations": Placement(gpu=activations),
        "generation KV cache": Placement(gpu=kv_cache),
        "buffers": Placement(gpu=total("buffers").gpu, cpu=host_slack),
        "model loading (start-up)": Placement(cpu=loading),
        "runtime (python + torch)": Placement(cpu=BASELINE_PROCESS_BYTES * run.gpus_per_node),
    }
    return MemoryEstimate(model=model, run=run, engines=engines, rows=rows, training_activations=training)


def deepspeed_model_states(estimate: MemoryEstimate) -> Placement | None:
    """DeepSpeed's own ``estimate_zero{2,3}_model_states_mem_needs`` for this run, called here so the report
    shows DeepSpeed's figure beside ours. ``None`` where they do not apply: they size one fully trained model in
    16-bit precision at ZeRO-2 or 3, so not ZeRO-0/1, fp32, LoRA, or step 3's several engines."""
    run = estimate.run
    (engine, *others) = estimate.engines
    if others or run.zero_stage not in (2, 3) or run.dtype_bytes != 2 or engine.trainable_params != engine.total_params:
        return None
    if run.zero_stage == 2:
        from deepspeed.runtime.zero.stage_1_and_2 import estimate_zero2_model_states_mem_needs

        cpu, gpu = estimate_zero2_model_states_mem_needs(
            engine.total_params, num_gpus_per_node=run.gpus_per_node, num_nodes=run.num_nodes,
            cpu_offload=run.offload, additional_buffer_factor=run.cpu_buffer_factor,
        )
    else:
        from deepspeed.runtime.zero.stage3 import estimate_zero3_model_states_mem_needs

        cpu, gpu, _ = estimate_zero3_model_states_mem_needs(
            engine.total_params, engine.largest_layer_params, num_gpus_per_node=run.gpus_per_node,
            num_nodes=run.num_nodes, cpu_offload=run.offload, cpu_offload_params=run.offload, zero_init=True,
            additional_buffer_factor=run.cpu_buffer_factor,
        )
    return Placement(gpu=int(gpu), cpu=int(cpu))


def cpu_process_bytes(model: ModelSpec | Mapping[str, Any] | str | os.PathLike[str], run: RunSettings) -> int:
    """Peak bytes of one training process running on the CPU (compare with ``ru_maxrss``).

    ``model`` may be a ``ModelSpec``, a config dict (``model.config.to_dict()``), a known name or a path.
    """
    return estimate_memory(as_model_spec(model), replace(run, device="cpu")).process_bytes


def family_key(model: ModelSpec) -> str:
    """The family whose known sizes ``model`` is compared with: Mistral counts as LLaMA."""
    return model.family or model.model_type


def largest_fitting_model(model: ModelSpec, run: RunSettings) -> ModelSpec | None:
    """The biggest known model of ``model``'s family that fits with the same settings (actor in step 3)."""
    fitting = [
        candidate for candidate in family_members(family_key(model))
        if (candidate.max_positions or run.seq_len) >= run.seq_len and estimate_memory(candidate, run).fits
    ]
    return fitting[-1] if fitting else None


@dataclass(frozen=True)
class MemoryReport:
    """An estimate plus what the printout compares it with."""

    estimate: MemoryEstimate
    largest_fitting: ModelSpec | None
    rule_of_thumb_billions: float
    rule_difference: str


def rule_of_thumb_divisor(run: RunSettings) -> int:
    """DeepSpeed-Chat's divisor: 3 for one trained model (steps 1, 2), 6 for actor + critic (step 3, PPO).

    A critic-free step 3 trains only the actor, so halving the budget for a critic would be wrong: it gets the
    single-trained-model rule, / 3 (which, like / 6, leaves out the frozen reference and reward model)."""
    if run.step == 3 and not run.uses_critic:
        return RULE_OF_THUMB_DIVISOR[1]
    return RULE_OF_THUMB_DIVISOR[run.step]


def rule_of_thumb_billions(run: RunSettings) -> float:
    """DeepSpeed-Chat's rule: memory GB / ``rule_of_thumb_divisor`` billions of trained params."""
    return run.memory_gib / rule_of_thumb_divisor(run)


def rule_of_thumb_counts(run: RunSettings) -> str:
    """The parameters the rule of thumb bounds."""
    if run.step < 3:
        return "model"
    return "actor + critic" if run.uses_critic else "actor only: no critic"


def counted_models(run: RunSettings) -> str:
    """Step 3: which models the estimate holds, and why any of DeepSpeed-Chat's four is missing."""
    roles = ["actor", "reference"] + (["critic"] if run.uses_critic else [])
    roles += ["reward model"] if run.reward_spec is not None else []
    missing = [] if run.uses_critic else [f"no critic (--algorithm {run.algorithm} is critic-free)"]
    if run.reward_spec is None:
        missing.append("no reward model (--reward_fn without --reward_model_name_or_path)")
    return " + ".join(roles) + "".join(f"; {reason}" for reason in missing)


def _rule_difference(estimate: MemoryEstimate) -> str:
    """One line on why the rule of thumb and this estimate disagree for these settings."""
    run = estimate.run
    missing = [
        name for name, on in (
            ("ZeRO-3", run.zero_stage == 3), ("LoRA", run.lora_dim > 0),
            ("gradient checkpointing", run.gradient_checkpointing),
        ) if not on
    ]
    if missing:
        return (
            "the rule assumes ZeRO-3 + LoRA + gradient checkpointing (~3 bytes/param per GPU); this run has no "
            f"{' or '.join(missing)}, so its model states and activations cost more per parameter."
        )
    tokens = f"{run.train_batch_size * (2 if run.step == 2 else 1)} x {run.seq_len} tokens"
    if run.step == 3:
        tokens = f"{tokens} in training, {run.rollout_rows} x {run.seq_len} in experience scoring"
    activations = format_bytes(estimate.rows["activations"].gpu)
    if run.zero.world_size > 1:
        return (
            f"the rule is per GPU and ignores that ZeRO-3 splits model states over {run.zero.world_size} GPUs, "
            f"and the {activations} of activations for {tokens}."
        )
    return (
        f"the rule ignores activations ({activations} for {tokens}), DeepSpeed's "
        f"{format_bytes(estimate.rows['buffers'].gpu)} of buffers and frozen weights (16-bit, 2 bytes/param)."
    )


def build_report(model: ModelSpec, run: RunSettings) -> MemoryReport:
    estimate = estimate_memory(model, run)
    return MemoryReport(
        estimate=estimate,
        largest_fitting=largest_fitting_model(model, run),
        rule_of_thumb_billions=rule_of_thumb_billions(run),
        rule_difference=_rule_difference(estimate),
    )


def format_bytes(n: int) -> str:
    for unit, size in (("GiB", GIB), ("MiB", 2**20), ("KiB", 2**10)):
        if n >= size:
            return f"{n / size:.2f} {unit}"
    return f"{n} B" if n else "-"


def format_params(n: float) -> str:
    for unit, size in (("B", 1e9), ("M", 1e6), ("K", 1e3)):
        if n >= size:
            return f"{n / size:.2f}{unit}"
    return str(int(n))


def _placement_label(engine: EngineStates, run: RunSettings) -> str:
    where = "offloaded to CPU" if engine.offload else ("in host RAM" if run.device == "cpu" else "on GPU")
    return f"ZeRO-{engine.stage}, {where}"


def _notes(estimate: MemoryEstimate) -> list[str]:
    run = estimate.run
    largest = max(estimate.training_activations, key=lambda activations: activations.total)
    notes = [f"the largest training pass keeps {format_bytes(largest.layers)} in the layers and "
             f"{format_bytes(largest.logits)} of logits / values for backward."]
    traced = {engine.spec for engine in estimate.engines if engine.trainable_params and engine.spec.family is None}
    for spec in sorted(traced, key=lambda spec: spec.name):
        trace = traced_activations(spec, run.dtype_bytes, run.attention)
        short, long = trace.seq_lengths
        notes.append(f"{spec.name} ({spec.model_type}) has no hand-written activation formula: its layers' "
                     f"activations come from an autograd trace of its architecture at 1 and 2 layers, {short} and "
                     f"{long} tokens and 1/{trace.width_divisor} of its width, scaled linearly in layers, batch "
                     "and width and fitted linear + quadratic in sequence length (CPU kernels' saved tensors).")
    if run.step == 3:
        passes = "actor training, critic training" if run.uses_critic else "actor training (no critic)"
        notes.append(f"activations = max({passes}, experience scoring); the KV cache is only live during "
                     "generation, so the peak counts max(activations, KV cache).")
        notes.append(f"generation and experience scoring hold the whole rollout: {run.generation_batch_size} prompts "
                     f"x {run.num_samples_per_prompt} sample(s) = {run.rollout_rows} sequences; training "
                     f"micro-batches are {run.train_batch_size} sequences.")
        has_reward_model = run.reward_spec is not None
        if run.offload_reward_model and not has_reward_model:
            notes.append("--offload_reward_model changes nothing: this run loads no reward model.")
        offloaded = [name for name, on in (("reference", run.offload_reference_model),
                                           ("reward", run.offload_reward_model and has_reward_model)) if on]
        if offloaded and run.zero_stage != 3:
            notes.append(f"DeepSpeed offloads parameters only at ZeRO-3, so at ZeRO-{run.zero_stage} the "
                         f"{' and '.join(offloaded)} model(s) stay on the GPU; use --zero_stage 3 to offload them.")
        if run.zero_stage == 3:
            actor = estimate.engines[0]
            notes.append(f"the hybrid engine (--enable_hybrid_engine) gathers the whole actor for generation: "
                         f"+{format_bytes(actor.total_params * run.dtype_bytes)} per GPU, not counted.")
    if run.zero_stage == 2 and run.offload and run.num_nodes > 1:
        notes.append("DeepSpeed's ZeRO-2 estimator charges every node the host memory of all nodes; this charges "
                     "each node its own share.")
    if run.device == "cpu":
        notes.append(f"--device cpu: {run.gpus_per_node} process(es) share the host; 'per process' holds what a "
                     "GPU would, 'host' the offloaded states and each process's python + torch baseline.")
    return notes


def render_report(report: MemoryReport) -> str:
    """The text ``chatrlhf memory`` prints."""
    estimate = report.estimate
    run, model = estimate.run, estimate.model
    on_cpu = run.device == "cpu"
    hardware = (
        f"{run.gpus_per_node} CPU process(es), {run.memory_gib:.1f} GiB host RAM" if on_cpu
        else f"{run.num_nodes} node(s) x {run.gpus_per_node} GPU(s), {run.memory_gib:.1f} GiB per GPU"
    )
    sequences = (
        f"batch {run.train_batch_size} x {run.seq_len} tokens" + (" (x2: chosen + rejected)" if run.step == 2 else "")
        if run.step < 3 else
        f"train batch {run.train_batch_size}, generation batch {run.generation_batch_size}"
        + (f" prompts x {run.num_samples_per_prompt} samples = {run.rollout_rows} sequences"
           if run.num_samples_per_prompt > 1 else "") + ", "
        f"{run.max_prompt_seq_len} prompt + {run.max_answer_seq_len} answer tokens"
    )
    offload = "offload" if run.offload else "no offload"
    lora = f"LoRA r={run.lora_dim}" if run.lora_dim else "no LoRA"
    if run.uses_critic and run.critic_lora != run.lora_dim:
        lora += f" (critic: {f'r={run.critic_lora}' if run.critic_lora else 'none'})"
    checkpointing = "gradient checkpointing" if run.gradient_checkpointing else "no gradient checkpointing"
    step_name = STEP_NAMES[run.step] if run.step < 3 else run.algorithm_config.definition.display_name + (
        "" if run.uses_critic else ", critic-free")
    lines = [
        f"chatrlhf memory: step {run.step} ({step_name}) of {model.name} on {hardware}",
        f"  {run.dtype}, ZeRO-{run.zero_stage}, {offload}, {lora}, {checkpointing}, {run.attention} attention, "
        f"{sequences}",
        "",
        f"  {'role':<10} {'model':<14} {'params':>8} {'embed.':>8} {'trained':>8}  placement",
    ]
    for engine in estimate.engines:
        lines.append(
            f"  {engine.role:<10} {engine.spec.name:<14} {format_params(engine.total_params):>8} "
            f"{format_params(engine.spec.embedding_params(engine.kind)):>8} "
            f"{format_params(engine.trainable_params):>8}  {_placement_label(engine, run)}"
        )
    device_column, host_column = ("per process", "host (node)") if on_cpu else ("per GPU", "host (node)")
    lines += ["", f"  {'memory':<26} {device_column:>12} {host_column:>12}"]
    for name in ROWS:
        placement = estimate.rows[name]
        lines.append(f"  {name:<26} {format_bytes(placement.gpu):>12} {format_bytes(placement.cpu):>12}")
    lines.append(f"  {'peak':<26} {format_bytes(estimate.gpu_peak):>12} {format_bytes(estimate.host_peak):>12}")
    states = estimate.model_states
    label = "(model states, as DeepSpeed)"
    lines.append(f"  {label:<26} {format_bytes(states.gpu):>12} {format_bytes(states.cpu):>12}")
    deepspeed_states = deepspeed_model_states(estimate)
    if deepspeed_states is not None:
        label = f"(DeepSpeed's zero{run.zero_stage} est.)"
        lines.append(f"  {label:<26} {format_bytes(deepspeed_states.gpu):>12} {format_bytes(deepspeed_states.cpu):>12}")
    lines.append("")

    verdict = "fits" if estimate.fits else "does not fit"
    need, have = format_bytes(estimate.compared_bytes), format_bytes(estimate.capacity_bytes)
    where = "host RAM (all processes + host)" if on_cpu else "per GPU"
    lines.append(f"{verdict}: needs {need} of {have} {where} ({estimate.compared_bytes / estimate.capacity_bytes:.0%})")
    if run.host_memory_gib is not None and not on_cpu:
        lines.append(f"  host: needs {format_bytes(estimate.host_peak)} of {run.host_memory_gib:.1f} GiB per node")
    if run.step == 3:
        lines.append(f"  counted: {counted_models(run)}")

    role, family = ("actor" if run.step == 3 else "model"), family_key(model)
    kind = "reward" if run.step == 2 else "lm"
    critic = run.critic.params("reward") if run.uses_critic else 0
    best = report.largest_fitting
    if not family_members(family):
        lines.append(f"largest {family} {role} that fits: no {family} sizes are known (the known sizes are OPT and "
                     "LLaMA-2)")
        ours = f"this run: {(model.params(kind) + critic) / 1e9:.2f}B, which {verdict}"
    elif best is None:
        lines.append(f"largest {family} {role} that fits with these settings: none of the known models")
        ours = "this estimate: 0.00B"
    else:
        best_params = best.params(kind)
        lines.append(f"largest {family} {role} that fits with these settings: {best.name} "
                     f"({format_params(best_params)} params)")
        ours = f"this estimate: {(best_params + critic) / 1e9:.2f}B"
    lines.append(
        f"DeepSpeed-Chat rule of thumb: {run.memory_gib:.4g} GB / {rule_of_thumb_divisor(run)} = "
        f"{report.rule_of_thumb_billions:.1f}B params ({rule_of_thumb_counts(run)}); {ours}"
    )
    if run.step == 3 and not run.uses_critic:
        lines.append("  critic-free: DeepSpeed-Chat's GB / 6 budgets an actor + critic; with no critic this uses its "
                     "single-trained-model rule, GB / 3, for the actor.")
    lines.append(f"  why they differ: {report.rule_difference}")
    lines += [f"note: {note}" for note in _notes(estimate)]
    return "\n".join(lines)
