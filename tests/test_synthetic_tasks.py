"""The embedded ``synthetic/tasks`` sets: deterministic, disjoint splits, real mistakes; the perfect set's chosen
answers are right, the default set's are imperfect demonstrations at the stated rates."""
from __future__ import annotations

import re
from collections import Counter

import pytest

from chatrlhf.utils.data.errors import DataError
from chatrlhf.utils.data.options import SourceOptions
from chatrlhf.utils.data.synthetic_tasks import (
    DEGENERATE,
    DEMONSTRATORS,
    MISTAKES,
    PERFECT_NAME,
    TASK_MISTAKES,
    TASKS,
    SyntheticTasks,
    _parse,
    answer,
    data_card,
    demonstrations,
    held_out_prompts,
    load_words,
    novel_word_prompts,
    partial_score,
    score,
)

PROMPT = re.compile(r"\n\nHuman: (.+)\n\nAssistant:")
FORMATS = {
    "add": re.compile(r"What is (\d+) plus (\d+)\?"),
    "reverse": re.compile(r"Reverse the word ([a-z]+)\."),
    "upper": re.compile(r"Write ([a-z]+) in capital letters\."),
    "count": re.compile(r"How many letters are in ([a-z]+)\?"),
    "sort": re.compile(r"Sort these numbers: (\d+), (\d+), (\d+)\."),
}


@pytest.fixture(scope="module")
def data() -> SyntheticTasks:
    return SyntheticTasks("", 1234, 0, PERFECT_NAME)


@pytest.fixture(scope="module")
def imperfect() -> SyntheticTasks:
    return SyntheticTasks("", 1234, 0)


def _question(sample: dict) -> str:
    match = PROMPT.fullmatch(sample["prompt"])
    assert match, sample["prompt"]
    return match.group(1)


def _expected(task: str, question: str) -> str:
    """The right answer worked out independently of the module under test."""
    groups = FORMATS[task].fullmatch(question).groups()
    if task == "add":
        x, y = map(int, groups)
        assert 0 <= x <= 50 and 0 <= y <= 50
        return f"{x} plus {y} is {x + y}."
    if task == "sort":
        numbers = sorted(map(int, groups))
        assert all(0 <= n <= 99 for n in numbers)
        return "In order: {}, {}, {}.".format(*numbers)
    word = groups[0]
    assert word in load_words()
    return {
        "reverse": f"{word} reversed is {''.join(reversed(word))}.",
        "upper": f"{word} in capital letters is {word.upper()}.",
        "count": f"{word} has {len(word)} letters.",
    }[task]


def test_words_list_has_300_distinct_short_lowercase_words() -> None:
    words = load_words()
    assert len(set(words)) == len(words) >= 300
    assert all(re.fullmatch(r"[a-z]{3,8}", w) for w in words)


def test_same_seed_same_samples_other_seed_different(data: SyntheticTasks, imperfect: SyntheticTasks) -> None:
    again = SyntheticTasks("", 1234, 0, PERFECT_NAME)
    assert again.get_train_data() == data.get_train_data()
    assert again.get_eval_data() == data.get_eval_data()
    assert SyntheticTasks("", 1234, 0).get_train_data() == imperfect.get_train_data()
    other = SyntheticTasks("", 99, 0, PERFECT_NAME)
    assert other.get_train_data() != data.get_train_data()
    assert other.get_eval_data() != data.get_eval_data()


def test_sizes_balance_and_disjoint_splits(data: SyntheticTasks) -> None:
    train, evals = data.get_train_data(), data.get_eval_data()
    assert len(train) == 9000 and len(evals) == 400
    assert Counter(s["task"] for s in train) == {task: 1800 for task in TASKS}
    assert Counter(s["task"] for s in evals) == {task: 80 for task in TASKS}
    train_prompts = {s["prompt"] for s in train}
    eval_prompts = {s["prompt"] for s in evals}
    assert len(train_prompts) == 9000 and len(eval_prompts) == 400
    assert not train_prompts & eval_prompts


def test_prompt_and_answer_formats(data: SyntheticTasks) -> None:
    for sample in data.get_train_data() + data.get_eval_data():
        question = _question(sample)
        assert sample["chosen"] == " " + _expected(sample["task"], question)
        assert data.get_prompt(sample) + data.get_chosen(sample) == data.get_prompt_and_chosen(sample)
        assert data.sample_meta(sample) == {"task": sample["task"], "mistake": sample["mistake"]}


def test_every_rejected_differs_and_mistakes_fit_the_task(data: SyntheticTasks) -> None:
    seen = set()
    for sample in data.get_train_data():
        assert sample["rejected"].strip() != sample["chosen"].strip()
        assert sample["mistake"] in TASK_MISTAKES[sample["task"]] + DEGENERATE
        seen.add(sample["mistake"])
    assert seen == set(MISTAKES)


def _numbers(text: str) -> list[int]:
    return [int(n) for n in re.findall(r"\d+", text)]


def test_each_mistake_kind_is_what_it_says(data: SyntheticTasks) -> None:
    for sample in data.get_train_data():
        chosen, rejected, kind = sample["chosen"], sample["rejected"], sample["mistake"]
        if kind == "off_by_n":
            right, wrong = _numbers(chosen), _numbers(rejected)
            diffs = [abs(a - b) for a, b in zip(right, wrong) if a != b]
            assert len(right) == len(wrong) and len(diffs) == 1 and 1 <= diffs[0] <= 3
            assert min(wrong) >= 0
        elif kind == "swapped_letters":
            right, wrong = chosen.split()[-1], rejected.split()[-1]
            spots = [i for i, (a, b) in enumerate(zip(right, wrong)) if a != b]
            assert len(right) == len(wrong) and len(spots) == 2 and spots[1] == spots[0] + 1
            assert right[spots[0]] == wrong[spots[1]] and right[spots[1]] == wrong[spots[0]]
            assert chosen.split()[:-1] == rejected.split()[:-1]
        elif kind == "wrong_order":
            wrong = _numbers(rejected)
            assert sorted(wrong) == _numbers(chosen) and wrong != sorted(wrong)
        elif kind == "repeated":
            words = rejected.split()
            assert any(words[i] == words[i + 1] == words[i + 2] for i in range(len(words) - 2))
        else:
            assert kind == "truncated"
            assert rejected.strip() and chosen.startswith(rejected) and len(rejected) < len(chosen)


def test_checker_accepts_right_answers_with_end_tokens_and_whitespace(data: SyntheticTasks) -> None:
    for sample in data.get_eval_data()[:25]:
        prompt, chosen = sample["prompt"], sample["chosen"]
        for response in (
            chosen,
            chosen.strip(),
            chosen + "</s>",
            chosen + " <|endoftext|>\n",
            chosen + "<|im_end|>",
            chosen + "<eos><eos>",
            "\n  " + chosen.strip() + "  \n",
            chosen + "\n\nHuman: and now another question?\n\nAssistant: sure",
        ):
            assert score(prompt, response) == 1, response
        assert score(_question(sample), chosen) == 1


def test_checker_rejects_every_mistake(data: SyntheticTasks) -> None:
    for sample in data.get_train_data():
        assert score(sample["prompt"], sample["rejected"]) == 0
        assert score(sample["prompt"], sample["rejected"] + "</s>") == 0
    assert score("\n\nHuman: What is 2 plus 2?\n\nAssistant:", " 2 plus 2 is 4. 2 plus 2 is 4.") == 0
    assert score("\n\nHuman: What is 2 plus 2?\n\nAssistant:", "") == 0


@pytest.mark.parametrize(
    ("question", "right"),
    [
        ("What is 12 plus 30?", "12 plus 30 is 42."),
        ("Reverse the word guitar.", "guitar reversed is ratiug."),
        ("Write lemon in capital letters.", "lemon in capital letters is LEMON."),
        ("How many letters are in bridge?", "bridge has 6 letters."),
        ("Sort these numbers: 94, 7, 73.", "In order: 7, 73, 94."),
    ],
)
def test_answer_with_and_without_wrapping(question: str, right: str) -> None:
    assert answer(question) == right
    assert answer(f"\n\nHuman: {question}\n\nAssistant:") == right
    assert answer(f"<|im_start|>user\n{question}<|im_end|>\n<|im_start|>assistant\n") == right


def test_unknown_prompt_raises_naming_it() -> None:
    with pytest.raises(ValueError, match="What is the capital of France"):
        score("\n\nHuman: What is the capital of France?\n\nAssistant:", " Paris.")


def test_held_out_prompts_are_the_eval_prompts_and_never_trained_on(data: SyntheticTasks) -> None:
    held = held_out_prompts(1234, 50)
    assert held == [s["prompt"] for s in data.get_eval_data()[:50]]
    assert not set(held) & {s["prompt"] for s in data.get_train_data()}
    assert held_out_prompts(1234, 50) == held and held_out_prompts(7, 50) != held


def test_eval_split_does_not_depend_on_train_size(data: SyntheticTasks) -> None:
    small = SyntheticTasks("", 1234, 0, PERFECT_NAME, num_train=20, num_eval=10)
    assert small.get_eval_data() == data.get_eval_data()[:10]
    assert len(small.get_train_data()) == 20
    assert not {s["prompt"] for s in small.get_eval_data()} & {s["prompt"] for s in small.get_train_data()}


def test_too_many_samples_asked_is_refused() -> None:
    with pytest.raises(ValueError, match="distinct prompts"):
        SyntheticTasks("", 1, 0, num_train=10**7)


def test_chatml_template_keeps_answers_checkable() -> None:
    chat = SyntheticTasks("", 5, 0, PERFECT_NAME, options=SourceOptions(prompt_template="chatml"), num_train=10,
                          num_eval=5)
    for sample in chat.get_train_data():
        assert sample["prompt"].startswith("<|im_start|>user\n")
        assert sample["prompt"].endswith("<|im_start|>assistant\n")
        assert not sample["chosen"].startswith(" ")
        assert score(sample["prompt"], sample["chosen"] + "<|im_end|>") == 1


def test_model_template_without_tokenizer_is_a_data_error() -> None:
    with pytest.raises(DataError, match="tokenizer"):
        SyntheticTasks("", 5, 0, options=SourceOptions(prompt_template="model"), num_train=5, num_eval=5)


@pytest.mark.parametrize(("question", "response", "credit"), [
    ("What is 16 plus 41?", "16 plus 41 is 57.", 1.0),
    ("What is 16 plus 41?", "16 plus 41 is 47.", 0.5),
    ("What is 16 plus 41?", "16 plus 41 is 157.", 2 / 3),
    ("What is 16 plus 41?", "57", 0.0),
    ("Sort these numbers: 5, 35, 9.", "In order: 5, 35, 9.", 1 / 3),
    ("Reverse the word stone.", "stone reversed is entos.", 0.6),
    ("How many letters are in stone?", "stone has 6 letters.", 0.0),
])
def test_partial_score_counts_units_right_and_in_place(question: str, response: str, credit: float) -> None:
    prompt = f"\n\nHuman: {question}\n\nAssistant:"
    assert partial_score(prompt, response) == pytest.approx(credit)
    assert (partial_score(prompt, response) == 1.0) == bool(score(prompt, response))


def test_novel_word_prompts_keep_the_task_mix_with_words_no_training_set_holds() -> None:
    standard, novel = held_out_prompts(1234, 50), novel_word_prompts(1234, 50)
    words = set(load_words())
    assert [_parse(p)[0] for p in novel] == [_parse(p)[0] for p in standard]
    for before, after in zip(standard, novel):
        task, args = _parse(after)
        if task in ("reverse", "upper", "count"):
            assert args[0] not in words and answer(after)
        else:
            assert after == before
    assert novel_word_prompts(1234, 50) == novel


def test_both_sets_ask_the_same_prompts_in_the_same_order(data: SyntheticTasks, imperfect: SyntheticTasks) -> None:
    for split in ("get_train_data", "get_eval_data"):
        assert [s["prompt"] for s in getattr(data, split)()] == [s["prompt"] for s in getattr(imperfect, split)()]
    assert held_out_prompts(1234, 40) == [s["prompt"] for s in imperfect.get_eval_data()[:40]]


def test_demonstrators_slip_at_their_stated_rates(imperfect: SyntheticTasks) -> None:
    """Each task's chosen answers (step 1's demonstrations) are right at 1 - rate, within sampling error."""
    samples = imperfect.get_train_data()
    for task, demonstrator in DEMONSTRATORS.items():
        rows = [s for s in samples if s["task"] == task]
        right = sum(score(s["prompt"], s["chosen"]) for s in rows) / len(rows)
        assert abs(right - (1 - demonstrator.rate)) < 0.04, (task, right)


def test_every_slip_is_the_tasks_own_plausible_mistake(imperfect: SyntheticTasks) -> None:
    for sample in imperfect.get_train_data()[:2000]:
        chosen, task = sample["chosen"], sample["task"]
        if score(sample["prompt"], chosen):
            continue
        right = " " + _expected(task, _question(sample))
        if task == "count":
            assert _numbers(chosen)[-1] == _numbers(right)[-1] + 1
        elif task == "sort":
            a, b, c = _numbers(right)
            assert _numbers(chosen) == [a, c, b]
        elif task == "add":
            assert 1 <= abs(_numbers(chosen)[-1] - _numbers(right)[-1]) <= 3
        else:
            got, want = chosen.split()[-1].rstrip("."), right.split()[-1].rstrip(".")
            spots = [i for i, (x, y) in enumerate(zip(got, want)) if x != y]
            assert sorted(got) == sorted(want) and len(spots) == 2 and spots[1] == spots[0] + 1
            assert (spots[0] == 0) == (task == "reverse") or want[0] == want[1]


def test_pairs_are_comparisons_the_rejected_answer_is_worse(imperfect: SyntheticTasks) -> None:
    """Chosen is never worse than rejected: right beats any mistake, and a slipped chosen answer faces one
    with a further mistake (further off, another swap, or degenerate text)."""
    chosen_right = 0
    for sample in imperfect.get_train_data():
        prompt, chosen, rejected = sample["prompt"], sample["chosen"], sample["rejected"]
        assert rejected.strip() != chosen.strip() and not score(prompt, rejected)
        chosen_right += score(prompt, chosen)
        if not score(prompt, chosen) and partial_score(prompt, rejected) > 0:
            task = sample["task"]
            right = _numbers(" " + _expected(task, _question(sample)))
            if task in ("add", "count"):
                assert abs(_numbers(rejected)[-1] - right[-1]) > abs(_numbers(chosen)[-1] - right[-1])
            else:
                assert partial_score(prompt, rejected) <= partial_score(prompt, chosen)
    share = chosen_right / len(imperfect.get_train_data())
    assert 0.4 < share < 0.7  # imitating the chosen answers alone cannot reach the right answers


def test_demonstrations_of_the_held_out_prompts_are_the_eval_chosen_answers(imperfect: SyntheticTasks) -> None:
    shown = demonstrations(1234, 30)
    assert shown == [(s["prompt"], s["chosen"]) for s in imperfect.get_eval_data()[:30]]


def test_data_card_states_every_tasks_rate() -> None:
    card = "\n".join(data_card())
    for task, demonstrator in DEMONSTRATORS.items():
        assert f"{task}: slips {demonstrator.rate:.0%}" in card
    assert "mean demonstrator accuracy" in card


def test_unknown_synthetic_version_is_refused() -> None:
    with pytest.raises(ValueError, match="synthetic/tasks-perfect"):
        SyntheticTasks("", 1, 0, "synthetic/tasks-best", num_train=5, num_eval=5)
