"""A Fashion-MNIST latent model against a pixel model: classifier-FID and sampling time per image at the
same number of network calls; and, for a text model, how well its samples follow their prompts.

    python benchmarks/bench_latent_fashionmnist.py --model pixel=W_PIXEL --model latent=W_LATENT \
        [--text W_TEXT --scales 0 1 2 4] --n 1000 --steps 20

Every model samples with DPM-Solver++(2M) at --steps network calls from the same seeds; a latent model's
samples are decoded (its autoencoder's decoder is timed with it). Time per image is the median over
--repeats of one batch of --batch samples, on --threads threads. FID is on --n samples against the
training images' statistics in --features (the classifier `--mode classifier` trains).

For --text: per guidance scale, --per-prompt samples of every prompt in PROMPTS (each a class and one or
two attributes; those marked held out name combinations no training caption had). The classifier's
accuracy on the class word, and per attribute the share of samples whose measured attribute
(`captions.measure`) is the one the prompt names.
"""
from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import time

import ml_collections
import torch

sys.path.insert(0, os.path.join(os.path.dirname(__file__), ".."))
import samplers  # noqa: E402
from benchmarks._common import emit, machine  # noqa: E402
from score_toolkit import (autoencoder_run, caption_data, captions, data_lib, evaluation, factories,  # noqa: E402
                           image_data, latent_data, sample_quality)

PROMPTS = [("a dark tshirt", False), ("a light trouser", False), ("a small dress", False), ("a large coat", False),
           ("a dark sneaker pointing right", False), ("a light boot pointing left", False), ("a dark bag", False),
           ("a light sandal", True), ("a large bag", True), ("a light sandal pointing right", True)]


def load(workdir: str, root: str, scale: float = 0.0):
    """(config, data, sde, score_fn, network) of a trained workdir on the CPU; data decodes latents."""
    with open(os.path.join(workdir, "config.json")) as f:
        config = ml_collections.ConfigDict(json.load(f))
    config.device, config.data.root = "cpu", root
    config.sampling.guidance_scale = scale
    sde = factories.build_sde(config)
    model, _ = evaluation.load_ema_model(config, workdir)
    data = latent_data.wrap(config, data_lib.load(config), "cpu")
    return config, data, sde, factories.build_score_fn(config, sde, model, "cpu"), model


def draw(data, sde, score_fn, n: int, batch: int, steps: int, cond=None):
    """n decoded uint8 samples, batch b from seed 1000 + b."""
    out = []
    for b in range((n + batch - 1) // batch):
        size = min(batch, n - b * batch)
        c = {k: v[:size] for k, v in (cond or {}).items()}
        with torch.no_grad():
            x, nfe = samplers.dpmpp_2m_sample(sde, score_fn, data.sample_shape(size), steps=steps, seed=1000 + b, cond=c)
        out.append(data.to_data_space(x))
    return torch.cat(out), nfe


def time_per_image(data, sde, score_fn, batch: int, steps: int, repeats: int) -> float:
    times = []
    for r in range(repeats + 1):
        t0 = time.perf_counter()
        draw(data, sde, score_fn, batch, batch, steps)
        times.append(time.perf_counter() - t0)
    return statistics.median(times[1:]) / batch


def fid(classifier, reference, images) -> float:
    with torch.no_grad():
        feats = torch.cat([classifier(b) for b in images.split(500)])
    return round(sample_quality.fid_from_stats(sample_quality.FeatureStats.from_features(feats, classifier.name),
                                               reference), 2)


def autoencoder_row(workdir: str, args, classifier, reference) -> None:
    """The latent model's autoencoder: PSNR and classifier-FID of its reconstructions of --n test images."""
    config, data, *_ = load(workdir, args.data_root)
    truth = data.test_uint8[:args.n]
    recon = data.images.to_uint8(autoencoder_run.reconstruct(data.ae, data.images.test[:args.n], args.batch))
    mse = ((recon.double() - truth.double()) / 255).pow(2).flatten(1).mean(1)
    emit({"kind": "autoencoder", "path": data.meta["path"], "latent_shape": data.meta["latent_shape"],
          "latent_scale": data.scale, "n": len(truth), "psnr": round(float((-10 * torch.log10(mse)).mean()), 2),
          "reconstruction_fid": fid(classifier, reference, recon), "fid_of_test_images": fid(classifier, reference, truth)},
         args.out)


def text_rows(args, classifier):
    for scale in args.scales:
        config, data, sde, score_fn, model = load(args.text, args.data_root, scale)
        for prompt, held_out in PROMPTS:
            config.sampling.prompt = prompt
            cond = caption_data.sample_cond(config, model, args.per_prompt)
            x, nfe = draw(data, sde, score_fn, args.per_prompt, args.batch, args.steps, cond)
            want = captions.parse(prompt)
            with torch.no_grad():
                predicted = torch.cat([classifier.probabilities(b).argmax(1) for b in x.split(500)])
            row = {"kind": "text", "scale": scale, "prompt": prompt, "held_out": held_out, "n": len(x), "nfe": nfe,
                   "class_accuracy": round(float((predicted == want["label"]).double().mean()), 3)}
            measured = captions.measure(image_data.to_unit_interval(x), torch.full((len(x),), want["label"]))
            for attr, value in want.items():
                if attr != "label" and value >= 0:
                    row[f"{attr}_accuracy"] = round(float((measured[attr] == value).double().mean()), 3)
            emit(row, args.out)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--model", action="append", default=[], help="NAME=WORKDIR (repeatable)")
    p.add_argument("--text", default="", help="a text model's workdir")
    p.add_argument("--scales", type=float, nargs="+", default=[0.0, 1.0, 2.0, 4.0])
    p.add_argument("--per-prompt", type=int, default=100)
    p.add_argument("--data-root", default="/usr/share/datasets/fashion-mnist")
    p.add_argument("--features", default="workdirs/fmnist_features")
    p.add_argument("--n", type=int, default=1000)
    p.add_argument("--steps", type=int, default=20)
    p.add_argument("--batch", type=int, default=100)
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--out", default="benchmarks/results/latent_fashionmnist_cpu.jsonl")
    args = p.parse_args()
    torch.set_num_threads(args.threads)
    classifier = sample_quality.load_classifier(os.path.join(args.features, "classifier.pt"))
    reference = sample_quality.FeatureStats.load(os.path.join(args.features, "stats.npz"))
    for spec in args.model:
        if spec.startswith("latent"):
            autoencoder_row(spec.split("=", 1)[1], args, classifier, reference)
        name, workdir = spec.split("=", 1)
        config, data, sde, score_fn, _ = load(workdir, args.data_root)
        x, nfe = draw(data, sde, score_fn, args.n, args.batch, args.steps)
        seconds = time_per_image(data, sde, score_fn, args.batch, args.steps, args.repeats)
        step = evaluation.load_ema_model(config, workdir)[1]
        emit({"kind": "model", "name": name, "workdir": workdir, "latent": latent_data.is_latent(config),
              "step": step, "n": len(x), "nfe": nfe, "fid": fid(classifier, reference, x),
              "seconds_per_image": round(seconds, 5)}, args.out)
    if args.text:
        text_rows(args, classifier)
    emit({"kind": "config", **{k: v for k, v in vars(args).items()}, "machine": machine()}, args.out)


if __name__ == "__main__":
    main()
