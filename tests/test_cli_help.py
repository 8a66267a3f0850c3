"""Flags (issue #19): every flag of every command has help and shows its default; ``--config FILE.yaml|json``
sets flags that the command line overrides; a run saves its resolved flags, and ``--config`` on that file
gives the same flags back."""
from __future__ import annotations

import argparse
import json
from pathlib import Path

import pytest
import yaml
from cli_parsers import CONFIG_COMMANDS, PARSERS, build, options

from chatrlhf.training.cli_parser import HelpFormatter
from chatrlhf.training.config_file import ARGS_FILE


def write(path: Path, values: dict) -> str:
    path.write_text(json.dumps(values) if path.suffix == ".json" else yaml.safe_dump(values))
    return str(path)


def help_blocks(parser: argparse.ArgumentParser) -> dict[str, str]:
    """Each option's part of ``--help``, keyed by its first option string."""
    blocks: dict[str, str] = {}
    name = None
    for line in parser.format_help().splitlines():
        if line.startswith("  -"):
            name = line.split()[0].rstrip(",")
            blocks[name] = line
        elif name and line.startswith("   "):
            blocks[name] += " " + line.strip()
        else:
            name = None
    return blocks


def config_error(parser: argparse.ArgumentParser, argv: list[str], capsys) -> str:
    with pytest.raises(SystemExit) as exit_info:
        parser.parse_args(argv)
    assert exit_info.value.code == 2
    return capsys.readouterr().err


# ----- (a) help and defaults
@pytest.mark.parametrize("module", PARSERS)
def test_every_flag_has_help_and_shows_its_default(module, monkeypatch):
    monkeypatch.setenv("COLUMNS", "120")
    parser = build(module)
    assert parser.formatter_class is HelpFormatter, f"{module} builds its parser without training.cli_parser"
    undocumented = [action.option_strings or action.dest for action in options(parser) if not action.help]
    assert not undocumented, f"{module}: flags without a help string: {undocumented}"
    blocks = help_blocks(parser)
    shown = [action for action in options(parser)
             if action.option_strings and action.default not in (None, argparse.SUPPRESS)]
    hidden = [action.option_strings[0] for action in shown if "(default:" not in blocks[action.option_strings[0]]]
    assert not hidden, f"{module}: --help does not show the default of {hidden}"


def test_defaults_show_as_typed():
    parser = build("chatrlhf.applications.e2e_rlhf")
    text = " ".join(parser.format_help().split())
    assert "(default: ./output)" in text and "(default: '')" in text
    text = " ".join(build("chatrlhf.step1_sft.main").format_help().split())
    assert "(default: synthetic/tasks)" in text and "(default: 2,4,4)" in text
    assert "no effect: training always runs on DeepSpeed" in text and "(default: off)" in text
    blocks = help_blocks(build("chatrlhf.step2_reward.main"))
    assert blocks["--no_bf16_to_fp32_loss"].endswith("(default: off)")


def test_inert_compatibility_flags_say_so_and_what_to_do():
    for module, flags in (("chatrlhf.step2_reward.main", ("--num_padding_at_beginning", "--no_fused_kernels")),
                          ("chatrlhf.step3_rlhf.main", ("--num_padding_at_beginning", "--align_overflow"))):
        actions = {action.option_strings[0]: action for action in options(build(module)) if action.option_strings}
        for flag in flags:
            assert "no effect" in actions[flag].help, f"{module} {flag}"


# ----- (b) --config
@pytest.mark.parametrize("module", CONFIG_COMMANDS)
def test_training_commands_take_a_config_file(module):
    assert any(action.dest == "config" for action in build(module)._actions)


@pytest.mark.parametrize("suffix", [".yaml", ".json"])
def test_config_sets_flags_and_the_command_line_wins(suffix, tmp_path):
    from chatrlhf.step1_sft.main import build_parser

    path = write(tmp_path / f"run{suffix}", {"learning_rate": "2e-3", "zero_stage": 2, "print_loss": True,
                                             "data_path": ["local/jsonfile", "synthetic/tasks"], "dropout": None,
                                             "sft_only_data_path": "extra.jsonl"})
    args = build_parser().parse_args(["--config", path])
    assert args.learning_rate == pytest.approx(2e-3) and args.zero_stage == 2 and args.print_loss
    assert args.data_path == ["local/jsonfile", "synthetic/tasks"] and args.sft_only_data_path == ["extra.jsonl"]
    args = build_parser().parse_args(["--zero_stage", "0", "--config", path, "--data_path", "a"])
    assert args.zero_stage == 0 and args.data_path == ["a"] and args.learning_rate == pytest.approx(2e-3)
    assert build_parser().parse_args([]).zero_stage == 0


def test_yaml_lists_booleans_and_e2e_hyphenated_names(tmp_path):
    from chatrlhf.applications.e2e_rlhf import build_parser

    path = tmp_path / "e2e.yaml"
    path.write_text("step: [1, 3]\nactor-model: tiny-opt\nstep1-args: --max_steps 5\nreport_prompts: 10\n"
                    "no-report: true\n")
    args = build_parser().parse_args(["--config", str(path)])
    assert args.step == [1, 3] and args.actor_model == "tiny-opt" and args.step1_args == "--max_steps 5"
    assert args.report_prompts == 10 and args.no_report


def test_a_switch_named_by_its_flag_or_by_its_destination(tmp_path):
    from chatrlhf.step2_reward.main import build_parser

    for values in ({"no_bf16_to_fp32_loss": True}, {"bf16_to_fp32_loss": False}):
        args = build_parser().parse_args(["--config", write(tmp_path / "r.yaml", values)])
        assert args.bf16_to_fp32_loss is False
    args = build_parser().parse_args(["--config", write(tmp_path / "r.yaml", {"no_bf16_to_fp32_loss": False})])
    assert args.bf16_to_fp32_loss is True


@pytest.mark.parametrize("suffix", [".yaml", ".json"])
def test_unknown_key_names_the_file_the_key_and_the_closest_flag(suffix, tmp_path, capsys):
    from chatrlhf.step1_sft.main import build_parser

    path = write(tmp_path / f"bad{suffix}", {"seed": 3, "lerning_rate": 1e-4})
    err = config_error(build_parser(), ["--config", path], capsys)
    assert path in err and "'lerning_rate'" in err and "did you mean 'learning_rate'?" in err


@pytest.mark.parametrize(("values", "message"), [
    ({"zero_stage": "two"}, "'zero_stage': invalid int value: 'two'"),
    ({"zero_stage": 5}, "invalid choice: 5"),
    ({"learning_rate": [1e-3, 2e-3]}, "'learning_rate' takes one value"),
    ({"print_loss": "yes please"}, "'print_loss' is a switch: give true or false"),
    ({"config": "other.yaml"}, "cannot name another one"),
])
def test_bad_values_fail_through_argparse_with_the_file_named(values, message, tmp_path, capsys):
    from chatrlhf.step1_sft.main import build_parser

    path = write(tmp_path / "bad.yaml", values)
    err = config_error(build_parser(), ["--config", path], capsys)
    assert f"--config {path}: " in err and message in err


@pytest.mark.parametrize("text", ["- a list\n", "seed: [unclosed\n"])
def test_unreadable_config_files_fail_with_the_file_named(text, tmp_path, capsys):
    from chatrlhf.step1_sft.main import build_parser

    path = tmp_path / "broken.yaml"
    path.write_text(text)
    assert str(path) in config_error(build_parser(), ["--config", str(path)], capsys)
    assert "name a .yaml" in config_error(build_parser(), ["--config", str(tmp_path / "x.toml")], capsys)
    assert "cannot read" in config_error(build_parser(), ["--config", str(tmp_path / "missing.json")], capsys)


def test_config_values_count_as_given_and_defaults_stay_built_in(tmp_path):
    from chatrlhf.step3_rlhf.flags import build_parser, explicit_flags
    from chatrlhf.training.compat_flags import notify_inert_flags

    path = write(tmp_path / "ppo.yaml", {"critic_learning_rate": 1e-5, "seed": 1234, "align_overflow": True})
    parser = build_parser()
    argv = ["--config", path, "--actor_learning_rate", "1e-6"]
    args = parser.parse_args(argv)
    given = explicit_flags(parser, argv, args)
    assert {"critic_learning_rate", "actor_learning_rate"} <= given and "seed" not in given
    assert parser.get_default("critic_learning_rate") == pytest.approx(5e-6)
    lines = notify_inert_flags(parser, args, ("align_overflow",))
    assert len(lines) == 1 and lines[0].startswith("--align_overflow: no effect")


# ----- (c) the saved flags round-trip through --config
def test_a_run_saves_its_flags_and_config_repeats_them(tmp_path, cache_root, data_cache):
    from chatrlhf.step1_sft.main import build_parser, main

    out = tmp_path / "sft"
    config = write(tmp_path / "sft.yaml", {"max_seq_len": 64, "per_device_train_batch_size": 4, "eval_iters": 1,
                                           "learning_rate": 1e-2, "data_output_path": data_cache})
    argv = ["--config", config, "--output_dir", str(out), "--max_steps", "2", "--learning_rate", "3e-3"]
    assert main(argv) == 0
    saved = json.loads((out / ARGS_FILE).read_text())
    assert saved["flags"] == argv and saved["command"]
    assert saved["args"]["learning_rate"] == pytest.approx(3e-3) and saved["args"]["max_seq_len"] == 64
    assert "config" not in saved["args"]
    original = vars(build_parser().parse_args(argv))
    repeated = vars(build_parser().parse_args(["--config", str(out / ARGS_FILE)]))
    assert repeated.pop("config") == str(out / ARGS_FILE) and original.pop("config") == config
    assert repeated == original
