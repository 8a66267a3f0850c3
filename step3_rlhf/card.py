"""The model cards of step 3's saved models (actor, its EMA, critic), from what the run recorded."""
from __future__ import annotations

import os
from typing import TYPE_CHECKING

from chatrlhf.training.model_card import ModelCard, eval_results, last_values

if TYPE_CHECKING:
    from chatrlhf.step3_rlhf.run import PPORun

HELD_OUT = {"mean_reward": "held-out mean reward (greedy)", "accuracy_overall": "checker accuracy (greedy)",
            "sampled_mean_reward": "held-out mean reward (sampled)",
            "sampled_accuracy_overall": "checker accuracy (sampled)"}
ACTOR_LAST = {"reward_mean": "reward", "kl_to_ref": "KL to reference", "kl_coef": "KL coefficient",
              "answer_length": "answer length (tokens)"}
# Online DPO logs no KL coefficient (beta holds it near the reference) but its pairs' figures.
PREFERENCE_LAST = {"reward_mean": "reward", "kl_to_ref": "KL to reference",
                   "dpo_reward_accuracy": "DPO reward accuracy", "dpo_reward_margin": "DPO reward margin",
                   "dpo_pair_share": "share of prompts with a pair", "answer_length": "answer length (tokens)"}
CRITIC_LAST = {"critic_loss": "critic loss", "explained_variance": "explained variance"}
LAST = " (last iteration)"


def reward_source(run: PPORun) -> str:
    rewards = run.rewards
    parts = []
    if rewards.model_path is not None:
        parts.append(f"{rewards.model_weight} x reward model `{rewards.model_path}`")
    parts += [f"{weight} x function `{spec}`" for spec, weight in zip(rewards.fn_specs, rewards.fn_weights)]
    return " + ".join(parts)


def method(run: PPORun) -> str:
    algorithm = run.algorithm
    definition = algorithm.definition
    kl = "a loss term" if algorithm.kl_in_loss else "a penalty in the reward"
    samples = algorithm.num_samples_per_prompt
    each = f" ({samples} answers each)" if samples > 1 else ""
    if not algorithm.kl_weighted:
        return (f"Step 3, RLHF with {definition.display_name}: the actor answers training prompts{each}, the "
                f"reward ({reward_source(run)}) ranks each prompt's answers, and {definition.advantages_text} "
                f"(`{algorithm.dpo_loss_type}`, beta {algorithm.dpo_beta}) trains the actor against the frozen "
                "starting model; beta, not a KL penalty, holds it near that model, and prompts whose answers all "
                "score the same are skipped.")
    return (f"Step 3, RLHF with {definition.display_name}: the actor answers training prompts{each}, the "
            f"reward ({reward_source(run)}) scores them, and a clipped policy-gradient loss (cliprange "
            f"{run.ppo.cliprange}) with {definition.advantages_text} raises the reward, with the KL to the frozen "
            f"starting model (coefficient {run.ppo.kl_ctl}, estimator {run.ppo.kl_estimator}) as {kl}.")


def settings(run: PPORun) -> dict[str, object]:
    actor, critic, gen = run.actor, run.critic, run.generation
    lora = actor.lora
    policy_gradient = run.algorithm.kl_weighted  # online DPO has no clipped ratio and no KL penalty
    return {
        "algorithm": run.algorithm.definition.display_name,
        "reward": reward_source(run),
        "actor learning rate": actor.optim.learning_rate,
        "critic learning rate": critic.optim.learning_rate if critic is not None else None,
        "prompts per device and rollout": run.iteration.per_device_generation_batch_size,
        "answers per prompt": run.algorithm.num_samples_per_prompt,
        "training batch": f"{run.iteration.per_device_training_batch_size} per device x "
                          f"{run.iteration.gradient_accumulation_steps} accumulation",
        "epochs per rollout": run.ppo.ppo_epochs,
        "prompt / answer length": f"{gen.max_prompt_seq_len} / {gen.max_answer_seq_len} tokens",
        "sampling": f"temperature {gen.temperature}, top-p {gen.top_p}, top-k {gen.top_k}",
        "loss aggregation": run.algorithm.loss_aggregation if policy_gradient else None,
        "policy ratio": (f"per {'answer (GSPO)' if run.algorithm.importance_sampling_level == 'sequence' else 'token'}"
                         if policy_gradient else None),
        "DPO loss": None if policy_gradient else f"{run.algorithm.dpo_loss_type}, beta {run.algorithm.dpo_beta}",
        "dynamic sampling": (f"on, at most {run.algorithm.dynamic_sampling_max_batches} extra generation batches"
                             if run.algorithm.dynamic_sampling else None),
        "overlong penalty": (f"from {run.rewards.overlong_penalty} tokens" if run.rewards.overlong_penalty
                             else None),
        "KL coefficient": run.ppo.kl_ctl if policy_gradient else None,
        "target KL": run.ppo.target_kl,
        "actor LoRA": (f"rank {lora.dim} on `{lora.module_name}`" + (", adapters only" if lora.only_optimize_lora
                                                                      else "")) if lora.enabled else None,
        "precision": actor.engine.dtype,
        "ZeRO stages (actor, critic)": f"{actor.engine.zero_stage}, "
                                       f"{critic.engine.zero_stage if critic is not None else '-'}",
        "seed": run.loop.seed,
    }


def role_cards(run: PPORun, iterations: int, history: list[dict], held_out: dict[str, dict],
               data_info: dict) -> dict[str, ModelCard]:
    """The card of each saved folder (``actor``, ``actor_ema``, ``critic``) by folder name."""
    out = run.loop.output_dir
    unsupervised = run.unsupervised.name if run.unsupervised.name and run.ppo.unsup_coef > 0 else None
    actor_results = eval_results([held_out.get("start") or {}, held_out.get("end") or {}], HELD_OUT)
    actor_results += last_values(history, ACTOR_LAST if run.algorithm.kl_weighted else PREFERENCE_LAST, LAST)

    def card(role: str, base: str, extra_tags: tuple[str, ...], text: str, results: list) -> ModelCard:
        return ModelCard(
            tags=("rlhf", run.algorithm.name, *extra_tags), title=f"{os.path.basename(os.path.normpath(out))}/{role}",
            method=text, base_model=base, step=3, sources=run.data.data_path, data_split=run.data.data_split,
            extra_datasets=(unsupervised,) if unsupervised else (), settings=settings(run),
            training={"iterations": iterations, "training prompts": data_info.get("num_train")},
            results=results, run_dir=out)

    cards = {"actor": card("actor", run.actor.path, (), method(run), actor_results)}
    if run.iteration.enable_ema:
        cards["actor_ema"] = card("actor_ema", run.actor.path, ("ema",), method(run) + " These are the exponential "
                                  f"moving average of the actor's weights (beta {run.ppo.ema_beta}).", [])
    if run.critic is not None:
        text = ("The critic (value model) of step 3's PPO run: it learned the expected reward of each answer prefix, "
                "giving the actor's advantages. It loads as `AutoModelForSequenceClassification` (`num_labels=1`).")
        cards["critic"] = card("critic", run.critic.path, ("critic",), text, last_values(history, CRITIC_LAST, LAST))
    return cards
