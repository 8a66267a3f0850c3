"""Speed shortcuts check themselves against the plain path once per process, and step aside when they no longer fit."""
from __future__ import annotations

import json

import pytest
import torch
from transformers.cache_utils import DynamicCache

from chatrlhf.step3_rlhf.main import main as ppo_main
from chatrlhf.utils.model.cpu_fast import fast_decode, kv_cache, last_layer, packed_linear, packed_rows, shortcuts
from chatrlhf.utils.model.cpu_fast.shortcuts import tiny_model

FAMILY_SHORTCUTS = ("kv_cache", "flat_decoder", "last_layer", "packed_rows")
ALL_PROBES = [("onednn", None)] + [(name, fam) for name in FAMILY_SHORTCUTS for fam in ("opt", "llama")]
COMPARED = ("reward_mean", "reward_std", "kl_to_ref", "entropy", "answer_length", "actor_loss", "critic_loss")


@pytest.fixture
def fresh(monkeypatch):
    """No verdicts yet: every shortcut probes again on first use."""
    monkeypatch.setattr(shortcuts, "_verdicts", {})
    monkeypatch.delenv(shortcuts.SWITCH, raising=False)


def _broken(monkeypatch, *names: str) -> None:
    """The named shortcuts' probes raise, as on a library release that moved what they rely on."""

    def probe(_family):
        raise IndexError("list index out of range")

    for name in names:
        entry = shortcuts._SHORTCUTS[name]
        monkeypatch.setitem(shortcuts._SHORTCUTS, name, shortcuts._Shortcut(probe, entry.library))


@pytest.mark.parametrize(("name", "family"), ALL_PROBES)
def test_every_shortcut_fits_the_installed_libraries(fresh, name, family):
    assert shortcuts.fits(name, family), shortcuts.report()
    assert shortcuts.report()[f"{name}[{family}]" if family else name] == "on"


def test_probes_draw_no_random_numbers(fresh):
    torch.manual_seed(7)
    before = torch.get_rng_state()
    for name, family in ALL_PROBES:
        shortcuts.fits(name, family)
    assert torch.equal(torch.get_rng_state(), before)


def test_a_probe_that_no_longer_fits_turns_its_shortcut_off_with_one_warning(fresh, monkeypatch, capsys):
    _broken(monkeypatch, "flat_decoder")
    model = tiny_model("llama")
    assert fast_decode.fast_decoder(model) is None
    assert fast_decode.fast_decoder(model) is None
    err = capsys.readouterr().err
    assert err.count("warning: speed shortcut 'flat_decoder' for llama does not fit transformers") == 1, err
    assert "IndexError: list index out of range" in err and "plain path" in err
    assert shortcuts.report()["flat_decoder[llama]"].startswith("off: IndexError")
    assert fast_decode.fast_decoder(tiny_model("opt")) is None


def test_a_wrong_result_counts_as_not_fitting(fresh, monkeypatch, capsys):
    """A probe compares numbers: a shortcut that runs but computes something else is turned off too."""
    original = packed_linear.onednn_product
    monkeypatch.setattr(packed_linear, "onednn_product", lambda x, w, b: original(x, w, b) * 1.001)
    assert not packed_linear.packing_supported(tiny_model("opt"))
    assert "speed shortcut 'onednn' does not fit torch" in capsys.readouterr().err


def test_each_entry_point_takes_the_plain_path_when_its_probe_fails(fresh, monkeypatch):
    _broken(monkeypatch, "onednn", *FAMILY_SHORTCUTS)
    for family in ("opt", "llama"):
        model = tiny_model(family)
        assert not packed_linear.packing_supported(model)
        assert fast_decode.fast_decoder(model) is None
        assert isinstance(kv_cache.decode_cache(model, 16), DynamicCache)
        assert not last_layer.trimmable(model)
        assert not packed_rows.packing_supported(model)
        layer = model.lm_head
        with packed_linear.onednn_linears(model):
            assert "forward" not in vars(layer)


def test_the_switch_turns_every_shortcut_off_without_probing(fresh, monkeypatch):
    monkeypatch.setenv(shortcuts.SWITCH, "off")
    _broken(monkeypatch, "onednn")
    assert not shortcuts.fits("onednn")
    assert shortcuts._verdicts == {}
    assert shortcuts.report() == {"all": "off: CHATRLHF_SHORTCUTS=off"}


def _ppo(sft_model: str, out, data_cache: str) -> dict:
    assert ppo_main(["--actor_model_name_or_path", sft_model, "--critic_model_name_or_path", sft_model,
                     "--output_dir", str(out), "--per_device_generation_batch_size", "4",
                     "--per_device_training_batch_size", "4", "--max_prompt_seq_len", "48",
                     "--max_answer_seq_len", "8", "--max_steps", "2", "--eval_prompts", "0",
                     "--data_output_path", data_cache]) == 0
    return json.loads((out / "metrics.json").read_text())


def test_a_run_whose_shortcuts_all_fail_their_probes_finishes_as_the_plain_path(fresh, monkeypatch, sft_model,
                                                                                tmp_path, data_cache):
    from safetensors.torch import load_file

    fast = _ppo(sft_model, tmp_path / "fast", data_cache)
    assert set(fast["shortcuts"].values()) == {"on"}, fast["shortcuts"]

    monkeypatch.setattr(shortcuts, "_verdicts", {})
    _broken(monkeypatch, "onednn", *FAMILY_SHORTCUTS)
    fallen = _ppo(sft_model, tmp_path / "fallen", data_cache)
    assert fallen["shortcuts"] and all(v.startswith("off: IndexError") for v in fallen["shortcuts"].values())

    monkeypatch.setenv(shortcuts.SWITCH, "off")
    plain = _ppo(sft_model, tmp_path / "plain", data_cache)
    assert plain["shortcuts"] == {"all": "off: CHATRLHF_SHORTCUTS=off"}

    for fell, off, on in zip(fallen["history"], plain["history"], fast["history"]):
        assert [fell[k] for k in COMPARED] == [off[k] for k in COMPARED]
        assert [on[k] for k in COMPARED] == pytest.approx([off[k] for k in COMPARED], rel=1e-3, abs=1e-4)
    fell_weights = load_file(tmp_path / "fallen" / "actor" / "model.safetensors")
    plain_weights = load_file(tmp_path / "plain" / "actor" / "model.safetensors")
    assert all(torch.equal(fell_weights[key], plain_weights[key]) for key in plain_weights)
