"""The package's layering: ``utils`` is the bottom layer and never imports ``training``, a step or an application."""
from __future__ import annotations

import ast
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parents[1]
UPPER_LAYERS = ("chatrlhf.training", "chatrlhf.step1_sft", "chatrlhf.step2_reward", "chatrlhf.step2_dpo",
                "chatrlhf.step3_rlhf", "chatrlhf.applications")


def imported_modules(path: Path) -> set[str]:
    """Every module a file imports, at top level or inside a function."""
    names: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, ast.Import):
            names.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module:
            names.add(node.module)
    return names


@pytest.mark.parametrize("path", sorted((PACKAGE / "utils").rglob("*.py")), ids=lambda p: str(p.relative_to(PACKAGE)))
def test_utils_imports_no_upper_layer(path):
    upward = sorted(name for name in imported_modules(path) if name.startswith(UPPER_LAYERS))
    assert not upward, f"{path.relative_to(PACKAGE)} imports {upward}; utils must not depend on training/steps/apps"


COLLECTIVES = {"all_reduce", "all_gather", "all_gather_object", "all_gather_into_tensor", "broadcast",
               "broadcast_object_list", "reduce", "reduce_scatter", "gather", "gather_object", "scatter",
               "scatter_object_list", "all_to_all", "barrier"}


def collective_calls(path: Path) -> list[int]:
    """Lines of ``path`` that call a torch.distributed collective (as ``torch.distributed.X`` or ``dist.X``)."""
    lines = []
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute) and node.func.attr in COLLECTIVES:
            owner = ast.unparse(node.func.value)
            if owner in ("torch.distributed", "dist"):
                lines.append(node.lineno)
    return lines


def test_collectives_run_only_in_utils_device():
    """NCCL moves only GPU tensors: every collective goes through ``utils/device.py``, which puts its tensors on
    ``local_device()``, so a CPU tensor handed to a collective elsewhere cannot break a multi-GPU run."""
    files = [path for layer in ("utils", *(name.split(".")[1] for name in UPPER_LAYERS))
             for path in (PACKAGE / layer).rglob("*.py")]
    found = {str(path.relative_to(PACKAGE)): lines for path in files if (lines := collective_calls(path))}
    assert set(found) == {"utils/device.py"}, found
