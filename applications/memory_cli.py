"""``chatrlhf memory``'s command line: flags to ``RunSettings``, the report, and with ``--deepspeed_chat_table``
DeepSpeed-Chat's published runs beside the estimate (``deepspeed_chat_table``)."""
from __future__ import annotations

import argparse
import sys

from chatrlhf.applications.memory_estimator import (
    DTYPE_BYTES,
    RunSettings,
    build_report,
    host_ram_gib,
    render_report,
)
from chatrlhf.step3_rlhf import algorithms
from chatrlhf.utils.model_specs import KNOWN_MODELS, ModelSpec, ModelSpecError, as_model_spec
from chatrlhf.utils.zero_memory import REDUCE_BUCKET_SIZE


def build_parser() -> argparse.ArgumentParser:
    from chatrlhf.training.cli_parser import new_parser

    parser = new_parser(
        "chatrlhf memory",
        "Estimate memory per GPU and on the host for a DeepSpeed-Chat style run, and whether it fits.",
        allow_abbrev=False,
    )
    add = parser.add_argument
    add("--model", "--model_name_or_path", "--actor_model_name_or_path", dest="model", default="opt-1.3b",
        help=f"The trained model (step 3: the actor), of any Hugging Face causal-LM family: a directory, "
             f"config.json, a hub name (only its config is read), or a known name: {', '.join(KNOWN_MODELS)}.")
    add("--critic_model", "--critic_model_name_or_path", dest="critic_model", default="opt-350m",
        help="Step 3's critic (--algorithm ppo only), and the reward model unless --reward_model_name_or_path or "
             "--reward_fn is given, as in chatrlhf ppo.")
    add("--step", type=int, choices=(1, 2, 3), default=1, help="The step to estimate: 1 SFT, 2 reward model, 3 RLHF.")
    add("--device", choices=("cuda", "cpu"), default="cuda",
        help="cpu: run on this machine's CPU; --gpu_memory_gb then means host RAM (unset: all of it).")
    add("--gpus_per_node", "--num_gpus", dest="gpus_per_node", type=int, default=1,
        help="GPUs (or CPU processes) per node.")
    add("--num_nodes", type=int, default=1, help="Nodes of the run; ZeRO partitions over every GPU of them.")
    add("--gpu_memory_gb", type=float, default=None,
        help="Memory per GPU in GB (GiB: an '80 GB' card holds 80 GiB); unset: 80, or the host RAM with "
             "--device cpu.")
    add("--host_memory_gb", type=float, default=None,
        help="Host RAM per node to check too (GPU runs; unset: not checked).")
    add("--zero_stage", type=int, choices=(0, 1, 2, 3), default=0,
        help="ZeRO stage of the trained model(s), as chatrlhf's --zero_stage (step 3: actor and critic).")
    add("--offload", action="store_true", help="ZeRO-Offload: optimizer states (and ZeRO-3 weights) on the CPU.")
    add("--lora_dim", type=int, default=0,
        help="LoRA rank on every linear of the decoder blocks, training only the adapters (--only_optimize_lora); "
             "0: no LoRA.")
    add("--gradient_checkpointing", action="store_true",
        help="Activations as with gradient checkpointing: each layer keeps only its input, and one layer's are "
             "recomputed at a time.")
    add("--dtype", choices=tuple(DTYPE_BYTES), default=None, help="Precision; unset: bf16, or fp32 with --device cpu.")
    add("--attention", choices=("sdpa", "eager"), default="sdpa",
        help="eager keeps b·heads·s² attention scores per layer; sdpa (what chatrlhf loads) does not.")
    add("--per_device_train_batch_size", "--per_device_training_batch_size", dest="train_batch_size", type=int,
        default=16, help="Training samples (step 3: completions) per GPU and micro-batch.")
    add("--per_device_generation_batch_size", dest="generation_batch_size", type=int, default=16,
        help="Step 3: prompts per GPU in a rollout.")
    add("--max_seq_len", type=int, default=512, help="Steps 1 and 2: sequence length in tokens.")
    add("--max_prompt_seq_len", type=int, default=256, help="Step 3: prompt length in tokens.")
    add("--max_answer_seq_len", type=int, default=256, help="Step 3: answer length in tokens.")
    add("--offload_reference_model", action="store_true", help="Step 3: reference model weights on the CPU.")
    add("--offload_reward_model", action="store_true", help="Step 3: reward model weights on the CPU.")
    add("--reduce_bucket_size", type=int, default=REDUCE_BUCKET_SIZE,
        help="DeepSpeed's zero_optimization.reduce_bucket_size in elements (DeepSpeed's default).")
    add("--deepspeed_chat_table", action="store_true",
        help="Print DeepSpeed-Chat's published step-3 runs (OPT-1.3B on one 48 GB GPU up to OPT-66B on 64 A100s) "
             "with this estimate per GPU beside what DeepSpeed-Chat states for each, and exit (other flags unused).")
    step3 = parser.add_argument_group("step 3 algorithm and rewards (the flags of chatrlhf ppo)")
    with_critic = ", ".join(name for name, algorithm in algorithms.REGISTRY.items() if algorithm.uses_critic)
    critic_free = ", ".join(name for name, algorithm in algorithms.REGISTRY.items() if not algorithm.uses_critic)
    step3.add_argument(
        "--algorithm", choices=algorithms.names(), default=algorithms.DEFAULT,
        help=f"{with_critic}: actor + reference + critic + reward model. {critic_free}: critic-free, no critic "
             "weights, gradients, optimizer states or activations are counted; the DeepSpeed-Chat rule of thumb is "
             "then GB / 3 for the actor instead of GB / 6 for actor + critic.")
    step3.add_argument(
        "--critic_lora_dim", type=int, default=None,
        help="The critic's LoRA rank, as chatrlhf ppo --critic_lora_dim (0: none); unset: --lora_dim, which then "
             "sizes the actor's (chatrlhf ppo --actor_lora_dim).")
    step3.add_argument(
        "--num_samples_per_prompt", type=int, default=None,
        help="Answers per prompt (grpo, rloo, rejection_sampling and online_dpo need 2 or more; unset: 2 for "
             "online_dpo, 1 for the others): the generation KV cache and experience "
             "scoring hold --per_device_generation_batch_size x this many sequences; training micro-batches stay "
             "--per_device_train_batch_size.")
    step3.add_argument(
        "--reward_model_name_or_path", default=None,
        help="The frozen reward model (a directory, config.json, hub name or known name); unset: --critic_model, "
             "unless --reward_fn is given.")
    step3.add_argument(
        "--reward_fn", nargs="?", const="given", default=None, metavar="SPEC",
        help="The reward comes from a Python function (SPEC as for chatrlhf ppo, not read here; may be omitted): "
             "no reward model is counted unless --reward_model_name_or_path names one (--critic_model then names "
             "only the critic).")
    return parser


def settings_from_args(args: argparse.Namespace) -> tuple[ModelSpec, RunSettings]:
    """Flags to (trained model, settings); raises ``ValueError`` (incl. ``ModelSpecError``) on bad values."""
    memory = args.gpu_memory_gb
    if memory is None:
        memory = host_ram_gib() if args.device == "cpu" else 80.0
    run = RunSettings(
        step=args.step, device=args.device, gpus_per_node=args.gpus_per_node, num_nodes=args.num_nodes,
        memory_gib=memory, host_memory_gib=args.host_memory_gb, zero_stage=args.zero_stage,
        dtype=args.dtype or ("fp32" if args.device == "cpu" else "bf16"),
        offload=args.offload, lora_dim=args.lora_dim, critic_lora_dim=args.critic_lora_dim,
        gradient_checkpointing=args.gradient_checkpointing,
        attention=args.attention, train_batch_size=args.train_batch_size,
        generation_batch_size=args.generation_batch_size, max_seq_len=args.max_seq_len,
        max_prompt_seq_len=args.max_prompt_seq_len, max_answer_seq_len=args.max_answer_seq_len,
        critic=as_model_spec(args.critic_model), offload_reference_model=args.offload_reference_model,
        offload_reward_model=args.offload_reward_model, reduce_bucket_size=args.reduce_bucket_size,
        algorithm=args.algorithm, num_samples_per_prompt=args.num_samples_per_prompt,
        reward_model=as_model_spec(args.reward_model_name_or_path) if args.reward_model_name_or_path else None,
        reward_fn=args.reward_fn is not None,
    )
    return as_model_spec(args.model), run


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        if args.deepspeed_chat_table:
            from chatrlhf.applications.deepspeed_chat_table import render_table

            text = render_table()
        else:
            text = render_report(build_report(*settings_from_args(args)))
    except (ModelSpecError, ValueError) as error:
        print(f"chatrlhf memory: error: {error}", file=sys.stderr)
        return 2
    print(text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
