"""Chat with a model in the terminal, in the ``Human:``/``Assistant:`` format the models were trained on.

Keeps DeepSpeed-Chat's ``chat.py`` flags (``--path``, ``--max_new_tokens``). Answers are printed as they are
generated and end where the model starts a new ``Human:`` turn or at end-of-text.
"""
from __future__ import annotations

import argparse
import contextlib
import importlib
import sys
from collections.abc import Callable, Sequence

import torch
from transformers import TextStreamer, set_seed

from chatrlhf.training.cli_parser import new_parser
from chatrlhf.utils.model.generation import STOP_MARKERS, GenerationSettings, cut_at_new_turn, encode_prompts

CLEAR = "clear"
QUIT = "quit"

Write = Callable[[str], object]


class ContextTooLong(ValueError):
    """A question that does not fit the context even without history, so it cannot be asked at all."""


def turn_text(question: str, answer: str | None = None) -> str:
    """One turn as in training; without an answer it is the prompt the model continues."""
    head = f"\n\nHuman: {question}\n\nAssistant:"
    return head if answer is None else f"{head} {answer}"


class Conversation:
    """The turns so far and the prompt for the next question, kept within a token budget.

    Separate from the terminal and the model so the prompt format and truncation can be tested on their own;
    ``count_tokens`` is how long a prompt is for the model.
    """

    def __init__(self, count_tokens: Callable[[str], int], max_prompt_tokens: int | None = None) -> None:
        self.count_tokens = count_tokens
        self.max_prompt_tokens = max_prompt_tokens
        self.turns: list[tuple[str, str]] = []

    def history(self) -> str:
        return "".join(turn_text(question, answer) for question, answer in self.turns)

    def prompt_for(self, question: str) -> str:
        return self.history() + turn_text(question)

    def prompt(self, question: str) -> tuple[str, int]:
        """The prompt for ``question`` and how many of the oldest turns were forgotten to fit the budget."""
        if self.max_prompt_tokens is None:
            return self.prompt_for(question), 0
        alone = self.count_tokens(turn_text(question))
        if alone > self.max_prompt_tokens:
            raise ContextTooLong(f"the question is {alone} tokens, over the {self.max_prompt_tokens}-token context")
        dropped = 0
        while self.count_tokens(self.prompt_for(question)) > self.max_prompt_tokens:
            self.turns.pop(0)
            dropped += 1
        return self.prompt_for(question), dropped

    def add(self, question: str, answer: str) -> None:
        self.turns.append((question, answer))

    def clear(self) -> None:
        self.turns.clear()


class AnswerCutter:
    """Turns streamed text into the part of the answer that is safe to print now.

    Text that may still become the start of a ``Human:`` turn, and trailing whitespace, is held back until later
    text (or the end) settles it, so what has been printed is always the beginning of the final, cut answer.
    """

    def __init__(self) -> None:
        self.text = ""
        self.printed = ""

    @property
    def answer(self) -> str:
        return cut_at_new_turn(self.text).strip()

    @property
    def stopped(self) -> bool:
        return cut_at_new_turn(self.text) != self.text

    def feed(self, piece: str) -> str:
        """Take the next piece of generated text; returns what can be printed now."""
        self.text += piece
        return self._advance(self._safe_end())

    def finish(self) -> str:
        """Generation has ended: the rest of the answer."""
        return self._advance(len(cut_at_new_turn(self.text)))

    def _safe_end(self) -> int:
        cut = len(cut_at_new_turn(self.text))
        if cut < len(self.text):
            return cut
        longest = max(len(marker) for marker in STOP_MARKERS)
        for start in range(max(0, len(self.text) - longest), len(self.text)):
            if any(marker.startswith(self.text[start:]) for marker in STOP_MARKERS):
                return start
        return len(self.text)

    def _advance(self, end: int) -> str:
        visible = self.text[:end].strip()
        new = visible[len(self.printed) :]
        self.printed = visible
        return new


class TerminalStreamer(TextStreamer):
    """Writes an answer while it is generated, through an :class:`AnswerCutter` so it stops where it is cut."""

    def __init__(self, tokenizer, write: Write) -> None:
        super().__init__(tokenizer, skip_prompt=True, skip_special_tokens=True)
        self.cutter = AnswerCutter()
        self.write = write

    def on_finalized_text(self, text: str, stream_end: bool = False) -> None:
        shown = self.cutter.feed(text) + (self.cutter.finish() if stream_end else "")
        if shown:
            self.write(shown)


@torch.no_grad()
def stream_answer(model, tokenizer, prompt: str, settings: GenerationSettings, write: Write) -> str:
    """Generate the answer to ``prompt``, writing it as it comes; returns exactly what was written."""
    ids = torch.tensor(encode_prompts(tokenizer, [prompt]), device=next(model.parameters()).device)
    streamer = TerminalStreamer(tokenizer, write)
    sampling = {"temperature": settings.temperature, "top_p": settings.top_p, "top_k": settings.top_k}
    model.generate(
        input_ids=ids,
        attention_mask=torch.ones_like(ids),
        max_new_tokens=settings.max_new_tokens,
        do_sample=settings.do_sample,
        pad_token_id=tokenizer.pad_token_id,
        eos_token_id=tokenizer.eos_token_id,
        streamer=streamer,
        # transformers checks the stop strings on the new tokens alone, without decoding the whole answer.
        stop_strings=list(STOP_MARKERS),
        tokenizer=tokenizer,
        **(sampling if settings.do_sample else {}),
    )
    return streamer.cutter.printed


def token_counter(tokenizer) -> Callable[[str], int]:
    """Prompt length as the model sees it, BOS included."""
    return lambda text: len(encode_prompts(tokenizer, [text])[0])


def prompt_budget(model, max_new_tokens: int, max_history_tokens: int | None) -> int | None:
    """The most prompt tokens that leave room for an answer within the model's positions (None: no limit)."""
    if max_history_tokens is not None and max_history_tokens < 1:
        raise SystemExit(f"chat: --max_history_tokens must be positive, not {max_history_tokens}.")
    positions = getattr(model.config, "max_position_embeddings", None)
    if positions is None:
        return max_history_tokens
    room = positions - max_new_tokens
    if room < 1:
        raise SystemExit(f"chat: --max_new_tokens {max_new_tokens} leaves no room for a prompt "
                         f"in the model's {positions} positions.")
    return room if max_history_tokens is None else min(max_history_tokens, room)


def chat_loop(model, tokenizer, conversation: Conversation, settings: GenerationSettings,
              read_line: Callable[[str], str], write: Write) -> None:
    """Ask, answer, repeat until ``quit`` or end of input."""
    while True:
        write("\n")
        try:
            question = read_line("Human: ").strip()
        except (EOFError, KeyboardInterrupt):
            write("\n")
            return
        if not question:
            continue
        if question == QUIT:
            return
        if question == CLEAR:
            conversation.clear()
            write("[conversation cleared]\n")
            continue
        try:
            prompt, dropped = conversation.prompt(question)
        except ContextTooLong as error:
            write(f"[not asked: {error}]\n")
            continue
        if dropped:
            write(f"[forgot the {dropped} oldest turn(s) to fit the {conversation.max_prompt_tokens}-token context]\n")
        write("\nAssistant: ")
        try:
            answer = stream_answer(model, tokenizer, prompt, settings, write)
        except KeyboardInterrupt:
            write(" [interrupted; this turn is not kept]\n")
            continue
        write("\n")
        conversation.add(question, answer)


def build_parser() -> argparse.ArgumentParser:
    parser = new_parser("chatrlhf chat", "Chat with a model in the terminal.")
    parser.add_argument("--path", required=True, help="Model directory, hub name or preset (e.g. tiny-opt).")
    parser.add_argument("--max_new_tokens", type=int, default=128, help="Longest answer, in tokens.")
    parser.add_argument("--do_sample", action="store_true", help="Sample instead of greedy decoding.")
    parser.add_argument("--temperature", type=float, default=1.0, help="Sampling temperature (with --do_sample).")
    parser.add_argument("--top_p", type=float, default=1.0,
                        help="With --do_sample: sample from the most likely tokens holding this probability mass.")
    parser.add_argument("--top_k", type=int, default=0,
                        help="With --do_sample: sample from the K most likely tokens (0: all).")
    parser.add_argument("--seed", type=int, default=None, help="Makes a sampled chat reproducible.")
    parser.add_argument("--max_history_tokens", type=int, default=None,
                        help="Most prompt tokens (history and question); the oldest turns are forgotten beyond it. "
                             "Unset: the model's positions minus --max_new_tokens, which is also the ceiling.")
    return parser


def write_stdout(text: str) -> None:
    sys.stdout.write(text)
    sys.stdout.flush()


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    from chatrlhf.utils.model.inference import load_for_inference

    if args.seed is not None:
        set_seed(args.seed)
    if sys.stdin.isatty():
        # Line editing and history at the prompt; absent on some platforms, where plain input() still works.
        with contextlib.suppress(ImportError):
            importlib.import_module("readline")
    write_stdout(f"Loading {args.path} ...\n")
    model, tokenizer = load_for_inference(args.path)
    budget = prompt_budget(model, args.max_new_tokens, args.max_history_tokens)
    settings = GenerationSettings(max_new_tokens=args.max_new_tokens, do_sample=args.do_sample,
                                  temperature=args.temperature, top_p=args.top_p, top_k=args.top_k)
    context = "unlimited" if budget is None else f"{budget} tokens"
    write_stdout(f"Chatting with {args.path} (context {context}, answers up to {args.max_new_tokens} tokens).\n"
                 f"Type `{CLEAR}` to forget the conversation, `{QUIT}` or Ctrl-D to leave.\n")
    chat_loop(model, tokenizer, Conversation(token_counter(tokenizer), budget), settings, input, write_stdout)
    return 0


if __name__ == "__main__":
    sys.exit(main())
