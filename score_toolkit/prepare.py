"""The modes that prepare a file that other runs read: `classifier` (the feature classifier,
config.eval.feature_path) and `stats` (the training images' feature statistics,
config.eval.stats_path), which sample quality needs, and `noisy_classifier` (p(y | x_t, t),
config.sampling.classifier_path), which classifier guidance needs. Each checks every input first,
then does the work. The work itself is in `features` and `noisy_classifier`, which sampling and
evaluation use below the config checks of `validation`; these mode bodies stand above both."""
from __future__ import annotations

import os

from score_toolkit import data_lib
from score_toolkit import factories
from score_toolkit import features
from score_toolkit import image_data
from score_toolkit import noisy_classifier
from score_toolkit import runtime
from score_toolkit import validation
from score_toolkit.errors import UsageError


def run_image_tool(config, mode: str) -> None:
    """--mode classifier / stats, on image data: checks first, then the work."""
    validation.validate_config(config)
    if config.data.kind != "images":
        raise UsageError(f"--mode {mode} needs image data; config.data.kind is {config.data.kind!r}")
    if mode == "stats" and config.eval.feature_extractor == "none":
        raise UsageError("--mode stats: config.eval.feature_extractor = 'none'; set 'classifier' or 'inception'")
    data_lib.check_files(config, ("train", "test") if mode == "classifier" else ("train",))
    if mode == "stats":
        data_lib.check_quality_files(config, ("eval.feature_path",))
    data = data_lib.load(config)
    if mode == "classifier":
        features.train_feature_classifier(config, data)
    else:
        features.compute_data_stats(config, data)


def run_noisy_classifier(config) -> None:
    """--mode noisy_classifier: checks first, then train p(y | x_t, t) on the data's labels under the
    config's SDE and save it to config.sampling.classifier_path."""
    validation.validate_config(config)
    path = config.sampling.classifier_path
    if not path:
        raise UsageError("--mode noisy_classifier: set --config.sampling.classifier_path=<file to write>")
    if os.path.exists(path):
        raise UsageError(f"--mode noisy_classifier: {path} exists already; files are never overwritten")
    if config.data.kind == "images":
        data_lib.check_files(config, ("train", "test"))
    data, sde = data_lib.load(config), factories.build_sde(config)
    if data.train_labels is None:
        raise UsageError(f"--mode noisy_classifier needs labelled data; config.data.name = {config.data.name!r} has none")
    images = config.data.kind == "images"
    x_train, x_test = (data.train_uint8, data.test_uint8) if images else (data.train, data.test)
    transform = (lambda k: data.scaler(image_data.to_unit_interval(k))) if images else None
    net, accuracy = noisy_classifier.train_noisy_classifier(
        sde, x_train, data.train_labels, steps=config.sampling.classifier_steps, seed=config.seed,
        device=runtime.get_device(config), x_test=x_test, y_test=data.test_labels, transform=transform)
    noisy_classifier.save_noisy_classifier(path, net, accuracy, data=config.data.name, sde=config.sde.name)
    print("noisy classifier test accuracy by t: " + ", ".join(f"t={t:g}: {a:.3f}" for t, a in accuracy.items())
          + f" -> {path}", flush=True)
