"""Malformed inputs to each step and to ``chatrlhf data``: a clear error, a non-zero exit, outputs untouched.

Each case runs a real command in-process and checks the message, the exit code and the old outputs.
"""
from __future__ import annotations

import gzip
import json
import os
from pathlib import Path

import pytest

from chatrlhf.applications.data_report import main as data_main
from chatrlhf.step1_sft.main import main as sft_main
from chatrlhf.step2_reward.main import main as reward_main
from chatrlhf.step3_rlhf.main import main as ppo_main

GOOD = {"prompt": "\n\nHuman: hi?\n\nAssistant:", "chosen": " hello", "rejected": " go away"}


def lines(*rows) -> bytes:
    return b"".join((r if isinstance(r, bytes) else json.dumps(r).encode()) + b"\n" for r in rows)


HH_NO_SHARED_PROMPT = {"chosen": "\n\nHuman: a\n\nAssistant: b", "rejected": "\n\nHuman: c\n\nAssistant: d"}
# name -> (file name, bytes, extra flags, message expected on stderr)
FILE_CASES = {
    "invalid JSON": ("bad.jsonl", lines(GOOD, b'{"prompt": "x", "chosen": '), [], r"bad.jsonl:2"),
    "empty file": ("empty.jsonl", b"", [], "no records"),
    "missing column": ("missing.jsonl", lines(GOOD, {"prompt": "p", "chosen": " c"}), [], "missing field 'rejected'"),
    "misnamed column": ("renamed.jsonl", lines({"question": "q", "answer": "a"}), [], "cannot tell the schema"),
    "mapped column absent": ("mapped.jsonl", lines(GOOD), ["--prompt_column", "instruction"],
                             "'instruction' given by --prompt_column"),
    "non-UTF-8 bytes": ("latin.jsonl", lines(GOOD, b'{"prompt": "caf\xe9", "chosen": "a", "rejected": "b"}'), [],
                        "latin.jsonl:2"),
    "10 MB line": ("huge.jsonl", lines(GOOD, dict(GOOD, chosen=" " + "x" * 10_000_000)), [], "over the 1,000,000"),
    "non-string value": ("typed.jsonl", lines(GOOD, dict(GOOD, chosen=42)), [], "holds int"),
    "pairs without a shared prompt": ("hh.jsonl", lines(*[HH_NO_SHARED_PROMPT] * 3), ["--strict_data"],
                                      "pair without a shared prompt"),
    "gzip that is not gzip": ("broken.jsonl.gz", b"not gzip at all", [], "not a readable gzip file"),
}


def snapshot(folder: Path) -> dict[str, bytes]:
    return {str(p.relative_to(folder)): p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file()}


@pytest.fixture
def previous_output(tmp_path) -> Path:
    """An output folder holding a previous run's model, which a failed run must leave as it was."""
    out = tmp_path / "out"
    out.mkdir()
    (out / ".chatrlhf_owner").write_text("step 1")
    (out / "model.safetensors").write_bytes(b"previous weights")
    (out / "config.json").write_text("{}")
    return out


@pytest.mark.parametrize("case", sorted(FILE_CASES))
def test_bad_file_for_sft_and_data(case, tmp_path, previous_output, capsys, data_cache):
    name, content, extra, message = FILE_CASES[case]
    path = tmp_path / name
    path.write_bytes(content if not name.endswith(".gz") or case == "gzip that is not gzip" else gzip.compress(content))
    before = snapshot(previous_output)
    code = sft_main(["--data_path", str(path), "--output_dir", str(previous_output), "--data_output_path",
                     str(tmp_path / "cache"), *extra])
    err = capsys.readouterr().err
    assert code != 0 and message in err and "Traceback" not in err, err
    assert snapshot(previous_output) == before
    assert data_main(["--data_path", str(path), *extra]) != 0
    assert message in capsys.readouterr().err


def test_skip_bad_records_counts_instead_of_failing(tmp_path, capsys):
    path = tmp_path / "mixed.jsonl"
    path.write_bytes(lines(*[GOOD] * 5, b"{broken", {"prompt": "p"}, *[dict(GOOD, prompt=f"q{i}") for i in range(5)]))
    assert data_main(["--data_path", str(path), "--skip_bad_records"]) == 0
    assert "broken records skipped: 2" in capsys.readouterr().out


def test_prompt_only_rows_in_a_pair_step(tmp_path, capsys, data_cache):
    path = tmp_path / "prompts.jsonl"
    path.write_bytes(lines(*[{"prompt": f"\n\nHuman: q{i}\n\nAssistant:"} for i in range(20)]))
    from chatrlhf.step2_reward.main import main as reward_main

    code = reward_main(["--data_path", str(path), "--output_dir", str(tmp_path / "rm"), "--data_output_path",
                        data_cache])
    err = capsys.readouterr().err
    assert code != 0 and "step 2 has no training samples" in err and "Traceback" not in err


def test_tokenizer_without_an_end_token(tmp_path, capsys, cache_root, data_cache):
    from chatrlhf.utils.data.config import DataConfig
    from chatrlhf.utils.model.resolve import resolve_model

    model_dir = tmp_path / "model"
    source = Path(resolve_model("tiny-opt", DataConfig()))
    model_dir.mkdir()
    for item in source.iterdir():
        if item.is_file():
            (model_dir / item.name).write_bytes(item.read_bytes())
    config = json.loads((model_dir / "tokenizer_config.json").read_text())
    config.pop("eos_token", None)
    config.pop("pad_token", None)
    (model_dir / "tokenizer_config.json").write_text(json.dumps(config))
    code = sft_main(["--model_name_or_path", str(model_dir), "--output_dir", str(tmp_path / "o"),
                     "--data_output_path", data_cache, "--max_steps", "1"])
    err = capsys.readouterr().err
    assert code != 0 and "no end-of-text token" in err and "--add_eot_token" in err


def test_corrupt_checkpoint(tmp_path, capsys, sft_model, data_cache):
    out = tmp_path / "resume"
    broken = out / "checkpoints" / "step-2"
    broken.mkdir(parents=True)
    (out / ".chatrlhf_owner").write_text("step 1")
    (broken / "complete.json").write_text(json.dumps({"step": 2, "engines": ["model"]}))
    (broken / "trainer_state.pt").write_bytes(b"garbage")
    code = sft_main(["--output_dir", str(out), "--resume_from", str(broken), "--max_steps", "2",
                     "--data_output_path", data_cache, "--max_seq_len", "64"])
    err = capsys.readouterr().err
    assert code != 0 and "step-2" in err and "Traceback" not in err, err
    assert not (out / "model.safetensors").exists()


def test_missing_paths_and_bad_flags_fail_before_loading(tmp_path, capsys):
    cases = [
        (["--data_path", str(tmp_path / "absent.jsonl")], "no such file"),
        (["--model_name_or_path", str(tmp_path / "no-model")], "no such model directory"),
        (["--data_split", "2,4"], "--data_split"),
        (["--max_seq_len", "5000"], "exceeds the 1024 positions"),
    ]
    for extra, message in cases:
        assert sft_main(["--output_dir", str(tmp_path / "o"), *extra]) == 2
        assert message in capsys.readouterr().err
    assert ppo_main(["--output_dir", str(tmp_path / "p"), "--actor_model_name_or_path",
                     str(tmp_path / "gone")]) == 2
    assert "no such model directory" in capsys.readouterr().err
    assert reward_main(["--output_dir", str(tmp_path / "r"), "--lm_loss_coef", "1", "--zero_stage", "3"]) == 2
    assert "--lm_loss_coef needs ZeRO stage 0, 1 or 2" in capsys.readouterr().err


def test_foreign_output_dir_is_refused(tmp_path, capsys):
    out = tmp_path / "mine"
    out.mkdir()
    (out / "thesis.pdf").write_bytes(b"%PDF")
    assert sft_main(["--output_dir", str(out)]) == 2
    assert "not empty" in capsys.readouterr().err
    assert (out / "thesis.pdf").read_bytes() == b"%PDF"
    assert os.listdir(out) == ["thesis.pdf"]
