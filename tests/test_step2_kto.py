"""Step 2 alternative, KTO: the loss against hand-worked values, the reference point, unpairing pair data, local and
hub-format unpaired sources and their errors, flag checks, and a short real run that saves a causal LM."""
from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from transformers import AutoModelForCausalLM

from chatrlhf.step2_kto.kto_loss import KTOConfig, kto_loss, reference_point
from chatrlhf.step2_kto.kto_task import unpaired_metrics
from chatrlhf.step2_kto.main import main as kto_main
from chatrlhf.utils.data.collators import UnpairedCollator
from chatrlhf.utils.data.config import DataConfig
from chatrlhf.utils.data.errors import DataError
from chatrlhf.utils.data.records import Record
from chatrlhf.utils.data.unpaired import NO_PAIR, unpair

# Worked by hand: σ(1) = 1 / (1 + e^-1) = 0.7310585786300049.
SIGMOID_1 = 0.7310585786300049


def _t(*values: float) -> torch.Tensor:
    return torch.tensor(values, dtype=torch.float64)


# ----- the loss


def test_kto_loss_of_desirable_and_undesirable_completions_against_the_reference_point():
    # beta 0.5. Desirable: policy -10, reference -12, r = 2. Undesirable: policy -14, reference -12, r = -2.
    config = KTOConfig("kto", beta=0.5)
    labels = torch.tensor([True, False])
    at_zero = kto_loss(config, _t(-10.0, -14.0), _t(-12.0, -12.0), labels, torch.tensor(0.0))
    # Desirable 1 - σ(0.5 (2 - 0)) = 1 - σ(1); undesirable 1 - σ(0.5 (0 - -2)) = 1 - σ(1).
    torch.testing.assert_close(at_zero.losses, _t(1 - SIGMOID_1, 1 - SIGMOID_1))
    torch.testing.assert_close(at_zero.rewards, _t(1.0, -1.0))  # β r
    # z0 = 2: the desirable completion is exactly at the reference point, 1 - σ(0) = 0.5; the undesirable one
    # 1 - σ(0.5 (2 + 2)) = 1 - σ(2).
    at_two = kto_loss(config, _t(-10.0, -14.0), _t(-12.0, -12.0), labels, torch.tensor(2.0))
    torch.testing.assert_close(at_two.losses, _t(0.5, 1 - torch.sigmoid(torch.tensor(2.0, dtype=torch.float64))))


def test_weights_scale_each_side():
    config = KTOConfig("kto", beta=0.5, desirable_weight=2.0, undesirable_weight=0.25)
    out = kto_loss(config, _t(-10.0, -14.0), _t(-12.0, -12.0), torch.tensor([True, False]), torch.tensor(0.0))
    torch.testing.assert_close(out.losses, _t(2 * (1 - SIGMOID_1), 0.25 * (1 - SIGMOID_1)))


def test_reference_point_is_the_mean_mismatched_log_ratio_clamped_at_zero():
    # Log-ratios 3 and 0: mean 1.5.
    assert reference_point(_t(-5.0, -8.0), _t(-8.0, -8.0)).item() == pytest.approx(1.5)
    # Log-ratios -3 and -1: mean -2, clamped to 0.
    assert reference_point(_t(-11.0, -9.0), _t(-8.0, -8.0)).item() == 0.0
    kl_logps = _t(-5.0, -8.0).requires_grad_(True)
    assert not reference_point(kl_logps, _t(-8.0, -8.0)).requires_grad  # a constant of the loss


def test_apo_zero_unpaired_uses_no_reference_point():
    config = KTOConfig("apo_zero_unpaired", beta=0.5)
    out = kto_loss(config, _t(-10.0, -10.0), _t(-12.0, -12.0), torch.tensor([True, False]), None)
    # r = 2 for both: desirable 1 - σ(1), undesirable σ(1).
    torch.testing.assert_close(out.losses, _t(1 - SIGMOID_1, SIGMOID_1))
    assert out.kl.item() == 0.0


@pytest.mark.parametrize("kwargs, flag", [({"beta": 0.0}, "--beta"), ({"desirable_weight": -1.0}, "--desirable_weight"),
                                          ({"undesirable_weight": 0.0}, "--undesirable_weight"),
                                          ({"loss_type": "sigmoid"}, "--loss_type")])
def test_config_errors_name_the_flag(kwargs, flag):
    from chatrlhf.training.validation import ConfigError

    with pytest.raises(ConfigError, match=flag):
        KTOConfig(**kwargs)


def test_held_out_metrics_rewards_margin_and_pair_accuracy():
    columns = {"loss": [0.2, 0.4, 0.6, 0.8], "reward": [1.0, -1.0, 0.0, 0.5], "logp": [-1.0, -2.0, -3.0, -4.0],
               "label": [True, False, True, False], "pair": [0, 0, 1, 1], "kl": [0.5, 1.5]}
    metrics = unpaired_metrics(columns)
    assert metrics["loss"] == pytest.approx(0.5) and metrics["kl"] == pytest.approx(1.0)
    assert metrics["desirable_reward"] == pytest.approx(0.5) and metrics["undesirable_reward"] == pytest.approx(-0.25)
    assert metrics["reward_margin"] == pytest.approx(0.75)
    assert metrics["reward_accuracy"] == pytest.approx(0.5)  # pair 0 right, pair 1 wrong
    unpaired = unpaired_metrics({**columns, "pair": [NO_PAIR] * 4})
    assert "reward_accuracy" not in unpaired


# ----- the data


def test_pairs_unpair_into_a_desirable_and_an_undesirable_completion():
    pair = Record("Q1", "good", "bad", "src", "src:1")
    single = Record("Q2", "meh", None, "src", "src:2", {"label": False})
    out = unpair([pair, single])
    assert [(c.record.prompt, c.text, c.desirable, c.pair) for c in out] == [
        ("Q1", "good", True, 0), ("Q1", "bad", False, 0), ("Q2", "meh", False, NO_PAIR)]


def test_collator_builds_mismatched_rows_from_the_previous_completion():
    rows = [{"input_ids": [1, 2, 10, 11], "prompt_len": 2, "label": True, "pair": 0, "task": "", "mistake": ""},
            {"input_ids": [3, 20], "prompt_len": 1, "label": False, "pair": 0, "task": "", "mistake": ""},
            {"input_ids": [4, 5, 6, 30, 31, 32], "prompt_len": 3, "label": True, "pair": -1, "task": "",
             "mistake": ""}]
    batch = UnpairedCollator(pad_id=0, max_len=5)(rows)
    # Row i's prompt with row i-1's completion (the last row's for the first), cut to 5 tokens.
    assert batch["kl_input_ids"].tolist() == [[1, 2, 30, 31, 32], [3, 10, 11, 0, 0], [4, 5, 6, 20, 0]]
    assert batch["kl_attention_mask"].tolist() == [[1] * 5, [1, 1, 1, 0, 0], [1, 1, 1, 1, 0]]
    assert batch["label"].tolist() == [True, False, True] and batch["prompt_len"].tolist() == [2, 1, 3]
    assert "kl_input_ids" not in UnpairedCollator(pad_id=0, max_len=5, kl=False)(rows)


@pytest.fixture(scope="module")
def tokenizer(cache_root):
    from chatrlhf.utils.model.loading import ModelOptions, load_tokenizer
    from chatrlhf.utils.model.resolve import resolve_model

    return load_tokenizer(resolve_model("tiny-llama", DataConfig()), ModelOptions())


def test_synthetic_pairs_become_two_rows_each_sharing_the_prompt(tokenizer, data_cache):
    from chatrlhf.utils.data.tokenized import build_step_data

    cfg = DataConfig(data_split="90,5,5", data_output_path=data_cache, max_seq_len=96)
    pairs = build_step_data(cfg, 2, tokenizer)
    rows = build_step_data(cfg, 2, tokenizer, unpaired=True)
    assert len(rows.train) == 2 * len(pairs.train) and len(rows.eval) == 2 * len(pairs.eval)
    assert rows.info["cache_dir"] != pairs.info["cache_dir"]
    labels, ids = rows.eval["label"], rows.eval["input_ids"]
    by_pair: dict[int, list[int]] = {}
    for index, pair in enumerate(rows.eval["pair"]):
        by_pair.setdefault(pair, []).append(index)
    assert all(len(group) == 2 for group in by_pair.values()) and NO_PAIR not in by_pair
    for good, bad in by_pair.values():
        assert labels[good] and not labels[bad]
        length = rows.eval["prompt_len"][good]
        assert ids[good][:length] == ids[bad][:length]
    assert sorted(ids[i] for i in range(len(ids)) if labels[i]) == sorted(pairs.eval["chosen_ids"])


def _write_jsonl(path: Path, rows: list[dict]) -> Path:
    path.write_text("".join(json.dumps(row) + "\n" for row in rows))
    return path


def _unpaired_rows(count: int) -> list[dict]:
    return [{"prompt": f"Say the word number {i}.", "completion": f"word{i}" if i % 2 else "no", "label": bool(i % 2)}
            for i in range(count)]


def test_local_unpaired_file_keeps_labels_and_step1_drops_the_undesirable_rows(tokenizer, tmp_path):
    from chatrlhf.utils.data.partitions import step_records

    source = _write_jsonl(tmp_path / "kto.jsonl", _unpaired_rows(40))
    cfg = DataConfig(data_path=(str(source),), data_split="1,1,0", data_output_path=str(tmp_path / "cache"))
    kto = step_records(cfg, 2, unpaired=True)
    assert {r.meta["label"] for r in kto.train} == {True, False}
    assert all(r.rejected is None and (r.meta["label"] == (r.chosen.strip() != "no")) for r in kto.train)
    assert step_records(cfg, 2).train == []  # the reward model and DPO need pairs
    sft = step_records(cfg, 1)
    assert sft.train and all(r.meta["label"] for r in sft.train + sft.eval)


@pytest.mark.parametrize("label, expected", [("yes", "field 'label' holds 'yes', expected true"),
                                             (1, "field 'label' holds 1, expected true"),
                                             (None, "field 'label' is missing or null")])
def test_a_bad_label_names_the_file_line_and_field(label, expected, tokenizer, tmp_path, capsys):
    rows = _unpaired_rows(6)
    rows[3]["label"] = label
    source = _write_jsonl(tmp_path / "bad.jsonl", rows)
    from chatrlhf.utils.data.partitions import step_records

    cfg = DataConfig(data_path=(str(source),), data_split="0,1,0", data_output_path=str(tmp_path / "cache"))
    with pytest.raises(DataError, match=expected) as error:
        step_records(cfg, 2, unpaired=True)
    assert f"{source}:4" in str(error.value)
    out = tmp_path / "out"
    assert kto_main(["--data_path", str(source), "--output_dir", str(out), "--model_name_or_path", "tiny-llama",
                     "--data_output_path", str(tmp_path / "cache")]) == 2
    err = capsys.readouterr().err
    assert err.startswith("chatrlhf kto: error: ") and f"{source}:4" in err and "'label'" in err


def test_hub_format_conversational_rows_read_from_a_local_copy(tmp_path):
    from chatrlhf.utils.data.options import SourceOptions
    from chatrlhf.utils.data.sources import open_source, to_records

    folder = tmp_path / "trl-lib" / "kto-mix-14k"
    folder.mkdir(parents=True)
    row = {"prompt": [{"role": "user", "content": "Hi?"}], "completion": [{"role": "assistant", "content": "Hello."}],
           "label": False}
    _write_jsonl(folder / "train.jsonl", [row])
    _write_jsonl(folder / "test.jsonl", [row])
    source = open_source(str(folder), seed=1, options=SourceOptions())
    records, _ = to_records(source, "train")
    assert records[0].prompt == "\n\nHuman: Hi?\n\nAssistant:" and records[0].chosen == " Hello."
    assert records[0].meta == {"label": False}
    from chatrlhf.utils.data.unpaired import is_unpaired_source_row

    # A hub row's label is checked where KTO selects its rows, with the row's location.
    numbered = Record(records[0].prompt, records[0].chosen, None, "hub", "hub [train #7]", {"label": 1})
    with pytest.raises(DataError, match=r"hub \[train #7\]: field 'label' holds 1, expected true"):
        is_unpaired_source_row(numbered)


@pytest.mark.parametrize("flags, flag", [
    (["--per_device_train_batch_size", "1"], "--per_device_train_batch_size"),
    (["--margin_column", "m"], "--margin_column"),
    (["--lora_dim", "4", "--only_optimize_lora", "--offload_reference_model"], "--offload_reference_model"),
    (["--desirable_weight", "0"], "--desirable_weight"),
])
def test_bad_flag_combinations_fail_up_front_naming_the_flag(flags, flag, tmp_path, capsys):
    out = tmp_path / "out"
    assert kto_main(["--output_dir", str(out), *flags]) == 2
    error = capsys.readouterr().err
    assert error.startswith("chatrlhf kto: error: ") and flag in error
    assert not out.exists()


# ----- a short real run


def test_kto_run_on_a_local_file_saves_a_causal_lm_and_held_out_metrics(tmp_path, data_cache):
    from chatrlhf.cli import main as cli

    rows = _unpaired_rows(60) + [{"prompt": f"Pick {i}.", "chosen": f"p{i}", "rejected": "x"} for i in range(30)]
    singles = _write_jsonl(tmp_path / "kto.jsonl", rows[:60])
    pairs = _write_jsonl(tmp_path / "pairs.jsonl", rows[60:])
    out = tmp_path / "kto"
    assert cli(["kto", "--model_name_or_path", "tiny-llama", "--output_dir", str(out), "--data_path", str(singles),
                str(pairs), "--data_split", "0,1,0", "--max_steps", "3", "--per_device_train_batch_size", "4",
                "--per_device_eval_batch_size", "4", "--max_seq_len", "48", "--data_output_path", data_cache,
                "--log_interval", "1", "--beta", "0.2"]) == 0
    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics["kto"]["loss_type"] == "kto" and metrics["kto"]["reference"] == "model"
    start, end = metrics["evals"][0], metrics["evals"][-1]
    for key in ("loss", "kl", "desirable_reward", "undesirable_reward", "reward_margin", "reward_accuracy"):
        assert key in end, key
    assert start["loss"] == pytest.approx(0.5) and start["kl"] == 0.0  # policy = reference: every r and z0 are 0
    assert end["desirable_reward"] != 0.0
    for key in ("kl", "desirable_share", "signed_reward"):
        assert key in metrics["history"][-1], key
    card = (out / "README.md").read_text()
    for text in ('- "kto"', "`kto` loss (beta 0.2)", "| desirable reward | 0 | ", "| KL estimate | "):
        assert text in card, text
    model = AutoModelForCausalLM.from_pretrained(out)
    assert model.config.model_type == "llama"
