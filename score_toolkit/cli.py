"""Command line: train, evaluate or sample a score-based model from an ml_collections config.

    python main.py --mode train                 # the default config into workdirs/<config name>
    python main.py --mode eval                  # loss, NLL, samples and their quality
    python main.py --mode sample --config configs/swissroll_ve_mlp.py --config.sampling.method=ode
    python main.py --mode config --config configs/gmm_vp_mlp.py    # every key and its value

`score-toolkit` (the console script) is the same command. A `--config` path that does not exist
relative to the current folder is looked up among the installed `configs`, so the README's
commands also work outside a clone.

Every input is checked before anything is written. A mistake the user can fix (a flag, a config
key or value, a missing file, a workdir made with another config) is printed as `error: <message>`
on stderr, at most two lines, with no traceback (`--verbose` adds it), and the exit status is 2
(1 for a training loss that became NaN). Any other exception keeps its traceback (status 1). A run
stopped by Ctrl-C or SIGTERM prints one line and exits with 128 + the signal's number (130, 143).
Runs that use a workdir log to <workdir>/log.txt as well as to stderr.
"""
import difflib
import logging
import os
import re
import shlex
import signal
import sys
import traceback
from typing import List, Optional

from absl import flags
from ml_collections import config_flags

from score_toolkit.config_files import (DEFAULT_CONFIG, check_override_keys, config_files, display_path,
                                        format_config, load_config, resolve_config_path)
from score_toolkit.config_keys import config_keys
from score_toolkit.errors import MissingInputError, UsageError, UserError

MODES = {
    "train": "train into the workdir; run it again to resume from the newest checkpoint",
    "distill": "train a few-step student of config.distill.teacher (progressive distillation, consistency "
               "distillation or training) into the workdir; run it again to resume",
    "autoencoder": "train the autoencoder of latent diffusion (config.autoencoder) on config.data into the workdir, "
                   "then its PSNR, reconstruction FID and latent scale -> <workdir>/export/autoencoder_step<N>.pt, "
                   "for config.latent.autoencoder; run it again to resume",
    "eval": "held-out loss, NLL (nats, bits/dim), samples and their quality -> <workdir>/<eval_folder>/results.json",
    "sample": "config.sampling.n_samples samples -> <workdir>/<eval_folder>/samples_<method>_ckpt<step>/ and .png",
    "cascade": "a cascade of workdirs (config.sampling.cascade_from: the stage below, down to a base model): every "
               "stage's samples -> <workdir>/<eval_folder>/cascade_ckpt<step>/stage_<i>/",
    "export": "the newest checkpoint's EMA weights alone -> <workdir>/export/ema_step<step>.pt, "
              "for --config.eval.weights_path",
    "classifier": "image data: train the feature classifier into config.eval.feature_path",
    "stats": "image data: the training images' feature statistics -> config.eval.stats_path",
    "noisy_classifier": "labelled data: train a noise-conditional classifier p(y | x_t, t) for classifier "
                        "guidance -> config.sampling.classifier_path",
    "config": "print the config's keys and values (command-line overrides applied); writes nothing",
}
HELP_ARGS = ("-h", "--help", "-help", "--helpshort", "--helpfull", "-?")
EXIT_USAGE = 2

FLAGS = flags.FLAGS
# The arguments ml_collections reads the --config.<key> overrides from: filled by `_parse` once they
# were checked, so that importing this module never applies (or fails on) sys.argv's overrides.
_ARGV: List[str] = ["main.py"]
config_flags.DEFINE_config_file("config", DEFAULT_CONFIG, "Config file, configs/<name>.py[:argument]; set any key "
                                "with --config.<key>=<value> (e.g. --config.training.n_iters=2000).", lock_config=True,
                                sys_argv=_ARGV)
flags.DEFINE_string("workdir", None, "Run folder (default: workdirs/<config file name>).")
flags.DEFINE_enum("mode", "train", list(MODES), "What to run (see the modes above).")
flags.DEFINE_string("eval_folder", "eval", "Folder under the workdir for evaluation and sampling outputs.")
flags.DEFINE_bool("verbose", False, "On an error, print its traceback too.")


class Command:
    """The command as typed, to print hints that work when pasted: its program, config file
    (resolved) and --config.<key> overrides."""

    def __init__(self, argv: List[str], config: str):
        prog = argv[0] if argv else "main.py"
        self.prog = f"python {shlex.quote(prog)}" if prog.endswith(".py") else os.path.basename(prog)
        self.config, self.overrides = config, _override_args(argv)

    def line(self, mode: str, workdir: Optional[str] = None, overrides: bool = True) -> str:
        words = [self.prog, "--mode", mode, "--config", display_path(self.config)]
        words += (self.overrides if overrides else []) + (["--workdir", workdir] if workdir else [])
        return " ".join(shlex.quote(w) if i else w for i, w in enumerate(words))


# --------------------------------------------------------------------------- argv


def _override_args(argv: List[str]) -> List[str]:
    """The --config.<key> arguments of argv (with a value given as the next argument)."""
    out, i = [], 1
    while i < len(argv):
        if re.match(r"^--?(no)?config\.", argv[i]):
            out.append(argv[i])
            if "=" not in argv[i] and i + 1 < len(argv) and not argv[i + 1].startswith("-"):
                out.append(argv[i + 1])
                i += 1
        i += 1
    return out


def _resolve_argv(argv: List[str]) -> List[str]:
    """argv with its --config path resolved (resolve_config_path), or with the default config
    named first, so that ml_collections reads the --config.<key> overrides against it."""
    if not any(a == "--config" or a.startswith("--config=") for a in argv[1:]):
        argv = argv[:1] + ["--config=" + DEFAULT_CONFIG] + argv[1:]
    out, i = list(argv), 1
    while i < len(out):
        if out[i].startswith("--config="):
            out[i] = "--config=" + resolve_config_path(out[i][len("--config="):])
        elif out[i] == "--config" and i + 1 < len(out):
            out[i + 1] = resolve_config_path(out[i + 1])
        i += 1
    return out


def _config_arg(argv: List[str]) -> str:
    for i, arg in enumerate(argv):
        if arg.startswith("--config="):
            return arg[len("--config="):]
        if arg == "--config" and i + 1 < len(argv):
            return argv[i + 1]
    return DEFAULT_CONFIG


def _flag_error_message(e: Exception, config) -> str:
    msg = str(e).split("\n")[0]
    m = re.match(r"flag --config\.([\w.]+)=(.*?): (.*)", msg)
    if m:
        key, value, why = m.groups()
        current = config_keys(config).get(key)
        kinds = {bool: "true or false", int: "an integer", float: "a number", str: "a string", tuple: "a tuple"}
        kind = kinds.get(type(current), f"a {type(current).__name__} ({why})")
        return f"config.{key} = {value!r} is not allowed: must be {kind}, like the config's {current!r}"
    m = re.match(r"Found (\S+) in argv before a value for --config", msg)
    if m:
        return f"{m.group(1)} comes before --config: name the config file first"
    m = re.match(r"flag --mode=(\S*): value should be one of", msg)
    if m:
        close = difflib.get_close_matches(m.group(1), list(MODES), n=1)
        return f"--mode={m.group(1)}: must be one of {', '.join(MODES)}" + (f"; did you mean --mode={close[0]}?" if close else "")
    return msg.replace("Did you mean: ", "did you mean --").rstrip(" ?") + ("?" if "Did you mean" in msg else "")


def usage() -> str:
    width = max(map(len, MODES)) + 1
    modes = "\n".join(f"  {name:<{width}} {text}" for name, text in MODES.items())
    flag_help = "\n".join(f"  --{f.name:<11} {f.help}" for f in FLAGS.get_flags_for_module(__name__))
    files = config_files()
    width = max(len(n) for n, _ in files)
    listing = "\n".join(f"  {name:<{width}}  {doc}" for name, doc in files)
    default = os.path.basename(DEFAULT_CONFIG)
    return (f"usage: python main.py --mode MODE [--config FILE[:ARG]] [--config.KEY=VALUE ...] [--workdir DIR]\n\n"
            f"modes:\n{modes}\n\nflags:\n{flag_help}\n\n"
            f"config files (--config configs/<file>; default {default}):\n{listing}\n\n"
            f"a config's keys and values: python main.py --mode config --config configs/<file>\n"
            f"errors: 'error: <message>' on stderr, exit status 2; see README.md")


# --------------------------------------------------------------------------- running


_HANDLERS: List[logging.Handler] = []  # the handlers this module added to the root logger
_LOCKS: list = []  # the workdir locks this process holds


def _setup_logging() -> None:
    """INFO and above to stderr, as `HH:MM:SS message`."""
    root = logging.getLogger()
    for handler in _HANDLERS:
        root.removeHandler(handler)
        handler.close()
    _HANDLERS.clear()
    root.setLevel(logging.INFO)
    _add_handler(logging.StreamHandler(sys.stderr), "%(asctime)s %(message)s", "%H:%M:%S")


def _log_to_file(workdir: str) -> None:
    """Append this run's log to <workdir>/log.txt (the workdir exists and the run can start)."""
    _add_handler(logging.FileHandler(os.path.join(workdir, "log.txt")), "%(asctime)s %(levelname)s %(message)s",
                 "%Y-%m-%d %H:%M:%S")


def _add_handler(handler: logging.Handler, fmt: str, datefmt: str) -> None:
    handler.setFormatter(logging.Formatter(fmt, datefmt))
    logging.getLogger().addHandler(handler)
    _HANDLERS.append(handler)


def _log_to_file_only(message: str) -> None:
    """A line for log.txt (when this run writes one) that stderr gets in another form."""
    record = logging.makeLogRecord({"msg": message, "levelno": logging.ERROR, "levelname": "ERROR"})
    for handler in _HANDLERS:
        if isinstance(handler, logging.FileHandler):
            handler.handle(record)


def main(command: Command, argv: List[str]) -> int:
    config, mode = FLAGS.config, FLAGS.mode
    if mode == "config":
        try:
            print(format_config(config), flush=True)
        except BrokenPipeError:  # `| head`: the reader has what it wanted
            os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return 0
    from score_toolkit import checkpoints  # torch: imported here so that --help and flag errors stay fast
    from score_toolkit import distributed
    from score_toolkit import evaluation
    from score_toolkit import prepare
    from score_toolkit import runtime
    from score_toolkit import autoencoder_run
    from score_toolkit import cascade_run
    from score_toolkit import distill_run
    from score_toolkit import training
    from score_toolkit.workdir_lock import WorkdirLock

    runtime.configure_runtime(config)
    if mode in ("classifier", "stats"):
        prepare.run_image_tool(config, mode)
        return 0
    if mode == "noisy_classifier":
        prepare.run_noisy_classifier(config)
        return 0
    workdir = FLAGS.workdir or os.path.join("workdirs", os.path.splitext(os.path.basename(command.config.partition(":")[0]))[0])
    try:
        if mode == "train" and config.distill.method:
            raise UsageError(f"config.distill.method = {config.distill.method!r} trains a student: run it with "
                             f"{command.line('distill', FLAGS.workdir)}")
        net = (training.check_inputs(config, workdir) if mode == "train"
               else distill_run.check_inputs(config, workdir) if mode == "distill"
               else cascade_run.check_inputs(config, workdir) if mode == "cascade"
               else autoencoder_run.check_inputs(config, workdir) if mode == "autoencoder"
               else evaluation.check_inputs(config, workdir, mode))
    except MissingInputError as e:
        if e.make_with:
            e.args = (f"{e}: {command.line(e.make_with, workdir if e.make_with == 'train' else None)}",)
        raise
    os.makedirs(workdir, exist_ok=True)  # every input was checked: the run can start
    if distributed.is_main():
        # One writer per workdir, before anything is written; held until this process ends (the kernel
        # frees it however it ends).
        _LOCKS.append(WorkdirLock(workdir).acquire())
        stale = checkpoints.remove_stale_temporaries(workdir)
        _log_to_file(workdir)
    else:  # torchrun's other ranks: warnings and errors only, on stderr
        stale = []
        logging.getLogger().setLevel(logging.WARNING)
    logging.info("%s", " ".join(shlex.quote(a) for a in argv))
    if stale:
        logging.info("removed %d temporary file(s) that a stopped run left: %s", len(stale), ", ".join(stale))
    with distributed.session(runtime.get_device(config)):  # torchrun's ranks share the work; rank 0 writes
        if mode == "train":
            training.train(config, workdir, net=net)
        elif mode == "distill":
            distill_run.run(config, workdir, net=net)
        elif mode == "autoencoder":
            autoencoder_run.run(config, workdir)
        elif mode == "eval":
            evaluation.evaluate(config, workdir, FLAGS.eval_folder, net=net)
        elif mode == "sample":
            evaluation.sample(config, workdir, FLAGS.eval_folder, net=net)
        elif mode == "cascade":
            if distributed.is_main():
                cascade_run.run(config, workdir, FLAGS.eval_folder)
        elif distributed.is_main():  # export: one file; the other ranks wait at the session's barrier
            evaluation.export(config, workdir, net=net)
    return 0


def _parse(argv: List[str]) -> Command:
    """Check the config file, its keys and every flag, then parse them into FLAGS."""
    argv = _resolve_argv(argv)
    command = Command(argv, _config_arg(argv))
    config = load_config(command.config)
    check_override_keys(config, argv, command)
    _ARGV[:] = argv
    try:
        rest = FLAGS(argv)
    except flags.Error as e:
        raise UsageError(_flag_error_message(e, config)) from e
    except (TypeError, ValueError, KeyError, AttributeError) as e:  # raised by ml_collections while overriding
        raise UsageError(f"a --config.<key> override cannot be applied: {str(e).splitlines()[0]}") from e
    if len(rest) > 1:
        raise UsageError(f"unexpected argument(s) {' '.join(rest[1:])}: flags take the form --name=value")
    return command


def _fail(message: str, status: int, verbose: bool) -> int:
    if verbose:
        traceback.print_exc()
    lines = message.strip().split("\n")
    print("\n".join([f"error: {lines[0]}"] + [f"  {line}" for line in lines[1:]]), file=sys.stderr)
    return status


def _run(argv: List[str]) -> int:
    verbose = any(a in ("--verbose", "--verbose=true", "--verbose=True", "--verbose=1") for a in argv[1:])
    if any(a in HELP_ARGS for a in argv[1:]):
        print(usage())
        return 0
    _setup_logging()
    try:
        command = _parse(argv)
        return main(command, argv)
    except UsageError as e:
        return _fail(str(e), EXIT_USAGE, verbose)
    except KeyboardInterrupt as e:  # training.TrainingStopped says what was saved
        signum = getattr(e, "signum", signal.SIGINT)
        logging.info("%s", str(e) or f"{signal.Signals(signum).name}: stopped; the same command resumes "
                     "from what was saved")
        return 128 + signum
    except UserError as e:
        _log_to_file_only(f"error: {e}")
        return _fail(str(e), e.exit_code, verbose)


def run(argv=None):
    """Entry point of `main.py` and of the `score-toolkit` console script."""
    sys.exit(_run(list(sys.argv if argv is None else argv)))
