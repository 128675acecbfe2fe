"""The package as a user meets it: importing it, and `python -m jaxlr`."""

import os
import re
import subprocess
import sys
from pathlib import Path

IMPORT_PROBE = """
import os, jax
flags = os.environ.get("XLA_FLAGS")
import jaxlr
from jaxlr import loop_kernels
loops = f"--xla_backend_extra_options=xla_cpu_small_while_loop_byte_threshold={loop_kernels.LOOP_BYTES}"
assert os.environ.get("XLA_FLAGS") == (f"{flags or ''} {loops}".strip()), "XLA_FLAGS changed beyond the loop option"
assert not jax.config.jax_enable_x64, "x64 enabled"
"""


def test_import_is_silent_and_changes_no_global_setting_but_the_loop_option():
    # The one XLA option, and its alternatives, are tested in test_loop_kernels.
    env = {k: v for k, v in os.environ.items() if k not in ("XLA_FLAGS", "JAXLR_KEEP_XLA_FLAGS")}
    done = subprocess.run([sys.executable, "-c", IMPORT_PROBE], capture_output=True, text=True, timeout=120, env=env)
    assert done.returncode == 0, done.stderr
    assert done.stdout == "" and done.stderr == ""


def test_python_m_jaxlr_runs_the_seed_job():
    env = {**os.environ, "JAXLR_NO_CACHE": "1"}
    done = subprocess.run([sys.executable, "-m", "jaxlr"], capture_output=True, text=True, timeout=300, env=env)
    assert done.returncode == 0, done.stderr
    lines = done.stdout.splitlines()
    log = [line for line in lines if line.startswith("Epoch ")]
    assert len(log) == 10
    assert re.fullmatch(r"Epoch 1, batch 2499\. Moving avg of loss: \S+", log[-1])
    learned = next(line for line in lines if line.startswith("learned w"))
    w = [float(v) for v in re.search(r"\[([^\]]*)\]", learned).group(1).split()]
    assert abs(w[0] - 2.0) < 0.01 and abs(w[1] + 3.4) < 0.01


def test_the_package_type_checks():
    # mypy (from the test extra) with the project's settings in pyproject.toml;
    # py.typed ships the annotations to users' type checkers.
    root = Path(__file__).resolve().parent.parent
    assert (root / "jaxlr" / "py.typed").exists()
    done = subprocess.run([sys.executable, "-m", "mypy", "--no-incremental"], cwd=root, capture_output=True, text=True)
    assert done.returncode == 0, done.stdout + done.stderr


PACKAGE = Path(__file__).resolve().parents[1] / "jaxlr"
# The command's entry parses its arguments, then loads the work it names.
ENTRY_DISPATCH = {("jaxlr.cli", "jaxlr.commands")}


def _imports_of_each_module() -> dict[str, set[str]]:
    """module -> the package's modules it imports, at its top or inside a function."""
    import ast

    modules = {}
    for path in PACKAGE.rglob("*.py"):
        name = ".".join(("jaxlr", *path.relative_to(PACKAGE).with_suffix("").parts)).removesuffix(".__init__")
        modules[name] = path
    imports = {}
    for name, path in modules.items():
        found = set()
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.Import):
                found.update(alias.name for alias in node.names)
            elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
                # `from jaxlr.engines import core` imports the module jaxlr.engines.core
                found.update(f"{node.module}.{alias.name}" if f"{node.module}.{alias.name}" in modules else node.module
                             for alias in node.names)  # fmt: skip
        imports[name] = {module for module in found if module in modules and module != name}
    return imports


def test_no_module_imports_one_that_imports_it_back():
    imports = _imports_of_each_module()
    for importer, imported in ENTRY_DISPATCH:
        imports[importer].discard(imported)

    def reachable_from(start):
        seen, todo = set(), [start]
        while todo:
            for module in imports[todo.pop()] - seen:
                seen.add(module)
                todo.append(module)
        return seen

    cycles = sorted((a, b) for a in imports for b in imports[a] if a in reachable_from(b))
    assert not cycles, cycles
