"""Evaluation and sampling on 2 ranks (CPU, gloo) give what one process gives: the same results.json,
the same sample batches bit for bit, NLL batches resumed across world sizes; rank 0 alone writes."""
import json
import shutil

import numpy as np
import pytest

from score_toolkit import distributed
from tests.helpers import run_main, run_ranks

# Each test trains and evaluates through main.py on 1 and 2 ranks in subprocesses.
pytestmark = pytest.mark.slow

# The swiss-roll MLP after 2 steps; 4 NLL batches of 4 points and 4 sample batches of 4: 2 per rank.
ARGS = ["--config.training.n_iters=2", "--config.training.batch_size=16", "--config.training.checkpoint_freq=2",
        "--config.training.snapshot_freq=100000", "--config.model.hidden=32", "--config.data.n_train=256",
        "--config.data.n_test=64", "--config.sampling.N=10", "--config.sampling.n_samples=16",
        "--config.sampling.batch_size=4", "--config.eval.n_samples=16", "--config.eval.n_nll=16",
        "--config.eval.batch_size=4", "--config.eval.nll_rtol=1e-3", "--config.eval.nll_atol=1e-3",
        "--config.num_threads=1"]
SAMPLES = "samples_pc_ckpt2"


def _main_args(mode: str, workdir, eval_folder: str = "eval", *extra):
    return ["--mode", mode, "--workdir", str(workdir), f"--eval_folder={eval_folder}", *ARGS, *extra]


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    """A trained workdir evaluated by one process (eval folder "one"), and copies of it evaluated by
    2 ranks that share no folder (node0, node1: each rank its own --workdir)."""
    root = tmp_path_factory.mktemp("eval")
    run_main(_main_args("train", root / "train"))
    one = run_main(_main_args("eval", root / "train", "one"))
    for r in (0, 1):
        shutil.copytree(root / "train", root / f"node{r}", ignore=shutil.ignore_patterns("one"))
    two = run_ranks([_main_args("eval", root / f"node{r}") for r in (0, 1)])
    return {"root": root, "one": root / "train" / "one", "node0": root / "node0" / "eval",
            "node1": root / "node1" / "eval", "stdout": [one.stdout.decode()] + [p.stdout.decode() for p in two]}


def _batches(folder) -> dict:
    """{file name: (samples, settings)} of a samples folder."""
    out = {}
    for path in sorted(folder.glob("batch_*.npz")):
        with np.load(path) as f:
            out[path.name] = (f["samples"], str(f["settings"]))
    return out


def _assert_same_batches(a: dict, b: dict) -> None:
    assert sorted(a) == sorted(b) == [f"batch_{i}.npz" for i in range(4)]
    for name in a:
        assert np.array_equal(a[name][0], b[name][0]) and a[name][1] == b[name][1], name


def test_eval_on_two_ranks_without_a_shared_folder_equals_one_process(runs):
    one = json.loads((runs["one"] / "results.json").read_text())
    two = json.loads((runs["node0"] / "results.json").read_text())
    assert {"heldout_loss", "nll_nats", "nll_bits_per_dim", "sliced_wasserstein", "mmd_rbf"} <= set(one)
    assert two == one  # the same batches with the same seeds, summed in the same order
    # Each rank drew its own batches; rank 0 measured all of them, gathered through the process group.
    node0, node1 = _batches(runs["node0"] / SAMPLES), _batches(runs["node1"] / SAMPLES)
    assert sorted(node0) == ["batch_0.npz", "batch_2.npz"] and sorted(node1) == ["batch_1.npz", "batch_3.npz"]
    _assert_same_batches({**node0, **node1}, _batches(runs["one"] / SAMPLES))


def test_only_rank_0_writes_results_and_pictures(runs):
    assert (runs["node0"] / "results.json").exists() and (runs["node0"] / (SAMPLES + ".png")).exists()
    assert sorted(p.name for p in runs["node1"].iterdir()) == ["nll_batches.rank1.jsonl", SAMPLES]
    assert sorted(p.name for p in runs["node0"].glob("nll_batches*")) == ["nll_batches.rank0.jsonl"]
    assert "nll_bits_per_dim" in runs["stdout"][1] and "nll_bits_per_dim" not in runs["stdout"][2]


def test_sample_mode_on_two_ranks_writes_the_samples_of_one_process(runs):
    workdir = runs["root"] / "train"
    run_main(_main_args("sample", workdir, "two"), nproc=2)
    _assert_same_batches(_batches(workdir / "two" / SAMPLES), _batches(runs["one"] / SAMPLES))
    assert (workdir / "two" / (SAMPLES + ".png")).exists()


def test_one_process_finishes_the_nll_batches_of_two_ranks(runs):
    """Rank 0's log (batches 0, 2) and the first line of rank 1's (batch 1): one process computes batch 3 alone."""
    workdir = runs["root"] / "train"
    (workdir / "resume").mkdir()
    shutil.copy(runs["node0"] / "nll_batches.rank0.jsonl", workdir / "resume")
    first = (runs["node1"] / "nll_batches.rank1.jsonl").read_text().splitlines()[0]
    (workdir / "resume" / "nll_batches.rank1.jsonl").write_text(first + "\n")
    run_main(_main_args("eval", workdir, "resume", "--config.eval.enable_loss=False",
                        "--config.eval.enable_samples=False"))
    computed = [json.loads(line)["batch"] for line in (workdir / "resume" / "nll_batches.jsonl").open()]
    assert computed == [3]
    one = json.loads((runs["one"] / "results.json").read_text())
    resumed = json.loads((workdir / "resume" / "results.json").read_text())
    assert {k: resumed[k] for k in ("nll_nats", "nll_bits_per_dim", "nfe_mean")} == \
           {k: one[k] for k in ("nll_nats", "nll_bits_per_dim", "nfe_mean")}


def test_without_a_process_group_one_process_does_every_batch_in_one_file(tmp_path):
    assert distributed.my_batches(5) == range(5) and distributed.gather_dict({1: "a"}) == {1: "a"}
    path = str(tmp_path / "nll_batches.jsonl")
    assert distributed.rank_path(path) == path
    for name in ("nll_batches.jsonl", "nll_batches.rank0.jsonl", "nll_batches.rank12.jsonl",
                 "nll_batches.rankx.jsonl", "nll_batches.jsonl.tmp", "other.jsonl"):
        (tmp_path / name).write_text("")
    assert distributed.rank_files(path) == [str(tmp_path / name) for name in (
        "nll_batches.jsonl", "nll_batches.rank0.jsonl", "nll_batches.rank12.jsonl")]


def test_a_fitted_grid_is_fitted_by_rank_0_and_used_by_every_rank(runs):
    """sampling.grid = "fitted" on 2 ranks without a shared folder: rank 0 fits and keeps the grid,
    rank 1 receives it, and together they draw one process's samples."""
    root, folder = runs["root"], "samples_unipc_ckpt2"
    fitted = ["--config.sampling.method=unipc", "--config.sampling.steps=4", "--config.sampling.grid=fitted",
              "--config.sampling.fit_pilot=64", "--config.sampling.fit_evals=10"]
    run_main(_main_args("sample", root / "train", "fit", *fitted))
    run_ranks([_main_args("sample", root / f"node{r}", "fit", *fitted) for r in (0, 1)])
    one = root / "train" / "fit" / folder
    assert (root / "node0" / "fit" / folder / "fitted_grid.json").read_text() == (one / "fitted_grid.json").read_text()
    assert not (root / "node1" / "fit" / folder / "fitted_grid.json").exists()
    _assert_same_batches({**_batches(root / "node0" / "fit" / folder), **_batches(root / "node1" / "fit" / folder)},
                         _batches(one))
