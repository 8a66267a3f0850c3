"""``chatrlhf memory --deepspeed_chat_table``: DeepSpeed-Chat's published step-3 runs beside this estimator.

Each row is a run DeepSpeed-Chat reports, estimated with the settings of the script DeepSpeed-Chat ships for it,
next to what DeepSpeed-Chat states about it. The sources are in ``SOURCES``; the settings the estimator cannot
mirror exactly are in ``DIFFERENCES``.
"""
from __future__ import annotations

from dataclasses import dataclass

from chatrlhf.applications.memory_estimator import (
    RunSettings,
    estimate_memory,
    format_bytes,
    format_params,
    largest_fitting_model,
)
from chatrlhf.utils.model_specs import KNOWN_MODELS, ModelSpec

SCRIPTS = "training/step3_rlhf_finetuning/training_scripts/opt/"
SOURCES = {
    "T1": "DeepSpeed-Chat README (microsoft/DeepSpeedExamples, applications/DeepSpeed-Chat/README.md), Table 1: "
          "end-to-end step-3 time by actor size and GPUs, OPT-350M critic, one epoch of 135M tokens; an empty "
          "cell gives no time",
    "T3": "DeepSpeed-Chat blog (microsoft/DeepSpeed, blogs/deepspeed-chat/README.md), Table 3: max model size "
          "supported by DeepSpeed-HE on a single GPU",
    "B1": "the same blog, Table 1 (single node, 8x A100): 'NA' for OPT-66B in the row whose times are README "
          "Table 1's 8x A100-40G times",
    "E1": "README example 1: OPT-1.3B actor + OPT-350M reward on one A6000-48G, step 3 in 1.2 hr (one data set)",
    "E2": "README example 2: OPT-13B + OPT-350M on one DGX node of 8 A100-40G, step 3 in 10.8 hr",
    "E3": "README example 3: OPT-66B + OPT-350M on 8 DGX nodes of 8 A100-80G, step 3 in 7.5 hr",
}
DIFFERENCES = (
    "all rows: step 3 (PPO) with an OPT-350M critic and reward model, fp16, 256 prompt + 256 answer tokens, "
    "per-device generation and training batch as the script sets it (DeepSpeed-Chat's main.py default, 16, "
    "where it sets none), actor gradient checkpointing",
    "DeepSpeed-Chat ships no single-GPU OPT-13B script: that row uses its single-GPU OPT-6.7B script's settings",
    "the critic trains all its weights (none of these scripts sets DeepSpeed-Chat's --critic_lora_dim)",
    "the estimate checkpoints the critic too (DeepSpeed-Chat: the actor only, except the single-GPU 6.7B script)",
    "at ZeRO-3 the hybrid engine gathers the actor for generation (split over --inference_tp_size GPUs); "
    "the estimate leaves that out, as chatrlhf memory notes",
    "DeepSpeed-Chat chose the largest batch that fits for its timings (training/step3_rlhf_finetuning/"
    "BenckmarkSetting.md) and does not state it per run",
)


@dataclass(frozen=True)
class PublishedRun:
    """One of DeepSpeed-Chat's step-3 runs and what DeepSpeed-Chat says of it."""

    actor: str
    gpu: str
    gpu_memory_gib: float
    gpus_per_node: int
    num_nodes: int
    zero_stage: int
    batch: int
    lora_dim: int
    """The actor's ``--actor_lora_dim``."""
    script: str
    """The DeepSpeed-Chat script whose settings the estimate uses."""
    claim: str
    """What DeepSpeed-Chat states, with keys of ``SOURCES``."""

    def settings(self) -> RunSettings:
        return RunSettings(
            step=3, gpus_per_node=self.gpus_per_node, num_nodes=self.num_nodes, memory_gib=self.gpu_memory_gib,
            dtype="fp16", zero_stage=self.zero_stage, lora_dim=self.lora_dim, critic_lora_dim=0,
            gradient_checkpointing=True, train_batch_size=self.batch,
            generation_batch_size=self.batch, max_prompt_seq_len=256, max_answer_seq_len=256,
            critic=KNOWN_MODELS["opt-350m"],
        )

    @property
    def hardware(self) -> str:
        if self.num_nodes > 1:
            return f"{self.num_nodes} nodes x {self.gpus_per_node} {self.gpu}"
        return f"{self.gpus_per_node} x {self.gpu}"


PUBLISHED_RUNS = (
    PublishedRun("opt-1.3b", "A6000-48G", 48, 1, 1, 0, 16, 128, "single_gpu/run_1.3b.sh",
                 "ran: 1.1 days [T1]; 1.2 hr on one data set [E1]"),
    PublishedRun("opt-6.7b", "A6000-48G", 48, 1, 1, 0, 8, 128, "single_gpu/run_6.7b_lora.sh",
                 "ran: 5.6 days [T1]; the largest on this GPU [T3]"),
    PublishedRun("opt-13b", "A100-80G", 80, 1, 1, 0, 8, 128, "none; as single_gpu/run_6.7b_lora.sh",
                 "ran: 4.9 days [T1]; the largest on this GPU [T3]"),
    PublishedRun("opt-6.7b", "A100-40G", 40, 8, 1, 3, 4, 0, "single_node/run_6.7b.sh", "ran: 5.7 hr [T1]"),
    PublishedRun("opt-13b", "A100-40G", 40, 8, 1, 3, 16, 128, "single_node/run_13b.sh", "ran: 10.8 hr [T1, E2]"),
    PublishedRun("opt-30b", "A100-40G", 40, 8, 1, 3, 4, 128, "single_node/run_30b_lora.sh", "ran: 1.85 days [T1]"),
    PublishedRun("opt-66b", "A100-40G", 40, 8, 1, 3, 4, 128, "multi_node/run_66b.sh",
                 "no time: empty cell [T1], 'NA' [B1]"),
    PublishedRun("opt-66b", "A100-80G", 80, 8, 1, 3, 4, 128, "multi_node/run_66b.sh", "ran: 2.1 days [T1]"),
    PublishedRun("opt-66b", "A100-80G", 80, 8, 8, 3, 4, 128, "multi_node/run_66b.sh", "ran: 7.5 hr [T1, E3]"),
)


def outside_lora_weights(spec: ModelSpec) -> int:
    """Parameters DeepSpeed-Chat's LoRA leaves trainable (its ``LinearLayer_LoRA`` freezes only the wrapped
    weights): embeddings, norms and biases. chatrlhf's LoRA (``--only_optimize_lora``) trains none of them."""
    linear_weights = sum(linear.in_features * linear.out_features for linear in spec.block_linears)
    return spec.params() - spec.num_layers * linear_weights


def render_table() -> str:
    """The table ``--deepspeed_chat_table`` prints: per run, the estimate per GPU beside DeepSpeed-Chat's claim."""
    lines = [
        "DeepSpeed-Chat's published step-3 runs (OPT actor, OPT-350M critic and reward model) and this estimate",
        "",
        f"  {'actor':<9} {'GPUs':<20} {'ZeRO':>4} {'batch':>5} {'LoRA':>4} {'per GPU':>10} {'of GPU':>6}  "
        f"{'verdict':<12} {'largest that fits':<17}  {'DeepSpeed-Chat says':<48} settings from",
    ]
    for published in PUBLISHED_RUNS:
        run = published.settings()
        actor = KNOWN_MODELS[published.actor]
        estimate = estimate_memory(actor, run)
        largest = largest_fitting_model(actor, run)
        verdict = "fits" if estimate.fits else "does not fit"
        lines.append(
            f"  {published.actor:<9} {published.hardware:<20} {published.zero_stage:>4} {published.batch:>5} "
            f"{published.lora_dim or '-':>4} "
            f"{format_bytes(estimate.gpu_peak):>10} {estimate.compared_bytes / estimate.capacity_bytes:>6.0%}  "
            f"{verdict:<12} {largest.name if largest else 'none':<17}  {published.claim:<48} {published.script}"
        )
    lines += ["", f"scripts: {SCRIPTS} in DeepSpeed-Chat (microsoft/DeepSpeedExamples, applications/DeepSpeed-Chat)"]
    lines += [f"[{key}] {text}" for key, text in SOURCES.items()]
    lora_actors = sorted({published.actor for published in PUBLISHED_RUNS if published.lora_dim},
                         key=lambda name: KNOWN_MODELS[name].params())
    left_out = ", ".join(f"{name} {format_params(outside_lora_weights(KNOWN_MODELS[name]))}" for name in lora_actors)
    lines += [f"note: {text}." for text in DIFFERENCES]
    lines.append("note: with LoRA the estimate trains the actor's adapters only (chatrlhf --only_optimize_lora); "
                 "DeepSpeed-Chat's LoRA also trains the actor's embeddings, norms and biases, whose gradients and "
                 f"optimizer states it leaves out: {left_out} parameters.")
    return "\n".join(lines)
