"""Sample-quality plumbing of a run: the feature extractor, the data's reference statistics, and
the classifier that stands in for Inception where its file is not at hand. The modes `classifier`
and `stats` (`prepare`) make the classifier and the statistics."""
from __future__ import annotations

import logging
import os
from typing import Callable, Dict, Optional

import torch

from score_toolkit import runtime
from score_toolkit import sample_quality


def load_extractor(config):
    """The extractor named by config.eval.feature_extractor, from config.eval.feature_path."""
    kind, path, device = config.eval.feature_extractor, config.eval.feature_path, runtime.get_device(config)
    if kind == "classifier":
        return sample_quality.load_classifier(path, device)
    if kind == "inception":
        return sample_quality.InceptionFeatures(path, device)
    raise ValueError(f"config.eval.feature_extractor = {kind!r}: no extractor to load")


def batches(images: torch.Tensor, size: int = 250):
    return (images[i:i + size] for i in range(0, len(images), size))


def quality_fn(config) -> Optional[Callable[[torch.Tensor], Dict[str, float]]]:
    """uint8 samples -> {FID, KID, IS} against config.eval.stats_path, or None when not configured."""
    if config.eval.feature_extractor == "none":
        return None
    extractor = load_extractor(config)
    reference = sample_quality.FeatureStats.load(config.eval.stats_path)

    def measure(samples_uint8: torch.Tensor) -> Dict[str, float]:
        # KID subsets cannot be larger than either set of features.
        n_ref = len(reference.features) if reference.features is not None else len(samples_uint8)
        subset = min(1000, len(samples_uint8), n_ref)
        return sample_quality.quality_report(extractor, batches(samples_uint8), reference,
                                             kid_subset_size=subset, seed=config.seed)

    return measure


def train_feature_classifier(config, data) -> str:
    """Train the small classifier on the run's data and save it to config.eval.feature_path."""
    path = config.eval.feature_path or os.path.join("workdirs", f"classifier_{config.data.name}.pt")
    net, acc = sample_quality.train_classifier(data.train_uint8, data.train_labels, data.test_uint8, data.test_labels,
                                               steps=config.eval.classifier_steps, seed=config.seed,
                                               random_flip=config.data.random_flip, device=runtime.get_device(config))
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    sample_quality.save_classifier(path, net, config.data.name, acc)
    logging.info("classifier for %s: test accuracy %.4f, saved to %s", config.data.name, acc, path)
    print(f"classifier test accuracy {acc:.4f} -> {path}")
    return path


def compute_data_stats(config, data) -> str:
    """Feature statistics of the training images, saved to config.eval.stats_path (.npz)."""
    extractor = load_extractor(config)
    features = sample_quality.compute_features(extractor, batches(data.train_uint8))
    stats = sample_quality.FeatureStats.from_features(features, extractor.name)
    path = config.eval.stats_path
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    stats.save(path)
    print(f"feature statistics of {len(features)} training images ({extractor.name}) -> {path}")
    return path
