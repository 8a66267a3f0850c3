"""``chatrlhf chat``: conversation history and prompts, cutting streamed answers, and the program in a terminal.

The model tests reuse the ``tiny-opt`` preset from the default cache (``CHATRLHF_CACHE`` or ``~/.cache/chatrlhf``),
so it is built at most once (~20 s) rather than once per run.
"""
from __future__ import annotations

import codecs
import io
import json
import os
import pty
import random
import select
import signal
import sys
import time
from types import SimpleNamespace

import pytest
import torch

from chatrlhf.applications.chat import (
    AnswerCutter,
    ContextTooLong,
    Conversation,
    chat_loop,
    prompt_budget,
    stream_answer,
    token_counter,
)
from chatrlhf.applications.chat_formats import build_format, choose_format
from chatrlhf.utils.model.generation import GenerationSettings, cut_at_new_turn, encode_prompts

# A ChatML template as chat models ship it (SmolLM2's has the same shape), for a tokenizer that has none.
CHATML_JINJA = ("{% for m in messages %}<|im_start|>{{ m['role'] }}\n{{ m['content'] }}<|im_end|>\n{% endfor %}"
                "{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}")


def count_words(text: str) -> int:
    return len(text.split())


def test_prompt_format_over_several_turns() -> None:
    conversation = Conversation(count_words)
    assert conversation.prompt("Hi") == ("\n\nHuman: Hi\n\nAssistant:", 0)
    conversation.add("Hi", "Hello.")
    conversation.add("What is 2 + 3?", "5.")
    prompt, dropped = conversation.prompt("And 4 + 4?")
    assert dropped == 0
    assert prompt == (
        "\n\nHuman: Hi\n\nAssistant: Hello."
        "\n\nHuman: What is 2 + 3?\n\nAssistant: 5."
        "\n\nHuman: And 4 + 4?\n\nAssistant:"
    )


def test_clear_forgets_the_history() -> None:
    conversation = Conversation(count_words)
    conversation.add("Hi", "Hello.")
    conversation.clear()
    assert conversation.turns == []
    assert conversation.prompt("Again") == ("\n\nHuman: Again\n\nAssistant:", 0)


def test_oldest_turns_are_dropped_to_fit_the_budget() -> None:
    # Each stored turn is 4 words ("Human: qN Assistant: aN"), the new question's prompt 3.
    conversation = Conversation(count_words, max_prompt_tokens=11)
    for n in range(1, 4):
        conversation.add(f"q{n}", f"a{n}")
    prompt, dropped = conversation.prompt("q4")
    assert dropped == 1
    assert prompt == "\n\nHuman: q2\n\nAssistant: a2\n\nHuman: q3\n\nAssistant: a3\n\nHuman: q4\n\nAssistant:"
    assert conversation.turns == [("q2", "a2"), ("q3", "a3")]
    assert conversation.prompt("q4") == (prompt, 0)


def test_a_question_too_long_on_its_own_is_refused_and_keeps_the_history() -> None:
    conversation = Conversation(count_words, max_prompt_tokens=5)
    conversation.add("q1", "a1")
    with pytest.raises(ContextTooLong):
        conversation.prompt("one two three four")
    assert conversation.turns == [("q1", "a1")]


def stream(pieces: list[str]) -> tuple[str, AnswerCutter]:
    cutter = AnswerCutter()
    printed = "".join(cutter.feed(piece) for piece in pieces)
    return printed + cutter.finish(), cutter


def test_answer_is_cut_where_a_human_turn_starts() -> None:
    cutter = AnswerCutter()
    assert cutter.feed(" Sure, 5") == "Sure, 5"
    assert cutter.feed(".\n") == "."
    assert cutter.feed("\nHu") == ""
    assert not cutter.stopped
    assert cutter.feed("man: next question") == ""
    assert cutter.stopped
    assert cutter.finish() == ""
    assert cutter.answer == cutter.printed == "Sure, 5."


def test_held_back_text_is_printed_when_it_is_not_a_new_turn() -> None:
    printed, cutter = stream([" The ", "answer\n", "\nHum", "ans are"])
    assert printed == cutter.answer == "The answer\n\nHumans are"
    assert not cutter.stopped
    assert stream([" ends with\n\nHu"])[0] == "ends with\n\nHu"


@pytest.mark.parametrize("text", [
    " 5.\n\nHuman: and 6?",
    " one\nHuman: two",
    "  spaced  \n\n",
    " no marker at all, Human: is mid-line",
    "\n\nHuman: at once",
])
def test_printed_text_is_exactly_the_cut_answer_however_it_is_streamed(text: str) -> None:
    rng = random.Random(text)
    for _ in range(20):
        cuts = sorted(rng.sample(range(1, len(text)), k=rng.randint(0, min(6, len(text) - 1))))
        pieces = [text[a:b] for a, b in zip([0, *cuts], [*cuts, len(text)])]
        printed, cutter = stream(pieces)
        assert printed == cutter.answer == cut_at_new_turn(text).strip()


def test_budget_leaves_room_for_the_answer() -> None:
    model = SimpleNamespace(config=SimpleNamespace(max_position_embeddings=1024))
    assert prompt_budget(model, 128, None) == 896
    assert prompt_budget(model, 128, 100) == 100
    assert prompt_budget(model, 128, 5000) == 896
    with pytest.raises(SystemExit):
        prompt_budget(model, 1024, None)


@pytest.fixture(scope="module")
def tiny_opt():
    from chatrlhf.utils.model.inference import load_for_inference

    return load_for_inference("tiny-opt")


def test_generation_stops_at_a_new_human_turn(tiny_opt, monkeypatch) -> None:
    """The answer ends at the first token that completes a ``Human:`` turn, not at ``max_new_tokens``."""
    model, tokenizer = tiny_opt
    prompt = "\n\nHuman: What is 2 + 3?\n\nAssistant:"
    turn = tokenizer(" 5.\n\nHuman: and then some more words", add_special_tokens=False)["input_ids"]
    original = model.generate
    step = {"n": 0}

    def scripted(**kwargs):
        """The model's own generate, with logits that spell out ``turn`` token by token."""

        def force(input_ids, scores):
            forced = torch.full_like(scores, -1e9)
            forced[:, turn[min(step["n"], len(turn) - 1)]] = 0.0
            step["n"] += 1
            return forced

        return original(**kwargs, logits_processor=[force])

    monkeypatch.setattr(model, "generate", scripted)
    answer = stream_answer(model, tokenizer, prompt, GenerationSettings(max_new_tokens=len(turn)), io.StringIO().write)
    assert answer == "5."
    human_end = len(tokenizer(" 5.\n\nHuman:", add_special_tokens=False)["input_ids"])
    assert step["n"] == human_end < len(turn)


def test_streamed_answer_matches_plain_generation(tiny_opt) -> None:
    model, tokenizer = tiny_opt
    prompt = "\n\nHuman: What is 2 + 3?\n\nAssistant:"
    settings = GenerationSettings(max_new_tokens=12)
    out = io.StringIO()
    answer = stream_answer(model, tokenizer, prompt, settings, out.write)
    ids = torch.tensor(encode_prompts(tokenizer, [prompt]))
    generated = model.generate(input_ids=ids, attention_mask=torch.ones_like(ids), max_new_tokens=12, do_sample=False,
                               pad_token_id=tokenizer.pad_token_id, eos_token_id=tokenizer.eos_token_id)
    plain = tokenizer.decode(generated[0, ids.shape[1] :], skip_special_tokens=True)
    assert out.getvalue() == answer == cut_at_new_turn(plain).strip()
    assert answer


def chat_command(*flags: str) -> list[str]:
    return [sys.executable, "-m", "chatrlhf.cli", "chat", "--path", "tiny-opt", "--max_new_tokens", "12", *flags]


def chat_env() -> dict[str, str]:
    # A dumb terminal keeps readline from writing escape sequences between the prompts.
    return {**os.environ, "HF_HUB_OFFLINE": "1", "TERM": "dumb"}


class Terminal:
    """The program on a pseudo-terminal, with just enough of pexpect (not a declared test dependency)."""

    def __init__(self, argv: list[str], env: dict[str, str]) -> None:
        pid, fd = pty.fork()
        if pid == 0:
            try:
                os.execvpe(argv[0], argv, env)
            finally:
                os._exit(127)
        self.pid, self.fd = pid, fd
        self.decoder = codecs.getincrementaldecoder("utf-8")(errors="replace")
        self.output = ""
        self.seen = 0
        self.returncode: int | None = None

    def _read(self, timeout: float) -> bool:
        """Append what the program wrote within ``timeout``; False once it has closed the terminal."""
        ready, _, _ = select.select([self.fd], [], [], timeout)
        if not ready:
            return True
        try:
            chunk = os.read(self.fd, 4096)
        except OSError:  # Linux reports a closed pseudo-terminal as EIO
            chunk = b""
        self.output += self.decoder.decode(chunk)
        return bool(chunk)

    def expect(self, text: str, timeout: float = 300) -> str:
        """Wait for ``text``; returns the output since the last match, up to and including it."""
        deadline = time.monotonic() + timeout
        while text not in self.output[self.seen :]:
            remaining = deadline - time.monotonic()
            assert remaining > 0, f"no {text!r} within {timeout} s; output:\n{self.output}"
            assert self._read(remaining), f"the program ended before {text!r}; output:\n{self.output}"
        end = self.output.index(text, self.seen) + len(text)
        before, self.seen = self.output[self.seen : end], end
        return before

    def sendline(self, line: str) -> None:
        os.write(self.fd, line.encode() + b"\n")

    def exit_status(self, timeout: float = 120) -> int:
        deadline = time.monotonic() + timeout
        while self._read(max(deadline - time.monotonic(), 0)):
            assert time.monotonic() < deadline, f"the program did not exit; output:\n{self.output}"
        _, status = os.waitpid(self.pid, 0)
        self.returncode = os.waitstatus_to_exitcode(status)
        return self.returncode

    def close(self) -> None:
        """Kill the program if a failed test left it running, and release the terminal."""
        if self.returncode is None:
            os.kill(self.pid, signal.SIGKILL)
            os.waitpid(self.pid, 0)
        os.close(self.fd)


def test_chat_in_a_terminal() -> None:
    term = Terminal(chat_command(), chat_env())
    try:
        term.expect("`quit` or Ctrl-D to leave", timeout=600)
        term.expect("Human: ")
        term.sendline("What is 2 + 3?")
        term.expect("\r\nAssistant: ")
        answer = term.expect("\r\n\r\nHuman: ")
        assert answer.strip() and "Human:" not in answer.removesuffix("Human: ")
        term.sendline("clear")
        term.expect("[conversation cleared]")
        term.expect("Human: ")
        term.sendline("And 4 + 4?")
        term.expect("\r\nAssistant: ")
        term.expect("\r\n\r\nHuman: ")
        term.sendline("quit")
        assert term.exit_status() == 0
    finally:
        term.close()


def scripted(lines: list[str]):
    """A ``read_line`` that types ``lines`` and then Ctrl-D."""
    queue = list(lines)

    def read_line(prompt: str) -> str:
        if not queue:
            raise EOFError
        return queue.pop(0)

    return read_line, queue


def test_chat_loop_forgets_old_turns_clears_and_leaves_at_end_of_input(tiny_opt) -> None:
    model, tokenizer = tiny_opt
    conversation = Conversation(token_counter(build_format("hh", tokenizer)), max_prompt_tokens=40)
    read_line, _ = scripted(["What is 2 + 3?", "And 4 + 4?", "clear", "Then 5 + 5?"])
    out = io.StringIO()
    chat_loop(model, tokenizer, conversation, GenerationSettings(max_new_tokens=12), read_line, out.write)
    shown = out.getvalue()
    assert shown.count("\nAssistant: ") == 3
    assert "[forgot the 1 oldest turn(s) to fit the 40-token context]" in shown
    assert "[conversation cleared]" in shown
    assert [question for question, _ in conversation.turns] == ["Then 5 + 5?"]


def test_chat_loop_stops_at_quit(tiny_opt) -> None:
    model, tokenizer = tiny_opt
    read_line, left = scripted(["quit", "never asked"])
    conversation = Conversation(token_counter(build_format("hh", tokenizer)))
    chat_loop(model, tokenizer, conversation, GenerationSettings(), read_line, io.StringIO().write)
    assert left == ["never asked"]


def _scripted(model, turn: list[int], step: dict):
    """The model's own generate, with logits that spell out ``turn`` token by token."""
    original = model.generate

    def generate(**kwargs):
        def force(input_ids, scores):
            forced = torch.full_like(scores, -1e9)
            forced[:, turn[min(step["n"], len(turn) - 1)]] = 0.0
            step["n"] += 1
            return forced

        return original(**kwargs, logits_processor=[force])
    return generate


@pytest.fixture
def chatml_tokenizer(tiny_opt):
    _, tokenizer = tiny_opt
    tokenizer.chat_template = CHATML_JINJA
    yield tokenizer
    tokenizer.chat_template = None


def test_the_models_own_chat_template_renders_every_turn(chatml_tokenizer) -> None:
    chat_format = build_format("model", chatml_tokenizer)
    conversation = Conversation(len, render=chat_format.render)
    conversation.add("Hi", "Hello.")
    prompt, _ = conversation.prompt("And 4 + 4?")
    assert prompt == ("<|im_start|>user\nHi<|im_end|>\n<|im_start|>assistant\nHello.<|im_end|>\n"
                      "<|im_start|>user\nAnd 4 + 4?<|im_end|>\n<|im_start|>assistant\n")
    # The template writes the whole prompt: no BOS is put in front of it.
    assert chat_format.encode(prompt) == chatml_tokenizer(prompt, add_special_tokens=False)["input_ids"]
    assert build_format("chatml", chatml_tokenizer).render([("Hi", "Hello."), ("And 4 + 4?", None)]) == prompt


def test_auto_picks_the_trained_template_then_the_tokenizers_then_hh(tmp_path, chatml_tokenizer) -> None:
    run = tmp_path / "run"
    (run / "actor").mkdir(parents=True)
    (run / "chatrlhf_args.json").write_text(json.dumps({"args": {"prompt_template": "alpaca"}}))
    assert choose_format("auto", str(run), chatml_tokenizer).name == "alpaca"
    assert choose_format("auto", str(run / "actor"), chatml_tokenizer).name == "alpaca"  # step 3's actor folder
    assert choose_format("auto", str(tmp_path), chatml_tokenizer).name == "model"
    assert choose_format("hh", str(tmp_path), chatml_tokenizer).name == "hh"
    chatml_tokenizer.chat_template = None
    assert choose_format("auto", "tiny-opt", chatml_tokenizer).name == "hh"
    with pytest.raises(SystemExit, match="no chat template"):
        choose_format("model", "tiny-opt", chatml_tokenizer)


def test_a_chatml_answer_ends_at_the_end_of_its_turn(tiny_opt, chatml_tokenizer, monkeypatch) -> None:
    model, tokenizer = tiny_opt
    chat_format = build_format("chatml", tokenizer)
    prompt = chat_format.render([("What is 2 + 3?", None)])
    turn = tokenizer(" 5.<|im_end|>\n<|im_start|>user\nmore words", add_special_tokens=False)["input_ids"]
    step = {"n": 0}
    monkeypatch.setattr(model, "generate", _scripted(model, turn, step))
    settings = GenerationSettings(max_new_tokens=len(turn))
    assert stream_answer(model, tokenizer, prompt, settings, io.StringIO().write, chat_format) == "5."
    assert step["n"] == len(tokenizer(" 5.<|im_end|>", add_special_tokens=False)["input_ids"]) < len(turn)


def test_the_chat_command_uses_the_format_a_run_trained_with(tmp_path, monkeypatch, tiny_opt) -> None:
    from chatrlhf.applications import chat

    (tmp_path / "chatrlhf_args.json").write_text(json.dumps({"args": {"prompt_template": "chatml"}}))
    seen = {}
    monkeypatch.setattr("chatrlhf.utils.model.inference.load_for_inference", lambda path: tiny_opt)
    monkeypatch.setattr(chat, "chat_loop", lambda *a: seen.update(fmt=a[-1], prompt=a[2].prompt("Hi")[0]))
    out = io.StringIO()
    monkeypatch.setattr(sys, "stdout", out)
    assert chat.main(["--path", str(tmp_path)]) == 0
    assert seen["fmt"].name == "chatml" and seen["prompt"].startswith("<|im_start|>user\nHi")
    assert "format chatml" in out.getvalue()
