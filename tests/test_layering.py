"""The package's layering, checked on every non-test module's imports (top level or inside a function):

``utils`` is the bottom layer and imports no other; ``training`` builds on ``utils`` alone; a step builds on
``utils`` and ``training`` and never on another step, so what two steps share moves down; ``applications`` (and
the top-level ``cli``) may import anything. The CPU speed layer (``utils/model/cpu_fast/``) has a short list of
users, and no two modules import each other, directly or round a circle.
"""
from __future__ import annotations

import ast
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parents[1]
STEPS = ("step1_sft", "step2_reward", "step2_dpo", "step2_kto", "step3_rlhf")
LAYERS = ("utils", "training", *STEPS, "applications")
TOP = "applications"  # the layer of the top-level modules (``cli``) too: nothing imports them
ALLOWED = {"utils": {"utils"}, "training": {"utils", "training"},
           **{step: {"utils", "training", step} for step in STEPS}, TOP: set(LAYERS)}


def layer_of(module: str) -> str | None:
    """The layer of a dotted ``chatrlhf`` module; None for a module outside the package."""
    parts = module.split(".")
    if parts[0] != "chatrlhf" or len(parts) == 1:
        return None
    return parts[1] if parts[1] in LAYERS else TOP


def imported_modules(source: str, module: str) -> set[str]:
    """Every module ``source`` (the text of dotted ``module``) imports: absolute, relative or as a package name
    (``from chatrlhf import step2_reward``)."""
    package = module.split(".")[:-1]
    names: set[str] = set()
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, ast.Import):
            names.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            base = ".".join([*package[: len(package) - node.level + 1], node.module or ""]).rstrip(".") \
                if node.level else node.module or ""
            names.add(base)
            if base == "chatrlhf":
                names.update(f"{base}.{alias.name}" for alias in node.names)
    return names


def offending_imports(source: str, module: str) -> list[str]:
    """The imports of ``source`` that reach a layer its own layer may not import."""
    allowed = ALLOWED[layer_of(module)]
    return sorted(name for name in imported_modules(source, module)
                  if (layer := layer_of(name)) is not None and layer not in allowed)


def package_modules() -> list[Path]:
    return sorted(path for path in PACKAGE.rglob("*.py")
                  if path.relative_to(PACKAGE).parts[0] in (*LAYERS, "cli.py", "__init__.py"))


def dotted(path: Path) -> str:
    return ".".join(("chatrlhf", *path.relative_to(PACKAGE).with_suffix("").parts))


@pytest.mark.parametrize("path", package_modules(), ids=lambda p: str(p.relative_to(PACKAGE)))
def test_imports_respect_the_layers(path):
    offenders = offending_imports(path.read_text(encoding="utf-8"), dotted(path))
    assert not offenders, (f"{path.relative_to(PACKAGE)} imports {offenders}; move what both sides need down to "
                           "utils/ or training/")


def test_every_layer_is_checked():
    checked = {path.relative_to(PACKAGE).parts[0] for path in package_modules()}
    assert set(LAYERS) <= checked


@pytest.mark.parametrize(("module", "source", "expected"), [
    ("chatrlhf.utils.x", "from chatrlhf.training.validation import ConfigError", ["chatrlhf.training.validation"]),
    ("chatrlhf.utils.x", "def f():\n    import chatrlhf.applications.chat", ["chatrlhf.applications.chat"]),
    ("chatrlhf.utils.data.x", "from ...step3_rlhf import run", ["chatrlhf.step3_rlhf"]),
    ("chatrlhf.step2_dpo.x", "from .. import step2_reward, utils", ["chatrlhf.step2_reward"]),
    ("chatrlhf.training.x", "from chatrlhf.step1_sft.run import SFTRun", ["chatrlhf.step1_sft.run"]),
    ("chatrlhf.training.x", "from chatrlhf import cli", ["chatrlhf.cli"]),
    ("chatrlhf.step3_rlhf.x", "from chatrlhf import step2_reward", ["chatrlhf.step2_reward"]),
    ("chatrlhf.step2_dpo.x", "from chatrlhf.step2_reward.reward_task import pair_metrics",
     ["chatrlhf.step2_reward.reward_task"]),
    ("chatrlhf.step1_sft.x", "from chatrlhf.applications.compare import main", ["chatrlhf.applications.compare"]),
    ("chatrlhf.step3_rlhf.x", "from .trainer import PPOTrainer\nfrom chatrlhf.utils import device", []),
    ("chatrlhf.training.x", "from chatrlhf.utils.device import local_device\nimport torch", []),
    ("chatrlhf.applications.x", "from chatrlhf.step3_rlhf.config import ALGORITHMS", []),
    ("chatrlhf.cli", "from chatrlhf.step1_sft.main import main", []),
])
def test_the_check_catches_what_crosses_a_boundary(module, source, expected):
    """The check itself: a synthetic upward or sideways import is reported, an allowed one is not."""
    assert offending_imports(source, module) == expected


CPU_FAST = "chatrlhf.utils.model.cpu_fast"
CPU_FAST_USERS = {
    "chatrlhf.step3_rlhf.forward_backend",  # the CPU backend of step 3
    "chatrlhf.step3_rlhf.packed_answers",  # its rows packed end to end
    "chatrlhf.utils.model.generation",  # chat and compare's decoding
    "chatrlhf.training.loop",  # the metrics' record of which shortcuts ran
    "chatrlhf.training.packing",  # --packing's row-by-row attention, steps 1 and 2
}


def runtime_nodes(tree: ast.AST):
    """``ast.walk`` without the bodies of ``if TYPE_CHECKING:``, whose imports never run."""
    stack = [tree]
    while stack:
        node = stack.pop()
        yield node
        if isinstance(node, ast.If) and ast.unparse(node.test) in ("TYPE_CHECKING", "typing.TYPE_CHECKING"):
            stack.extend(node.orelse)
        else:
            stack.extend(ast.iter_child_nodes(node))


def module_graph() -> dict[str, set[str]]:
    """Each package module and the package modules it names in an import that runs (``from a import b`` counts
    as ``a.b`` when that is a module, else ``a``); the implicit import of a parent package does not count."""
    sources = {dotted(path).removesuffix(".__init__"): path.read_text(encoding="utf-8")
               for path in package_modules()}
    graph: dict[str, set[str]] = {}
    for module, source in sources.items():
        package = module.split(".") if module in PACKAGES else module.split(".")[:-1]
        edges: set[str] = set()
        for node in runtime_nodes(ast.parse(source)):
            if isinstance(node, ast.Import):
                edges.update(alias.name for alias in node.names)
            elif isinstance(node, ast.ImportFrom):
                base = ".".join([*package[: len(package) - node.level + 1], node.module or ""]).rstrip(".") \
                    if node.level else node.module or ""
                edges.update(f"{base}.{a.name}" if f"{base}.{a.name}" in sources else base for a in node.names)
        graph[module] = {name for name in edges if name in sources and name != module}
    return graph


PACKAGES = {dotted(path).removesuffix(".__init__") for path in PACKAGE.rglob("__init__.py")
            if path.relative_to(PACKAGE).parts[0] in LAYERS or path.parent == PACKAGE}


def test_only_the_cpu_backend_generation_and_the_loop_use_the_cpu_speed_layer():
    users = {module for module, names in module_graph().items() if not module.startswith(CPU_FAST)
             and any(name == CPU_FAST or name.startswith(CPU_FAST + ".") for name in names)}
    assert users == CPU_FAST_USERS, ("the CPU speed paths are chosen by the backend: call it, or name the new "
                                     f"user here with why; users now {sorted(users)}")


def cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """Every import circle of ``graph``, each once, as the modules round it (depth-first, Tarjan-free)."""
    found, done = [], set()

    def visit(module: str, path: list[str]) -> None:
        for name in sorted(graph.get(module, ())):
            if name in path:
                circle = path[path.index(name):]
                if sorted(circle) not in [sorted(c) for c in found]:
                    found.append(circle)
            elif name not in done:
                visit(name, [*path, name])
        done.add(module)

    for module in sorted(graph):
        if module not in done:
            visit(module, [module])
    return found


def test_no_module_imports_round_a_circle():
    """A circle (even through imports inside functions) means two modules each need the other: one of them
    holds something both use, which belongs in a third module below both."""
    assert cycles(module_graph()) == []


def test_the_circle_check_finds_a_circle():
    assert cycles({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}) == [["a", "b", "c"]]
    assert cycles({"a": {"b"}, "b": set(), "c": {"a", "b"}}) == []


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
    files = [path for layer in LAYERS for path in (PACKAGE / layer).rglob("*.py")]
    found = {str(path.relative_to(PACKAGE)): lines for path in files if (lines := collective_calls(path))}
    assert set(found) == {"utils/device.py"}, found
