"""Rewards computed by Python functions (``--reward_fn``): built-in checkers or the user's own code.

A reward function takes the prompt as the data holds it (chat template applied, no padding or special
tokens) and the decoded answer (special tokens skipped), and returns a number. It is named by a
built-in name, ``path/to/file.py:function`` or ``package.module:function``; file paths are made absolute
once, where the flags are parsed, so the run does not depend on the working directory afterwards.
"""
from __future__ import annotations

import hashlib
import importlib
import importlib.util
import math
import os
import traceback
from collections.abc import Callable
from dataclasses import dataclass

import torch

from chatrlhf.step3_rlhf.config import SYNTHETIC_TASKS_FN
from chatrlhf.training.validation import ConfigError

RewardFn = Callable[[str, str], float]


class RewardFunctionError(ConfigError):
    """A reward function failed or returned something that is not a number; the message names both."""


def synthetic_tasks_reward(format_credit: float = 0.0, partial_credit: float = 0.0) -> RewardFn:
    """``synthetic/tasks``'s exact checker: 1.0 for the right answer; for a wrong value in the right answer's
    sentence (``well_formed``), ``format_credit`` plus ``partial_credit`` x the share of its units right and in
    place (``partial_score``); else 0.0.

    A policy that rarely gets add or sort exactly right still gets a gradient from the digits it gets right.
    """
    from chatrlhf.utils.data.synthetic_tasks import partial_score, score, well_formed

    def reward(prompt: str, response: str) -> float:
        if score(prompt, response):
            return 1.0
        if not (format_credit or partial_credit) or not well_formed(prompt, response):
            return 0.0
        return format_credit + (partial_credit * partial_score(prompt, response) if partial_credit else 0.0)

    return reward


BUILTINS: dict[str, Callable[[float, float], RewardFn]] = {SYNTHETIC_TASKS_FN: synthetic_tasks_reward}


def absolute_spec(spec: str) -> str:
    """``spec`` with a relative ``file.py`` made absolute against the current working directory."""
    path, sep, attribute = spec.rpartition(":")
    if sep and path.endswith(".py"):
        return f"{os.path.abspath(os.path.expanduser(path))}:{attribute}"
    return spec


def _from_file(path: str, attribute: str, spec: str) -> object:
    if not os.path.isfile(path):
        raise ConfigError(f"--reward_fn {spec}: no such file {path}; give path/to/file.py:function")
    name = "chatrlhf_reward_fn_" + hashlib.sha1(path.encode()).hexdigest()[:12]
    module_spec = importlib.util.spec_from_file_location(name, path)
    module = importlib.util.module_from_spec(module_spec)
    try:
        module_spec.loader.exec_module(module)
    except Exception as exc:
        raise ConfigError(f"--reward_fn {spec}: importing {path} failed: {type(exc).__name__}: {exc}") from exc
    return _attribute(module, attribute, spec, path)


def _from_module(module_name: str, attribute: str, spec: str) -> object:
    try:
        module = importlib.import_module(module_name)
    except ModuleNotFoundError as exc:
        raise ConfigError(f"--reward_fn {spec}: no module named {exc.name!r}; install it, put it on PYTHONPATH, "
                          "or give path/to/file.py:function") from exc
    except Exception as exc:
        raise ConfigError(f"--reward_fn {spec}: importing {module_name} failed: {type(exc).__name__}: {exc}") from exc
    return _attribute(module, attribute, spec, module_name)


def _attribute(module: object, attribute: str, spec: str, where: str) -> object:
    if not hasattr(module, attribute):
        defined = sorted(n for n, v in vars(module).items() if callable(v) and not n.startswith("_"))
        raise ConfigError(f"--reward_fn {spec}: {where} has no attribute {attribute!r} "
                          f"(its functions: {', '.join(defined) or 'none'})")
    return getattr(module, attribute)


@dataclass(frozen=True)
class RewardFunction:
    """A loaded reward function and the name it was given by, for metrics and error messages."""

    name: str
    fn: RewardFn

    @classmethod
    def load(cls, spec: str, format_credit: float = 0.0, partial_credit: float = 0.0) -> RewardFunction:
        """A built-in by name, or ``file.py:function`` / ``module:function``; user errors raise ``ConfigError``."""
        if spec in BUILTINS:
            return cls(spec, BUILTINS[spec](format_credit, partial_credit))
        where, sep, attribute = spec.rpartition(":")
        if not sep or not where or not attribute:
            raise ConfigError(f"--reward_fn {spec}: not a built-in reward function ({', '.join(BUILTINS)}); "
                              "give path/to/file.py:function or package.module:function")
        fn = _from_file(where, attribute, spec) if where.endswith(".py") else _from_module(where, attribute, spec)
        if not callable(fn):
            raise ConfigError(f"--reward_fn {spec}: {attribute} is a {type(fn).__name__}, not a function "
                              "(prompt: str, response: str) -> float")
        return cls(spec, fn)

    @property
    def short_name(self) -> str:
        """The name without its folders (``rewards.py:score`` for ``/home/me/rewards.py:score``), for metric keys."""
        return os.path.basename(self.name)

    def scores(self, prompts: list[str], responses: list[str]) -> torch.Tensor:
        """The function's value for every (prompt, response), as a float32 vector."""
        values = []
        for index, (prompt, response) in enumerate(zip(prompts, responses)):
            try:
                value = self.fn(prompt, response)
            except Exception as exc:
                raise RewardFunctionError(
                    f"{self._sample(index, prompt)} raised {type(exc).__name__}: {exc} "
                    f"({_innermost_frame(exc)})") from exc
            number = _finite_number(value)
            if number is None:
                raise RewardFunctionError(f"{self._sample(index, prompt)} returned {value!r}, not a finite number")
            values.append(number)
        return torch.tensor(values, dtype=torch.float32)

    def _sample(self, index: int, prompt: str) -> str:
        return f"--reward_fn {self.name} on sample {index} of the batch (prompt {prompt[:80]!r})"


def _finite_number(value: object) -> float | None:
    """``value`` as a float if it is a finite number (int, float, numpy or 0-d torch scalar), else None."""
    if isinstance(value, str | bytes):
        return None
    try:
        number = float(value)
    except (TypeError, ValueError):
        return None
    return number if math.isfinite(number) else None


def _innermost_frame(exc: BaseException) -> str:
    frames = traceback.extract_tb(exc.__traceback__)
    return f"at {frames[-1].filename}:{frames[-1].lineno}" if frames else "no traceback"
