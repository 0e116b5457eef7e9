"""Command line: train, evaluate or sample a score-based model from an ml_collections config.

    python main.py --mode train                 # the default config into workdirs/<config name>
    python main.py --mode eval                  # loss, NLL, samples and their quality
    python main.py --mode sample --config configs/swissroll_ve_mlp.py --config.sampling.method=ode
"""
import os

from absl import app, flags, logging
from ml_collections import config_flags

_HERE = os.path.dirname(os.path.abspath(__file__))
DEFAULT_CONFIG = os.path.join(_HERE, "configs", "swissroll_vp_mlp.py")

FLAGS = flags.FLAGS
config_flags.DEFINE_config_file("config", DEFAULT_CONFIG, "Configuration file (override keys with --config.a.b=v).",
                                lock_config=True)
flags.DEFINE_string("workdir", None, "Run folder (default: workdirs/<config file name>).")
flags.DEFINE_enum("mode", "train", ["train", "eval", "sample", "export", "classifier", "stats"],
                  "What to run: train, eval, sample; export writes the EMA weights alone for config.eval.weights_path; for image data, 'classifier' trains the feature "
                  "classifier into config.eval.feature_path and 'stats' saves the training images' "
                  "feature statistics to config.eval.stats_path.")
flags.DEFINE_string("eval_folder", "eval", "Folder under the workdir for evaluation and sampling outputs.")


def default_workdir() -> str:
    name = os.path.splitext(os.path.basename(FLAGS["config"].config_filename or DEFAULT_CONFIG))[0]
    return os.path.join("workdirs", name)


def main(argv):
    del argv
    import builders  # imported here so that --help stays fast
    import evaluation
    import training

    config, workdir = FLAGS.config, FLAGS.workdir or default_workdir()
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
        import data_lib
        import features
        if config.data.kind != "images":
            raise app.UsageError(f"--mode {FLAGS.mode} needs image data; config.data.kind is {config.data.kind!r}")
        data = data_lib.load(config)
        if FLAGS.mode == "classifier":
            features.train_feature_classifier(config, data)
        else:
            features.compute_data_stats(config, data)


if __name__ == "__main__":
    app.run(main)
