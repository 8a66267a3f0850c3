"""The one way every command builds its argument parser, so that ``--help`` reads alike everywhere.

Each option's help ends with its default, so nobody has to read the code to learn what a run does
unless told otherwise; descriptions and epilogs keep their line breaks.
"""
from __future__ import annotations

import argparse


def shown_default(action: argparse.Action) -> str:
    """An option's default as it would be typed: list items space-separated, an empty string quoted, and a
    switch on or off (so ``--no_x`` whose destination defaults to True reads "off", not "True")."""
    value = action.default
    if action.nargs == 0 and isinstance(action.const, bool):
        return "on" if value == action.const else "off"
    if isinstance(value, (list, tuple)):
        return " ".join(map(str, value)) or "none"
    return "''" if value == "" else str(value)


class HelpFormatter(argparse.RawDescriptionHelpFormatter):
    """Appends ``(default: ...)`` to every option's help, except where the default is None: such a flag's
    help says itself what happens when it is unset (often a default that depends on other flags)."""

    def _get_help_string(self, action: argparse.Action) -> str:
        text = action.help or ""
        if action.default is None or action.default is argparse.SUPPRESS or "%(default)" in text:
            return text
        if not action.option_strings and action.nargs not in (argparse.OPTIONAL, argparse.ZERO_OR_MORE):
            return text
        # The help text is %-formatted by argparse, so a literal % in the default must be doubled.
        return f"{text} (default: {shown_default(action).replace('%', '%%')})"


def new_parser(prog: str, description: str, *, epilog: str | None = None, config_file: bool = False,
               **kwargs) -> argparse.ArgumentParser:
    """A parser with the shared help format; ``config_file=True`` adds ``--config FILE`` (training commands)."""
    if config_file:
        from chatrlhf.training.config_file import ConfigFileParser

        return ConfigFileParser(prog=prog, description=description, epilog=epilog, formatter_class=HelpFormatter,
                                **kwargs)
    return argparse.ArgumentParser(prog=prog, description=description, epilog=epilog, formatter_class=HelpFormatter,
                                   **kwargs)
