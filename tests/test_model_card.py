"""The model card every saved model carries, and ``--save_lora_adapter``'s peft adapter."""
from __future__ import annotations

import shlex
import sys
from pathlib import Path

import pytest
import torch
import yaml
from transformers import AutoModelForCausalLM, AutoModelForSequenceClassification

from chatrlhf.step1_sft.main import main as sft_main
from chatrlhf.training.model_card import CARD_FILE, ModelCard, Result, render
from chatrlhf.utils.data.config import DataConfig
from chatrlhf.utils.model.resolve import resolve_model


def front_matter(text: str) -> tuple[dict, str]:
    """The card's YAML header, parsed, and its Markdown body."""
    assert text.startswith("---\n")
    header, body = text[4:].split("\n---\n", 1)
    return yaml.safe_load(header), body


@pytest.fixture(scope="module")
def lora_run(cache_root, data_cache, tmp_path_factory) -> tuple[Path, list[str]]:
    """A three-step LoRA SFT run that saves its adapter too; returns its folder and command line."""
    out = tmp_path_factory.mktemp("card") / "lora run"
    argv = ["step1_sft/main.py", "--output_dir", str(out), "--max_steps", "3", "--per_device_train_batch_size", "4",
            "--max_seq_len", "64", "--lora_dim", "4", "--only_optimize_lora", "--lora_learning_rate", "5e-2",
            "--save_lora_adapter", "--data_output_path", data_cache, "--eval_iters", "1", "--log_interval", "1"]
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(sys, "argv", argv)
        assert sft_main(argv[1:]) == 0
    return out, argv


def test_step1_card_has_the_hub_header_the_command_and_the_metrics(lora_run):
    out, argv = lora_run
    header, body = front_matter((out / CARD_FILE).read_text())
    assert header["base_model"] == "tiny-opt" and header["datasets"] == ["synthetic/tasks"]
    assert header["library_name"] == "transformers" and header["tags"][:2] == ["chatrlhf", "sft"]
    assert shlex.join(argv) in body and "'" in shlex.join(argv)  # the output folder's space is quoted
    assert "supervised fine-tuning" in body and "`--data_split 2,4,4`" in body
    assert "- optimizer steps: 3" in body and "- tokens seen: " in body
    assert "| eval loss | " in body and "| eval perplexity | " in body
    assert "| LoRA | rank 4 on `decoder.layers.`" in body
    assert "[`chatrlhf_args.json`](chatrlhf_args.json)" in body and (out / "chatrlhf_args.json").is_file()


def test_adapter_on_the_base_model_gives_the_merged_models_logits(lora_run):
    from peft import PeftModel

    out, _ = lora_run
    assert {p.name for p in (out / "adapter").iterdir()} >= {"adapter_config.json", "adapter_model.safetensors"}
    base = AutoModelForCausalLM.from_pretrained(resolve_model("tiny-opt", DataConfig()))
    adapted = PeftModel.from_pretrained(base, str(out / "adapter")).eval()
    merged = AutoModelForCausalLM.from_pretrained(out).eval()
    ids = torch.randint(3, 250, (2, 16), generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        expected = merged(input_ids=ids).logits
        torch.testing.assert_close(adapted(input_ids=ids).logits, expected, atol=1e-5, rtol=0)
        with adapted.disable_adapter():
            assert not torch.allclose(adapted(input_ids=ids).logits, expected, atol=1e-3)  # the adapter matters


def test_reward_adapter_carries_the_trained_head(tmp_path):
    """A LoRA reward model trains its head whole: the adapter holds it as peft's ``modules_to_save``."""
    from peft import PeftModel

    from chatrlhf.training.config import LoraSettings
    from chatrlhf.training.lora import apply_lora
    from chatrlhf.training.saving import save_hf_model
    from chatrlhf.utils.model.loading import ModelOptions, load_tokenizer
    from chatrlhf.utils.model.reward_model import HEAD_NAME, load_reward_model, token_values

    path = resolve_model("tiny-opt", DataConfig())
    tokenizer = load_tokenizer(path, ModelOptions())
    model = apply_lora(load_reward_model(path, tokenizer, ModelOptions()),
                       LoraSettings(4, "decoder.layers.", only_optimize_lora=True), trainable_modules=(HEAD_NAME,))
    with torch.no_grad():  # stand-in for training: move every trainable weight
        for param in model.parameters():
            if param.requires_grad:
                param.add_(torch.randn_like(param) * 0.1)
    save_hf_model(model, tokenizer, str(tmp_path / "rm"), adapter=True)
    base = AutoModelForSequenceClassification.from_pretrained(path, num_labels=1)
    adapted = PeftModel.from_pretrained(base, str(tmp_path / "rm" / "adapter")).eval()
    merged = AutoModelForSequenceClassification.from_pretrained(tmp_path / "rm").eval()
    ids = torch.randint(3, 250, (2, 12), generator=torch.Generator().manual_seed(0))
    mask = torch.ones_like(ids)
    with torch.no_grad():
        torch.testing.assert_close(token_values(adapted, ids, mask), token_values(merged, ids, mask), atol=1e-5,
                                   rtol=0)


@pytest.mark.parametrize("lora", [["--lora_dim", "4"], ["--only_optimize_lora"]])
def test_save_lora_adapter_without_adapters_alone_is_refused(lora, tmp_path, capsys):
    assert sft_main(["--output_dir", str(tmp_path / "out"), "--save_lora_adapter", *lora]) == 2
    err = capsys.readouterr().err
    assert "--save_lora_adapter needs --lora_dim > 0 and --only_optimize_lora" in err and "Traceback" not in err
    assert not (tmp_path / "out").exists()


def test_missing_figures_leave_lines_out_instead_of_failing():
    card = ModelCard(tags=("dpo",), title="t", method="m", base_model="b", step=2, sources=("a:2", "b"),
                     data_split="2,4,4", settings={"beta": 0.1, "unset": None},
                     training={"optimizer steps": 0, "tokens seen": None},
                     results=[Result("never computed", None, None), Result("kept", None, 0.5)])
    header, body = front_matter(render(card))
    assert header["datasets"] == ["a", "b"] and header["tags"] == ["chatrlhf", "dpo"]
    assert "unset" not in body and "tokens seen" not in body and "never computed" not in body
    assert "| kept | - | 0.5 |" in body and "chatrlhf_args.json" not in body
    no_results = render(ModelCard(tags=("sft",), title="t", method="m", base_model="b", step=1, sources=("a",),
                                  data_split="10,0,0"))
    assert "## Results" not in no_results
