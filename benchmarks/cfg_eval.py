"""Classifier-free guidance on a class-conditional Fashion-MNIST model: accuracy and FID per scale w.

    python benchmarks/cfg_eval.py --workdir workdirs/fashionmnist_vp_ddpmpp_cond \
        --data-root /usr/share/datasets/fashion-mnist --features workdirs/fmnist_features --per-class 1000

For each guidance scale w it draws --per-class samples of every class from the newest checkpoint's
EMA weights with the guided score (1 + w) s(x, t, y) - w s(x, t, null) (`samplers.cfg_score`, one
batched network call per step), and reports the toolkit's Fashion-MNIST classifier's accuracy on
them (the share classified as the class they were drawn for) and the classifier-FID of all of them
against the training images. A grid with one row per class (w = --grid-scale) is written to
--grid. One JSON line per scale on stdout and in --out.
"""
from __future__ import annotations

import argparse
import json
import os
import sys
import time

import torch

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import samplers  # noqa: E402
from configs.fashionmnist_vp_ddpmpp_cond import get_config  # noqa: E402
from score_toolkit import data_lib, evaluation, factories, features, plotting, runtime, sample_quality  # noqa: E402


def guided_samples(sde, model, w, labels, args, device, num_classes):
    """Samples [len(labels), 1, 32, 32] for the given labels with CFG scale w, in batches."""
    score = samplers.cfg_score(model, w, null_label=num_classes)
    fn, parts = samplers.get_sampler(args.sampler), []
    for b, i in enumerate(range(0, len(labels), args.batch)):
        y = labels[i:i + args.batch].to(device)
        x, nfe = fn(sde, score, (len(y), 1, 32, 32), steps=args.steps, seed=7000 + b, device=device, cond={"y": y})
        parts.append(x.cpu())
    return torch.cat(parts), nfe


def main():
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--workdir", required=True)
    p.add_argument("--data-root", required=True)
    p.add_argument("--features", default="workdirs/fmnist_features")
    p.add_argument("--per-class", type=int, default=1000)
    p.add_argument("--scales", default="0,0.5,1,2,4")
    p.add_argument("--sampler", default="dpmpp_2m")
    p.add_argument("--steps", type=int, default=20)
    p.add_argument("--batch", type=int, default=2500)
    p.add_argument("--grid", default="cfg_grid.png")
    p.add_argument("--grid-scale", type=float, default=1.0)
    p.add_argument("--out", default="cfg.jsonl")
    p.add_argument("--device", default="auto")
    args = p.parse_args()
    torch.backends.cuda.matmul.allow_tf32 = torch.backends.cudnn.allow_tf32 = True
    config = get_config()
    config.data.root, config.device = args.data_root, args.device
    config.eval.feature_extractor = "classifier"
    config.eval.feature_path = os.path.join(args.features, "classifier.pt")
    config.eval.stats_path = os.path.join(args.features, "stats.npz")
    sde, device, data = factories.build_sde(config), runtime.get_device(config), data_lib.load(config)
    net, step = evaluation.load_ema_model(config, args.workdir)
    model = factories.build_precond(config, sde, net.to(device))
    quality = features.quality_fn(config)
    classifier = sample_quality.load_classifier(config.eval.feature_path, device)
    labels = torch.arange(10).repeat_interleave(args.per_class)
    for w in (float(v) for v in args.scales.split(",")):
        t0 = time.perf_counter()
        x, nfe = guided_samples(sde, model, w, labels, args, device, config.model.num_classes)
        images = data.to_uint8(x)
        pred = torch.cat([classifier.probabilities(images[i:i + 1000]).argmax(1).cpu() for i in range(0, len(images), 1000)])
        row = {"guidance_scale": w, "sampler": args.sampler, "steps": args.steps, "nfe_per_sample": nfe,
               "n_samples": len(x), "accuracy": float((pred == labels).float().mean()),
               "accuracy_by_class": [round(float((pred[labels == k] == k).float().mean()), 4) for k in range(10)],
               **quality(images), "checkpoint_step": step, "seconds": round(time.perf_counter() - t0, 1)}
        print(json.dumps(row), flush=True)
        with open(args.out, "a") as f:
            f.write(json.dumps(row) + "\n")
        if w == args.grid_scale:
            rows = torch.cat([x[labels == k][:10] for k in range(10)])
            plotting.image_grid(data.inverse_scaler(rows).clamp(0, 1), args.grid,
                                f"CFG w={w:g}, one row per class, step {step}", nrow=10)


if __name__ == "__main__":
    main()
