"""What every step does before training: seeds and the output folder."""
from __future__ import annotations

import atexit
import json
import os
import random
import shutil
import socket
import time

import numpy as np
import torch

from chatrlhf.utils import device


def set_seed(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)


OWNER_FILE = ".chatrlhf_owner"
LOCK_FILE = ".chatrlhf.lock"
ALWAYS_ALLOWED = {"training.log", OWNER_FILE, LOCK_FILE}


class OutputDirError(ValueError):
    """An --output_dir this run may not use as it is; nothing is deleted, the run refuses to start."""


def require_output_dir(output_dir: str | None, step_name: str, overwrite: bool = False, resume: bool = False) -> str:
    """Claim ``output_dir`` for this step, refusing a folder that another job wrote or that a live run holds.

    A folder this step wrote before (marked by a small owner file) is accepted, as is the ``training.log`` the
    scripts start. One holding this step's checkpoints needs ``--resume`` (continue) or
    ``--overwrite_output_dir`` (start afresh; the old checkpoints are deleted first, so a later ``--resume``
    cannot mix two runs). A lock file keeps a second run out while the first is alive.
    """
    if not output_dir:
        raise OutputDirError(f"{step_name}: --output_dir is required (where the trained model is saved).")
    if device.is_main_process():
        os.makedirs(output_dir, exist_ok=True)
        _claim_lock(output_dir)
        owner_file = os.path.join(output_dir, OWNER_FILE)
        owner = open(owner_file).read().strip() if os.path.isfile(owner_file) else None
        others = sorted(set(os.listdir(output_dir)) - ALWAYS_ALLOWED)
        if not overwrite and owner not in (None, step_name):
            raise OutputDirError(
                f"--output_dir {output_dir} holds the outputs of {owner}, not {step_name}; choose another folder "
                "or pass --overwrite_output_dir (same-named files are replaced at the end)."
            )
        if not overwrite and owner is None and others:
            raise OutputDirError(
                f"--output_dir {output_dir} is not empty ({', '.join(others[:5])}) and was not written by "
                f"chatrlhf {step_name}; choose an empty folder or pass --overwrite_output_dir (same-named files are "
                "replaced at the end)."
            )
        _refuse_or_clear_checkpoints(output_dir, overwrite, resume)
        with open(owner_file, "w") as handle:
            handle.write(step_name)
    return output_dir


def _refuse_or_clear_checkpoints(output_dir: str, overwrite: bool, resume: bool) -> None:
    from chatrlhf.training.checkpoint import CheckpointManager

    manager = CheckpointManager(output_dir)
    done = manager.complete()
    if not done or resume:
        return
    if not overwrite:
        raise OutputDirError(
            f"--output_dir {output_dir} holds {len(done)} checkpoint(s) of an earlier run (newest "
            f"{os.path.basename(done[-1])}); pass --resume to continue it, or --overwrite_output_dir to start afresh "
            "(which deletes those checkpoints)."
        )
    print(f"--overwrite_output_dir: deleting the earlier run's checkpoints in {manager.root}", flush=True)
    shutil.rmtree(manager.root)


def _claim_lock(output_dir: str) -> None:
    """Write this process's lock, taking over one whose process is gone; refuse one that is alive."""
    path = os.path.join(output_dir, LOCK_FILE)
    mine = {"pid": os.getpid(), "host": socket.gethostname(), "started": time.strftime("%Y-%m-%dT%H:%M:%S")}
    try:
        with open(path) as handle:
            held = json.load(handle)
    except (OSError, ValueError):
        held = None
    if held and held.get("pid") != mine["pid"]:
        who = f"process {held.get('pid')} on {held.get('host')}, started {held.get('started')}"
        if held.get("host") != mine["host"] or _alive(int(held.get("pid", 0))):
            raise OutputDirError(
                f"--output_dir {output_dir} is in use by another run ({who}); wait for it to finish or choose "
                f"another folder. If that run is gone, delete {path}."
            )
        print(f"taking over the lock of a run that is gone ({who}) in {output_dir}", flush=True)
    tmp = f"{path}.{os.getpid()}.tmp"
    with open(tmp, "w") as handle:
        json.dump(mine, handle)
    os.replace(tmp, path)
    _HELD.append(path)


_HELD: list[str] = []


def release_locks() -> None:
    """Give up the output folders this process claimed (the end of a command, or its exit)."""
    while _HELD:
        _release_lock(_HELD.pop(), os.getpid())


atexit.register(release_locks)


def _alive(pid: int) -> bool:
    if pid <= 0:
        return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def _release_lock(path: str, pid: int) -> None:
    try:
        with open(path) as handle:
            if json.load(handle).get("pid") == pid:
                os.remove(path)
    except (OSError, ValueError):
        pass
