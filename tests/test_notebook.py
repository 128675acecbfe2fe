"""The notebooks run top to bottom, what is committed is a clean run, and each checks its own results."""

from pathlib import Path

import nbformat
import pytest

NOTEBOOKS = Path(__file__).parents[1] / "notebooks"

# name -> (figures its committed run must show, what its last cell prints once its checks pass)
EXPECTED = {
    "linear_regression_from_scratch": (5, "All checks passed"),
    "from_lesson_to_practice": (2, "All checks passed"),
}


def code_cells(nb):
    return [cell for cell in nb.cells if cell.cell_type == "code"]


@pytest.mark.parametrize("name", sorted(EXPECTED))
def test_committed_notebook_is_a_clean_complete_run(name):
    nb = nbformat.read(NOTEBOOKS / f"{name}.ipynb", as_version=4)
    cells = code_cells(nb)
    assert cells
    # Executed in order, top to bottom, once.
    assert [cell.execution_count for cell in cells] == list(range(1, len(cells) + 1))
    for cell in cells:
        for output in cell.outputs:
            assert output.output_type != "error", cell.source
            assert not (output.output_type == "stream" and output.name == "stderr"), output.text
    figures, passed = EXPECTED[name]
    images = [o for c in cells for o in c.outputs if "image/png" in o.get("data", {})]
    assert len(images) >= figures
    # It ends by checking its results, and the committed run passed those checks.
    assert "assert " in cells[-1].source
    assert passed in "".join(o.get("text", "") for o in cells[-1].outputs)


# name -> how many exercises it sets, each in a markdown cell of its own
EXERCISES = {"linear_regression_from_scratch": 11, "from_lesson_to_practice": 4}


@pytest.mark.parametrize("name", sorted(EXPECTED))
def test_prose_renders_and_each_exercise_has_its_own_cell(name):
    nb = nbformat.read(NOTEBOOKS / f"{name}.ipynb", as_version=4)
    # A heading written as a comment inside a code cell never renders.
    for cell in code_cells(nb):
        assert not any(line.lstrip().startswith("# #") for line in cell.source.splitlines()), cell.source
    markdown = [cell.source for cell in nb.cells if cell.cell_type == "markdown"]
    exercises = [source for source in markdown if source.startswith("**Exercise ")]
    assert len(exercises) == EXERCISES[name]
    assert all(source.count("**Exercise ") <= 1 for source in markdown)


def test_the_lessons_training_loop_comes_in_its_first_half():
    nb = nbformat.read(NOTEBOOKS / "linear_regression_from_scratch.ipynb", as_version=4)
    loop = [i for i, cell in enumerate(nb.cells) if cell.cell_type == "code" and "def train(" in cell.source]
    assert len(loop) == 1 and loop[0] < len(nb.cells) / 2
    # The learner writes the initialisation, and the engines wait for the appendix, after the exercises.
    sources = [cell.source for cell in nb.cells]
    assert any("def init_params(" in source for source in sources)
    first_exercise = next(i for i, source in enumerate(sources) if source.startswith("**Exercise "))
    fused = [i for i, source in enumerate(sources) if '"fused"' in source and "jaxlr.fit" in source]
    assert fused and min(fused) > first_exercise


@pytest.mark.parametrize("name", sorted(EXPECTED))
def test_notebook_executes_and_its_checks_pass(name, tmp_path):
    nbclient = pytest.importorskip("nbclient")
    if name == "from_lesson_to_practice":
        pytest.importorskip("sklearn")
    nb = nbformat.read(NOTEBOOKS / f"{name}.ipynb", as_version=4)
    # Any exception in a cell, a failed self-check (they are assertions) included, raises here.
    client = nbclient.NotebookClient(nb, timeout=300, kernel_name="python3", resources={"metadata": {"path": str(tmp_path)}})
    client.execute()
    _, passed = EXPECTED[name]
    assert passed in "".join(o.get("text", "") for o in code_cells(nb)[-1].outputs)
