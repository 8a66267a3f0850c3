"""The data pipeline: splits, blending, partitions per step, tokenised cache, collation, bad input."""
from __future__ import annotations

import json
from dataclasses import replace

import pytest
import torch

from chatrlhf.applications.data_report import count_overlaps
from chatrlhf.applications.data_report import main as data_main
from chatrlhf.utils.data.collators import IGNORE_INDEX, PairCollator, PromptCollator, SFTCollator, pad_sequences
from chatrlhf.utils.data.config import DataConfig
from chatrlhf.utils.data.errors import DataError
from chatrlhf.utils.data.partitions import step_records
from chatrlhf.utils.data.splitting import parse_data_split, parse_source_spec, split_indices, weighted_take
from chatrlhf.utils.data.tokenized import build_step_data, cache_key


def write_pairs(path, rows) -> str:
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return str(path)


def pairs(n: int, tag: str = "q") -> list[dict]:
    return [{"prompt": f"\n\nHuman: {tag} {i}?\n\nAssistant:", "chosen": f" yes {i}", "rejected": f" no {i}"}
            for i in range(n)]


@pytest.fixture(scope="module")
def tokenizer(tmp_path_factory):
    from chatrlhf.utils.model.tokenizer import train_tokenizer

    texts = [r["prompt"] + r["chosen"] + r["rejected"] for r in pairs(200)] + ["plus is In order letters"]
    return train_tokenizer(texts, tmp_path_factory.mktemp("tok"), vocab_size=300)


def test_data_split_parsing():
    assert parse_data_split("2,4,4") == pytest.approx([0.2, 0.4, 0.4])
    assert parse_data_split("10,0,0") == [1.0, 0.0, 0.0]
    for bad in ("2,4", "a,b,c", "-1,1,1", "0,0,0"):
        with pytest.raises(DataError, match="--data_split"):
            parse_data_split(bad)


def test_split_indices_are_disjoint_and_cover():
    parts = split_indices(101, [0.2, 0.4, 0.4], seed=3)
    joined = sorted(i for p in parts for i in p.tolist())
    assert joined == list(range(101))
    assert [len(p) for p in parts] == [20, 41, 40]
    assert [p.tolist() for p in parts] == [p.tolist() for p in split_indices(101, [0.2, 0.4, 0.4], seed=3)]
    assert parts[0].tolist() != split_indices(101, [0.2, 0.4, 0.4], seed=4)[0].tolist()


def test_weights_and_source_specs():
    assert len(weighted_take(100, 0.5, 0)) == 50
    assert len(weighted_take(100, 2.5, 0)) == 250
    assert sorted(set(weighted_take(10, 3, 0).tolist())) == list(range(10))
    assert parse_source_spec("a/b:0.5") == ("a/b", 0.5)
    assert parse_source_spec("synthetic/tasks") == ("synthetic/tasks", 1.0)
    assert parse_source_spec("/x/c:d.jsonl") == ("/x/c:d.jsonl", 1.0)


def test_synthetic_partitions_are_disjoint_across_steps_and_splits():
    cfg = DataConfig(data_path=("synthetic/tasks",), data_split="2,4,4")
    steps = {s: step_records(cfg, s) for s in (1, 2, 3)}
    overlaps = count_overlaps({s: (r.train, r.eval) for s, r in steps.items()})
    assert sum(overlaps.values()) == 0, overlaps
    total = sum(len(r.train) for r in steps.values())
    assert total == 9000
    assert len(steps[1].train) == 1800 and len(steps[2].train) == 3600


def test_data_share_trains_step1_on_another_steps_prompts_and_chosen_answers():
    """``--data_share 2``: step 1's records are step 2's pairs, prompt and chosen answer (the ablation's data)."""
    cfg = DataConfig(data_path=("synthetic/tasks",), data_split="4,4,2")
    step2, shared = step_records(cfg, 2), step_records(replace(cfg, data_share=2), 1)
    assert [(r.prompt, r.chosen) for r in shared.train] == [(r.prompt, r.chosen) for r in step2.train]
    assert {r.prompt for r in shared.eval} == {r.prompt for r in step2.eval}
    assert not {r.prompt for r in shared.train} & {r.prompt for r in step_records(cfg, 1).train}


def test_blending_weights_and_sft_only(tmp_path):
    a = write_pairs(tmp_path / "a.jsonl", pairs(100, "alpha"))
    b = write_pairs(tmp_path / "b.jsonl", pairs(100, "beta"))
    c = write_pairs(tmp_path / "c.jsonl", pairs(20, "gamma"))
    cfg = DataConfig(data_path=(a, f"{b}:2"), data_split="10,0,0", sft_only_data_path=(c,), eval_fraction=0.1)
    step1 = step_records(cfg, 1)
    from_a = sum("alpha" in r.prompt for r in step1.train)
    from_b = sum("beta" in r.prompt for r in step1.train)
    assert (from_a, from_b) == (90, 180)
    assert sum("gamma" in r.prompt for r in step1.train) == 18
    assert step_records(replace(cfg, data_split="0,5,5"), 2).counts[a] == (45, 5)
    assert c not in step_records(replace(cfg, data_split="0,5,5"), 2).counts


def test_duplicate_prompts_stay_in_one_partition(tmp_path):
    rows = pairs(30) + [dict(r, chosen=" again") for r in pairs(30)]
    path = write_pairs(tmp_path / "dup.jsonl", rows)
    cfg = DataConfig(data_path=(path,), data_split="1,1,1")
    steps = {s: step_records(cfg, s) for s in (1, 2, 3)}
    assert sum(count_overlaps({s: (r.train, r.eval) for s, r in steps.items()}).values()) == 0


def _overlapping_sources(tmp_path) -> tuple[str, str]:
    """Two sources sharing 40 prompts (with other answers), as rm-static and full-hh-rlhf do."""
    a = write_pairs(tmp_path / "a.jsonl", pairs(60) + pairs(40, "only-a"))
    b = write_pairs(tmp_path / "b.jsonl", pairs(60, "only-b") + [dict(r, chosen=" other") for r in pairs(40)])
    return a, b


def test_a_prompt_in_two_sources_lands_in_one_partition(tmp_path):
    a, b = _overlapping_sources(tmp_path)
    cfg = DataConfig(data_path=(a, f"{b}:2"), data_split="2,4,4")
    steps = {s: step_records(cfg, s) for s in (1, 2, 3)}
    assert sum(count_overlaps({s: (r.train, r.eval) for s, r in steps.items()}).values()) == 0
    where = {}
    for step, records in steps.items():
        for role, part in (("train", records.train), ("eval", records.eval)):
            for record in part:
                where.setdefault(record.prompt, set()).add((step, role))
    shared = [p["prompt"] for p in pairs(40)]
    assert all(len(where[p]) == 1 for p in shared if p in where)
    # Both sources still give their records, b twice (its weight), and a source alone keeps its split.
    assert sum(r.source == b for r in steps[3].train) > sum(r.source == a for r in steps[3].train)
    alone = DataConfig(data_path=(a,), data_split="2,4,4")
    assert [r.prompt for r in step_records(alone, 3).train] == [
        r.prompt for r in step_records(replace(alone, allow_cross_step_duplicates=True), 3).train]


def test_opting_out_splits_each_source_on_its_own(tmp_path):
    a, b = _overlapping_sources(tmp_path)
    cfg = DataConfig(data_path=(a, b), data_split="2,4,4", allow_cross_step_duplicates=True)
    steps = {s: step_records(cfg, s) for s in (1, 2, 3)}
    assert sum(count_overlaps({s: (r.train, r.eval) for s, r in steps.items()}).values()) > 0


def test_step1_only_source_loses_prompts_a_later_step_owns(tmp_path):
    a, b = _overlapping_sources(tmp_path)
    cfg = DataConfig(data_path=(a,), sft_only_data_path=(b,), data_split="2,4,4")
    step1 = step_records(cfg, 1)
    later = {r.prompt for s in (2, 3) for r in (*step_records(cfg, s).train, *step_records(cfg, s).eval)}
    assert not later & {r.prompt for r in (*step1.train, *step1.eval)}
    dropped = step1.reports[1].dropped["prompt in a later step's partition of another source"]
    assert 0 < dropped < 40


def test_data_command_finds_a_real_overlap_only_with_the_opt_out(tmp_path, capsys):
    a, b = _overlapping_sources(tmp_path)
    argv = ["--data_path", a, b, "--data_split", "2,4,4"]
    assert data_main(argv) == 0
    assert "overlaps found: 0" in capsys.readouterr().out
    assert data_main([*argv, "--allow_cross_step_duplicates"]) == 3
    out = capsys.readouterr().out
    found = int(out.split("overlaps found: ")[1].split()[0])
    assert found > 0 and "overlap step1-step2" in out


def test_hh_file_drops_nine_unusable_rows(hh_file):
    cfg = DataConfig(data_path=(str(hh_file),), data_split="1,1,1")
    result = step_records(cfg, 1)
    (report,) = result.reports
    assert report.dropped == {"pair without a shared prompt": 5, "empty response": 4}


def test_cache_hit_and_invalidation(tmp_path, tokenizer):
    path = write_pairs(tmp_path / "p.jsonl", pairs(60))
    cfg = DataConfig(data_path=(path,), data_split="1,1,1", data_output_path=str(tmp_path / "cache"), max_seq_len=64)
    first = build_step_data(cfg, 1, tokenizer)
    second = build_step_data(cfg, 1, tokenizer)
    assert not first.info["cache_hit"] and second.info["cache_hit"]
    assert first.train["input_ids"] == second.train["input_ids"]
    assert cache_key(replace(cfg, max_seq_len=32), 1, tokenizer) != cache_key(cfg, 1, tokenizer)
    assert cache_key(cfg, 2, tokenizer) != cache_key(cfg, 1, tokenizer)
    write_pairs(tmp_path / "p.jsonl", pairs(61))
    assert not build_step_data(cfg, 1, tokenizer).info["cache_hit"]


def test_step_samples_and_masking(tmp_path, tokenizer):
    path = write_pairs(tmp_path / "p.jsonl", pairs(30))
    cfg = DataConfig(data_path=(path,), data_split="1,1,1", data_output_path=str(tmp_path / "c"), max_seq_len=64,
                     max_prompt_seq_len=8)
    step1 = build_step_data(cfg, 1, tokenizer).train
    row = step1[0]
    assert row["input_ids"][-1] == tokenizer.eos_token_id
    batch = SFTCollator(tokenizer.pad_token_id)([step1[0], step1[1]])
    labels, mask = batch["labels"], batch["attention_mask"]
    assert (labels[0, : row["prompt_len"]] == IGNORE_INDEX).all()
    response = torch.tensor(row["input_ids"][row["prompt_len"] :])
    assert (labels[0, row["prompt_len"] : len(row["input_ids"])] == response).all()
    assert (labels[mask == 0] == IGNORE_INDEX).all()
    assert batch["input_ids"].shape[1] == max(len(step1[0]["input_ids"]), len(step1[1]["input_ids"]))
    full = SFTCollator(tokenizer.pad_token_id, train_on_prompt=True)([row])
    assert (full["labels"][0] == full["input_ids"][0]).all()

    step2 = build_step_data(cfg, 2, tokenizer).train
    pair = PairCollator(tokenizer.pad_token_id)([step2[0], step2[1]])
    assert pair["input_ids"].shape[0] == 4
    assert pair["input_ids"][0, : len(step2[0]["chosen_ids"])].tolist() == step2[0]["chosen_ids"]

    with pytest.raises(DataError, match="prompt longer than --max_prompt_seq_len"):
        build_step_data(cfg, 3, tokenizer)
    roomy = build_step_data(replace(cfg, max_prompt_seq_len=64), 3, tokenizer).train
    prompts = PromptCollator(tokenizer.pad_token_id)([roomy[0], roomy[1]])
    assert (prompts["attention_mask"][:, -1] == 1).all()


def test_pad_sequences_left_and_right():
    ids, mask = pad_sequences([[1, 2, 3], [4]], 0)
    assert ids.tolist() == [[1, 2, 3], [4, 0, 0]] and mask.tolist() == [[1, 1, 1], [1, 0, 0]]
    ids, mask = pad_sequences([[1, 2, 3], [4]], 0, left=True)
    assert ids.tolist() == [[1, 2, 3], [0, 0, 4]] and mask.tolist() == [[1, 1, 1], [0, 0, 1]]


def test_broken_record_names_file_line_and_field(tmp_path):
    path = tmp_path / "bad.jsonl"
    path.write_text(json.dumps(pairs(1)[0]) + "\n" + json.dumps({"prompt": "p", "chosen": "c"}) + "\n")
    with pytest.raises(DataError, match=r"bad.jsonl:2.*rejected"):
        step_records(DataConfig(data_path=(str(path),)), 1)
    skipped = step_records(DataConfig(data_path=(str(path),), skip_bad_records=True, eval_fraction=0.0), 1)
    assert skipped.reports[0].skipped_broken == 1


def test_strict_data_turns_drops_into_errors(tmp_path):
    path = write_pairs(tmp_path / "same.jsonl", [{"prompt": "p", "chosen": " a", "rejected": " a"}] + pairs(5))
    assert step_records(DataConfig(data_path=(path,)), 1).reports[0].dropped["chosen equals rejected"] == 1
    with pytest.raises(DataError, match="chosen equals rejected"):
        step_records(DataConfig(data_path=(path,), strict_data=True), 1)


def test_data_command_reports_counts_and_overlaps(tmp_path, capsys):
    path = write_pairs(tmp_path / "p.jsonl", pairs(50))
    assert data_main(["--data_path", path, "synthetic/tasks", "--data_split", "2,4,4"]) == 0
    out = capsys.readouterr().out
    assert "overlaps found: 0" in out and "p.jsonl" in out
    assert data_main(["--data_path", str(tmp_path / "missing.jsonl")]) == 1


def test_prompt_only_file_feeds_step3_and_is_dropped_elsewhere(tmp_path):
    path = tmp_path / "prompts.jsonl"
    path.write_text("".join(json.dumps({"prompt": f"\n\nHuman: q{i}?\n\nAssistant:"}) + "\n" for i in range(30)))
    cfg = DataConfig(data_path=(str(path),), data_split="1,1,1")
    assert len(step_records(cfg, 3).train) > 0
    assert step_records(cfg, 1).train == []
    assert step_records(cfg, 1).reports[0].dropped["prompt-only row in an SFT source"] > 0
    assert step_records(cfg, 2).train == []


def test_cache_key_holds_the_chat_template(tmp_path, tokenizer):
    """--prompt_template model writes every prompt with the tokenizer's chat template: a changed template must not
    be served the old prompts from the cache."""
    import copy

    cfg = DataConfig(data_path=(write_pairs(tmp_path / "p.jsonl", pairs(10)),), data_output_path=str(tmp_path / "c"))
    one, two = copy.deepcopy(tokenizer), copy.deepcopy(tokenizer)
    one.chat_template = "{% for m in messages %}<user>{{ m['content'] }}{% endfor %}<bot>"
    two.chat_template = "{% for m in messages %}### {{ m['content'] }}{% endfor %}###"
    assert cache_key(cfg, 2, one) != cache_key(cfg, 2, two)
    assert cache_key(cfg, 2, one) == cache_key(cfg, 2, copy.deepcopy(one))


def test_hub_dataset_is_keyed_and_loaded_by_its_revision(monkeypatch):
    """A hub dataset's cache key holds the revision the hub serves, and the load reads that same revision."""
    from chatrlhf.utils.data import hub_sources
    from chatrlhf.utils.data.fingerprint import source_fingerprint

    assert hub_sources.hub_revision("Dahoas/rm-static") is None  # offline (conftest): no network call
    revision = {"Dahoas/rm-static": "aaaa"}
    monkeypatch.setattr(hub_sources, "hub_revision", lambda repo: revision.get(repo))
    before = source_fingerprint("Dahoas/rm-static", 1)
    revision["Dahoas/rm-static"] = "bbbb"
    assert source_fingerprint("Dahoas/rm-static", 1) != before
    assert source_fingerprint("synthetic/tasks", 1) == source_fingerprint("synthetic/tasks", 1)
    loads = []
    monkeypatch.setattr(hub_sources, "load_hf_dataset", lambda name, **kw: loads.append((name, kw)) or {})
    hub_sources.DahoasRmStatic("", 1, 0, "Dahoas/rm-static")._load()
    assert loads == [("Dahoas/rm-static", {"config": None, "revision": "bbbb"})]


def long_prompt_pairs(n: int) -> list[dict]:
    """Pairs whose prompt alone is longer than 24 tokens, with short answers that differ."""
    return [{"prompt": "\n\nHuman: " + " ".join(f"q {i}" for _ in range(20)) + "?\n\nAssistant:",
             "chosen": f" yes {i}", "rejected": f" no {i}"} for i in range(n)]


def test_step2_cuts_a_long_prompt_from_the_left_and_keeps_the_answers(tmp_path, tokenizer):
    from chatrlhf.utils.data.tokenized import ANSWER_END_CUT, IDENTICAL_PAIR, PROMPT_START_CUT

    long_answer = " yes 1 no 2 yes 3 no 4 yes 5 no 6 yes 7 no 8 yes 9 no 10 yes 11"
    rows = long_prompt_pairs(12) + [{"prompt": "\n\nHuman: q 0?\n\nAssistant:", "chosen": long_answer + " yes",
                                     "rejected": long_answer + " no"}]
    path = write_pairs(tmp_path / "long.jsonl", rows)
    cfg = DataConfig(data_path=(path,), data_split="0,1,0", eval_fraction=0.0,
                     data_output_path=str(tmp_path / "c"), max_seq_len=24)
    data = build_step_data(cfg, 2, tokenizer)
    eos = tokenizer.eos_token_id
    assert len(data.train) == 12
    for row in data.train:
        good, bad = row["chosen_ids"], row["rejected_ids"]
        assert len(good) <= 24 and len(bad) <= 24 and good[-1] == eos and bad[-1] == eos
        assert good != bad and good[: row["prompt_len"]] == bad[: row["prompt_len"]]
        answer = tokenizer.decode(good[row["prompt_len"]:-1])
        assert answer.strip().startswith("yes"), answer
        assert tokenizer.decode(good[: row["prompt_len"]]).endswith("Assistant:")
    assert data.info["dropped_by_length"]["train"] == {PROMPT_START_CUT: 12, IDENTICAL_PAIR: 1}
    assert ANSWER_END_CUT not in data.info["dropped_by_length"]["train"]


def test_short_samples_are_unchanged_and_cut_answers_are_counted(tmp_path, tokenizer):
    from chatrlhf.utils.data.tokenized import ANSWER_END_CUT

    path = write_pairs(tmp_path / "p.jsonl", pairs(30))
    roomy = DataConfig(data_path=(path,), data_split="1,1,0", data_output_path=str(tmp_path / "c"), max_seq_len=64)
    for step in (1, 2):
        data = build_step_data(roomy, step, tokenizer)
        assert data.info["dropped_by_length"] == {"train": {}, "eval": {}}
    row = build_step_data(roomy, 2, tokenizer).train[0]
    prompt = tokenizer(next(r["prompt"] for r in pairs(30)
                            if tokenizer(r["prompt"] + r["chosen"], add_special_tokens=False)["input_ids"]
                            == row["chosen_ids"][:-1]), add_special_tokens=False)["input_ids"]
    assert row["prompt_len"] == len(prompt)
    tight = replace(roomy, max_seq_len=15)
    step1 = build_step_data(tight, 1, tokenizer)
    cut = sum(ids[-1] != tokenizer.eos_token_id for ids in step1.train["input_ids"])
    assert cut > 0 and step1.info["dropped_by_length"]["train"][ANSWER_END_CUT] == cut


def test_strict_data_refuses_length_drops_and_partition_drops(tmp_path, tokenizer):
    path = write_pairs(tmp_path / "long.jsonl", long_prompt_pairs(12))
    cfg = DataConfig(data_path=(path,), data_split="0,1,0", eval_fraction=0.0,
                     data_output_path=str(tmp_path / "c"), max_seq_len=24, strict_data=True)
    with pytest.raises(DataError, match=r"--strict_data: step 2 .*start of prompt, cut by --max_seq_len.*: 12.*"
                                        r"Raise --max_seq_len"):
        build_step_data(cfg, 2, tokenizer)
    assert build_step_data(replace(cfg, max_seq_len=128), 2, tokenizer).info["num_train"] == 12
    prompts = tmp_path / "prompts.jsonl"
    prompts.write_text("".join(json.dumps({"prompt": f"\n\nHuman: q{i}?\n\nAssistant:"}) + "\n" for i in range(4)))
    mixed = DataConfig(data_path=(write_pairs(tmp_path / "p.jsonl", pairs(10)), str(prompts)), data_split="1,0,0",
                       strict_data=True)
    with pytest.raises(DataError, match=r"prompt-only row in an SFT source: 4.*give step 1 rows with a response"):
        step_records(mixed, 1)
