"""The command line as a newcomer meets it: one- or two-line errors without tracebacks, hints that
work when pasted, nothing written before every input is checked, help that names the configs."""
import ast
import glob
import os
import shlex
import signal
import subprocess
import sys
import time

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
TINY = ["--config.training.n_iters=10", "--config.training.checkpoint_freq=10", "--config.training.snapshot_freq=10",
        "--config.training.batch_size=32", "--config.data.n_train=200", "--config.data.n_test=50",
        "--config.model.hidden=16", "--config.model.num_layers=1", "--config.sampling.N=5",
        "--config.sampling.n_samples=20", "--config.sampling.batch_size=20"]


def cli(*args, cwd=ROOT, timeout=300):
    """main.py as typed in the clone: `python main.py ...`, run from `cwd`."""
    main = "main.py" if cwd == ROOT else os.path.join(ROOT, "main.py")
    return subprocess.run([sys.executable, main, *args], capture_output=True, text=True, cwd=cwd, timeout=timeout)


def paste(hint: str, cwd=ROOT):
    """Run a command the CLI printed, as a shell would after pasting it."""
    words = shlex.split(hint)
    assert words[:2] == ["python", "main.py"], hint
    return subprocess.run([sys.executable, *words[1:]], capture_output=True, text=True, cwd=cwd, timeout=300)


def config_files():
    """(path, first docstring line) of every configs/*.py that defines get_config."""
    for path in sorted(glob.glob(os.path.join(ROOT, "configs", "*.py"))):
        tree = ast.parse(open(path).read())
        if any(getattr(n, "name", "") == "get_config" for n in tree.body):
            yield path, ast.get_docstring(tree).split("\n")[0]


def assert_clean_error(r, status=2):
    """`error: ...` on stderr, at most two lines, no traceback."""
    lines = r.stderr.strip().splitlines()
    assert r.returncode == status, r.stderr
    assert "Traceback" not in r.stderr and 1 <= len(lines) <= 2 and lines[0].startswith("error: "), r.stderr
    return lines


@pytest.mark.parametrize("args, first, second", [
    (["--config.training.lrr=1"], "error: config.training.lrr: no such key; did you mean config.optim.lr or config.autoencoder.lr?",
     "  all keys: python main.py --mode config --config configs/swissroll_vp_mlp.py"),
    (["--config.trainin.n_iters=5"], "error: config.trainin.n_iters: no such key; did you mean config.training.n_iters?",
     "  all keys: python main.py --mode config --config configs/swissroll_vp_mlp.py"),
    (["--config.training.batch_size=abc"],
     "error: config.training.batch_size = 'abc' is not allowed: must be an integer, like the config's 512", None),
    (["--config=configs/cifar10_ve_ncsnpp.py:huge"],
     "error: --config configs/cifar10_ve_ncsnpp.py:huge: config argument (width) must be one of ['paper', 'small'], "
     "got 'huge'", None),
    (["--mode", "trian"], "error: --mode=trian: must be one of train, distill, autoencoder, eval, sample, cascade, export, classifier, stats, noisy_classifier, config; "
     "did you mean --mode=train?", None),
    (["--workdr=x"], "error: Unknown command line flag 'workdr'. did you mean --workdir?", None),
])
def test_config_and_flag_errors_are_one_or_two_lines(args, first, second, tmp_path):
    r = cli(*args, "--workdir", str(tmp_path / "w"))
    assert assert_clean_error(r) == [first] + ([second] if second else [])
    assert not (tmp_path / "w").exists()


def test_missing_config_file_lists_the_config_files():
    (line,) = assert_clean_error(cli("--config", "configs/swissroll.py"))
    names = [os.path.basename(p) for p, _ in config_files()]
    assert len(names) >= 10 and line.startswith("error: --config configs/swissroll.py: no such file; the config files in configs/ are: ")
    assert all(n in line for n in names) and "default.py" not in line


@pytest.mark.slow
def test_impossible_value_names_key_value_and_allowed(tmp_path):
    (line,) = assert_clean_error(cli("--config.optim.lr=-1", "--workdir", str(tmp_path / "w")))
    assert line == "error: config.optim.lr = -1.0 is not allowed: must be a number > 0"
    assert not (tmp_path / "w").exists()


def test_verbose_brings_the_traceback_back():
    r = cli("--config.training.lrr=1", "--verbose")
    assert r.returncode == 2 and "Traceback" in r.stderr
    assert r.stderr.strip().splitlines()[-2] == "error: config.training.lrr: no such key; did you mean config.optim.lr or config.autoencoder.lr?"


def test_the_printed_key_listing_command_works():
    hint = assert_clean_error(cli("--config", "configs/gmm_vp_mlp.py", "--config.training.lrr=1"))[1]
    r = paste(hint.split("all keys: ")[1])
    assert r.returncode == 0 and "config.optim.lr = 0.002" in r.stdout and "config.data.name = 'gmm'" in r.stdout


def test_help_names_every_config_file_with_its_description():
    r = cli("--help")
    assert r.returncode == 0 and "--mode" in r.stdout and "config            print the config's keys" in r.stdout
    for path, first in config_files():
        assert f"{os.path.basename(path)}  " in r.stdout and first in r.stdout, path


def test_mode_config_prints_resolved_keys_and_writes_nothing(tmp_path):
    r = cli("--mode", "config", "--config", os.path.join(ROOT, "configs/swissroll_ve_mlp.py"),
            "--config.training.n_iters=7", cwd=tmp_path)
    assert r.returncode == 0, r.stderr
    lines = r.stdout.splitlines()
    assert "config.training.n_iters = 7" in lines and "config.sde.name = 'vesde'" in lines
    assert "config.model.embedding_type = 'fourier'" in lines and len(lines) > 60
    assert os.listdir(tmp_path) == []


@pytest.mark.slow
def test_missing_image_data_is_reported_before_anything_is_written(tmp_path):
    workdir = tmp_path / "w"
    (line,) = assert_clean_error(cli("--config", "configs/fashionmnist_vp_ddpmpp.py",
                                     f"--config.data.root={tmp_path}/absent", "--workdir", str(workdir)))
    assert f"no IDX file {tmp_path}/absent/train-images-idx3-ubyte.gz" in line and "config.data.root" in line
    assert os.listdir(tmp_path) == []


@pytest.mark.slow
def test_eval_on_a_missing_workdir_creates_nothing_and_its_hint_works(tmp_path):
    """The issue's path: a README command on a fresh clone, the hint pasted, the command again."""
    workdir = str(tmp_path / "ve")
    (line,) = assert_clean_error(cli("--mode", "eval", "--config", "configs/swissroll_ve_mlp.py", *TINY,
                                     "--workdir", workdir))
    assert line.startswith(f"error: no checkpoint (the workdir {workdir} does not exist); train first: ")
    assert os.listdir(tmp_path) == []
    hint = line.split("train first: ")[1]
    assert "--mode train --config configs/swissroll_ve_mlp.py" in hint and hint.endswith(f"--workdir {workdir}")
    r = paste(hint)
    assert r.returncode == 0, r.stderr
    r = cli("--mode", "sample", "--config", "configs/swissroll_ve_mlp.py", *TINY, "--workdir", workdir)
    assert r.returncode == 0, r.stderr
    out = os.listdir(os.path.join(workdir, "eval"))
    assert sorted(out) == ["samples_pc_ckpt10", "samples_pc_ckpt10.png"]  # saved once: batches and a picture
    names = sorted(os.listdir(workdir))
    assert "log.txt" in names and not any(n.startswith("log.") and n != "log.txt" for n in names)
    log = open(os.path.join(workdir, "log.txt")).read()
    assert "--mode train" in log and "--mode sample" in log and "wrote 20 samples" in log


@pytest.mark.slow
def test_sigterm_prints_one_clean_line(tmp_path):
    workdir = tmp_path / "w"
    args = [sys.executable, "main.py", "--workdir", str(workdir), "--config.training.n_iters=100000",
            "--config.training.log_freq=5", "--config.model.hidden=16", "--config.data.n_train=200"]
    proc = subprocess.Popen(args, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True, cwd=ROOT)
    metrics, deadline = workdir / "metrics.jsonl", time.time() + 120
    while not (metrics.exists() and metrics.stat().st_size) and time.time() < deadline and proc.poll() is None:
        time.sleep(0.01)
    proc.send_signal(signal.SIGTERM)
    _, err = proc.communicate(timeout=120)
    assert proc.returncode == 128 + signal.SIGTERM
    assert "Traceback" not in err and "\r" not in err  # no progress bar when stderr is not a terminal
    assert err.strip().splitlines()[-1].split(" ", 1)[1].startswith("SIGTERM: training stopped after step ")
