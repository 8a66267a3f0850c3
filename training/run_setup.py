"""What every step does before training: seeds and the output folder."""
from __future__ import annotations

import os
import random

import numpy as np
import torch

from chatrlhf.utils import device


def set_seed(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)


OWNER_FILE = ".chatrlhf_owner"
ALWAYS_ALLOWED = {"training.log", OWNER_FILE}


class OutputDirError(ValueError):
    """An --output_dir that holds someone else's files; nothing is deleted, the run refuses to start."""


def require_output_dir(output_dir: str | None, step_name: str, overwrite: bool = False) -> str:
    """Claim ``output_dir`` for this step, refusing a non-empty folder that another job wrote.

    A run never deletes anything: the final model replaces same-named files atomically at the end. A
    folder this step wrote before (marked by a small owner file) is accepted, so re-runs and
    ``--resume`` work; the ``training.log`` the scripts start is accepted too.
    """
    if not output_dir:
        raise OutputDirError(f"{step_name}: --output_dir is required (where the trained model is saved).")
    if device.is_main_process():
        os.makedirs(output_dir, exist_ok=True)
        owner_file = os.path.join(output_dir, OWNER_FILE)
        owner = open(owner_file).read().strip() if os.path.isfile(owner_file) else None
        others = sorted(set(os.listdir(output_dir)) - ALWAYS_ALLOWED)
        if not overwrite and owner not in (None, step_name):
            raise OutputDirError(
                f"--output_dir {output_dir} holds the outputs of {owner}, not {step_name}; choose another folder "
                "or pass --overwrite_output_dir (nothing is deleted; same-named files are replaced at the end)."
            )
        if not overwrite and owner is None and others:
            raise OutputDirError(
                f"--output_dir {output_dir} is not empty ({', '.join(others[:5])}) and was not written by "
                f"chatrlhf {step_name}; choose an empty folder or pass --overwrite_output_dir (nothing is deleted; "
                "same-named files are replaced at the end)."
            )
        with open(owner_file, "w") as handle:
            handle.write(step_name)
    return output_dir
