"""Sharded `mpgrad vectors` and `mpgrad check` (mpgrad.demo.shards) on a Dask LocalCluster:
byte-identical output to the single-process run, resumable shard folders, refused damaged
or foreign shard files, and no Dask import without the sharding options.

Most tests share one LocalCluster of 2 in-process workers (processes=False: it starts in
a fraction of a second) and reach it with --scheduler ADDRESS; one runs `python -m mpgrad
... --workers 2`, the LocalCluster of 2 worker processes a user gets."""

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

distributed = pytest.importorskip("distributed")

import mpgrad  # noqa: E402
from mpgrad import golden  # noqa: E402
from mpgrad.demo import shards  # noqa: E402
from mpgrad.demo.cli import main  # noqa: E402

ROOT = Path(__file__).resolve().parent.parent


@pytest.fixture(scope="module")
def address():
    with distributed.LocalCluster(n_workers=2, threads_per_worker=1, processes=False,
                                  dashboard_address=":0") as cluster:
        yield cluster.scheduler_address


def run(argv, capsys) -> tuple[int, str, str]:
    """main(argv): its exit code (argparse errors included), stdout and stderr."""
    try:
        code = main(argv)
    except SystemExit as stop:
        code = stop.code
    out = capsys.readouterr()
    return code, out.out, out.err


def vectors_bytes(tmp_path, name, args, capsys) -> bytes:
    path = tmp_path / name
    code, _, err = run(["vectors", *args, "-o", str(path)], capsys)
    assert code == 0, err
    return path.read_bytes()


@pytest.mark.parametrize("args", [
    ["add", "e4m3", "--count", "20000", "--seed", "3"],  # level 1: 2704 special pairs, then random
    ["mul", "bf16", "--level", "2", "--count", "30000", "--mode", "up"],
    ["add", "e5m2", "--exhaustive"]], ids=["level1", "level2", "exhaustive"])
def test_vectors_identical_to_single_process(tmp_path, capsys, address, args):
    single = vectors_bytes(tmp_path, "single.txt", args, capsys)
    sharded = vectors_bytes(tmp_path, "sharded.txt", [*args, "--scheduler", address,
                                                       "--shard-size", "7000"], capsys)
    assert sharded == single and single.count(b"\n") > 10_000
    code, out, _ = run(["vectors", *args, "--scheduler", address, "--shard-size", "9999"],
                       capsys)  # stdout too
    assert code == 0 and out.encode() == single


def test_vectors_check_identical_to_single_process(tmp_path, capsys, address):
    path = tmp_path / "results.txt"
    lines = vectors_bytes(tmp_path, "v.txt", ["div", "f16", "--count", "5000"],
                          capsys).decode().splitlines()
    for i in (7, 2500, 4990):  # a wrong result in three different shards
        fields = lines[i].split()
        fields[2] = f"{int(fields[2], 16) ^ 1:04X}"
        lines[i] = " ".join(fields)
    path.write_text("\n".join(lines) + "\n")
    single = run(["vectors", "--check", str(path)], capsys)
    sharded = run(["vectors", "--check", str(path), "--scheduler", address, "--shard-size",
                   "1000"], capsys)
    assert single[0] == 1 and "3 mismatches" in single[1] and sharded == single
    lines[3000], lines[1200] = "3C00 3C00", "3C00 ZZZZ 3C00 00"  # unusable: the first wins
    path.write_text("\n".join(lines) + "\n")
    single = run(["vectors", "--check", str(path)], capsys)
    sharded = run(["vectors", "--check", str(path), "--scheduler", address, "--shard-size",
                   "1000"], capsys)
    assert single[0] == 2 and "line 1201:" in single[2] and sharded == single


def perturbed_matmul(tmp_path):
    """A golden file of a bf16 matmul with gradients, and a candidate a few ulps, a sign and
    a NaN away from it."""
    rng = np.random.default_rng(7)
    a = mpgrad.tensor(rng.standard_normal((64, 96)), "bf16", requires_grad=True)
    b = mpgrad.tensor(rng.standard_normal((96, 48)), "bf16", requires_grad=True)
    g, c = str(tmp_path / "g.safetensors"), str(tmp_path / "c.safetensors")
    golden.record(g, "matmul", [a, b], grad=True)
    tensors = dict(golden.read(g).tensors)
    for name, seed in (("output.0", 1), ("grad.0", 2)):
        bits = mpgrad.to_bits(tensors[name].data, "bf16").ravel().astype(np.int64)
        where = np.random.default_rng(seed).choice(bits.size, 40, replace=False)
        bits[where[:30]] += np.arange(30) % 5 + 1  # 1 to 5 ulps (same sign, no overflow here)
        bits[where[30:35]] ^= 0x8000  # signs
        bits[where[35:]] = 0x7FC0  # NaNs
        tensors[name] = mpgrad.Tensor(mpgrad.from_bits(bits.reshape(tensors[name].shape),
                                                       "bf16"), "bf16")
    golden.write(c, tensors)
    return g, c


@pytest.mark.parametrize("options", [[], ["--tolerance", "ulps=3"], ["--json"],
                                     ["--tolerance", "bound", "--compute", "float32"]],
                         ids=["bits", "ulps", "json", "bound"])
def test_check_identical_to_single_process(tmp_path, capsys, address, options):
    g, c = perturbed_matmul(tmp_path)
    single = run(["check", g, c, *options], capsys)
    sharded = run(["check", g, c, *options, "--scheduler", address, "--shard-size", "700"],
                  capsys)
    assert single[0] == 1 and "output.0" in single[1]  # a fail, with the offenders
    assert sharded == single


def test_check_report_merged_from_element_shards(tmp_path):
    """The Report itself: rows of tensors cut in 700-element shards equal check's."""
    g, c = perturbed_matmul(tmp_path)
    whole = golden.check(g, c, tolerance="ulps=2", max_report=50)
    cut = shards.check_golden(g, c, tolerance="ulps=2", max_report=50,
                              how=shards.Sharding(size=700))
    assert cut.to_json() == whole.to_json()
    row = next(r for r in cut.rows if r.name == "grad.0")
    assert len(row.offenders) > 10 and {k for k, _ in row.histogram} >= {"0", "1", "2",
                                                                         "NaN vs number"}


def test_resume_recomputes_only_the_missing_shard(tmp_path, capsys, address):
    folder = tmp_path / "shards"
    args = ["add", "e5m2", "--exhaustive", "--scheduler", address, "--shard-size", "16384",
            "--shard-dir", str(folder)]
    first = vectors_bytes(tmp_path, "a.txt", args, capsys)
    files = sorted(folder.iterdir())
    assert [f.name for f in files] == [f"vectors-{i:06d}.json" for i in range(4)]
    before = {f.name: f.stat().st_mtime_ns for f in files}
    files[2].unlink()
    path = tmp_path / "b.txt"
    code, _, err = run(["vectors", *args, "-o", str(path)], capsys)
    assert code == 0 and "3 of 4 shards found" in err and "computing 1" in err
    after = {f.name: f.stat().st_mtime_ns for f in sorted(folder.iterdir())}
    assert after.keys() == before.keys()
    assert [n for n in after if after[n] != before[n]] == [files[2].name]
    assert path.read_bytes() == first


def test_resume_counts_the_shards_computed(tmp_path, monkeypatch):
    """Without a cluster (--shard-dir alone) the shards run here: count the calls."""
    calls = []
    compute = shards._vector_shard
    monkeypatch.setattr(shards, "_vector_shard", lambda *a: calls.append(a) or compute(*a))
    how = shards.Sharding(shard_dir=str(tmp_path), size=3000)
    text = shards.vectors_text("sqrt", "f16", count=10_000, how=how)
    assert len(calls) == 4
    (tmp_path / "vectors-000001.json").unlink()
    assert shards.vectors_text("sqrt", "f16", count=10_000, how=how) == text
    assert len(calls) == 5 and calls[-1][-2:] == (3000, 6000)
    assert shards.vectors_text("sqrt", "f16", count=10_000, how=shards.Sharding(size=3000)) \
        == text and len(calls) == 9  # no folder: every shard computed


def test_damaged_or_foreign_shard_files_are_refused(tmp_path, capsys, address):
    folder = tmp_path / "shards"
    args = ["vectors", "sqrt", "bf16", "--count", "6000", "--shard-size", "2000",
            "--shard-dir", str(folder), "--scheduler", address]
    assert run(args, capsys)[0] == 0
    shard = folder / "vectors-000001.json"
    original = shard.read_text()
    data = json.loads(original)
    text = data["result"]
    data["result"] = ("1" if text[0] == "0" else "0") + text[1:]  # one digit edited
    shard.write_text(json.dumps(data))
    code, _, err = run(args, capsys)
    assert code == 2 and "vectors-000001.json: its result does not match its SHA-256" in err
    shard.write_text(original[:100])  # cut short
    code, _, err = run(args, capsys)
    assert code == 2 and "is not a readable mpgrad shard file" in err
    shard.write_text(original)
    assert run(args, capsys)[0] == 0
    code, _, err = run([*args, "--seed", "1"], capsys)  # another run's folder
    assert code == 2 and "holds a shard of another run (it differs in seed)" in err
    g, c = perturbed_matmul(tmp_path)
    check = ["check", g, c, "--shard-dir", str(tmp_path / "check"), "--shard-size", "2000"]
    assert run(check, capsys)[0] == 1
    golden.write(c, golden.read(g).tensors)  # another candidate, same folder
    code, _, err = run(check, capsys)
    assert code == 2 and "differs in candidate_sha256" in err


def test_workers_start_a_local_cluster_of_processes(tmp_path, capsys):
    single = vectors_bytes(tmp_path, "single.txt", ["mul", "e4m3", "--exhaustive"], capsys)
    out = tmp_path / "workers.txt"
    r = subprocess.run([sys.executable, "-m", "mpgrad", "vectors", "mul", "e4m3",
                        "--exhaustive", "--workers", "2", "--shard-size", "20000", "-o",
                        str(out)], cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert r.returncode == 0, r.stderr
    assert out.read_bytes() == single


def test_without_sharding_options_dask_is_not_imported(tmp_path):
    g, c = perturbed_matmul(tmp_path)
    code = f"""
import sys
from mpgrad.demo.cli import main
main(["vectors", "add", "e5m2", "--count", "100", "-o", {str(tmp_path / "v.txt")!r}])
main(["vectors", "--check", {str(tmp_path / "v.txt")!r}])
main(["vectors", "add", "e5m2", "--count", "100", "--shard-dir", {str(tmp_path / "s")!r}])
main(["check", {g!r}, {c!r}])
print(sorted(m for m in sys.modules if m.split(".")[0] in ("dask", "distributed")))
"""
    r = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True,
                       timeout=120, env={**os.environ, "PYTHONPATH": str(ROOT)})
    assert r.returncode == 0, r.stderr
    assert r.stdout.splitlines()[-1] == "[]"


def test_without_dask_the_options_say_how_to_install_it(tmp_path, capsys, monkeypatch):
    monkeypatch.setitem(sys.modules, "distributed", None)  # as if not installed
    code, _, err = run(["vectors", "add", "e5m2", "--count", "10", "--workers", "2"], capsys)
    assert code == 2 and "need Dask: pip install 'mpgrad[dask]'" in err
    g, c = perturbed_matmul(tmp_path)
    code, _, err = run(["check", g, c, "--scheduler", "tcp://127.0.0.1:1"], capsys)
    assert code == 2 and "need Dask" in err
