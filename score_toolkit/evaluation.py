"""Evaluation and sampling of a trained run: held-out loss, NLL by the probability-flow ODE, samples
and their quality. Per-batch results are kept on disk, so a killed evaluation resumes where it stopped."""
from __future__ import annotations

import json
import logging
import math
import os
from typing import Dict, List

import numpy as np
import torch
from tqdm.auto import tqdm

from score_toolkit import builders
from score_toolkit import checkpoints
from score_toolkit import data_lib
from models import checkpoint_convert


def load_ema_model(config, workdir: str, net=None):
    """(network on the CPU with the EMA weights of the newest readable checkpoint, its step).

    With config.eval.weights_path set, the weights come from that file (written by `export`)
    instead. A checkpoint of the reference implementation (checkpoint_<step>.pth) placed in
    <workdir>/checkpoints loads too.
    """
    torch.manual_seed(config.seed)
    model = builders.build_model(config) if net is None else net
    if config.eval.weights_path:
        state = checkpoints.load_checkpoint(config.eval.weights_path)
        checkpoint_convert.load_reference_state_dict(model, state["model"])
        return model.eval(), int(state["step"])
    latest = checkpoints.load_latest(os.path.join(workdir, "checkpoints"))
    if latest is None:
        raise FileNotFoundError(f"no checkpoint in {os.path.join(workdir, 'checkpoints')}: "
                                f"train first (python main.py --mode train --workdir {workdir})")
    step, state = latest
    # Our checkpoints and score_sde_pytorch's share this layout ("module."-prefixed keys there).
    checkpoint_convert.load_reference_checkpoint(model, state, use_ema=True)
    return model.eval(), step


def export(config, workdir: str) -> str:
    """Write the newest checkpoint's EMA weights alone, {"model": state dict, "step"}, to
    <workdir>/export/ema_step<step>.pt: a fraction of a checkpoint's size (no optimizer state,
    no raw weights), for sampling and evaluation through config.eval.weights_path."""
    model, step = load_ema_model(config, workdir, builders.validate_config(config))
    path = os.path.join(workdir, "export", f"ema_step{step}.pt")
    checkpoints.atomic_save({"model": model.state_dict(), "step": step}, path)
    logging.info("wrote %s (%.1f MB)", path, os.path.getsize(path) / 2 ** 20)
    return path


class BatchLog:
    """A JSON-lines file of finished batches, valid for one checkpoint step: resumable work."""

    def __init__(self, path: str, ckpt_step: int):
        self.path, self.ckpt_step, self.done = path, ckpt_step, {}
        if os.path.exists(path):
            with open(path) as f:
                for line in f:
                    try:
                        rec = json.loads(line)
                    except json.JSONDecodeError:  # a line cut short by a kill
                        continue
                    if rec.get("ckpt_step") == ckpt_step:
                        self.done[rec["batch"]] = rec

    def add(self, rec: dict) -> None:
        rec = dict(rec, ckpt_step=self.ckpt_step)
        with open(self.path, "a") as f:
            f.write(json.dumps(rec) + "\n")
            f.flush()
            os.fsync(f.fileno())
        self.done[rec["batch"]] = rec


def heldout_loss(config, sde, model, data) -> float:
    """The training loss on the test split, with a fixed generator."""
    loss_fn = builders.build_loss(config, sde)
    wrapped = builders.build_precond(config, sde, model)
    g = torch.Generator().manual_seed(config.seed + 2)
    bs, device = config.eval.batch_size, builders.get_device(config)
    labels = data.test_labels
    total = 0.0
    with torch.no_grad():
        for i in range(0, len(data.test), bs):
            x = data.test[i:i + bs]
            cond = wrapped.select({} if labels is None else {"y": labels[i:i + bs].to(device)})
            total += loss_fn(wrapped, x.to(device), g, **cond).item() * len(x)
    return total / len(data.test)


def heldout_nll(config, sde, model, data, out_dir: str, ckpt_step: int) -> Dict[str, float]:
    """Mean NLL of the first eval.n_nll test items, in nats and bits/dim; the true NLL where known."""
    e, device = config.eval, builders.get_device(config)
    score_fn = builders.build_precond(config, sde, model)
    n_total = min(e.n_nll, len(data.test))
    log = BatchLog(os.path.join(out_dir, "nll_batches.jsonl"), ckpt_step)
    starts = list(range(0, n_total, e.batch_size))
    for b, i in enumerate(tqdm(starts, desc="nll", dynamic_ncols=True)):
        if b in log.done:
            continue
        stop = min(i + e.batch_size, n_total)
        nats, bpd, nfe = data.nll(sde, score_fn, i, stop, e, seed=config.seed + b, device=device)
        true = data.true_nll_nats(data.test[i:stop])
        log.add({"batch": b, "n": stop - i, "nll_sum": float(nats.sum()), "bpd_sum": float(bpd.sum()), "nfe": nfe,
                 "true_nll_sum": None if true is None else float(true.sum())})
    recs = [log.done[b] for b in range(len(starts))]
    n = sum(r["n"] for r in recs)
    out = {"nll_nats": sum(r["nll_sum"] for r in recs) / n, "nll_bits_per_dim": sum(r["bpd_sum"] for r in recs) / n,
           "nfe_mean": sum(r["nfe"] for r in recs) / len(recs)}
    if recs[0]["true_nll_sum"] is not None:
        out["true_nll_nats"] = sum(r["true_nll_sum"] for r in recs) / n
        out["nll_gap_nats"] = out["nll_nats"] - out["true_nll_nats"]
    return out


def draw_samples(config, sde, model, data, out_dir: str, ckpt_step: int, n: int) -> torch.Tensor:
    """n samples in batches of sampling.batch_size; each batch saved as .npz as soon as it is done."""
    score_fn = builders.build_precond(config, sde, model)
    sample = builders.build_sampler(config, sde)
    folder = os.path.join(out_dir, f"samples_ckpt{ckpt_step}")
    os.makedirs(folder, exist_ok=True)
    bs, parts = config.sampling.batch_size, []
    for b in tqdm(range(math.ceil(n / bs)), desc="samples", dynamic_ncols=True):
        path = os.path.join(folder, f"batch_{b}.npz")
        if not os.path.exists(path):
            with torch.no_grad():
                x, _ = sample(score_fn, data.sample_shape(min(bs, n - b * bs)), seed=config.seed + 100_003 * (b + 1))
            tmp = path + ".tmp.npz"
            np.savez(tmp, samples=x.cpu().numpy())
            os.replace(tmp, path)
        parts.append(torch.from_numpy(np.load(path)["samples"]))
    return torch.cat(parts)[:n]


def _prepare(config, workdir: str, eval_folder: str):
    """What `evaluate` and `sample` start from: (sde, data, EMA model on config.device, its step,
    the output folder)."""
    net = builders.validate_config(config)
    sde, data = builders.build_sde(config), data_lib.load(config)
    model, ckpt_step = load_ema_model(config, workdir, net)
    out_dir = os.path.join(workdir, eval_folder)
    os.makedirs(out_dir, exist_ok=True)
    return sde, data, model.to(builders.get_device(config)), ckpt_step, out_dir


def evaluate(config, workdir: str, eval_folder: str = "eval") -> Dict[str, float]:
    """Everything config.eval enables; results in <workdir>/<eval_folder>/results.json."""
    sde, data, model, ckpt_step, out_dir = _prepare(config, workdir, eval_folder)
    results: Dict[str, float] = {"checkpoint_step": ckpt_step}
    if config.eval.enable_loss:
        results["heldout_loss"] = heldout_loss(config, sde, model, data)
    if config.eval.enable_nll:
        results.update(heldout_nll(config, sde, model, data, out_dir, ckpt_step))
    if config.eval.enable_samples:
        x = draw_samples(config, sde, model, data, out_dir, ckpt_step, config.eval.n_samples)
        results.update(data.quality(x))
        data.plot(x, os.path.join(out_dir, f"samples_ckpt{ckpt_step}.png"), f"EMA samples, step {ckpt_step}")
    with open(os.path.join(out_dir, "results.json"), "w") as f:
        json.dump(results, f, indent=2)
    print(format_table(results))
    return results


def sample(config, workdir: str, eval_folder: str = "eval") -> str:
    """config.sampling.n_samples samples with the configured sampler, to .npz and .png."""
    sde, data, model, ckpt_step, out_dir = _prepare(config, workdir, eval_folder)
    x = draw_samples(config, sde, model, data, out_dir, ckpt_step, config.sampling.n_samples)
    stem = os.path.join(out_dir, f"samples_{config.sampling.method}_ckpt{ckpt_step}")
    np.savez(stem + ".npz", samples=x.numpy())
    data.plot(x, stem + ".png", f"{len(x)} samples, step {ckpt_step}")
    logging.info("wrote %s.npz and %s.png", stem, stem)
    return stem + ".npz"


def format_table(results: Dict[str, float]) -> str:
    width = max(len(k) for k in results)
    lines: List[str] = [f"{'metric'.ljust(width)}  value", f"{'-' * width}  ------------"]
    for k, v in results.items():
        lines.append(f"{k.ljust(width)}  {v:.6g}" if isinstance(v, float) else f"{k.ljust(width)}  {v}")
    return "\n".join(lines)
