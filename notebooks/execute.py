"""Run notebooks top to bottom and save them with their outputs (they are committed so
that they read on GitHub; CI re-runs them with `pytest --nbmake notebooks`).

    python notebooks/execute.py                  # every notebook here
    python notebooks/execute.py notebooks/02_rounding.ipynb
"""

import sys
import time
from pathlib import Path

import nbclient
import nbformat

HERE = Path(__file__).resolve().parent


def execute(path: Path) -> float:
    """Execute one notebook in its own folder, write it back; the seconds it took."""
    nb = nbformat.read(path, as_version=4)
    start = time.perf_counter()
    nbclient.NotebookClient(nb, timeout=600, kernel_name="python3", record_timing=False,
                            resources={"metadata": {"path": str(path.parent)}}).execute()
    nbformat.write(nb, path)
    return time.perf_counter() - start


if __name__ == "__main__":
    for name in sys.argv[1:] or sorted(HERE.glob("[0-9]*.ipynb")):
        print(f"{name}: {execute(Path(name).resolve()):.1f} s", flush=True)
