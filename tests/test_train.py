"""Recipes, the training loop, the demo's claims, and bit-for-bit reproducibility."""

from __future__ import annotations

import functools
import os
import subprocess
import sys

import numpy as np
import pytest

import mpgrad
from mpgrad.demo import cli
from mpgrad.demo.cli import main
from mpgrad.demo.data import load, synthetic
from mpgrad.demo.recipes import DEFAULT_RECIPES, RECIPES, Recipe, get_recipe
from mpgrad.demo.train import param_hash, results_table, train

SMALL = dict(steps=4, batch_size=16, hidden=24, data=synthetic(n=200), optimizer="sgd", lr=0.01)


@pytest.mark.parametrize("name", DEFAULT_RECIPES)
def test_every_recipe_trains_and_is_deterministic(name):
    a, b = train(name, **SMALL), train(name, **SMALL)
    assert np.all(np.isfinite(a.losses)) and a.hashes.shape == (4, 4)
    assert np.array_equal(a.hashes, b.hashes) and np.array_equal(a.losses, b.losses)
    recipe = RECIPES[name]
    model = mpgrad.nn.MLP((64, 24, 10), dtype=recipe.param, rng=0)
    assert [p.dtype for p in model.parameters()] == [recipe.param] * 4
    assert a.names == ["0.weight", "0.bias", "2.weight", "2.bias"]


def test_a_different_seed_gives_different_bits():
    assert not np.array_equal(train("fp32", **SMALL).hashes,
                              train("fp32", **{**SMALL, "seed": 1}).hashes)


def test_recipes_are_data():
    mine = Recipe("bf16_master", "bfloat16 weights with a float32 master copy", param="bf16",
                  master="f32", scaler={"init_scale": 2.0 ** 10})
    assert mine.param == mpgrad.bfloat16 and mine.master == mpgrad.float32
    result = train(mine, **SMALL)
    assert result.recipe == "bf16_master" and result.final_scale == 2.0 ** 10
    # torch's GradScaler refuses float16 gradients (float16 parameters), and so does mpgrad's
    with pytest.raises(ValueError, match="FP16 gradients"):
        train(Recipe("fp16_scaled", "", param="fp16", scaler={}), **SMALL)
    assert get_recipe("pure_bfloat16").param == mpgrad.bfloat16
    with pytest.raises(ValueError, match="unknown recipe 'x'.*fp32"):
        get_recipe("x")
    with pytest.raises(ValueError, match="steps"):
        train("fp32", **{**SMALL, "steps": 0})


def test_lost_updates_and_underflows_are_counted_where_they_happen():
    """float16 weights lose updates below half an ulp that float32 weights keep; the naive
    float16 backward flushes gradient values to zero (softmax gradients / 128), the float32
    one and the loss-scaled float16 one (mixed_float16) do not."""
    config = {**SMALL, "steps": 10, "batch_size": 128}
    naive, fp32 = train("seed_naive_fp16", **config), train("fp32", **config)
    assert train("mixed_float16", **config).underflows == 0
    assert naive.lost_updates > 10 * max(fp32.lost_updates, 1)
    assert naive.underflows > 0 and fp32.underflows == 0
    kahan = train("bfloat16_kahan", **SMALL)
    assert kahan.lost_updates > 0  # counted even though the compensation keeps them


def test_loss_scaling_skips_overflowing_steps():
    """A scale of 2**40 overflows float16 gradients: the step is skipped, the scale halves."""
    recipe = Recipe("huge_scale", "mixed float16 with an absurd initial scale",
                    autocast="fp16", scaler={"init_scale": 2.0 ** 40})
    result = train(recipe, **SMALL)
    assert result.skipped_steps == 4 and result.final_scale == 2.0 ** 36
    assert list(result.scales) == [2.0 ** 40, 2.0 ** 39, 2.0 ** 38, 2.0 ** 37]
    assert np.all(result.hashes == result.hashes[0])  # no step changed the weights


def test_param_hash_sees_format_and_bits():
    x = mpgrad.tensor([1.0, 2.0], dtype="fp16")
    assert param_hash(x) == param_hash(mpgrad.tensor([1.0, 2.0], dtype="fp16"))
    assert param_hash(x) != param_hash(mpgrad.tensor([1.0, 2.0], dtype="bf16"))
    assert param_hash(x) != param_hash(mpgrad.tensor([1.0, -2.0], dtype="fp16"))


def test_data():
    d = synthetic()
    assert d.features == 64 and d.classes == 10 and len(d.y_train) == 1600
    assert np.array_equal(d.x_train, synthetic().x_train)
    assert load("auto").name in ("digits", "synthetic")
    with pytest.raises(ValueError, match="unknown dataset"):
        load("mnist")


def test_digits_dataset_when_scikit_learn_is_installed():
    pytest.importorskip("sklearn")
    d = load("digits")
    assert d.name == "digits" and d.features == 64 and d.classes == 10
    assert len(d.y_train) + len(d.y_test) == 1797 and d.x_train.max() <= 1.0
    assert load("auto").name == "digits"


@pytest.mark.parametrize("suffix, magic", [(".png", b"\x89PNG\r\n\x1a\n"), (".pdf", b"%PDF"),
                                           (".svg", b"<?xml")])
def test_plot_when_matplotlib_is_installed(tmp_path, suffix, magic):
    pytest.importorskip("matplotlib")
    image = tmp_path / f"loss{suffix}"
    assert main(["compare", "--recipes", "fp32,pure_bfloat16", "--steps", "2", "--hidden",
                 "8", "--data", "synthetic", "--plot", str(image)]) == 0
    assert image.read_bytes().startswith(magic) and os.listdir(tmp_path) == [image.name]


def test_cli_train_and_compare(tmp_path, capsys):
    out = tmp_path / "run.npz"
    assert main(["train", "--recipe", "fp32", "--steps", "3", "--batch-size", "8",
                 "--hidden", "16", "--data", "synthetic", "--out", str(out)]) == 0
    run = np.load(out, allow_pickle=False)
    assert run["hashes"].shape == (3, 4) and str(run["recipe"]) == "fp32"
    assert main(["compare", "--recipes", "fp32,pure_bfloat16", "--steps", "2", "--hidden",
                 "8", "--data", "synthetic", "--out", str(tmp_path / "cmp")]) == 0
    table = capsys.readouterr().out
    assert "pure_bfloat16" in table and "lost updates" in table
    assert sorted(os.listdir(tmp_path / "cmp")) == ["fp32.npz", "pure_bfloat16.npz"]
    with pytest.raises(SystemExit):
        main(["compare", "--recipes", "fp32,nope", "--steps", "2"])


def test_save_is_atomic_and_writes_the_path_given(tmp_path, monkeypatch, interrupted_savez):
    run = train("fp32", **SMALL)
    run.save(tmp_path / "run")  # no .npz appended
    assert os.listdir(tmp_path) == ["run"]
    with np.load(tmp_path / "run", allow_pickle=False) as saved:
        assert np.array_equal(saved["hashes"], run.hashes) and str(saved["recipe"]) == "fp32"
    with pytest.raises(ValueError, match="is a directory"):
        run.save(tmp_path)
    before = (tmp_path / "run").read_bytes()
    monkeypatch.setattr(np, "savez", interrupted_savez)
    for path in (tmp_path / "run", tmp_path / "new.npz"):
        with pytest.raises(KeyboardInterrupt):
            run.save(path)
        # the old file is whole, no new or temporary file is left
        assert os.listdir(tmp_path) == ["run"] and (tmp_path / "run").read_bytes() == before


def _no_work(*args, **kwds):
    raise AssertionError("the command started working before checking its options")


BAD_OPTIONS = [
    "train --steps 0", "train --steps -3", "train --steps 1.5", "train --batch-size 0",
    "train --hidden 0", "compare --hidden -1", "train --lr inf", "train --lr=-inf",
    "train --lr nan", "train --lr -0.1", "train --lr x", "train --momentum inf",
    "train --momentum nan", "compare --momentum -1", "train --seed -1", "train --data mnist",
    "train --recipe nope", "compare --recipes nope", "compare --recipes fp32,nope",
    "compare --recipes ''", "compare --recipes ,", "compare --recipes fp32,fp32",
    "train --out {tmp}/missing/run.npz", "train --out {tmp}/file/run.npz", "train --out {tmp}",
    "compare --out {tmp}/file", "compare --out {tmp}/file/sub", "train --plot {tmp}/loss.jpg",
    "train --plot {tmp}/loss", "train --plot {tmp}/missing/loss.png",
    "compare --plot {tmp}/file/loss.png", "train --plot {tmp}",
]


@pytest.mark.parametrize("options", BAD_OPTIONS)
def test_cli_refuses_bad_options_before_any_work(tmp_path, monkeypatch, capsys, options):
    (tmp_path / "file").write_text("not a folder")
    monkeypatch.setattr(cli, "load", _no_work)
    monkeypatch.setattr(cli, "train", functools.wraps(train)(_no_work))  # keeps the defaults
    argv = [a.strip("'").format(tmp=tmp_path) for a in options.split()]
    with pytest.raises(SystemExit) as stop:
        main(argv)
    assert stop.value.code == 2  # argparse's usage error
    err = capsys.readouterr().err
    assert f"mpgrad {argv[0]}: error: " in err and "usage" in err
    assert sorted(os.listdir(tmp_path)) == ["file"]  # nothing was created


@pytest.mark.skipif(os.name != "posix" or os.geteuid() == 0,
                    reason="root may write into a read-only folder")
def test_cli_refuses_a_read_only_folder(tmp_path, monkeypatch):
    monkeypatch.setattr(cli, "train", functools.wraps(train)(_no_work))
    folder = tmp_path / "ro"
    folder.mkdir(mode=0o500)
    for argv in (["train", "--out", str(folder / "run.npz")],
                 ["train", "--plot", str(folder / "loss.png")],
                 ["compare", "--out", str(folder / "sub")]):
        with pytest.raises(SystemExit):
            main(argv)


def test_a_diverging_run_says_so_in_the_table(capsys):
    """lr 1e30 makes the loss NaN after the first update: the final loss column shows NaN
    and the first step whose loss was not finite (a finite mean of the others would hide it)."""
    run = train("fp32", **{**SMALL, "lr": 1e30})
    bad = [i + 1 for i, v in enumerate(run.losses.tolist()) if not np.isfinite(v)]
    assert bad and bad[0] == run.first_nonfinite()
    cell = results_table([run]).splitlines()[2].split("  ")[1:]
    first = f"{run.losses[bad[0] - 1]:.4f}"
    assert " ".join(cell).strip().startswith(f"nan (first {first} at step {bad[0]})")
    assert main(["train", "--recipe", "fp32", "--lr", "1e30", "--steps", "3", "--hidden", "8",
                 "--batch-size", "16", "--data", "synthetic"]) == 0
    assert "(first nan at step 2)" in capsys.readouterr().out
    fine = train("fp32", **SMALL)  # a finite run: the plain mean of the last 20 losses
    assert fine.first_nonfinite() is None
    assert results_table([fine]).splitlines()[2].split()[1] == f"{np.mean(fine.losses):.4f}"


def test_cli_compare_out_creates_nested_folder(tmp_path):
    out = tmp_path / "a" / "b"
    assert main(["compare", "--recipes", "fp32", "--steps", "1", "--hidden", "4",
                 "--data", "synthetic", "--out", str(out)]) == 0
    assert os.listdir(out) == ["fp32.npz"]


def test_results_table_lists_every_run():
    runs = [train(n, **SMALL) for n in ("fp32", "mixed_float16")]
    lines = results_table(runs).splitlines()
    assert len(lines) == 4 and lines[2].startswith("fp32") and "65536" in lines[3]


def _hashes_in_subprocess(tmp_path, threads: str) -> np.ndarray:
    out = tmp_path / f"run{threads}.npz"
    env = {**os.environ, "OPENBLAS_NUM_THREADS": threads, "OMP_NUM_THREADS": threads}
    subprocess.run([sys.executable, "-m", "mpgrad", "train", "--recipe", "mixed_float16",
                    "--steps", "5", "--batch-size", "64", "--data", "synthetic",
                    "--out", str(out)], check=True, env=env, capture_output=True)
    return np.load(out)["hashes"]


def test_same_parameter_hashes_in_fresh_processes_with_1_and_2_blas_threads(tmp_path):
    one, two = _hashes_in_subprocess(tmp_path, "1"), _hashes_in_subprocess(tmp_path, "2")
    assert one.shape == (5, 4) and np.array_equal(one, two)
    assert len({tuple(row) for row in one}) == 5  # every step changed the parameters


@pytest.mark.slow
def test_the_readme_demo_shows_each_ingredient(tmp_path, capsys):
    """`python -m mpgrad compare` (the README's command): docs/training.md's claims. The
    naive float16 run breaks down at once, mixed_float16 stays within 1% of fp32, pure
    bfloat16 is 15% worse or more and stochastic and Kahan updates recover it."""
    assert main(["compare", "--out", str(tmp_path)]) == 0
    runs = {name: np.load(tmp_path / f"{name}.npz") for name in DEFAULT_RECIPES}
    loss = {name: float(np.mean(r["losses"][-20:])) for name, r in runs.items()}
    acc = {name: float(r["accuracy"]) for name, r in runs.items()}
    naive = runs["seed_naive_fp16"]["losses"]
    assert not np.isfinite(naive[1]) and acc["seed_naive_fp16"] < acc["fp32"] - 0.10
    for name in ("mixed_float16", "mixed_bfloat16"):
        assert abs(loss[name] - loss["fp32"]) < 0.01 * loss["fp32"]
    assert loss["pure_bfloat16"] > 1.15 * loss["fp32"]
    for name in ("bfloat16_stochastic", "bfloat16_kahan"):
        assert loss[name] < 1.03 * loss["fp32"]
    assert runs["mixed_float16"]["final_scale"] == 2.0 ** 16  # scaled, never overflowed
    assert runs["mixed_float16"]["skipped_steps"] == 0

def test_why_the_naive_float16_adam_run_breaks_down():
    """docs/training.md's explanation, measured on the demo's first step: float16 holds
    neither Adam's eps (1e-8 rounds to 0) nor most (1 - beta2) * g**2, so most denominators
    are 0 and the first update is inf; the first non-finite op is the optimizer's division."""
    from mpgrad import diagnostics
    from mpgrad.demo.train import Trainer
    data = synthetic()
    run = Trainer("seed_naive_fp16", data.features, data.classes)
    with diagnostics.track(run.model) as report:
        run.step(data.x_train[:128], data.y_train[:128])
    assert mpgrad.round_to(np.array(1e-8), "float16") == 0
    g = np.concatenate([p.grad.to_float64().ravel() for p in run.model.parameters()])
    v = np.concatenate([run.opt.state[p]["exp_avg_sq"].to_float64().ravel()
                        for p in run.model.parameters()])
    assert np.all(g != 0) and np.mean(v == 0) > 0.8
    w = np.concatenate([p.to_float64().ravel() for p in run.model.parameters()])
    assert np.array_equal(~np.isfinite(w), v == 0)  # exactly those weights became inf/NaN
    bad = report.first_nonfinite
    assert (bad.op, bad.phase, bad.module) == ("div", "forward", "")
    assert bad.input_ranges[1][0] == 0  # a zero denominator
    fine = Trainer("mixed_float16", data.features, data.classes)  # float32 optimizer state
    fine.step(data.x_train[:128], data.y_train[:128])
    assert all(np.isfinite(p.to_float64()).all() for p in fine.model.parameters())


def test_the_optimizer_option():
    sgd = train("fp32", **SMALL)
    adam = train("fp32", **{**SMALL, "optimizer": "adam", "lr": 1e-3})
    assert not np.array_equal(sgd.hashes, adam.hashes)
    with pytest.raises(ValueError, match="momentum is SGD's"):
        train("fp32", **{**SMALL, "optimizer": "adam", "momentum": 0.9})
    with pytest.raises(ValueError, match="optimizer must be one of adam, sgd"):
        train("fp32", **{**SMALL, "optimizer": "lamb"})


def test_diagnose_records_per_parameter_lost_updates_and_a_report():
    run = train("pure_bfloat16", **SMALL, diagnose=True)
    assert run.lost_by_step.shape == (4, 4)
    assert run.lost_by_step.sum() == run.lost_updates
    assert run.report is not None and run.report.counts
    assert run.grad_histogram.total > 0 and run.grad_below.shape == (4,)
    assert train("pure_bfloat16", **SMALL).report is None  # off unless asked


def test_train_diagnose_on_the_command_line(tmp_path, capsys):
    pytest.importorskip("matplotlib")
    png = tmp_path / "d.png"
    assert main(["train", "--recipe", "seed_naive_fp16", "--steps", "3", "--hidden", "8",
                 "--diagnose", "--plot", str(png)]) == 0
    out = capsys.readouterr().out
    assert "lost updates" in out and "0.weight" in out and "loss scale 1 at step 1" in out
    assert "first produced by div (forward, float16)" in out
    assert png.stat().st_size > 0
