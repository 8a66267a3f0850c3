"""``chatrlhf e2e`` and ``chatrlhf compare``.

The runner's logic (which scripts run with which arguments, failures, the check before step 3) is tested
against stand-in scripts that only record their arguments. One shortened real run of all three steps (a few
optimizer steps each, two PPO iterations) then feeds the tests of the pre-step-3 check on real models, of
``report.md`` and its plots, and of ``chatrlhf compare``.
"""
from __future__ import annotations

import json
import re
import shutil
from pathlib import Path

import pytest

from chatrlhf.applications import e2e_rlhf
from chatrlhf.cli import main as cli

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"

RECORDING_SCRIPT = """#!/bin/bash
# Stand-in for a training script: records its arguments, writes a log and a metrics.json.
OUTPUT=${OUTPUT_ARG}
mkdir -p "$OUTPUT"
echo "step=STEP model=${MODEL-unset} args=$*" >> "$CALLS_FILE"
echo "training step STEP" > "$OUTPUT/training.log"
echo '{"steps": 5}' > "$OUTPUT/metrics.json"
echo '{"args": {"learning_rate": 0.5, "lr_scheduler_type": "constant"}}' > "$OUTPUT/chatrlhf_args.json"
"""

FAILING_SCRIPT = """#!/bin/bash
OUTPUT=$1
mkdir -p "$OUTPUT"
for i in $(seq 1 100); do echo "log line $i"; done > "$OUTPUT/training.log"
printf 'train:  10%%\rtrain:  50%%\rtrain: 100%%\n' >> "$OUTPUT/training.log"
echo "$LAST_LINE" >> "$OUTPUT/training.log"
exit 3
"""


def make_scripts(root: Path, scripts: dict[int, str]) -> dict[int, Path]:
    """Step folders with a ``training_scripts/tiny/single_gpu/run_tiny.sh`` each."""
    names = {1: "step1_sft", 2: "step2_reward", 3: "step3_rlhf"}
    dirs = {}
    for step, text in scripts.items():
        folder = root / names[step]
        script = folder / "training_scripts" / "tiny" / "single_gpu" / "run_tiny.sh"
        script.parent.mkdir(parents=True)
        output_arg = "$5" if step == 3 else "$1"
        script.write_text(text.replace("${OUTPUT_ARG}", output_arg).replace("STEP", str(step)))
        dirs[step] = folder
    return dirs


@pytest.fixture
def fake_steps(tmp_path, monkeypatch) -> Path:
    """Recording scripts for the three steps; returns the file their calls go to."""
    calls = tmp_path / "calls.txt"
    monkeypatch.setenv("CALLS_FILE", str(calls))
    monkeypatch.setenv("MODEL", "stray-value")
    monkeypatch.setattr(e2e_rlhf, "STEP_DIRS", make_scripts(tmp_path / "pkg", dict.fromkeys((1, 2, 3),
                                                                                            RECORDING_SCRIPT)))
    return calls


def calls_of(file: Path) -> list[str]:
    return file.read_text().splitlines() if file.exists() else []


def test_runs_only_the_selected_steps_with_the_scripts_arguments(fake_steps, tmp_path, capsys) -> None:
    out = tmp_path / "out"
    assert e2e_rlhf.main(["--step", "2", "1", "--output-dir", str(out), "--actor-model", "tiny-opt",
                          "--reward-model", "tiny-llama", "--reward-zero-stage", "2",
                          "--step1-args=--max_steps 3", "--no-report"]) == 0
    actor, reward = out / "actor-models" / "tiny-opt", out / "reward-models" / "tiny-llama"
    assert calls_of(fake_steps) == [
        f"step=1 model=tiny-opt args={actor}  --max_steps 3",
        f"step=2 model=tiny-llama args={reward} 2",
    ]
    printed = capsys.readouterr().out
    assert "Finished step 1 in 0:00:0" in printed and "Finished steps 1 2 in" in printed
    timings = json.loads((out / "e2e_timings.json").read_text())["outputs"]
    assert set(timings) == {str(actor), str(reward)} and timings[str(reward)]["status"] == "ok"


def test_step3_alone_gets_the_step1_and_step2_folders(fake_steps, tmp_path, monkeypatch) -> None:
    out = tmp_path / "out"
    monkeypatch.setattr(e2e_rlhf, "check_step3_inputs", lambda plan: None)
    assert e2e_rlhf.main(["--step", "3", "--output-dir", str(out), "--actor-model", "tiny-opt",
                          "--reward-model", "step1", "--actor-zero-stage", "1", "--no-report"]) == 0
    actor, reward = out / "actor-models" / "tiny-opt", out / "reward-models" / "step1-tiny-opt"
    ablation = out / "ablation-models" / "tiny-opt-ppo"
    assert calls_of(fake_steps) == [
        f"step=3 model=unset args={actor} {reward} 1  {out / 'step3-models' / 'tiny-opt'}",
        f"step=1 model={actor} args={ablation} 1 --model_name_or_path {actor} --data_share 2 --max_steps 5 "
        "--learning_rate 0.5 --lr_scheduler_type constant",
    ]


def test_the_ablation_matches_the_policy_steps_updates_and_can_be_skipped(fake_steps, tmp_path, monkeypatch,
                                                                          capsys) -> None:
    """After DPO the ablation trains the step-1 model on step 2's share for as many updates as DPO made (its
    metrics.json), at its learning rate and schedule (its saved flags); --no-ablation skips it; a policy run
    without a readable update count is refused by name."""
    dpo_script = tmp_path / "dpo" / "training_scripts" / "tiny" / "single_gpu" / "run_tiny.sh"
    dpo_script.parent.mkdir(parents=True)
    dpo_script.write_text(RECORDING_SCRIPT.replace("${OUTPUT_ARG}", "$1").replace("STEP", "dpo")
                          .replace('{"steps": 5}', '{"steps": 42}'))
    monkeypatch.setattr(e2e_rlhf, "DPO_DIR", tmp_path / "dpo")
    monkeypatch.setattr(e2e_rlhf, "check_dpo_inputs", lambda plan: None)
    out = tmp_path / "out"
    assert e2e_rlhf.main(["--step", "2", "--step2-method", "dpo", "--output-dir", str(out), "--actor-model",
                          "tiny-opt", "--seed", "3", "--no-report"]) == 0
    actor = out / "actor-models" / "tiny-opt"
    assert calls_of(fake_steps)[-1] == (f"step=1 model={actor} args={out / 'ablation-models' / 'tiny-opt-dpo'}  "
                                        f"--seed 3 --model_name_or_path {actor} --data_share 2 --max_steps 42 "
                                        "--learning_rate 0.5 --lr_scheduler_type constant")
    count = len(calls_of(fake_steps))
    assert e2e_rlhf.main(["--step", "2", "--step2-method", "dpo", "--output-dir", str(out), "--actor-model",
                          "tiny-opt", "--no-ablation", "--no-report"]) == 0
    assert len(calls_of(fake_steps)) == count + 1
    dpo_script.write_text(dpo_script.read_text().replace('{"steps": 42}', '{"steps": 0}'))
    assert e2e_rlhf.main(["--step", "2", "--step2-method", "dpo", "--output-dir", str(out), "--actor-model",
                          "tiny-opt", "--no-report"]) == 1
    assert "records no optimizer update of the dpo policy; pass --no-ablation" in capsys.readouterr().err


@pytest.mark.parametrize("algorithm", ["rloo", "online_dpo"])
def test_a_verifier_algorithm_runs_steps_1_and_3_without_a_reward_model(algorithm, fake_steps, tmp_path,
                                                                        monkeypatch) -> None:
    verifier = e2e_rlhf.STEP_DIRS[3] / "training_scripts" / "tiny" / "single_gpu" / "run_tiny_verifier.sh"
    verifier.write_text(RECORDING_SCRIPT.replace("${OUTPUT_ARG}", "$3").replace("STEP", "3v"))
    monkeypatch.setattr(e2e_rlhf, "check_step3_inputs", lambda plan: None)
    monkeypatch.chdir(tmp_path)
    (tmp_path / "mine.py").write_text("def score(prompt, response):\n    return 1.0\n")
    out = tmp_path / "out"
    assert e2e_rlhf.main(["--output-dir", str(out), "--actor-model", "tiny-opt", "--step3-algorithm", algorithm,
                          "--reward-fn", "mine.py:score", "--seed", "7", "--no-report"]) == 0
    actor, rl = out / "actor-models" / "tiny-opt", out / "step3-models" / f"tiny-opt-{algorithm}"
    assert calls_of(fake_steps) == [
        f"step=1 model=tiny-opt args={actor}  --seed 7",
        f"step=3v model=unset args={actor}  {rl} --seed 7 --algorithm {algorithm} --reward_fn "
        f"{tmp_path / 'mine.py'}:score",
        f"step=1 model={actor} args={out / 'ablation-models' / f'tiny-opt-{algorithm}'}  --seed 7 --model_name_or_path "
        f"{actor} --data_share 2 --max_steps 5 --learning_rate 0.5 --lr_scheduler_type constant",
    ]


@pytest.mark.parametrize(("flags", "reward_fns"), [((), ["synthetic_tasks"]),
                                                  (("--reward_fn", "mine.py:score"), ["mine.py:score"])])
def test_the_verifier_script_takes_the_checker_unless_given_a_reward_function(flags, reward_fns, tmp_path) -> None:
    """``--reward_fn`` repeats, so the script's own checker must give way to one the e2e runner passes, or both
    would score every answer."""
    import subprocess

    recorder = tmp_path / "bin" / "deepspeed"
    recorder.parent.mkdir()
    recorder.write_text(f'#!/bin/bash\nprintf "%s\\n" "$@" > {tmp_path / "argv"}\n')
    recorder.chmod(0o755)
    script = e2e_rlhf.STEP_DIRS[3] / "training_scripts" / "tiny" / "single_gpu" / "run_tiny_verifier.sh"
    env = {"PATH": f"{recorder.parent}:/usr/bin:/bin"}
    subprocess.run(["bash", str(script), "actor", "0", str(tmp_path / "out"), *flags], env=env, check=True,
                   capture_output=True)
    argv = (tmp_path / "argv").read_text().splitlines()
    assert [argv[i + 1] for i, token in enumerate(argv) if token == "--reward_fn"] == reward_fns


def test_model_choices_pick_the_deepspeed_chat_scripts() -> None:
    assert e2e_rlhf.parse_model("facebook/opt-1.3b") == e2e_rlhf.ModelChoice("1.3b", "opt", "1.3b",
                                                                               "facebook/opt-1.3b")
    llama = e2e_rlhf.parse_model("meta-llama/Llama-2-7b-hf")
    assert (llama.label, llama.family, llama.size, llama.memory_name) == ("llama2-7b", "llama2", "7b", "llama-2-7b")
    assert e2e_rlhf.parse_model("llama2-7b") == llama
    tiny = e2e_rlhf.parse_model("tiny-llama")
    assert (tiny.family, tiny.model_env, tiny.label) == ("tiny", "tiny-llama", "tiny-llama")
    def plan(deployment: str) -> e2e_rlhf.Plan:
        flags = ["--step", "1", "--actor-model", "6.7b", "--deployment-type", deployment]
        return e2e_rlhf.make_plan(e2e_rlhf.build_parser().parse_args(flags))

    assert plan("single_gpu").script(1).name == "run_6.7b_lora.sh"
    with pytest.raises(e2e_rlhf.RunnerError, match="no script run_6.7b.sh .* there: run_66b.sh"):
        plan("multi_node")


def test_a_failing_step_shows_its_log_tail_and_stops_the_run(tmp_path, monkeypatch, capsys) -> None:
    calls = tmp_path / "calls.txt"
    monkeypatch.setenv("CALLS_FILE", str(calls))
    monkeypatch.setenv("LAST_LINE", "ValueError: bad flag")
    monkeypatch.setattr(e2e_rlhf, "STEP_DIRS", make_scripts(tmp_path / "pkg", {1: FAILING_SCRIPT,
                                                                                2: RECORDING_SCRIPT}))
    out = tmp_path / "out"
    assert e2e_rlhf.main(["--step", "1", "2", "--output-dir", str(out), "--actor-model", "tiny-opt"]) == 1
    err = capsys.readouterr().err
    assert "Step 1 (SFT) failed with exit code 3" in err
    assert "log line 100" in err and "ValueError: bad flag" in err and "log line 50\n" not in err
    assert "| train: 100%\n" in err and "train:  50%" not in err
    assert "out of memory" not in err
    assert calls_of(calls) == [] and not (out / "report.md").exists()
    timing = json.loads((out / "e2e_timings.json").read_text())["outputs"][str(out / "actor-models" / "tiny-opt")]
    assert timing["status"] == "failed (exit code 3)"


APPENDING_FAILING_SCRIPT = """#!/bin/bash
OUTPUT=$1
mkdir -p "$OUTPUT"
echo "resumed at step 3" >> "$OUTPUT/training.log"
echo "ValueError: bad flag" >> "$OUTPUT/training.log"
exit 3
"""
PACKAGE = Path(e2e_rlhf.__file__).resolve().parents[1]

def test_training_scripts_append_to_the_log_so_a_resumed_run_keeps_the_earlier_one() -> None:
    scripts = sorted(PACKAGE.glob("step*/training_scripts/**/run_*.sh"))
    assert len(scripts) > 30
    for script in scripts:
        text = script.read_text()
        assert 'tee -a "$OUTPUT/training.log"' in text and 'tee "$OUTPUT' not in text, script


def test_a_failing_step_shows_only_its_own_part_of_an_appended_log(tmp_path, monkeypatch, capsys) -> None:
    """The earlier run's lines (here an out-of-memory error) stay in the log, but the failure names this run's."""
    monkeypatch.setattr(e2e_rlhf, "STEP_DIRS", make_scripts(tmp_path / "pkg", {1: APPENDING_FAILING_SCRIPT}))
    out = tmp_path / "out"
    log = out / "actor-models" / "tiny-opt" / "training.log"
    log.parent.mkdir(parents=True)
    log.write_text("earlier run line\ntorch.OutOfMemoryError: CUDA out of memory.\n")
    assert e2e_rlhf.main(["--step", "1", "--output-dir", str(out), "--actor-model", "tiny-opt"]) == 1
    err = capsys.readouterr().err
    assert "| resumed at step 3" in err and "| ValueError: bad flag" in err
    assert "earlier run line" not in err and "out of memory" not in err
    assert log.read_text().startswith("earlier run line\n")


def test_an_out_of_memory_error_gives_the_settings_to_change(tmp_path, monkeypatch, capsys) -> None:
    monkeypatch.setenv("LAST_LINE", "torch.OutOfMemoryError: CUDA out of memory. Tried to allocate 2.00 GiB")
    monkeypatch.setattr(e2e_rlhf, "STEP_DIRS", make_scripts(tmp_path / "pkg", {2: FAILING_SCRIPT}))
    assert e2e_rlhf.main(["--step", "2", "--output-dir", str(tmp_path / "out"), "--reward-model", "tiny-opt"]) == 1
    err = capsys.readouterr().err
    assert "looks out of memory" in err
    for advice in ("--per_device_train_batch_size", "--reward-zero-stage 3", "--offload", "--gradient_checkpointing",
                   "--lora_dim 128 --only_optimize_lora", "chatrlhf memory --step 2 --model tiny-opt"):
        assert advice in err


def test_step3_refuses_to_start_without_the_step1_and_step2_models(fake_steps, tmp_path, capsys) -> None:
    out = tmp_path / "out"
    (out / "actor-models" / "tiny-opt").mkdir(parents=True)
    (out / "actor-models" / "tiny-opt" / "config.json").write_text("{not json")
    assert e2e_rlhf.main(["--step", "3", "--output-dir", str(out), "--actor-model", "tiny-opt",
                          "--reward-model", "tiny-opt"]) == 1
    err = capsys.readouterr().err
    assert f"step-1 actor in {out / 'actor-models' / 'tiny-opt'}, but its config does not load" in err
    assert f"step-2 reward model in {out / 'reward-models' / 'tiny-opt'}, but the directory does not exist" in err
    hint = f"Run step 2 first: chatrlhf e2e --step 2 --actor-model tiny-opt --reward-model tiny-opt --output-dir {out}"
    assert hint in err
    assert calls_of(fake_steps) == []


# ----- a real, shortened run of the three steps


@pytest.fixture(scope="module")
def e2e_run(cache_root, data_cache, tmp_path_factory) -> Path:
    """All three tiny steps through the runner with a few steps each, and the report (~2-3 min on 2 cores)."""
    out = tmp_path_factory.mktemp("e2e")
    common = f"--data_output_path {data_cache} --eval_iters 2 --log_interval 2"
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("PPO_STEPS", "3")
        assert e2e_rlhf.main([
            "--output-dir", str(out), "--actor-model", "tiny-opt", "--reward-model", "tiny-opt",
            f"--step1-args={common} --max_steps 24", f"--step2-args={common} --max_steps 16",
            f"--step3-args=--data_output_path {data_cache} --eval_prompts 16 --log_interval 1",
            "--report-prompts", "20", "--report-examples", "3",
        ]) == 0
    return out


@pytest.mark.slow
def test_report_has_every_steps_figures_and_plots(e2e_run) -> None:
    report = (e2e_run / "report.md").read_text()
    for section in ("## Wall time", "## Step 1: supervised fine-tuning", "## Step 2: reward model", "## Step 3: PPO",
                    "## Model comparison on held-out prompts"):
        assert section in report
    assert "| 1 (SFT) | `actor-models/tiny-opt` |" in report and "| report |" in report and "| total |" in report
    assert "| perplexity |" in report and "| accuracy |" in report
    assert "Accuracy per task:" in report and "Accuracy per mistake:" in report and "| off_by_n |" in report
    assert "| reward | " in report and "| KL to reference |" in report and "| answer length (tokens) |" in report
    assert "| checker accuracy overall |" in report and "| mean reward |" in report
    for label in ("base (tiny-opt)", "step 1 (SFT)", "step 3 (PPO)", "demonstrators (step 1's data)",
                  "ablation: step 1 + chosen answers (PPO's updates)"):
        assert f"| {label} | " in report
    assert "## Data: `synthetic/tasks`, imperfect demonstrators" in report and "count: slips 60%" in report
    ablation = e2e_run / "ablation-models" / "tiny-opt-ppo"
    assert json.loads((ablation / "metrics.json").read_text())["steps"] == 3  # PPO_STEPS iterations, one update each
    assert "| ablation (PPO's updates) | `ablation-models/tiny-opt-ppo` |" in report
    for name in ("step1_loss", "step1_perplexity", "step2_accuracy", "step3_ppo_reward", "step3_ppo_kl",
                 "step3_ppo_answer_length"):
        png = e2e_run / "plots" / f"{name}.png"
        assert f"(plots/{name}.png)" in report
        assert png.stat().st_size > 1000 and png.read_bytes()[:8] == PNG_MAGIC
    assert not list(e2e_run.glob(".*.tmp")) and not list((e2e_run / "plots").glob(".*"))


@pytest.mark.slow
def test_the_step3_check_loads_real_models_and_names_broken_ones(e2e_run, tmp_path) -> None:
    actor = e2e_run / "actor-models" / "tiny-opt"
    assert e2e_rlhf.model_problem(actor) is None
    assert e2e_rlhf.model_problem(e2e_run / "reward-models" / "tiny-opt") is None
    broken = tmp_path / "broken"
    shutil.copytree(actor, broken)
    weights = broken / "model.safetensors"
    weights.write_bytes(weights.read_bytes()[: weights.stat().st_size // 2])
    assert "model.safetensors does not open" in e2e_rlhf.model_problem(broken)
    shutil.copy(actor / "model.safetensors", weights)
    (broken / "tokenizer.json").unlink()
    (broken / "tokenizer_config.json").unlink()
    assert "tokenizer does not load" in e2e_rlhf.model_problem(broken)
    weights.unlink()
    assert e2e_rlhf.model_problem(broken).startswith("it holds no weights")


@pytest.mark.slow
def test_compare_two_tiny_models_with_checker_and_reward(e2e_run, tmp_path, capsys) -> None:
    actor, ppo = e2e_run / "actor-models" / "tiny-opt", e2e_run / "step3-models" / "tiny-opt" / "actor"
    output = tmp_path / "compare.md"
    assert cli(["compare", str(actor), str(ppo), "--labels", "sft", "ppo", "--synthetic", "10",
                "--reward_model", str(e2e_run / "reward-models" / "tiny-opt"), "--max_new_tokens", "24",
                "--output_file", str(output)]) == 0
    markdown = output.read_text()
    rows = [line for line in markdown.splitlines() if line.startswith(("| sft |", "| ppo |"))]
    assert len(rows) == 4  # the summary and the per-task tables
    assert all(cell.strip() != "-" for row in rows[:2] for cell in row.split("|")[1:-1])
    printed = capsys.readouterr().out
    assert "checker accuracy" in printed
    assert re.search(r"ppo wins over sft on \d+\.\d% of 10 prompts", printed) and "ppo wins over sft" in markdown

    questions = tmp_path / "questions.jsonl"
    dialogue = "\n\nHuman: Hi\n\nAssistant: Hello.\n\nHuman: What is 4 plus 4?\n\nAssistant:"
    questions.write_text(json.dumps({"question_id": 1, "turns": ["What is 2 plus 3?"]}) + "\n"
                         + json.dumps({"prompt": dialogue}) + "\n")
    assert cli(["compare", str(actor), str(ppo), "--prompts_file", str(questions), "--max_new_tokens", "8"]) == 0
    printed = capsys.readouterr().out
    assert f"[{actor}]" in printed and f"[{ppo}]" in printed and "What is 2 plus 3?" in printed
    assert "What is 4 plus 4?" in printed and printed.count("Human:") >= 3  # the dialogue is kept whole


@pytest.fixture
def library_bars_on():
    """The progress bars of datasets and transformers on, as in a fresh process; restored afterwards."""
    import datasets
    from transformers.utils import logging as transformers_logging

    was = datasets.is_progress_bar_enabled(), transformers_logging.is_progress_bar_enabled()
    datasets.enable_progress_bars()
    transformers_logging.enable_progress_bar()
    yield
    if not was[0]:
        datasets.disable_progress_bars()
    if not was[1]:
        transformers_logging.disable_progress_bar()


def test_a_redirected_report_has_no_progress_bar_frames(sft_model, tmp_path, capfd, library_bars_on) -> None:
    """Off a terminal the report stage, which loads and runs models in the runner's process, draws no bars."""
    out = tmp_path / "out"
    shutil.copytree(sft_model, out / "actor-models" / "tiny-opt")
    assert e2e_rlhf.main(["--report-only", "--output-dir", str(out), "--actor-model", "tiny-opt",
                          "--reward-model", "tiny-opt", "--report-prompts", "2", "--report-examples", "1"]) == 0
    printed = "".join(capfd.readouterr())
    assert "wrote " in printed and "\r" not in printed
    assert (out / "report.md").is_file()


def test_compare_rejects_mismatched_labels(capsys) -> None:
    with pytest.raises(SystemExit):
        cli(["compare", "tiny-opt", "tiny-llama", "--labels", "only-one"])
    assert "--labels gives 1 labels for 2 models" in capsys.readouterr().err


@pytest.mark.slow
def test_grpo_on_the_checker_sits_beside_ppo_in_the_report(e2e_run, data_cache, tmp_path, monkeypatch) -> None:
    """Step 3 with GRPO on the exact checker from the run's step-1 model: no critic, and the report compares
    base, SFT, PPO and GRPO, greedy and sampled, on held-out and on novel-word prompts."""
    out = tmp_path / "out"
    for kind in ("actor-models", "reward-models", "step3-models"):
        shutil.copytree(e2e_run / kind, out / kind)
    monkeypatch.setenv("RL_STEPS", "2")
    assert e2e_rlhf.main([
        "--step", "3", "--output-dir", str(out), "--actor-model", "tiny-opt", "--step3-algorithm", "grpo",
        "--reward-fn", "synthetic_tasks", "--no-ablation", "--report-prompts", "10", "--report-examples", "2",
        f"--step3-args=--data_output_path {data_cache} --eval_prompts 8 --per_device_generation_batch_size 4 "
        "--num_samples_per_prompt 4 --per_device_training_batch_size 16 --max_answer_seq_len 16",
    ]) == 0
    grpo = out / "step3-models" / "tiny-opt-grpo"
    assert (grpo / "actor" / "config.json").is_file() and not (grpo / "critic").exists()
    metrics = json.loads((grpo / "metrics.json").read_text())
    assert metrics["iterations"] == 2 and "accuracy" in metrics["history"][-1]
    report = (out / "report.md").read_text()
    for text in ("## Step 3: PPO", "## Step 3: GRPO", "| step 3 (PPO) | ", "| step 3 (GRPO) | ", "pass@1 (sampled)",
                 "words outside `words.txt`", "(plots/step3_grpo_accuracy.png)"):
        assert text in report, text
