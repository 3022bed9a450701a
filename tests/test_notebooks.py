"""The teaching notebooks are committed as CI re-runs them: with their outputs, no error in
any cell, their figures in docs/figures/ and shown by a docs page. (CI executes them with
`pytest --nbmake notebooks`; this test only reads the files.)"""

import json
import re
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
NOTEBOOKS = sorted((ROOT / "notebooks").glob("[0-9][0-9]_*.ipynb"))
LESSONS = ["number_formats", "rounding", "article_pipeline", "loss_scaling", "master_weights",
           "accumulation", "fp8"]


def cells(path):
    return json.loads(path.read_text())["cells"]


def test_the_seven_lessons_are_there():
    names = [p.stem.split("_", 1)[1] for p in NOTEBOOKS]
    assert names[:7] == LESSONS


@pytest.mark.parametrize("path", NOTEBOOKS, ids=[p.stem for p in NOTEBOOKS])
def test_committed_with_outputs_and_no_errors(path):
    code = [c for c in cells(path) if c["cell_type"] == "code"]
    assert code and all(c.get("execution_count") for c in code), "run notebooks/execute.py"
    outputs = [o for c in code for o in c["outputs"]]
    assert not [o for o in outputs if o["output_type"] == "error"]
    assert any("image/png" in o.get("data", {}) for o in outputs), "a lesson has figures"
    text = "".join("".join(c["source"]) for c in cells(path) if c["cell_type"] == "markdown")
    assert re.search(r"exercise", text, re.I)


@pytest.mark.parametrize("path", NOTEBOOKS, ids=[p.stem for p in NOTEBOOKS])
def test_figures_are_written_and_shown_in_the_docs(path):
    number = path.stem[:2]
    source = "".join("".join(c["source"]) for c in cells(path))
    saved = set(re.findall(rf'"({number}-[\w-]+\.png)"', source))
    assert saved, "each notebook saves its figures to docs/figures/NN-*.png"
    docs = "".join(p.read_text() for p in (ROOT / "docs").glob("*.md"))
    for name in saved:
        assert (ROOT / "docs" / "figures" / name).is_file()
    assert any(f"figures/{name}" in docs for name in saved), f"no docs page shows {saved}"
