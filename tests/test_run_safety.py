"""Never lose a run: our state files cannot run code, a live run keeps its folder, saves that fail keep the weights."""
from __future__ import annotations

import errno
import json
import os
import socket
import subprocess
import sys
from pathlib import Path

import pytest
import torch


def _complete(folder: Path, settings: dict | None = None) -> Path:
    from chatrlhf.training.checkpoint import COMPLETE

    folder.mkdir(parents=True)
    (folder / COMPLETE).write_text(json.dumps({"step": 2, "engines": ["model"], "settings": settings or {}}))
    return folder


def _state(folder: Path, state: dict) -> None:
    from chatrlhf.training.checkpoint import RNG_FILE, STATE_FILE, rng_state

    torch.save(state, folder / STATE_FILE)
    torch.save(rng_state(), folder / RNG_FILE.format(rank=0))


class _RunsCode:
    """Unpickling this writes a file: what a checkpoint from a stranger could do."""

    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self):
        return exec, (f"open({str(self.marker)!r}, 'w').write('ran')",)


def test_a_state_file_that_would_run_code_is_refused_unrun(tmp_path):
    from chatrlhf.training.checkpoint import STATE_FILE, CheckpointError, CheckpointManager

    marker = tmp_path / "ran"
    folder = _complete(tmp_path / "checkpoints" / "step-2")
    torch.save({"steps": 2, "payload": _RunsCode(marker)}, folder / STATE_FILE)
    with pytest.raises(CheckpointError, match="could run code"):
        CheckpointManager(str(tmp_path)).load(str(folder), {"model": object()})
    assert not marker.exists()


def test_resume_refuses_a_state_file_that_would_run_code(tmp_path, sft_model, data_cache):
    """Through the command line: ``--resume`` exits non-zero with the reason, and the payload never runs."""
    from chatrlhf.step1_sft.main import main
    from chatrlhf.training.checkpoint import STATE_FILE
    from chatrlhf.training.run_setup import OWNER_FILE

    marker = tmp_path / "ran"
    out = tmp_path / "run"
    folder = _complete(out / "checkpoints" / "step-2")
    (out / OWNER_FILE).write_text("step 1")
    torch.save({"steps": 2, "payload": _RunsCode(marker)}, folder / STATE_FILE)
    code = main(["--output_dir", str(out), "--model_name_or_path", sft_model, "--max_steps", "2",
                 "--per_device_train_batch_size", "4", "--max_seq_len", "64", "--data_output_path", data_cache,
                 "--resume", "--resume_ignore_settings"])
    assert code == 2
    assert not marker.exists()


def test_our_random_states_load_without_pickle(tmp_path):
    """Every rank's random states round-trip through ``weights_only`` loading and restore the same draws."""
    import random

    import numpy as np

    from chatrlhf.training.checkpoint import restore_rng, rng_state

    torch.save(rng_state(), tmp_path / "rng.pt")
    expected = (random.random(), float(np.random.rand()), float(torch.rand(1)))
    restore_rng(torch.load(tmp_path / "rng.pt", weights_only=True))
    assert (random.random(), float(np.random.rand()), float(torch.rand(1))) == expected


def test_a_latest_pointer_outside_the_folder_is_ignored(tmp_path):
    from chatrlhf.training.checkpoint import CheckpointManager

    root = tmp_path / "checkpoints"
    _complete(root / "step-2")
    newest = _complete(root / "step-4")
    _complete(tmp_path / "elsewhere")
    (root / "latest").write_text("../elsewhere")
    assert CheckpointManager(str(tmp_path)).latest() == str(newest)


def test_resume_under_other_settings_names_them(tmp_path):
    from chatrlhf.training.checkpoint import CheckpointError, CheckpointManager

    folder = _complete(tmp_path / "checkpoints" / "step-2", {"batch size": 8, "seed": 1})
    _state(folder, {"steps": 2})
    manager = CheckpointManager(str(tmp_path), settings={"batch size": 4, "seed": 1})
    with pytest.raises(CheckpointError, match=r"batch size: 8 -> 4.*--resume_ignore_settings"):
        manager.load(str(folder), {"model": object()})
    ignoring = CheckpointManager(str(tmp_path), settings={"batch size": 4, "seed": 1}, ignore_settings=True)
    with pytest.raises(CheckpointError, match="'model' state cannot be loaded.*No earlier checkpoint"):
        ignoring.load(str(folder), {"model": object()})


def test_a_damaged_newest_checkpoint_points_at_the_previous_one(tmp_path):
    from chatrlhf.training.checkpoint import CheckpointError, CheckpointManager

    previous = _complete(tmp_path / "checkpoints" / "step-1")
    newest = tmp_path / "checkpoints" / "step-2"
    _complete(newest)
    _state(newest, {"steps": 2})
    with pytest.raises(CheckpointError, match=f"--resume_from {previous}"):
        CheckpointManager(str(tmp_path)).load(str(newest), {"model": object()})


def test_a_live_run_holds_its_folder_and_a_gone_one_does_not(tmp_path, capsys):
    from chatrlhf.training.run_setup import LOCK_FILE, OutputDirError, release_locks, require_output_dir

    out = tmp_path / "run"
    out.mkdir()
    lock = out / LOCK_FILE
    lock.write_text(json.dumps({"pid": os.getppid(), "host": socket.gethostname(), "started": "earlier"}))
    with pytest.raises(OutputDirError, match=f"in use by another run.*delete {lock}"):
        require_output_dir(str(out), "step 1")
    gone = subprocess.Popen([sys.executable, "-c", "pass"])
    gone.wait()
    lock.write_text(json.dumps({"pid": gone.pid, "host": socket.gethostname(), "started": "earlier"}))
    require_output_dir(str(out), "step 1")
    assert "taking over the lock of a run that is gone" in capsys.readouterr().out
    assert json.loads(lock.read_text())["pid"] == os.getpid()
    release_locks()
    assert not lock.exists()


def test_checkpoints_of_an_earlier_run_need_resume_or_overwrite(tmp_path):
    from chatrlhf.training.run_setup import OWNER_FILE, OutputDirError, release_locks, require_output_dir

    out = tmp_path / "run"
    kept = _complete(out / "checkpoints" / "step-2")
    (out / OWNER_FILE).write_text("step 1")
    with pytest.raises(OutputDirError, match="pass --resume to continue it, or --overwrite_output_dir"):
        require_output_dir(str(out), "step 1")
    assert kept.is_dir()
    require_output_dir(str(out), "step 1", resume=True)
    assert kept.is_dir()
    require_output_dir(str(out), "step 1", overwrite=True)
    assert not (out / "checkpoints").exists()
    release_locks()


def test_too_little_disk_space_is_refused_with_the_figures(tmp_path, monkeypatch):
    import shutil

    from chatrlhf.training import disk

    monkeypatch.setattr(shutil, "disk_usage", lambda path: shutil._ntuple_diskusage(100, 100 - 2**20, 2**20))
    with pytest.raises(disk.DiskSpaceError, match=r"needs about 0\.\d\d GiB at .* only 0\.00 GiB is free"):
        disk.require_free_space(str(tmp_path / "new" / "folder"), 300 * 2**20, "saving the model")


def test_a_final_save_that_fails_keeps_the_trained_state(tmp_path, sft_model, data_cache, monkeypatch, capsys):
    """ENOSPC in the final save: the error names a checkpoint, and ``--resume`` from it saves the trained model."""
    from safetensors.torch import load_file
    from transformers import PreTrainedModel

    from chatrlhf.step1_sft.main import main

    out = tmp_path / "run"
    args = ["--output_dir", str(out), "--model_name_or_path", sft_model, "--max_steps", "3",
            "--per_device_train_batch_size", "4", "--max_seq_len", "64", "--data_output_path", data_cache,
            "--eval_iters", "1", "--seed", "3"]
    original = PreTrainedModel.save_pretrained

    def full_disk(self, *a, **k):
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(PreTrainedModel, "save_pretrained", full_disk)
    assert main(args) == 2
    error = capsys.readouterr().err
    kept = out / "checkpoints" / "step-3"
    assert "No space left on device" in error and f"kept in the checkpoint {kept}" in error
    assert not (out / "model.safetensors").exists()
    monkeypatch.setattr(PreTrainedModel, "save_pretrained", original)
    assert main([*args, "--resume"]) == 0
    whole = tmp_path / "whole"
    assert main([*args[:1], str(whole), *args[2:]]) == 0
    expected, actual = load_file(whole / "model.safetensors"), load_file(out / "model.safetensors")
    assert all(expected[k].equal(actual[k]) for k in expected)


def test_rollout_health_warns_and_stops_at_its_limits():
    from chatrlhf.step3_rlhf.health import HealthLimits, rollout_problems

    calm = {"kl_to_ref": 0.5, "empty_answers": 1.0}
    assert rollout_problems(calm, 8, HealthLimits()) == ([], [])
    assert rollout_problems(calm, 8, HealthLimits(stop_kl_above=2.0)) == ([], [])
    warnings, stops = rollout_problems({"kl_to_ref": 25.0, "empty_answers": 4.0}, 8, HealthLimits())
    assert len(warnings) == 2 and stops == []
    _, stops = rollout_problems({"kl_to_ref": 3.0, "empty_answers": 6.0}, 8,
                                HealthLimits(stop_kl_above=2.0, stop_empty_share_above=0.7))
    assert stops == ["the KL to the reference, 3.000 nats an answer, passed --stop_kl_above 2.0",
                     "75% of the answers were empty, above --stop_empty_share_above 0.7"]
