"""The notebook walkthrough runs top to bottom, and what is committed is a clean run."""

from pathlib import Path

import nbformat
import pytest

NOTEBOOK = Path(__file__).parents[1] / "notebooks" / "linear_regression_from_scratch.ipynb"


def test_committed_notebook_is_a_clean_complete_run():
    nb = nbformat.read(NOTEBOOK, as_version=4)
    code_cells = [cell for cell in nb.cells if cell.cell_type == "code"]
    assert code_cells
    # Executed in order, top to bottom, once.
    assert [cell.execution_count for cell in code_cells] == list(range(1, len(code_cells) + 1))
    for cell in code_cells:
        for output in cell.outputs:
            assert output.output_type != "error", cell.source
            assert not (output.output_type == "stream" and output.name == "stderr"), output.text
    images = [o for c in code_cells for o in c.outputs if "image/png" in o.get("data", {})]
    assert len(images) >= 2  # the scatter plot and the loss curve


def test_notebook_executes_without_error(tmp_path):
    nbclient = pytest.importorskip("nbclient")
    nb = nbformat.read(NOTEBOOK, as_version=4)
    # Any exception in a cell, the closing assertion included, raises here.
    nbclient.NotebookClient(nb, timeout=300, kernel_name="python3", resources={"metadata": {"path": str(tmp_path)}}).execute()
    last = nb.cells[-1]
    assert "All parameters within 0.01 of the truth." in "".join(o.get("text", "") for o in last.outputs)
