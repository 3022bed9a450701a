"""`mpgrad vectors` and `mpgrad check` cut into shards, run on a Dask cluster, resumably.

A job is cut into shards fixed by its parameters alone (vectors: ranges of case indices;
vectors --check: ranges of lines; check: each tensor, in ranges of elements), and every
shard's result depends on nothing else, so the shards' results put together in order are
the single-process run's, byte for byte. The shards run on a dask.distributed cluster (a
LocalCluster of `workers` processes, or the one at `scheduler`, whose workers need this
version of mpgrad installed) or, with neither, one after the other in this process. With a
shard folder, each finished shard is written there (atomically) with the parameters that
made it and the SHA-256 of its result; a rerun takes the shards it finds there and
computes only the others, and refuses a shard file that is damaged, edited or made by
other parameters. Dask is an optional extra (pip install 'mpgrad[dask]'), imported only
when a cluster is asked for.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import sys
from contextlib import ExitStack
from dataclasses import dataclass
from importlib.metadata import version
from typing import Any, Callable, Iterator

import numpy as np

from ..autodiff.tensor import Tensor
from ..numerics.files import atomic_write
from ..numerics.formats import Format
from ..numerics.cases import case_count, parse_format
from ..numerics.vectors import Mismatch, check_lines, header, read_results, vector_lines
from ..testing.golden import (Offender, Report, Row, check, compare_tensor, parse_tolerance,
                              tensor_pairs)

__all__ = ["Sharding", "vectors_text", "check_vectors", "check_golden", "SHARD_CASES",
           "SHARD_LINES", "SHARD_ELEMENTS", "SHARD_FILE_VERSION"]

SHARD_CASES = 1 << 16  # cases per shard of `mpgrad vectors`
SHARD_LINES = 1 << 16  # lines per shard of `mpgrad vectors --check`
SHARD_ELEMENTS = 1 << 18  # elements per shard of a tensor in `mpgrad check`
SHARD_FILE_VERSION = "1"


@dataclass(frozen=True)
class Sharding:
    """Where shards run and are kept: a LocalCluster of `workers` processes, or the cluster
    at `scheduler`, else this process; `shard_dir` the folder of finished shards (None: none
    kept); `size` the cases, lines or elements per shard (None: the command's default)."""

    workers: int | None = None
    scheduler: str | None = None
    shard_dir: str | None = None
    size: int | None = None


@dataclass(frozen=True)
class _Shard:
    """One shard: fn(*args) computes its JSON result; params (JSON) say what it computes."""

    params: dict
    fn: Callable[..., Any]
    args: tuple


def _json(value: Any) -> str:
    return json.dumps(value, sort_keys=True, separators=(",", ":"))


def _digest(value: Any) -> str:
    return hashlib.sha256(_json(value).encode()).hexdigest()


def _file_digest(path: str | os.PathLike) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as file:
        for block in iter(lambda: file.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def _ranges(total: int, size: int) -> list[tuple[int, int]]:
    """[lo, hi) ranges of at most size covering range(total) (one empty range if total 0)."""
    return [(lo, min(lo + size, total)) for lo in range(0, max(total, 1), size)]


def _folder(path: str) -> str:
    """The shard folder, created if absent, or a ValueError saying why it cannot be."""
    if os.path.exists(path) and not os.path.isdir(path):
        raise ValueError(f"--shard-dir: {path!r} is a file, not a folder")
    try:
        os.makedirs(path, exist_ok=True)
    except OSError as err:
        raise ValueError(f"--shard-dir: cannot create the folder {path!r}: "
                         f"{err.strerror}") from None
    return path


def _load(path: str, params: dict) -> Any:
    """The result in a shard file, checked to be whole and made by params."""
    try:
        with open(path, encoding="utf-8") as file:
            data = json.load(file)
        result, found, digest = data["result"], data["params"], data["sha256"]
        if data["mpgrad_shard"] != SHARD_FILE_VERSION or not isinstance(found, dict):
            raise ValueError
    except (OSError, UnicodeDecodeError, ValueError, KeyError, TypeError):
        raise ValueError(f"{path} is not a readable mpgrad shard file (damaged?): delete it "
                         "to compute that shard again") from None
    if found != params:
        differ = sorted(k for k in {*found, *params} if found.get(k) != params.get(k))
        raise ValueError(f"{path} holds a shard of another run (it differs in "
                         f"{', '.join(differ)}): use another --shard-dir, or delete the file")
    if digest != _digest(result):
        raise ValueError(f"{path}: its result does not match its SHA-256 (damaged or edited):"
                         " delete it to compute that shard again")
    return result


def _save(path: str, params: dict, result: Any) -> None:
    text = json.dumps({"mpgrad_shard": SHARD_FILE_VERSION, "params": params,
                       "sha256": _digest(result), "result": result}).encode()
    atomic_write(path, lambda file: file.write(text))


def _on_cluster(how: Sharding, calls: dict[int, _Shard]) -> Iterator[tuple[int, Any, Any]]:
    """(index, result, None) or (index, None, exception) for each call, as the cluster
    finishes it."""
    try:
        from distributed import Client, LocalCluster, as_completed
    except ImportError as err:
        raise ImportError("--workers and --scheduler need Dask: pip install "
                          "'mpgrad[dask]' (or 'dask[distributed]')") from err
    with ExitStack() as stack:
        if how.scheduler is not None:
            try:
                client = stack.enter_context(Client(how.scheduler))
            except OSError as err:
                raise ValueError(f"--scheduler {how.scheduler}: cannot connect: {err}") from None
        else:
            # the workers' logs silenced: a shard's error is raised here, in shard order
            cluster = stack.enter_context(LocalCluster(
                n_workers=how.workers, threads_per_worker=1, dashboard_address=":0",
                silence_logs=logging.CRITICAL))
            client = stack.enter_context(Client(cluster))
        futures = {client.submit(s.fn, *s.args, pure=False): i for i, s in calls.items()}
        for future in as_completed(futures):
            try:
                yield futures[future], future.result(), None
            except Exception as err:  # the shard's own error, raised below in shard order
                yield futures[future], None, err


def _run(command: str, shards: list[_Shard], how: Sharding) -> list:
    """The shards' results, in order: read from how.shard_dir where there, the others
    computed (on the cluster, or here) and written there. A failed shard's error is raised
    once the others are done (the first failed shard's, in shard order)."""
    stamp = {"mpgrad_version": version("mpgrad")}  # another version may compute otherwise
    shards = [_Shard({**s.params, **stamp}, s.fn, s.args) for s in shards]
    folder = None if how.shard_dir is None else _folder(how.shard_dir)
    paths = [None if folder is None else os.path.join(folder, f"{command}-{i:06d}.json")
             for i in range(len(shards))]
    results = {i: _load(p, s.params) for i, (p, s) in enumerate(zip(paths, shards))
               if p is not None and os.path.exists(p)}
    todo = {i: s for i, s in enumerate(shards) if i not in results}
    if folder is not None:
        print(f"mpgrad {command}: {len(results)} of {len(shards)} shards found in {folder}, "
              f"computing {len(todo)}", file=sys.stderr)
    if how.workers is None and how.scheduler is None:
        finished = ((i, s.fn(*s.args), None) for i, s in todo.items())
    else:
        finished = _on_cluster(how, todo) if todo else iter(())
    errors = {}
    for i, result, error in finished:
        if error is not None:
            errors[i] = error
            continue
        results[i] = json.loads(_json(result))  # as a shard file gives it back
        if paths[i] is not None:
            _save(paths[i], shards[i].params, results[i])
    if errors:
        raise errors[min(errors)]
    return [results[i] for i in range(len(shards))]


# --- mpgrad vectors -----------------------------------------------------------------------

def _vector_shard(op: str, fmt: str, mode: str, level: int, count: int, exhaustive: bool,
                  seed: int, start: int, stop: int) -> str:
    lines = vector_lines(op, fmt, mode, level=level, count=count, exhaustive=exhaustive,
                         seed=seed, start=start, stop=stop)
    return "".join(line + "\n" for line in lines)


def vectors_text(op: str, fmt: Format | str, mode: str = "nearest_even", *, level: int = 1,
                 count: int = 10_000, exhaustive: bool = False, seed: int = 0,
                 how: Sharding = Sharding()) -> str:
    """The text of mpgrad.numerics.vectors.vectors (header, then a line per case), computed
    in shards of how.size (default SHARD_CASES) consecutive cases."""
    fmt = parse_format(fmt)
    total = case_count(op, fmt, count=count, exhaustive=exhaustive)
    job = dict(op=op, format=fmt.name, mode=mode, level=level, count=count,
               exhaustive=exhaustive, seed=seed)
    shards = [_Shard({"command": "vectors", **job, "start": lo, "stop": hi}, _vector_shard,
                     (*job.values(), lo, hi)) for lo, hi in _ranges(total, how.size or SHARD_CASES)]
    return header(op, fmt, mode) + "\n" + "".join(_run("vectors", shards, how))


def _check_shard(body: list[tuple[int, str]], op: str, fmt: str, mode: str) -> dict:
    count, bad = check_lines(body, op, fmt, mode)
    return {"count": count, "mismatches": [list(m) for m in bad]}


def check_vectors(path: str | os.PathLike, op: str | None = None, fmt: str | None = None,
                  mode: str | None = None, *,
                  how: Sharding = Sharding()) -> tuple[int, list[Mismatch]]:
    """mpgrad.numerics.vectors.check of a results file, in shards of how.size (default
    SHARD_LINES) lines."""
    with open(path, encoding="ascii") as file:
        lines = file.readlines()
    body, op, fmt, mode = read_results(lines, op, fmt, mode)
    if not body:
        return check_lines(body, op, fmt, mode)  # its error
    job = dict(op=op, format=fmt.name, mode=mode)
    digest = hashlib.sha256("".join(lines).encode()).hexdigest()
    shards = [_Shard({"command": "vectors --check", "file_sha256": digest, **job, "start": lo,
                      "stop": hi}, _check_shard, (body[lo:hi], *job.values()))
              for lo, hi in _ranges(len(body), how.size or SHARD_LINES)]
    parts = _run("vectors-check", shards, how)
    return (sum(p["count"] for p in parts),
            [Mismatch(*m) for p in parts for m in p["mismatches"]])


# --- mpgrad check -------------------------------------------------------------------------

def _part(row: Row, start: int) -> dict:
    """A Row as JSON: its counts, histogram and offenders at flat index start + theirs."""
    flat = [int(np.ravel_multi_index(o.index, row.shape)) if row.shape else 0
            for o in row.offenders]
    return {"count": row.count, "bit_equal": row.bit_equal, "within": row.within,
            "max_ulps": row.max_ulps, "histogram": [list(h) for h in row.histogram],
            "offenders": [[start + k, o.golden, o.candidate, o.golden_bits, o.candidate_bits,
                           o.ulps] for k, o in zip(flat, row.offenders)]}


def _compare_shard(name: str, fmt: Format, golden: np.ndarray, candidate: np.ndarray,
                   start: int, tolerance: str, max_report: int) -> dict:
    """The part of elements start.. of a tensor."""
    return _part(compare_tensor(name, Tensor(golden, fmt), Tensor(candidate, fmt),
                                tolerance=tolerance, max_report=max_report), start)


def _bound_shard(golden_path: str, candidate_path: str, max_report: int, compute, model,
                 ulps: float) -> list[dict]:
    """The part of each tensor, checked whole against the bound of the recorded op."""
    report = check(golden_path, candidate_path, tolerance="bound", max_report=max_report,
                   compute=compute, model=model, ulps=ulps)
    return [_part(row, 0) for row in report.rows]


def _bin_order(item: tuple[str, int]) -> tuple[int, int]:
    """Histogram bins in compare_tensor's order: 0, 1, 2, 3-4, ..., then NaN vs number."""
    low = item[0].split("-")[0]
    return (0, int(low)) if low.isdigit() else (1, 0)


def _merged(name: str, g: Tensor, parts: list[dict], max_report: int) -> Row:
    """The Row of a whole tensor from its shards' parts, in element order."""
    histogram: dict[str, int] = {}
    for p in parts:
        for key, n in p["histogram"]:
            histogram[key] = histogram.get(key, 0) + n
    offenders = [Offender(tuple(int(i) for i in np.unravel_index(o[0], g.shape)), *o[1:])
                 for p in parts for o in p["offenders"]][:max_report]
    ulps = [p["max_ulps"] for p in parts if p["max_ulps"] is not None]
    return Row(name, g.dtype.name, tuple(g.shape), sum(p["count"] for p in parts),
               sum(p["bit_equal"] for p in parts), sum(p["within"] for p in parts),
               max(ulps, default=None), tuple(sorted(histogram.items(), key=_bin_order)),
               tuple(offenders))


def check_golden(golden_path: str | os.PathLike, candidate_path: str | os.PathLike, *,
                 tolerance: str = "bits", max_report: int = 5,
                 compute: Format | str | None = None, model=None, ulps: float = 0.5,
                 how: Sharding = Sharding()) -> Report:
    """mpgrad.golden.check of a candidate file, in shards: of how.size (default
    SHARD_ELEMENTS) elements of each tensor within "bits" or "ulps=N"; within "bound",
    whose bound needs the whole op, one shard (the workers must see both files)."""
    bound = parse_tolerance(tolerance) == "bound"
    pairs = tensor_pairs(golden_path, candidate_path)
    job = {"command": "check", "golden_sha256": _file_digest(golden_path),
           "candidate_sha256": _file_digest(candidate_path), "tolerance": tolerance,
           "max_report": max_report}
    if bound:
        job.update(compute=getattr(compute, "name", compute),
                   model=None if model is None else repr(model), ulps=ulps)
        shard = _Shard(job, _bound_shard, (os.path.abspath(golden_path),
                                           os.path.abspath(candidate_path), max_report,
                                           compute, model, ulps))
        groups = [[p] for p in _run("check", [shard], how)[0]]
    else:
        shards, owner = [], []
        for k, (name, g, c) in enumerate(pairs):
            flat_g, flat_c = g.data.reshape(-1), c.data.reshape(-1)
            for lo, hi in _ranges(flat_g.size, how.size or SHARD_ELEMENTS):
                shards.append(_Shard({**job, "tensor": name, "start": lo, "stop": hi},
                                     _compare_shard, (name, g.dtype, flat_g[lo:hi],
                                                      flat_c[lo:hi], lo, tolerance,
                                                      max_report)))
                owner.append(k)
        parts = _run("check", shards, how)
        groups = [[p for p, o in zip(parts, owner) if o == k] for k in range(len(pairs))]
    rows = tuple(_merged(name, g, group, max_report)
                 for (name, g, _), group in zip(pairs, groups))
    return Report(os.fspath(golden_path), tolerance, rows)
