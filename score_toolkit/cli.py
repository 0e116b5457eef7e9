"""Command line: train, evaluate or sample a score-based model from an ml_collections config.

    python main.py --mode train                 # the default config into workdirs/<config name>
    python main.py --mode eval                  # loss, NLL, samples and their quality
    python main.py --mode sample --config configs/swissroll_ve_mlp.py --config.sampling.method=ode

`score-toolkit` (the console script) is the same command. A `--config` path that does not exist
relative to the current folder is looked up among the installed `configs`, so the README's
commands also work outside a clone.
"""
import os
import sys

from absl import app, flags, logging
from ml_collections import config_flags

import configs

CONFIG_DIR = os.path.dirname(os.path.abspath(configs.__file__))
DEFAULT_CONFIG = os.path.join(CONFIG_DIR, "swissroll_vp_mlp.py")
MODES = ["train", "eval", "sample", "export", "classifier", "stats"]

FLAGS = flags.FLAGS
config_flags.DEFINE_config_file("config", DEFAULT_CONFIG, "Configuration file (override keys with --config.a.b=v).",
                                lock_config=True)
flags.DEFINE_string("workdir", None, "Run folder (default: workdirs/<config file name>).")
flags.DEFINE_enum("mode", "train", MODES,
                  "What to run: train, eval, sample; export writes the EMA weights alone for config.eval.weights_path; for image data, 'classifier' trains the feature "
                  "classifier into config.eval.feature_path and 'stats' saves the training images' "
                  "feature statistics to config.eval.stats_path.")
flags.DEFINE_string("eval_folder", "eval", "Folder under the workdir for evaluation and sampling outputs.")


def default_workdir() -> str:
    name = os.path.splitext(os.path.basename(FLAGS["config"].config_filename or DEFAULT_CONFIG))[0]
    return os.path.join("workdirs", name)


def resolve_config_path(value: str) -> str:
    """`configs/x.py[:arg]` as given when that file exists here, else the installed configs/x.py."""
    path, sep, arg = value.partition(":")
    if os.path.exists(path):
        return value
    installed = os.path.join(CONFIG_DIR, os.path.basename(path))
    return installed + sep + arg if os.path.exists(installed) else value


def _resolve_argv(argv):
    out, i = list(argv), 1
    while i < len(out):
        if out[i].startswith("--config="):
            out[i] = "--config=" + resolve_config_path(out[i][len("--config="):])
        elif out[i] == "--config" and i + 1 < len(out):
            out[i + 1] = resolve_config_path(out[i + 1])
        i += 1
    return out


def main(argv):
    del argv
    from score_toolkit import builders  # imported here so that --help stays fast
    from score_toolkit import evaluation
    from score_toolkit import training

    config, workdir = FLAGS.config, FLAGS.workdir or default_workdir()
    if FLAGS.mode in ("classifier", "stats"):  # the other modes validate the config themselves
        builders.validate_config(config)
    builders.configure_runtime(config)
    os.makedirs(workdir, exist_ok=True)
    logging.get_absl_handler().use_absl_log_file("log", workdir)
    logging.set_stderrthreshold(logging.INFO)
    if FLAGS.mode == "train":
        training.train(config, workdir)
    elif FLAGS.mode == "eval":
        evaluation.evaluate(config, workdir, FLAGS.eval_folder)
    elif FLAGS.mode == "sample":
        evaluation.sample(config, workdir, FLAGS.eval_folder)
    elif FLAGS.mode == "export":
        evaluation.export(config, workdir)
    else:
        from score_toolkit import data_lib
        from score_toolkit import features
        if config.data.kind != "images":
            raise app.UsageError(f"--mode {FLAGS.mode} needs image data; config.data.kind is {config.data.kind!r}")
        data = data_lib.load(config)
        if FLAGS.mode == "classifier":
            features.train_feature_classifier(config, data)
        else:
            features.compute_data_stats(config, data)


def run(argv=None):
    """Entry point of `main.py` and of the `score-toolkit` console script."""
    app.run(main, argv=_resolve_argv(sys.argv if argv is None else argv))
