"""``--config FILE.yaml|json`` for the training commands, and the resolved flags saved beside the model.

A config file maps flag names (as typed, without the leading dashes: ``learning_rate``, e2e's ``actor-model``)
to values. They become the parser's defaults for one parse, so flags given on the command line win, and
they go through argparse's own type conversion and choices. A run saves every resolved flag and its command
line as ``chatrlhf_args.json`` in its output folder; ``--config`` on that file repeats the run's flags.
"""
from __future__ import annotations

import argparse
import difflib
import json
import os
import sys
from collections.abc import Sequence
from typing import Any

import yaml

ARGS_FILE = "chatrlhf_args.json"
SUFFIXES = (".yaml", ".yml", ".json")
# ARGS_FILE keeps the flags under "args", beside the command line ("command": sys.argv) and the flags parsed.
SAVED_KEYS = frozenset({"args", "command", "flags"})
CONFIG_HELP = (f"A YAML or JSON file of flag: value pairs, named as the flags without the leading dashes (lists for "
               f"multi-value flags, true/false for switches), or a run's saved {ARGS_FILE}. Flags given on the "
               "command line override it.")


class ConfigFileError(ValueError):
    """A --config file that cannot be read, names no flag of the command, or gives a flag a bad value."""


def read_mapping(path: str) -> dict[str, Any]:
    """The file's mapping; a saved ``ARGS_FILE`` gives its ``args`` part."""
    suffix = os.path.splitext(path)[1].lower()
    if suffix not in SUFFIXES:
        raise ConfigFileError(f"name a .yaml, .yml or .json file (got {suffix or 'no suffix'})")
    try:
        with open(path, encoding="utf-8") as handle:
            data = json.load(handle) if suffix == ".json" else yaml.safe_load(handle)
    except OSError as exc:
        raise ConfigFileError(f"cannot read the file: {exc.strerror}") from exc
    except (ValueError, yaml.YAMLError) as exc:
        raise ConfigFileError(f"not valid {'JSON' if suffix == '.json' else 'YAML'}: {exc}") from exc
    if data is None:
        return {}
    if not isinstance(data, dict):
        raise ConfigFileError(f"expected a mapping of flag names to values, got a {type(data).__name__}")
    if isinstance(data.get("args"), dict) and set(data) <= SAVED_KEYS:
        return data["args"]
    return data


def parser_options(parser: argparse.ArgumentParser) -> list[argparse.Action]:
    """A parser's options: argparse keeps them only in its private ``_actions``, read here alone."""
    return list(parser._actions)


def is_repeatable(action: argparse.Action) -> bool:
    """Whether the option appends each use to a list (``action="append"``, e.g. ``--reward_fn``)."""
    return isinstance(action, argparse._AppendAction)


def option_names(parser: argparse.ArgumentParser) -> dict[str, argparse.Action]:
    """Each name a file may use for an option: its destination and its long option strings without dashes."""
    names: dict[str, argparse.Action] = {}
    for action in parser_options(parser):
        if action.dest in (argparse.SUPPRESS, "config") or action.default is argparse.SUPPRESS:
            continue
        names[action.dest] = action
        names.update({option.lstrip("-"): action for option in action.option_strings if option.startswith("--")})
    return names


def converted(parser: argparse.ArgumentParser, action: argparse.Action, key: str, value: Any) -> Any:
    """``value`` as the command line would have set the option's destination."""
    if value is None:
        return None
    if action.nargs == 0:
        if not isinstance(value, bool):
            raise ConfigFileError(f"{key!r} is a switch: give true or false, not {value!r}")
        # The option's own name (no_bf16_to_fp32_loss: true) means the flag was given.
        return value if key == action.dest else (action.const if value else action.default)
    if is_repeatable(action):  # one value or a list of them
        items = value if isinstance(value, list) else [value]
        return [converted(parser, _one_value(action), key, item) for item in items]
    takes_list = action.nargs in ("+", "*")
    if isinstance(value, list) and not takes_list:
        raise ConfigFileError(f"{key!r} takes one value, not the list {value!r}")
    items = value if isinstance(value, list) else [value]  # a single value for a list flag is a list of one
    if any(isinstance(item, (list, dict)) for item in items):
        raise ConfigFileError(f"{key!r} takes plain values (numbers, strings), not {value!r}")
    if action.nargs == "+" and not items:
        raise ConfigFileError(f"{key!r} takes one or more values, not an empty list")
    try:
        return parser._get_values(action, [str(item) for item in items])
    except argparse.ArgumentError as exc:
        raise ConfigFileError(f"{key!r}: {exc.message}") from exc


def _one_value(action: argparse.Action) -> argparse.Action:
    """A repeatable option's single occurrence, converted as a plain option would be."""
    return argparse.Action(action.option_strings, action.dest, type=action.type, choices=action.choices)


def config_values(parser: argparse.ArgumentParser, path: str) -> dict[str, Any]:
    """Destination -> value for every key of the file; unknown keys and bad values raise ``ConfigFileError``."""
    names = option_names(parser)
    values: dict[str, Any] = {}
    source: dict[str, str] = {}
    for key, value in read_mapping(path).items():
        key = str(key)
        if key == "config":
            raise ConfigFileError("a config file cannot name another one; merge them into one file")
        action = names.get(key)
        if action is None:
            close = difflib.get_close_matches(key, names, n=1)
            hint = f"did you mean {close[0]!r}?" if close else f"see `{parser.prog} --help` for the flags"
            raise ConfigFileError(f"unknown key {key!r}: no flag --{key}; {hint}")
        if action.dest in values:
            raise ConfigFileError(f"{key!r} and {source[action.dest]!r} set the same flag; keep one")
        values[action.dest] = converted(parser, action, key, value)
        source[action.dest] = key
    return values


class ConfigFileParser(argparse.ArgumentParser):
    """An ``ArgumentParser`` with ``--config FILE``: the file's values are the defaults of each parse.

    The defaults are put back after the parse, so ``get_default`` keeps telling the built-in ones (the
    notices about DeepSpeed-Chat flags without effect compare against those); ``config_overrides`` names
    the destinations the last file set to something other than their built-in default.
    """

    def __init__(self, *args, **kwargs) -> None:
        super().__init__(*args, **kwargs)
        self.add_argument("--config", metavar="FILE", default=None, help=CONFIG_HELP)
        self.config_overrides: frozenset[str] = frozenset()

    def parse_known_args(self, args: Sequence[str] | None = None,
                         namespace: argparse.Namespace | None = None) -> tuple[argparse.Namespace, list[str]]:
        argv = sys.argv[1:] if args is None else list(args)
        # A first pass finds --config as the real parser reads it, abbreviations and --config=FILE included.
        path = super().parse_known_args(argv)[0].config
        if path is None:
            self.config_overrides = frozenset()
            return super().parse_known_args(argv, namespace)
        try:
            values = config_values(self, path)
        except ConfigFileError as exc:
            self.error(f"--config {path}: {exc}")
        built_in = {dest: self.get_default(dest) for dest in values}
        self.config_overrides = frozenset(dest for dest, value in values.items() if value != built_in[dest])
        self.set_defaults(**values)
        try:
            parsed, rest = super().parse_known_args(argv, namespace)
        finally:
            self.set_defaults(**built_in)
        for action in parser_options(self):
            # A repeatable flag appends to the file's list; given on the command line, it replaces the list.
            from_file = values.get(action.dest)
            if is_repeatable(action) and from_file is not None:
                given = getattr(parsed, action.dest)
                if given is not from_file:
                    setattr(parsed, action.dest, given[len(from_file):])
        return parsed, rest


def run_record(args: argparse.Namespace, argv: Sequence[str] | None) -> dict[str, Any]:
    """What ``ARGS_FILE`` holds: the command line, the flags ``main`` parsed (``argv``) and every resolved flag."""
    return {"command": list(sys.argv), "flags": list(sys.argv[1:] if argv is None else argv),
            "args": {name: value for name, value in sorted(vars(args).items()) if name != "config"}}


def write_run_args(output_dir: str, record: dict[str, Any]) -> None:
    """Write ``record`` as ``ARGS_FILE`` in ``output_dir``, atomically and on the main process only.

    A run calls it once training has succeeded, just before it saves the model, so a failed run leaves the
    folder as it was and the model card written with the model can link the file."""
    from chatrlhf.utils import device

    if not device.is_main_process():
        return
    path = os.path.join(output_dir, ARGS_FILE)
    staging = f"{path}.tmp-{os.getpid()}"
    with open(staging, "w", encoding="utf-8") as handle:
        json.dump(record, handle, indent=1, default=str)
        handle.write("\n")
    os.replace(staging, path)
