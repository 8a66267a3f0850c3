"""Every tensor our code hands to a collective is on ``device.local_device()`` (issue #18).

NCCL moves only GPU tensors, so a CPU tensor handed to a collective kills every multi-GPU run, while gloo on
a CPU machine accepts it and hides the bug. Without a GPU, a stand-in shows the rule at run time: the world
is made two ranks wide, ``local_device()`` answers the meta device (any device other than the CPU the callers'
own tensors live on would do), and the collectives are replaced by a check that records the device of every
tensor they get and then stops the call. Each call site starts from the CPU tensors and Python values it
really has; ``tests/test_layering.py`` checks that no collective is called outside ``utils/device.py``.
"""
from __future__ import annotations

import signal

import pytest
import torch

from chatrlhf.utils import device

STAND_IN = torch.device("meta")
COLLECTIVES = ("all_reduce", "all_gather", "broadcast", "reduce", "gather", "scatter", "reduce_scatter",
               "all_to_all", "all_gather_into_tensor", "reduce_scatter_tensor", "all_gather_object",
               "broadcast_object_list", "gather_object")


class Reached(Exception):
    """The collective was called with the tensors recorded; the stand-in cannot compute its result."""


def _tensors(values) -> list[torch.Tensor]:
    found = []
    for value in values:
        if isinstance(value, torch.Tensor):
            found.append(value)
        elif isinstance(value, (list, tuple)):
            found.extend(_tensors(value))
    return found


@pytest.fixture
def two_gpu_stand_in(monkeypatch) -> list[tuple[str, list[torch.device]]]:
    calls: list[tuple[str, list[torch.device]]] = []
    monkeypatch.setattr(device, "world_size", lambda: 2)
    monkeypatch.setattr(device, "local_device", lambda: STAND_IN)

    def checked(name: str):
        def collective(*args, **kwargs):
            calls.append((name, [t.device for t in _tensors([*args, *kwargs.values()])]))
            raise Reached(name)
        return collective

    for name in COLLECTIVES:
        if hasattr(torch.distributed, name):
            monkeypatch.setattr(torch.distributed, name, checked(name))
    return calls


def _step1_loss_mean():
    from chatrlhf.training.loop import _mean_over_ranks

    return _mean_over_ranks(2.5)


def _stop_signal():
    from chatrlhf.training.run_control import StopSignals

    return StopSignals(received=signal.SIGTERM).requested()


def _reward_eval_gather():
    from chatrlhf.step2_reward.reward_task import score_batches

    return score_batches(torch.nn.Identity(), [])


def _reinforce_pp_whitening():
    from chatrlhf.step3_rlhf.advantages import whiten_across_ranks

    return whiten_across_ranks([torch.randn(2, 3)], [torch.ones(2, 3)])


CALL_SITES = {
    "step-1/2 loop: metric mean over ranks": _step1_loss_mean,
    "run control: a signal any rank got": _stop_signal,
    "step 2: held-out scores of every rank": _reward_eval_gather,
    "step 3: REINFORCE++ whitening over ranks": _reinforce_pp_whitening,
    "step 3 lockstep / DPO cache: a flag on every rank": lambda: device.all_ranks(True),
    "sum over ranks of a CPU tensor": lambda: device.all_reduce_sum(torch.ones(3)),
    "largest length over ranks": lambda: device.max_over_ranks(7),
    "objects of every rank": lambda: device.all_gather_json({"rows": [1, 2]}),
}


@pytest.mark.parametrize("site", CALL_SITES)
def test_every_collective_gets_tensors_on_the_local_device(two_gpu_stand_in, site):
    with pytest.raises(Reached):
        CALL_SITES[site]()
    (name, devices), *_ = two_gpu_stand_in
    assert devices, f"{site}: {name} got no tensor"
    assert all(d == STAND_IN for d in devices), f"{site}: {name} got tensors on {devices}, not the local device"


def test_the_stand_in_catches_a_cpu_tensor(two_gpu_stand_in):
    """The check can fail: a CPU tensor handed straight to a collective is recorded as such."""
    with pytest.raises(Reached):
        torch.distributed.all_reduce(torch.ones(2))
    assert two_gpu_stand_in == [("all_reduce", [torch.device("cpu")])]
