"""The examples in README.md and docs/ run and print what the pages say."""

import doctest
import re
from pathlib import Path

import ml_dtypes
import numpy as np
import pytest

import mpgrad

ROOT = Path(__file__).resolve().parents[1]
PAGES = [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]


@pytest.mark.parametrize("page", PAGES, ids=lambda p: p.name)
def test_examples_in_page(page):
    text = re.sub(r"^\s*```.*$", "", page.read_text(), flags=re.M)  # fences end an example
    globs = {"np": np, "ml_dtypes": ml_dtypes, "mpgrad": mpgrad}
    test = doctest.DocTestParser().get_doctest(text, globs, page.name, str(page), 0)
    runner = doctest.DocTestRunner(optionflags=doctest.NORMALIZE_WHITESPACE)
    runner.run(test)
    assert runner.summarize(verbose=False).failed == 0
