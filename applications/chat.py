"""Chat with a model in the terminal, in the prompt format the model was trained on (``chat_formats``).

Keeps DeepSpeed-Chat's ``chat.py`` flags (``--path``, ``--max_new_tokens``). Answers are printed as they are
generated and end at end-of-text or where the model starts a new turn (in the ``Human:``/``Assistant:``
format, a new ``Human:`` turn).
"""
from __future__ import annotations

import argparse
import contextlib
import importlib
import sys
from collections.abc import Callable, Sequence

import torch
from transformers import TextStreamer, set_seed

from chatrlhf.applications.chat_formats import CHOICES, ChatFormat, Turns, build_format, choose_format, hh_turns
from chatrlhf.training.cli_parser import new_parser
from chatrlhf.utils.model.generation import STOP_MARKERS, GenerationSettings

CLEAR = "clear"
QUIT = "quit"

Write = Callable[[str], object]


class ContextTooLong(ValueError):
    """A question that does not fit the context even without history, so it cannot be asked at all."""


class Conversation:
    """The turns so far and the prompt for the next question, kept within a token budget.

    Separate from the terminal and the model so the prompt format and truncation can be tested on their own;
    ``count_tokens`` is how long a prompt is for the model; ``render`` writes the turns in the model's format.
    """

    def __init__(self, count_tokens: Callable[[str], int], max_prompt_tokens: int | None = None,
                 render: Callable[[Turns], str] = hh_turns) -> None:
        self.count_tokens = count_tokens
        self.max_prompt_tokens = max_prompt_tokens
        self.render = render
        self.turns: list[tuple[str, str]] = []

    def prompt_for(self, question: str) -> str:
        return self.render([*self.turns, (question, None)])

    def prompt(self, question: str) -> tuple[str, int]:
        """The prompt for ``question`` and how many of the oldest turns were forgotten to fit the budget."""
        if self.max_prompt_tokens is None:
            return self.prompt_for(question), 0
        alone = self.count_tokens(self.render([(question, None)]))
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

    Text that may still become the start of a stop marker (a ``Human:`` turn), and trailing whitespace, is held
    back until later text (or the end) settles it, so what has been printed is always the beginning of the
    final, cut answer.
    """

    def __init__(self, markers: tuple[str, ...] = STOP_MARKERS) -> None:
        self.markers = markers
        self.text = ""
        self.printed = ""

    def _cut(self) -> str:
        ends = [i for i in (self.text.find(m) for m in self.markers) if i != -1]
        return self.text[: min(ends)] if ends else self.text

    @property
    def answer(self) -> str:
        return self._cut().strip()

    @property
    def stopped(self) -> bool:
        return self._cut() != self.text

    def feed(self, piece: str) -> str:
        """Take the next piece of generated text; returns what can be printed now."""
        self.text += piece
        return self._advance(self._safe_end())

    def finish(self) -> str:
        """Generation has ended: the rest of the answer."""
        return self._advance(len(self._cut()))

    def _safe_end(self) -> int:
        cut = len(self._cut())
        if cut < len(self.text):
            return cut
        longest = max((len(marker) for marker in self.markers), default=0)
        for start in range(max(0, len(self.text) - longest), len(self.text)):
            if any(marker.startswith(self.text[start:]) for marker in self.markers):
                return start
        return len(self.text)

    def _advance(self, end: int) -> str:
        visible = self.text[:end].strip()
        new = visible[len(self.printed) :]
        self.printed = visible
        return new


class TerminalStreamer(TextStreamer):
    """Writes an answer while it is generated, through an :class:`AnswerCutter` so it stops where it is cut."""

    def __init__(self, tokenizer, write: Write, markers: tuple[str, ...] = STOP_MARKERS) -> None:
        super().__init__(tokenizer, skip_prompt=True, skip_special_tokens=True)
        self.cutter = AnswerCutter(markers)
        self.write = write

    def on_finalized_text(self, text: str, stream_end: bool = False) -> None:
        shown = self.cutter.feed(text) + (self.cutter.finish() if stream_end else "")
        if shown:
            self.write(shown)


@torch.no_grad()
def stream_answer(model, tokenizer, prompt: str, settings: GenerationSettings, write: Write,
                  chat_format: ChatFormat | None = None) -> str:
    """Generate the answer to ``prompt``, writing it as it comes; returns exactly what was written."""
    chat_format = chat_format or build_format("hh", tokenizer)
    ids = torch.tensor([chat_format.encode(prompt)], device=next(model.parameters()).device)
    streamer = TerminalStreamer(tokenizer, write, chat_format.stop_markers)
    sampling = {"temperature": settings.temperature, "top_p": settings.top_p, "top_k": settings.top_k}
    model.generate(
        input_ids=ids,
        attention_mask=torch.ones_like(ids),
        max_new_tokens=settings.max_new_tokens,
        do_sample=settings.do_sample,
        pad_token_id=tokenizer.pad_token_id,
        eos_token_id=end_of_turn_ids(model, tokenizer),
        streamer=streamer,
        # transformers checks the stop strings on the new tokens alone, without decoding the whole answer.
        stop_strings=list(chat_format.stop_markers) or None,
        tokenizer=tokenizer,
        **(sampling if settings.do_sample else {}),
    )
    return streamer.cutter.printed


def end_of_turn_ids(model, tokenizer) -> list[int]:
    """The tokenizer's end-of-text and the ids the model's generation config ends on (a chat model's end of turn,
    e.g. ChatML's ``<|im_end|>``)."""
    configured = getattr(model.generation_config, "eos_token_id", None)
    ids = [tokenizer.eos_token_id, *(configured if isinstance(configured, list) else [configured])]
    return list(dict.fromkeys(i for i in ids if i is not None))


def token_counter(chat_format: ChatFormat) -> Callable[[str], int]:
    """Prompt length as the model sees it, BOS included."""
    return lambda text: len(chat_format.encode(text))


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
              read_line: Callable[[str], str], write: Write, chat_format: ChatFormat | None = None) -> None:
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
            answer = stream_answer(model, tokenizer, prompt, settings, write, chat_format)
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
    parser.add_argument("--prompt_template", choices=CHOICES, default="auto",
                        help="The prompt format: auto is the --prompt_template a chatrlhf run trained the model "
                             "with (its chatrlhf_args.json), else the tokenizer's own chat template, else hh "
                             "(Human:/Assistant:); model is the tokenizer's chat template.")
    parser.add_argument("--max_history_tokens", type=int, default=None,
                        help="Most prompt tokens (history and question); the oldest turns are forgotten beyond it. "
                             "Unset: the model's positions minus --max_new_tokens, which is also the ceiling.")
    return parser


def write_stdout(text: str) -> None:
    sys.stdout.write(text)
    sys.stdout.flush()


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    from chatrlhf.training.metrics_log import quiet_library_bars
    from chatrlhf.utils.model.inference import load_for_inference

    quiet_library_bars()
    if args.seed is not None:
        set_seed(args.seed)
    if sys.stdin.isatty():
        # Line editing and history at the prompt; absent on some platforms, where plain input() still works.
        with contextlib.suppress(ImportError):
            importlib.import_module("readline")
    write_stdout(f"Loading {args.path} ...\n")
    model, tokenizer = load_for_inference(args.path)
    chat_format = choose_format(args.prompt_template, args.path, tokenizer)
    budget = prompt_budget(model, args.max_new_tokens, args.max_history_tokens)
    settings = GenerationSettings(max_new_tokens=args.max_new_tokens, do_sample=args.do_sample,
                                  temperature=args.temperature, top_p=args.top_p, top_k=args.top_k)
    context = "unlimited" if budget is None else f"{budget} tokens"
    write_stdout(f"Chatting with {args.path} (format {chat_format.name}, context {context}, answers up to "
                 f"{args.max_new_tokens} tokens).\n"
                 f"Type `{CLEAR}` to forget the conversation, `{QUIT}` or Ctrl-D to leave.\n")
    conversation = Conversation(token_counter(chat_format), budget, chat_format.render)
    chat_loop(model, tokenizer, conversation, settings, input, write_stdout, chat_format)
    return 0


if __name__ == "__main__":
    sys.exit(main())
