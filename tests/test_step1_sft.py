"""Step 1: the command line, a short real run, the saved model, LoRA merging, prompt comparison."""
from __future__ import annotations

import json
import os

import pytest
import torch
from transformers import AutoModelForCausalLM, AutoTokenizer

from chatrlhf.step1_sft.main import build_parser
from chatrlhf.step1_sft.main import main as sft_main

DS_CHAT_STEP1 = (
    "--data_path Dahoas/rm-static --data_split 2,4,4 --model_name_or_path facebook/opt-1.3b "
    "--per_device_train_batch_size 8 --per_device_eval_batch_size 8 --max_seq_len 512 --learning_rate 9.65e-6 "
    "--weight_decay 0. --num_train_epochs 16 --gradient_accumulation_steps 1 --lr_scheduler_type cosine "
    "--num_warmup_steps 0 --seed 1234 --zero_stage 2 --deepspeed --output_dir out --lora_dim 128 "
    "--lora_module_name decoder.layers. --only_optimize_lora --lora_learning_rate 5e-4 --gradient_checkpointing "
    "--dropout 0.0 --offload --dtype bf16 --compute_fp32_loss --enable_tensorboard --tensorboard_path tb "
    "--add_eot_token --eot_token <|endoftext|> --print_loss --local_rank 0 --sft_only_data_path a b "
    "--data_output_path /tmp/x --per_device_eval_batch_size 4"
)


def test_accepts_a_deepspeed_chat_command_line():
    args = build_parser().parse_args(DS_CHAT_STEP1.split())
    assert args.zero_stage == 2 and args.lora_dim == 128 and args.only_optimize_lora
    assert args.data_path == ["Dahoas/rm-static"] and args.sft_only_data_path == ["a", "b"]
    assert args.dtype == "bf16" and args.deepspeed and args.learning_rate == pytest.approx(9.65e-6)


def test_trained_model_loads_and_learned(sft_model):
    model = AutoModelForCausalLM.from_pretrained(sft_model)
    tokenizer = AutoTokenizer.from_pretrained(sft_model)
    assert tokenizer.pad_token_id is not None
    assert os.path.exists(os.path.join(sft_model, "model.safetensors"))
    metrics = json.load(open(os.path.join(sft_model, "metrics.json")))
    evals = metrics["evals"]
    assert evals[0]["label"] == "start" and evals[-1]["label"].startswith("epoch")
    assert evals[-1]["loss"] < evals[0]["loss"] - 1.0
    assert metrics["steps"] == 12
    history = metrics["history"]
    assert all(k in history[-1] for k in ("loss", "perplexity", "lr", "tokens_per_s", "samples_per_s", "tflops"))
    ids = tokenizer("\n\nHuman: What is 1 plus 2?\n\nAssistant:", return_tensors="pt")["input_ids"]
    out = model.generate(ids, max_new_tokens=5, do_sample=False)
    assert out.shape[1] > ids.shape[1]
    assert any(name.startswith("events") for name in os.listdir(os.path.join(sft_model, "tb", "step1_model")))


def test_lora_run_merges_adapters(tmp_path, cache_root, data_cache):
    out = tmp_path / "lora"
    assert sft_main(["--output_dir", str(out), "--max_steps", "3", "--per_device_train_batch_size", "4",
                     "--max_seq_len", "64", "--lora_dim", "4", "--lora_module_name", "decoder.layers.",
                     "--only_optimize_lora", "--lora_learning_rate", "1e-2", "--data_output_path", data_cache,
                     "--eval_iters", "1"]) == 0
    model = AutoModelForCausalLM.from_pretrained(out)
    names = [n for n, _ in model.named_parameters()]
    assert not any("lora" in n for n in names)
    from chatrlhf.utils.data.config import DataConfig
    from chatrlhf.utils.model.resolve import resolve_model

    base = AutoModelForCausalLM.from_pretrained(resolve_model("tiny-opt", DataConfig()))
    changed = [n for n, p in model.named_parameters() if not torch.equal(p, dict(base.named_parameters())[n])]
    assert changed and all("decoder.layers." in n for n in changed)


def test_prompt_eval_compares_models(sft_model, tmp_path, capsys):
    from chatrlhf.step1_sft.prompt_eval import main as prompt_eval

    report = tmp_path / "cmp.md"
    assert prompt_eval(["--model_name_or_path_baseline", "tiny-opt", "--model_name_or_path_finetune", sft_model,
                        "--synthetic", "10", "--max_new_tokens", "8", "--output_file", str(report)]) == 0
    out = capsys.readouterr().out
    assert "baseline: checker accuracy" in out and "finetuned: checker accuracy" in out
    text = report.read_text()
    assert "| baseline |" in text and "| finetuned |" in text


def test_prompts_file_formats(tmp_path):
    from chatrlhf.utils.data.errors import DataError
    from chatrlhf.utils.data.prompt_files import read_prompts

    plain = tmp_path / "p.txt"
    plain.write_text("Hello there\n\nHow are you?\n")
    expected = ["\n\nHuman: Hello there\n\nAssistant:", "\n\nHuman: How are you?\n\nAssistant:"]
    assert read_prompts(str(plain), "hh") == expected
    bench = tmp_path / "q.jsonl"
    bench.write_text(json.dumps({"question_id": 1, "turns": ["Write a haiku.", "Again."]}) + "\n")
    assert read_prompts(str(bench), "hh") == ["\n\nHuman: Write a haiku.\n\nAssistant:"]
    dialogue = "\n\nHuman: Hi\n\nAssistant: Hello.\n\nHuman: And you?\n\nAssistant:"
    bench.write_text(json.dumps({"prompt": dialogue}) + "\n" + json.dumps({"prompt": "Bare question"}) + "\n")
    assert read_prompts(str(bench), "hh") == [dialogue, "\n\nHuman: Bare question\n\nAssistant:"]
    bench.write_text('{"question_id": 1}\n')
    with pytest.raises(DataError, match="q.jsonl:1"):
        read_prompts(str(bench), "hh")


def test_redirected_output_has_metric_lines_and_no_bar_frames(tmp_path, cache_root, data_cache, capfd):
    """Off a terminal a log reads line by line: one metric line per log interval, no carriage-return frames."""
    assert sft_main(["--output_dir", str(tmp_path / "out"), "--max_steps", "6", "--per_device_train_batch_size", "8",
                     "--max_seq_len", "96", "--data_output_path", data_cache, "--eval_iters", "1",
                     "--log_interval", "2"]) == 0
    out, err = capfd.readouterr()
    assert "\r" not in out + err
    assert sum(line.startswith("[train]") for line in out.splitlines()) == 3


def test_an_empty_eval_set_says_so_instead_of_a_loss_of_zero(capsys):
    from chatrlhf.step1_sft.sft_task import SFTTask

    assert SFTTask().evaluate(None, []) == {}
    assert "held-out set is empty" in capsys.readouterr().out
