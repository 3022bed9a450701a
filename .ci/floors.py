"""Print pip constraints pinning each run-time dependency of pyproject.toml at its floor
(">=X" becomes "==X"), so CI can test the oldest versions the ranges allow."""

import re
import sys
from pathlib import Path

text = (Path(__file__).resolve().parents[1] / "pyproject.toml").read_text()
deps = re.search(r"^dependencies = \[(.*?)\]", text, re.M | re.S).group(1)
pins = [re.fullmatch(r"([A-Za-z0-9_.-]+)>=([0-9][0-9.]*)", d.strip().strip('"'))
        for d in deps.split(",") if d.strip()]
if not all(pins):
    sys.exit(f"every run-time dependency needs a '>=' floor: {deps}")
print("\n".join(f"{m.group(1)}=={m.group(2)}" for m in pins))
