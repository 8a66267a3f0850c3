"""``synthetic/tasks``: the embedded default data set, five small tasks whose answers can be checked.

Every answer can be recomputed from its prompt, so a policy's accuracy is measured exactly (``score``),
and every rejected answer carries a known kind of mistake, so a reward model's errors can be broken
down by task and by mistake. Nothing is downloaded: the set is built from ``words.txt`` and the seed.

Two versions share every prompt. ``synthetic/tasks`` has imperfect demonstrators, the situation RLHF is
for: each task's demonstrator makes one typical slip at a stated rate (``DEMONSTRATORS``), step 1 imitates
those demonstrations, and each pair's ``chosen`` is the demonstration while ``rejected`` is a worse answer
(one more mistake). Imitating the chosen answers therefore reaches the demonstrators and no further;
only the comparisons say which answers are better. ``synthetic/tasks-perfect`` is the earlier set, whose
demonstrations are all right.
"""
from __future__ import annotations

import itertools
import random
import re
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path
from typing import Any

from chatrlhf.utils.data.options import SourceOptions
from chatrlhf.utils.data.raw_datasets import PromptRawDataset
from chatrlhf.utils.data.templates import apply_prompt_template, check_template, fit_response

TASKS = ("add", "reverse", "upper", "count", "sort")
MISTAKES = ("off_by_n", "swapped_letters", "wrong_order", "repeated", "truncated")
DEGENERATE = ("repeated", "truncated")
TASK_MISTAKES = {
    "add": ("off_by_n",),
    "reverse": ("swapped_letters",),
    "upper": ("swapped_letters",),
    "count": ("off_by_n",),
    "sort": ("wrong_order", "off_by_n"),
}
# Share of rejected answers that are degenerate text rather than a plausible wrong answer.
DEGENERATE_RATE = 0.2
# Sized so every task keeps an equal share: the word tasks run out of distinct prompts near 1,900 each.
DEFAULT_NUM_TRAIN = 9000
DEFAULT_NUM_EVAL = 400
# Bump when the generated samples change, so cached tokenised data is rebuilt.
GENERATOR_VERSION = 3
IMPERFECT_NAME = "synthetic/tasks"
PERFECT_NAME = "synthetic/tasks-perfect"
SOURCE_NAMES = (IMPERFECT_NAME, PERFECT_NAME)
END_TOKENS = ("</s>", "<|endoftext|>", "<|im_end|>", "<eos>")
MAX_ADDEND = 50
MAX_SORTED = 99

WORDS_FILE = Path(__file__).with_name("words.txt")
_WORD = re.compile(r"[a-z]{3,8}")

_QUESTIONS = {
    "add": "What is {} plus {}?",
    "reverse": "Reverse the word {}.",
    "upper": "Write {} in capital letters.",
    "count": "How many letters are in {}?",
    "sort": "Sort these numbers: {}, {}, {}.",
}
_PATTERNS = {
    "add": re.compile(r"What is (\d+) plus (\d+)\?"),
    "reverse": re.compile(r"Reverse the word ([a-z]+)\."),
    "upper": re.compile(r"Write ([a-z]+) in capital letters\."),
    "count": re.compile(r"How many letters are in ([a-z]+)\?"),
    "sort": re.compile(r"Sort these numbers: (\d+), (\d+), (\d+)\."),
}

Args = tuple[Any, ...]


@dataclass(frozen=True)
class Demonstrator:
    """How often a task's demonstrator slips, and the slip: one plausible mistake, the same kind every time."""

    rate: float
    mistake: str
    slip: str


# Rates above one half on upper and count make the slip the demonstrations' most common answer there, so
# imitation learns the slip itself; the others leave the right answer most common but far from certain.
DEMONSTRATORS = {
    "add": Demonstrator(0.3, "off_by_n", "the sum off by 1 to 3"),
    "reverse": Demonstrator(0.4, "swapped_letters", "the first two letters of the result swapped"),
    "upper": Demonstrator(0.6, "swapped_letters", "the last two letters of the result swapped"),
    "count": Demonstrator(0.6, "off_by_n", "one letter too many"),
    "sort": Demonstrator(0.4, "wrong_order", "the two largest numbers swapped"),
}
# Of the pairs whose chosen answer is right, the share whose rejected one is the demonstrator's own slip
# (the rest keep the random mistakes of the perfect set), so the comparisons speak to the slip directly.
SLIP_REJECTED_RATE = 0.5


@lru_cache(maxsize=1)
def load_words() -> tuple[str, ...]:
    """The word list of the word tasks: distinct lowercase words of 3 to 8 letters."""
    words = tuple(line.strip() for line in WORDS_FILE.read_text(encoding="utf-8").splitlines() if line.strip())
    bad = [w for w in words if not _WORD.fullmatch(w)]
    if bad or len(set(words)) != len(words):
        raise ValueError(f"{WORDS_FILE} must hold distinct words of 3-8 letters a-z, one per line; bad: {bad[:5]}")
    return words


def _solve(task: str, args: Args) -> Any:
    if task == "add":
        return args[0] + args[1]
    if task == "reverse":
        return args[0][::-1]
    if task == "upper":
        return args[0].upper()
    if task == "count":
        return len(args[0])
    return tuple(sorted(args))


def _format(task: str, args: Args, result: Any) -> str:
    """The answer sentence for ``result``, right or wrong, so mistakes keep the format of right answers."""
    if task == "add":
        return f"{args[0]} plus {args[1]} is {result}."
    if task == "reverse":
        return f"{args[0]} reversed is {result}."
    if task == "upper":
        return f"{args[0]} in capital letters is {result}."
    if task == "count":
        return f"{args[0]} has {result} letters."
    return "In order: {}, {}, {}.".format(*result)


def _parse(prompt: str) -> tuple[str, Args]:
    """The task and arguments of the last task question in ``prompt``, whatever template wraps it."""
    found = [(m.end(), task, m) for task, pattern in _PATTERNS.items() for m in pattern.finditer(prompt)]
    if not found:
        raise ValueError(f"not a synthetic/tasks prompt: {prompt!r}")
    _, task, match = max(found, key=lambda item: item[0])
    args = tuple(int(g) if g.isdigit() else g for g in match.groups())
    return task, args


def answer(prompt: str) -> str:
    """The right answer to a synthetic prompt (with or without its chat wrapping), without a leading space."""
    task, args = _parse(prompt)
    return _format(task, args, _solve(task, args))


def clean_response(response: str) -> str:
    """A generated response reduced to its answer: cut at an end-of-text token or a next Human turn."""
    cut = len(response)
    for stop in (*END_TOKENS, "\n\nHuman:"):
        position = response.find(stop)
        if position != -1:
            cut = min(cut, position)
    return response[:cut].strip()


def score(prompt: str, response: str) -> int:
    """1 if ``response`` is exactly the right answer to ``prompt`` (after ``clean_response``), else 0."""
    return int(clean_response(response) == answer(prompt))


def _result_slots(task: str, args: Args, cleaned: str) -> tuple[str, ...] | None:
    """The result of a cleaned response written in the right answer's sentence (three numbers for sort), or
    None when the sentence around it differs."""
    slot = "\x00"
    template = _format(task, args, (slot,) * 3 if task == "sort" else slot)
    pattern = "([A-Za-z0-9]+)".join(re.escape(part) for part in template.split(slot))
    match = re.fullmatch(pattern, cleaned)
    return match.groups() if match else None


def well_formed(prompt: str, response: str) -> bool:
    """True if ``response`` (after ``clean_response``) is the right answer's sentence with any letters or
    digits in place of the result: the format ``score`` compares against, whatever the value."""
    task, args = _parse(prompt)
    return _result_slots(task, args, clean_response(response)) is not None


def partial_score(prompt: str, response: str) -> float:
    """The share of the result's units that are right and in place: 1.0 exactly when ``score`` is 1.

    Units are the three numbers of a sort, the letters of a word, and the digits of a sum or count (aligned
    from the right, so a right last digit counts whatever the length). 0.0 when the sentence around the
    result is not the right answer's: partial credit is for the value, never for another format.
    """
    task, args = _parse(prompt)
    got = _result_slots(task, args, clean_response(response))
    if got is None:
        return 0.0
    right = _solve(task, args)
    if task == "sort":
        return sum(a == str(b) for a, b in zip(got, right)) / 3
    want, value = str(right), got[0]
    if task in ("add", "count"):
        want, value = want[::-1], value[::-1]
    return sum(a == b for a, b in zip(want, value)) / max(len(want), len(value))


def _off_by_n(value: int, rng: random.Random, high: int | None = None) -> int:
    """``value`` moved by 1 to 3, kept within [0, high] so the mistake stays plausible."""
    step = rng.randint(1, 3)
    wrong = value + rng.choice((-1, 1)) * step
    if wrong < 0 or (high is not None and wrong > high):
        wrong = value - step if wrong > value else value + step
    return wrong


def _swap_letters(word: str, rng: random.Random) -> str:
    """``word`` with two adjacent distinct letters swapped, so it really changes."""
    spots = [i for i in range(len(word) - 1) if word[i] != word[i + 1]]
    i = rng.choice(spots)
    return word[:i] + word[i + 1] + word[i] + word[i + 2 :]


def _wrong_answer(task: str, args: Args, mistake: str, rng: random.Random) -> str:
    right = _solve(task, args)
    if mistake == "off_by_n" and task == "sort":
        spot = rng.randrange(3)
        values = list(right)
        values[spot] = _off_by_n(values[spot], rng, MAX_SORTED)
        return _format(task, args, tuple(values))
    if mistake == "off_by_n":
        return _format(task, args, _off_by_n(right, rng))
    if mistake == "swapped_letters":
        return _format(task, args, _swap_letters(right, rng))
    if mistake == "wrong_order":
        orders = [p for p in itertools.permutations(right) if p != right]
        return _format(task, args, rng.choice(orders))
    text = _format(task, args, right)
    return _repeated(text, rng) if mistake == "repeated" else _truncated(text, rng)


def _repeated(text: str, rng: random.Random) -> str:
    """``text`` stuck repeating one of its words, more words than it has, so the loop never spells it out."""
    words = text.split(" ")
    spot = rng.randrange(len(words) - 1)
    repeats = len(words) - spot + rng.randint(1, 3)
    return " ".join(words[: spot + 1] + [words[spot]] * repeats)


def _truncated(text: str, rng: random.Random) -> str:
    """``text`` cut short, keeping at least a third of it."""
    return text[: rng.randint(len(text) // 3, len(text) - 2)].rstrip()


def _swap_at(word: str, i: int) -> str:
    """``word`` with its letters ``i`` and ``i + 1`` swapped."""
    return word[:i] + word[i + 1] + word[i] + word[i + 2:]


def _slip(task: str, args: Args, rng: random.Random) -> Any:
    """The result the task's demonstrator writes when it slips (``DEMONSTRATORS``); always a wrong one."""
    right = _solve(task, args)
    if task == "add":
        return _off_by_n(right, rng)
    if task == "count":
        return right + 1
    if task == "sort":
        return (right[0], right[2], right[1])
    spots = [i for i in range(len(right) - 1) if right[i] != right[i + 1]]
    return _swap_at(right, spots[0] if task == "reverse" else spots[-1])


def _worse(task: str, args: Args, result: Any, rng: random.Random) -> str:
    """An answer with one more mistake than the (wrong) ``result``: further off, or a second swap."""
    right = _solve(task, args)
    if task in ("add", "count"):
        away = 1 if result > right else -1
        worse = result + away * rng.randint(1, 3)
        return _format(task, args, worse if worse >= 0 else result + rng.randint(1, 3))
    if task == "sort":
        # Change a number the slip left in place, so no number of the worse answer is right where the slip's is not.
        values = list(result)
        spot = rng.choice([i for i in range(3) if values[i] == right[i]])
        values[spot] = _off_by_n(values[spot], rng, MAX_SORTED)
        return _format(task, args, tuple(values))
    options = [_swap_at(result, i) for i in range(len(result) - 1) if result[i] != result[i + 1]]
    options = [word for word in options if word != right]
    return _format(task, args, rng.choice(options) if options else result[::-1])


def _degenerate(text: str, rng: random.Random) -> tuple[str, str]:
    """``text`` cut short or stuck repeating a word (never a well-formed answer), and which of the two."""
    if rng.random() < 0.5:
        return _truncated(text, rng), "truncated"
    return _repeated(text, rng), "repeated"


def _demonstrated(task: str, args: Args, right_pair: tuple[str, str, str], rng: random.Random) -> tuple[str, str, str]:
    """The imperfect set's (chosen, rejected, mistake) for one prompt, from the perfect set's pair.

    ``chosen`` is the demonstration: the slip at the demonstrator's rate, else the right answer. ``rejected``
    has one more mistake than ``chosen``, so every pair says which answer is better.
    """
    right, wrong, mistake = right_pair
    demonstrator = DEMONSTRATORS[task]
    if rng.random() >= demonstrator.rate:
        if rng.random() < SLIP_REJECTED_RATE:
            return right, _format(task, args, _slip(task, args, rng)), demonstrator.mistake
        return right, wrong, mistake
    slip = _slip(task, args, rng)
    slipped = _format(task, args, slip)
    if rng.random() < DEGENERATE_RATE:
        return slipped, *_degenerate(slipped, rng)
    return slipped, _worse(task, args, slip, rng), demonstrator.mistake


def _items(task: str, rng: random.Random, words: Sequence[str]) -> Iterator[Args]:
    """Distinct arguments of ``task`` in a seeded random order, until its question space runs out."""
    if task == "add":
        pairs = [(x, y) for x in range(MAX_ADDEND + 1) for y in range(MAX_ADDEND + 1)]
        rng.shuffle(pairs)
        yield from pairs
    elif task == "sort":
        seen: set[Args] = set()
        while len(seen) < (MAX_SORTED + 1) * MAX_SORTED * (MAX_SORTED - 1):
            triple = tuple(rng.sample(range(MAX_SORTED + 1), 3))
            if triple not in seen:
                seen.add(triple)
                yield triple
    else:
        shuffled = list(words)
        rng.shuffle(shuffled)
        yield from ((w,) for w in shuffled)


def capacity(words: Sequence[str] | None = None) -> int:
    """How many distinct prompts the tasks can make."""
    num_words = len(load_words() if words is None else words)
    return (MAX_ADDEND + 1) ** 2 + 3 * num_words + (MAX_SORTED + 1) * MAX_SORTED * (MAX_SORTED - 1)


def _samples(seed: int, template: str = "hh", tokenizer: Any = None, *, perfect: bool = True) -> Iterator[dict]:
    """The endless-until-exhausted stream of distinct samples of ``seed``, tasks taken round-robin.

    Eval is the head of this stream and train the part after it, so the held-out prompts of a seed
    do not depend on how many training samples are asked for. The demonstrators of the imperfect set draw
    from a random stream of their own, so both sets ask the same prompts in the same order.
    """
    rng = random.Random(seed)
    demonstrators = random.Random(f"demonstrators-{seed}")
    words = load_words()
    active = [(task, _items(task, rng, words)) for task in TASKS]
    while active:
        for entry in list(active):
            task, items = entry
            args = next(items, None)
            if args is None:
                active.remove(entry)
                continue
            if rng.random() < DEGENERATE_RATE:
                mistake = rng.choice(DEGENERATE)
            else:
                mistake = rng.choice(TASK_MISTAKES[task])
            prompt = apply_prompt_template(_QUESTIONS[task].format(*args), template, tokenizer=tokenizer)
            chosen, rejected = _format(task, args, _solve(task, args)), _wrong_answer(task, args, mistake, rng)
            if not perfect:
                chosen, rejected, mistake = _demonstrated(task, args, (chosen, rejected, mistake), demonstrators)
            yield {
                "prompt": prompt,
                "chosen": fit_response(prompt, chosen),
                "rejected": fit_response(prompt, rejected),
                "task": task,
                "mistake": mistake,
            }


def held_out_prompts(seed: int, n: int, template: str = "hh", tokenizer: Any = None) -> list[str]:
    """The first ``n`` eval prompts of ``seed``: unseen in training by any set built with ``num_eval >= n``.

    ``template`` wraps them as training did (``model``: ``tokenizer``'s chat template)."""
    return [sample["prompt"] for sample in itertools.islice(_samples(seed, template, tokenizer), n)]


def demonstrations(seed: int, n: int) -> list[tuple[str, str]]:
    """The imperfect demonstrators' (prompt, answer) on the first ``n`` eval prompts of ``seed``: what step 1's
    teachers would have written for the held-out prompts, to score beside the models."""
    return [(s["prompt"], s["chosen"]) for s in itertools.islice(_samples(seed, perfect=False), n)]


def data_card() -> list[str]:
    """The imperfect set's demonstrators, one line a task, for the README, ``chatrlhf data`` and the report."""
    lines = []
    for task, demonstrator in DEMONSTRATORS.items():
        lines.append(f"{task}: slips {demonstrator.rate:.0%} of the time ({demonstrator.slip}); "
                     f"right {1 - demonstrator.rate:.0%}")
    mean = 1 - sum(d.rate for d in DEMONSTRATORS.values()) / len(DEMONSTRATORS)
    lines.append(f"mean demonstrator accuracy {mean:.0%}; each pair's chosen answer is the demonstration, its "
                 "rejected answer has one more mistake")
    return lines


WORD_TASKS = ("reverse", "upper", "count")
_CONSONANTS = "bcdfghjklmnprstvwz"
_VOWELS = "aeiou"


def novel_words(n: int, seed: int) -> list[str]:
    """``n`` distinct pronounceable 3-8 letter strings that are not in ``words.txt``.

    Word-task prompts built from them cannot have been seen in any training set, so a model that does
    well on them has learnt the task rather than the words.
    """
    known, found = set(load_words()), []
    rng = random.Random(f"novel-words-{seed}")
    while len(found) < n:
        vowel_first = rng.random() < 0.5
        word = "".join(rng.choice(_VOWELS if (i % 2 == 0) == vowel_first else _CONSONANTS)
                       for i in range(rng.randint(3, 8)))
        if word not in known and word not in found and _WORD.fullmatch(word):
            found.append(word)
    return found


def novel_word_prompts(seed: int, n: int, template: str = "hh", tokenizer: Any = None) -> list[str]:
    """``held_out_prompts(seed, n)`` with every word-task prompt asked of a word outside ``words.txt`` instead.

    The number tasks keep their held-out prompts, so the task mix, and so the overall accuracy, compare
    one to one with the standard held-out set.
    """
    samples = list(itertools.islice(_samples(seed, template, tokenizer), n))
    words = iter(novel_words(sum(sample["task"] in WORD_TASKS for sample in samples), seed))
    return [apply_prompt_template(_QUESTIONS[s["task"]].format(next(words)), template, tokenizer=tokenizer)
            if s["task"] in WORD_TASKS else s["prompt"] for s in samples]


class SyntheticTasks(PromptRawDataset):
    """Preference pairs over the five tasks; deterministic per seed, train and eval share no prompt.

    ``dataset_name`` picks the version: ``synthetic/tasks`` (imperfect demonstrators) or
    ``synthetic/tasks-perfect`` (every chosen answer right)."""

    dataset_name = IMPERFECT_NAME
    dataset_name_clean = "synthetic_tasks"

    def __init__(
        self,
        output_path: str,
        seed: int,
        local_rank: int,
        dataset_name: str = IMPERFECT_NAME,
        options: SourceOptions | None = None,
        num_train: int = DEFAULT_NUM_TRAIN,
        num_eval: int = DEFAULT_NUM_EVAL,
        tokenizer: Any = None,
    ) -> None:
        super().__init__(output_path, seed, local_rank, dataset_name)
        template = options.prompt_template if options is not None else "hh"
        check_template(template, tokenizer)
        if num_train < 0 or num_eval < 0 or num_train + num_eval > capacity():
            raise ValueError(f"synthetic/tasks makes 0 to {capacity()} distinct prompts; asked {num_train}+{num_eval}")
        if dataset_name not in SOURCE_NAMES:
            raise ValueError(f"synthetic source {dataset_name!r}: expected one of {', '.join(SOURCE_NAMES)}")
        perfect = dataset_name == PERFECT_NAME
        samples = list(itertools.islice(_samples(seed, template, tokenizer, perfect=perfect), num_eval + num_train))
        self.eval_samples = samples[:num_eval]
        self.train_samples = samples[num_eval:]

    def get_train_data(self) -> list[dict]:
        return self.train_samples

    def get_eval_data(self) -> list[dict]:
        return self.eval_samples

    def get_prompt(self, sample: dict) -> str:
        return sample["prompt"]

    def get_chosen(self, sample: dict) -> str:
        return sample["chosen"]

    def get_rejected(self, sample: dict) -> str:
        return sample["rejected"]

    def sample_meta(self, sample: dict) -> dict:
        """The task and the kind of mistake in the rejected answer, for accuracy per task and per kind."""
        return {"task": sample["task"], "mistake": sample["mistake"]}
