"""The README runs: every Python block in order in an empty folder, and every shell block but installs."""

import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

README = Path(__file__).resolve().parents[1] / "README.md"
SKIP = "<!-- not run by the README test"
INSTALLS = ("pip install", "jupyter", "source .venv", "python3 -m venv")


def blocks(language):
    """(line, code) of each ```language block, in order, but those a SKIP comment or an install marks."""
    lines = README.read_text().splitlines()
    found, i = [], 0
    while i < len(lines):
        if lines[i].strip() == f"```{language}":
            end = lines.index("```", i + 1)
            before = next((line for line in reversed(lines[:i]) if line.strip()), "")
            code = "\n".join(lines[i + 1 : end])
            if not before.startswith(SKIP) and not any(marker in code for marker in INSTALLS):
                found.append((i + 1, code))
            i = end
        i += 1
    return found


def test_the_readme_has_the_blocks_it_should():
    assert len(blocks("python")) >= 6 and len(blocks("bash")) >= 3
    assert any("state=first.state" in code for _, code in blocks("python"))  # fit(state=) shown working


RUNNER = """
import sys
blocks = {blocks!r}
namespace = {{"__name__": "__main__"}}
for line, code in blocks:
    try:
        exec(compile(code, f"README.md, block at line {{line}}", "exec"), namespace)
    except BaseException as err:
        print(f"README.md block at line {{line}} failed: {{type(err).__name__}}: {{err}}", file=sys.stderr)
        raise
"""


def _env(tmp_path):
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    for name, target in (("jaxlr", f'exec "{sys.executable}" -m jaxlr "$@"'), ("python", f'exec "{sys.executable}" "$@"')):
        (bin_dir / name).write_text(f"#!/bin/sh\n{target}\n")
        (bin_dir / name).chmod(0o755)
    root = str(README.parent)
    return {**os.environ, "PATH": f"{bin_dir}{os.pathsep}{os.environ['PATH']}", "JAXLR_CACHE_DIR": str(tmp_path / "cache"),
            "PYTHONPATH": os.pathsep.join(p for p in (root, os.environ.get("PYTHONPATH")) if p), "MPLBACKEND": "Agg"}  # fmt: skip


def test_every_python_block_runs_in_order_in_an_empty_folder(tmp_path):
    pytest.importorskip("sklearn")
    work = tmp_path / "work"
    work.mkdir()
    done = subprocess.run([sys.executable, "-c", RUNNER.format(blocks=blocks("python"))], cwd=work, env=_env(tmp_path),
                          capture_output=True, text=True, timeout=900)  # fmt: skip
    assert done.returncode == 0, done.stderr[-3000:]


def test_every_shell_block_runs_in_order(tmp_path):
    pytest.importorskip("sklearn")
    work = tmp_path / "work"
    work.mkdir()
    env = _env(tmp_path)
    for line, code in blocks("bash"):
        done = subprocess.run(["bash", "-e", "-c", code], cwd=work, env=env, capture_output=True, text=True, timeout=900)
        assert done.returncode == 0, f"README.md block at line {line}:\n{code}\n{done.stderr[-3000:]}"
    assert {"houses.csv", "model.npz", "exact.npz", "predictions.csv", "training.png", "big.npy"} <= {
        p.name for p in work.iterdir()
    }


def test_the_choices_the_readme_lists_are_the_commands():
    """`--engine {fused,...}` in the README: the names the command takes, read from `jaxlr.names`."""
    from jaxlr import cli

    parsers = cli._parser()._subparsers._group_actions[0].choices
    choices = {option: action.choices for parser in parsers.values() for action in parser._actions
               for option in action.option_strings if action.choices}  # fmt: skip
    listed = re.findall(r"(--[a-z][a-z0-9-]*)\s+\{([^}]*)\}", README.read_text())
    assert listed, "the README lists no option's choices"
    for option, names in listed:
        assert tuple(names.split(",")) == tuple(choices[option]), option
