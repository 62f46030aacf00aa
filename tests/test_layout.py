"""The package layout: no import circles between zsad's modules, one module per `zsad` subcommand.

The import graph is read from the source with `ast` (every `import` and `from ... import`, also those
inside functions and `if TYPE_CHECKING:` blocks, since a deferred import is still a circle a reader
must untangle); `from package import name` counts as importing the submodule `package.name` when that
is a module, else the package itself.
"""

from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

import pytest

SRC = Path(__file__).resolve().parents[1] / "src"


def module_names(root: Path, package: str) -> dict[str, Path]:
    """`{dotted module name: file}` of every module under `root` (the folder of `package`)."""
    names = {}
    for path in sorted(root.rglob("*.py")):
        parts = [package, *path.relative_to(root).with_suffix("").parts]
        if parts[-1] == "__init__":
            parts = parts[:-1]
        names[".".join(parts)] = path
    return names


def import_graph(root: Path, package: str) -> dict[str, set[str]]:
    """`{module: modules of the same package it imports}`."""
    modules = module_names(root, package)
    graph: dict[str, set[str]] = {name: set() for name in modules}
    for name, path in modules.items():
        is_package = path.name == "__init__.py"
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"), filename=str(path))):
            targets: list[str] = []
            if isinstance(node, ast.Import):
                targets = [alias.name for alias in node.names]
            elif isinstance(node, ast.ImportFrom):
                if node.level:
                    anchor = name.split(".") if is_package else name.split(".")[:-1]
                    anchor = anchor[: len(anchor) - (node.level - 1)]
                    base = ".".join(anchor + ([node.module] if node.module else []))
                else:
                    base = node.module or ""
                targets = [f"{base}.{alias.name}" if f"{base}.{alias.name}" in modules else base for alias in node.names]
            for target in targets:
                # `import a.b.c` also names a.b.c's packages, but only the module itself is the import.
                if target in modules and target != name:
                    graph[name].add(target)
    return graph


def import_cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """Every strongly connected component of more than one module (Tarjan), each as a sorted list."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    cycles: list[list[str]] = []

    def visit(node: str) -> None:
        index[node] = low[node] = len(index)
        stack.append(node)
        on_stack.add(node)
        for target in sorted(graph[node]):
            if target not in index:
                visit(target)
                low[node] = min(low[node], low[target])
            elif target in on_stack:
                low[node] = min(low[node], index[target])
        if low[node] == index[node]:
            component = []
            while True:
                member = stack.pop()
                on_stack.discard(member)
                component.append(member)
                if member == node:
                    break
            if len(component) > 1:
                cycles.append(sorted(component))

    for node in sorted(graph):
        if node not in index:
            visit(node)
    return cycles


def write_package(root: Path, files: dict[str, str]) -> Path:
    for relative, text in files.items():
        path = root / relative
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text, encoding="utf-8")
    return root


def test_the_checker_finds_a_planted_cycle_through_a_deferred_and_a_type_checking_import(tmp_path):
    package = write_package(tmp_path / "pkg", {
        "__init__.py": "",
        "a.py": "from .b import run\n",
        "b.py": "def run():\n    from .sub import c\n    return c\n",
        "sub/__init__.py": "",
        "sub/c.py": "from typing import TYPE_CHECKING\nif TYPE_CHECKING:\n    from ..a import run\n",
        "d.py": "import pkg.a\nfrom pkg import b\nfrom . import sub\n",  # depends on the cycle, not part of it
    })
    graph = import_graph(package, "pkg")
    assert graph["pkg.a"] == {"pkg.b"}
    assert graph["pkg.b"] == {"pkg.sub.c"}
    assert graph["pkg.sub.c"] == {"pkg.a"}
    assert graph["pkg.d"] == {"pkg.a", "pkg.b", "pkg.sub"}
    assert import_cycles(graph) == [["pkg.a", "pkg.b", "pkg.sub.c"]]


def test_the_checker_accepts_a_layered_package_and_finds_a_two_module_circle(tmp_path):
    layered = write_package(tmp_path / "layered", {
        "__init__.py": "", "low.py": "X = 1\n", "mid.py": "from .low import X\n", "top.py": "from . import low, mid\n",
    })
    assert import_cycles(import_graph(layered, "layered")) == []
    circle = write_package(tmp_path / "circle", {
        "__init__.py": "", "cli.py": "from .hub import cli as hub_cli\n",
        "hub/__init__.py": "", "hub/cli.py": "def error():\n    from ..cli import main\n",
    })
    assert import_cycles(import_graph(circle, "circle")) == [["circle.cli", "circle.hub.cli"]]


def test_zsad_has_no_import_cycles():
    graph = import_graph(SRC / "zsad", "zsad")
    assert len(graph) > 60  # the walk saw the package
    assert import_cycles(graph) == []


def test_every_subcommand_is_defined_in_its_own_module_under_zsad_commands():
    from zsad.cli import COMMANDS, build_parser
    from zsad.commands.common import ArgumentParser

    owners = {}
    for module in COMMANDS:
        subparsers = ArgumentParser(prog="zsad").add_subparsers()
        module.register(subparsers)
        assert len(subparsers.choices) == 1, module.__name__  # one subcommand per module
        (name,) = subparsers.choices
        assert module.__name__ == f"zsad.commands.{name.replace('-', '_')}"
        assert name not in owners
        owners[name] = module.__name__
    zsad_parser = build_parser()
    (zsad_subparsers,) = [action for action in zsad_parser._actions if isinstance(action.choices, dict)]
    assert sorted(zsad_subparsers.choices) == sorted(owners) == sorted(
        ["detect", "evaluate", "benchmark", "calibrate", "export", "demo", "models", "convert", "train",
         "import-checkpoint", "push"]
    )
    # The library holds no argparse: only the command line does (and `python -m zsad.testing`, a dev tool).
    for path in (SRC / "zsad").rglob("*.py"):
        relative = path.relative_to(SRC / "zsad").as_posix()
        if relative.startswith("commands/") or relative in ("cli.py", "testing.py"):
            continue
        assert "argparse" not in path.read_text(encoding="utf-8"), relative


@pytest.mark.parametrize("argv", [["--help"], ["--version"], ["detect", "--help"], ["calibrate", "--help"],
                                  ["import-checkpoint", "--help"], ["models"]])
def test_help_and_version_import_neither_torch_nor_transformers(argv):
    code = (
        "import sys\nfrom zsad.cli import main\n"
        f"code = main({argv!r})\n"
        "heavy = sorted(m for m in sys.modules if m.split('.')[0] in ('torch', 'transformers'))\n"
        "print('HEAVY', heavy[:3])\n"
        "sys.exit(code)\n"
    )
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip().splitlines()[-1] == "HEAVY []"


FIXTURE = Path(__file__).resolve().parent / "fixtures" / "anomalyclip-tiny-0.1.0.dev0"


@pytest.mark.parametrize("how", ["trust_remote_code", "import zsad"])
def test_a_checkpoint_saved_before_the_layout_change_loads_and_gives_the_same_outputs(how, tmp_path):
    """The fixture was written by zsad 0.1.0.dev0 before `modeling_base` was split and the commands moved
    (a self-contained tiny AnomalyCLIP, with the outputs it gave then on fixed inputs)."""
    load = ("from transformers import AutoModel\nmodel = AutoModel.from_pretrained(sys.argv[1], trust_remote_code=True)\n"
            if how == "trust_remote_code" else
            "import zsad\nfrom transformers import AutoModel\nmodel = AutoModel.from_pretrained(sys.argv[1])\n")
    code = (
        "import sys, torch\nfrom safetensors.torch import load_file\n" + load +
        "expected = load_file(sys.argv[2])\n"
        "with torch.no_grad():\n    out = model.eval()(pixel_values=expected['pixel_values'])\n"
        "print(type(model).__module__, type(model).__name__)\n"
        "print(float((out.pred_scores - expected['pred_scores']).abs().max()), "
        "float((out.anomaly_maps - expected['anomaly_maps']).abs().max()))\n"
    )
    env = {**__import__("os").environ, "HF_HOME": str(tmp_path / "hf"), "HF_HUB_OFFLINE": "1"}
    result = subprocess.run([sys.executable, "-c", code, str(FIXTURE), str(FIXTURE) + ".expected.safetensors"],
                            capture_output=True, text=True, timeout=120, env=env)
    assert result.returncode == 0, result.stderr[-2000:]
    name_line, difference_line = result.stdout.strip().splitlines()[-2:]
    assert name_line == "zsad.models.anomalyclip.modeling_anomalyclip AnomalyCLIPModel"
    assert [float(v) for v in difference_line.split()] == [0.0, 0.0]
