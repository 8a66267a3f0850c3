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
