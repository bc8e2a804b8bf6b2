"""The example notebooks, run top to bottom in a real Jupyter kernel (nbclient): any error output, a
traceback on stderr (a failed background job logs one) or a cell that did not run fails the test.

Also the sequence a new user tried in a kernel (issue 12): show two pages, whose background jobs
import the embedder's and the classifier's libraries, then load the language model at once. The
heavy imports racing between a page's thread and the main thread made ``from transformers import
AutoModelForCausalLM`` fail in one run of two (a fresh kernel each time the suite runs)."""

from __future__ import annotations

import os
import re
from pathlib import Path

import pytest

nbformat = pytest.importorskip("nbformat", reason="the test extras install nbformat, nbclient and ipykernel")
from nbclient import NotebookClient  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
EXAMPLES = sorted((ROOT / "examples").glob("*.ipynb"))
CELL_TIMEOUT_S = 300
FAILURE = re.compile(r"Traceback|Error\b|Exception\b")


def execute(notebook, workdir: Path):
    """Run every cell in a fresh ``python3`` kernel started in ``workdir`` (with this process's
    environment: PYTHONPATH, HF_HUB_OFFLINE)."""
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1", "TOKENIZERS_PARALLELISM": "false"}
    client = NotebookClient(notebook, timeout=CELL_TIMEOUT_S, kernel_name="python3",
                            resources={"metadata": {"path": str(workdir)}})
    client.execute(env=env)
    return notebook


def problems(notebook) -> list[str]:
    """Every error output, stderr text that reports a failure, and code cell that did not run."""
    found = []
    for index, cell in enumerate(notebook.cells):
        if cell.cell_type != "code":
            continue
        if cell.get("execution_count") is None:
            found.append(f"cell {index} did not run")
        for output in cell.get("outputs", []):
            if output.output_type == "error":
                found.append(f"cell {index}: {output.ename}: {output.evalue}")
            elif output.output_type == "stream" and output.name == "stderr" and FAILURE.search(output.text):
                found.append(f"cell {index} stderr: {output.text[-2000:]}")
    return found


def test_there_is_one_example_per_page_and_one_for_the_api():
    names = [path.stem for path in EXAMPLES]
    assert names == ["00_python_api", "01_token_lens", "02_temperature", "03_diversity", "04_conformal"]
    for path in EXAMPLES:
        notebook = nbformat.read(path, as_version=4)
        nbformat.validate(notebook)
        assert not any(cell.get("outputs") for cell in notebook.cells if cell.cell_type == "code"), \
            f"{path.name} is committed with outputs"


@pytest.mark.model
@pytest.mark.parametrize("path", [pytest.param(path, marks=() if path.stem == "00_python_api" else pytest.mark.extended)
                                  for path in EXAMPLES], ids=lambda p: p.stem)
def test_an_example_notebook_runs_top_to_bottom(path, tmp_path):
    notebook = execute(nbformat.read(path, as_version=4), tmp_path)
    assert problems(notebook) == []
    assert list(tmp_path.glob("*report.html")), "each example ends by writing a report"
    shown = [o for cell in notebook.cells if cell.cell_type == "code" for o in cell.outputs
             if o.output_type in ("execute_result", "display_data")]
    assert shown, "the notebook shows its results"


RACE = [
    "import panel as pn\nfrom explorer.views import EXTENSIONS, ConformalExplorer, DiversityExplorer\n"
    "pn.extension(*EXTENSIONS)",
    "diversity = DiversityExplorer()\ndiversity",
    "conformal = ConformalExplorer()\nconformal",
    "from explorer.models.language_model import load_language_model\nlm = load_language_model()\nprint(lm.name)",
    # the pages load, then compute, each step finishing on the kernel's event loop: let it run
    "import asyncio\nfor _ in range(1200):\n"
    "    if diversity.analysis.is_computed() and conformal.analysis.is_computed():\n        break\n"
    "    await asyncio.sleep(0.25)\n"
    "assert diversity.analysis.is_computed() and conformal.analysis.is_computed()\n"
    "assert not diversity.jobs.message and not conformal.jobs.message, (diversity.jobs.message, conformal.jobs.message)",
]


@pytest.mark.model
def test_pages_then_the_language_model_in_one_kernel(tmp_path):
    notebook = nbformat.v4.new_notebook(cells=[nbformat.v4.new_code_cell(source) for source in RACE])
    notebook.metadata["kernelspec"] = {"name": "python3", "display_name": "Python 3", "language": "python"}
    notebook = execute(notebook, tmp_path)
    assert problems(notebook) == []
    assert "SmolLM2-135M-Instruct" in "".join(o.get("text", "") for o in notebook.cells[3].outputs)
