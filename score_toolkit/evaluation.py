"""Evaluation and sampling of a trained run: held-out loss, NLL by the probability-flow ODE, samples
and their quality. Per-batch results are kept on disk, so a killed evaluation resumes where it stopped.

Samples are saved once, in data space (uint8 images in [0, 255], float32 points), one file per
batch: <workdir>/<eval_folder>/samples_<method>_ckpt<step>/batch_<b>.npz (key "samples"; read them
all with `load_samples`), beside a picture of them, samples_<method>_ckpt<step>.png.

Under torchrun the NLL batches and the sample batches are split over the ranks (batch b on rank
b % world), each rank keeps its own files, and the results are gathered through torch.distributed;
rank 0 alone computes the held-out loss and the sample quality and writes results.json and pictures.
"""
from __future__ import annotations

import glob
import json
import logging
import math
import os
import re
import time
import zipfile
from typing import Dict, List, Optional

import numpy as np
import torch
from tqdm.auto import tqdm

from score_toolkit import bound
from score_toolkit import caption_data
from score_toolkit import checkpoints
from score_toolkit import data_lib
from score_toolkit import distributed
from score_toolkit import factories
from score_toolkit import image_data
from score_toolkit import inverse_problems
from score_toolkit import latent_data
from score_toolkit import run_config
from score_toolkit import runtime
from score_toolkit import super_resolution
from score_toolkit import validation
from score_toolkit.errors import BadFileError, ConfigError, MissingInputError
import samplers
from models import checkpoint_convert

# Notes printed beside a metric's name in the results table.
METRIC_NOTES = {"mmd_rbf": "unbiased; may be < 0", "KID": "unbiased; may be < 0",
                "nll_gap_nats": "model minus true NLL",
                "nll_bits_per_dim": "probability flow ODE, exact up to the solver",
                "vlb_bits_per_dim_upper_bound": "discrete chain, >= its NLL"}


def check_inputs(config, workdir: str, mode: str = "eval") -> torch.nn.Module:
    """Every check `evaluate` (mode "eval"), `sample` or `export` needs, with nothing written: the
    config; for eval, the test split's files (held-out loss and NLL) and the feature network and
    statistics (sample quality); a checkpoint in the workdir unless config.eval.weights_path names
    the weights; and that the workdir was made with an equivalent config. Returns the network
    validate_config built."""
    net = validation.validate_config(config)
    e = config.eval
    if mode == "eval" and (e.enable_loss or e.enable_nll or e.enable_bound):
        data_lib.check_files(config, ("test",))
    if mode != "export" and bound.uses_gamma(config):  # Analytic-DPM's Gamma is estimated on training images
        data_lib.check_files(config, ("train",))
    if mode == "eval" and e.enable_samples:
        data_lib.check_quality_files(config)
    if not e.weights_path:
        ckpt_dir = os.path.join(workdir, "checkpoints")
        if not checkpoints.list_checkpoints(ckpt_dir):
            where = f"the workdir {workdir} does not exist" if not os.path.isdir(workdir) else f"none in {ckpt_dir}"
            raise MissingInputError(f"no checkpoint ({where}); train first", make_with="train")
    checkpoints.check_run_config(workdir, config)
    return net


def load_ema_model(config, workdir: str, net=None):
    """(network on the CPU with the EMA weights of the newest readable checkpoint, its step).

    With config.eval.weights_path set, the weights come from that file (written by `export`)
    instead. A checkpoint of the reference implementation (checkpoint_<step>.pth) placed in
    <workdir>/checkpoints loads too.
    """
    torch.manual_seed(config.seed)
    model = factories.build_model(config) if net is None else net
    if config.eval.weights_path:
        state = checkpoints.load_file(config.eval.weights_path, ("model", "step"), "weights",
                                      "write one with --mode export")
        differ = run_config.weights_differences(state.get("config", {}), config)
        if differ:
            raise ConfigError(f"config.eval.weights_path = {config.eval.weights_path!r} holds weights of another "
                              f"config: {run_config.describe_differences(differ)}")
        _load_weights(config.eval.weights_path, lambda: checkpoint_convert.load_reference_state_dict(model, state["model"]))
        return model.eval(), int(state["step"])
    ckpt_dir = os.path.join(workdir, "checkpoints")
    latest = checkpoints.load_latest(ckpt_dir)
    if latest is None:
        raise MissingInputError(f"no readable checkpoint in {ckpt_dir}; train first", make_with="train")
    step, state = latest
    # Our checkpoints and score_sde_pytorch's share this layout ("module."-prefixed keys there).
    _load_weights(ckpt_dir, lambda: checkpoint_convert.load_reference_checkpoint(model, state, use_ema=True))
    return model.eval(), step


def _load_weights(source: str, load) -> None:
    try:
        load()
    except ValueError as e:
        raise ConfigError(f"the weights in {source} do not fit config.model: {e}") from e


def export(config, workdir: str, net=None) -> str:
    """Write the newest checkpoint's EMA weights alone, {"model": state dict, "step"}, to
    <workdir>/export/ema_step<step>.pt: a fraction of a checkpoint's size (no optimizer state,
    no raw weights), for sampling and evaluation through config.eval.weights_path. `net`: what
    `check_inputs(config, workdir, "export")` returned (its checks are then not repeated)."""
    net = check_inputs(config, workdir, "export") if net is None else net
    model, step = load_ema_model(config, workdir, net)
    checkpoints.start_run(workdir, config)
    path = os.path.join(workdir, "export", f"ema_step{step}.pt")
    if os.path.exists(path):  # the newest checkpoint is exported already: the same weights
        logging.info("%s holds the EMA weights of step %d already (the newest checkpoint)", path, step)
        return path
    checkpoints.atomic_save(run_config.exported_weights(model.state_dict(), step, config), path,
                            what=f"the exported weights of step {step}")
    logging.info("wrote %s (%.1f MB)", path, os.path.getsize(path) / 2 ** 20)
    return path


class BatchLog:
    """JSON-lines files of finished batches, valid for one checkpoint step and one set of settings
    (a string, e.g. the estimator's keys): resumable work. This process appends to
    `distributed.rank_path(path)`; `done` holds the batches of every rank's file of `path`
    (`distributed.rank_files`), so a run resumes on any number of ranks."""

    def __init__(self, path: str, ckpt_step: int, settings: str = ""):
        self.path, self.ckpt_step, self.settings, self.done = distributed.rank_path(path), ckpt_step, settings, {}
        for p in distributed.rank_files(path):
            self._read(p)

    def _read(self, path: str) -> None:
        with open(path) as f:
            for line in f:
                try:
                    rec = json.loads(line)
                except json.JSONDecodeError:  # a line cut short by a kill
                    continue
                if rec.get("ckpt_step") == self.ckpt_step and rec.get("settings", "") == self.settings:
                    self.done[rec["batch"]] = rec

    def add(self, rec: dict) -> None:
        rec = dict(rec, ckpt_step=self.ckpt_step, settings=self.settings)
        with open(self.path, "a") as f:
            f.write(json.dumps(rec) + "\n")
            f.flush()
            os.fsync(f.fileno())
        self.done[rec["batch"]] = rec


def heldout_loss(config, sde, model, data) -> float:
    """The training loss on the test split, with a fixed generator."""
    loss_fn = factories.build_loss(config, sde)
    wrapped = factories.build_precond(config, sde, model)
    g = torch.Generator().manual_seed(config.seed + 2)
    bs, device = config.eval.batch_size, local_device(config)
    labels = data.test_labels
    total = 0.0
    with torch.no_grad():
        for i in range(0, len(data.test), bs):
            x = data.test[i:i + bs]
            cond = {} if labels is None else {"y": labels[i:i + bs]}
            if isinstance(data, super_resolution.SuperResolutionData):  # its low resolution, as in training
                cond.update(data.condition(x, g))
            cond = wrapped.select({k: v.to(device) for k, v in cond.items()})
            total += loss_fn(wrapped, x.to(device), g, cond).item() * len(x)
    return total / len(data.test)


def heldout_nll(config, sde, model, data, out_dir: str, ckpt_step: int) -> Dict[str, float]:
    """Mean NLL of the first eval.n_nll test items, in nats and bits/dim; the true NLL where known.

    Batch b (seeded by config.seed + b) is computed by rank b % world and logged to that rank's
    <out_dir>/nll_batches[.rank<r>].jsonl; the records are gathered, so every rank returns the
    figures of one process, whatever number of ranks computed or resumed the batches."""
    e, device = config.eval, local_device(config)
    score_fn = factories.build_precond(config, sde, model)
    n_total = min(e.n_nll, len(data.test))
    keys = ("batch_size", "n_nll", "divergence", "n_probes", "nll_rtol", "nll_atol", "nll_eps")
    settings = json.dumps({"seed": config.seed, **{k: e[k] for k in keys}}, sort_keys=True)
    log = BatchLog(os.path.join(out_dir, "nll_batches.jsonl"), ckpt_step, settings)
    starts = range(0, n_total, e.batch_size)
    mine = distributed.my_batches(len(starts))
    for b in _progress(mine, "nll"):
        if b in log.done:
            continue
        i, stop = starts[b], min(starts[b] + e.batch_size, n_total)
        nats, bpd, nfe, *extra = data.nll(sde, score_fn, i, stop, e, seed=config.seed + b, device=device)
        true = data.true_nll_nats(data.test[i:stop])
        log.add({"batch": b, "n": stop - i, "nll_sum": float(nats.sum()), "bpd_sum": float(bpd.sum()), "nfe": nfe,
                 "true_nll_sum": None if true is None else float(true.sum()),
                 "extra_sums": {k: float(v.sum()) for k, v in (extra[0] if extra else {}).items()}})
    done = distributed.gather_dict({b: log.done[b] for b in mine})
    recs = [done[b] for b in range(len(starts))]
    n = sum(r["n"] for r in recs)
    out = {"nll_nats": sum(r["nll_sum"] for r in recs) / n, "nll_bits_per_dim": sum(r["bpd_sum"] for r in recs) / n,
           "nfe_mean": sum(r["nfe"] for r in recs) / len(recs)}
    for key in recs[0].get("extra_sums", {}):  # e.g. a latent model's latent_bits_per_dim
        out[key] = sum(r["extra_sums"][key] for r in recs) / n
    if recs[0]["true_nll_sum"] is not None:
        out["true_nll_nats"] = sum(r["true_nll_sum"] for r in recs) / n
        out["nll_gap_nats"] = out["nll_nats"] - out["true_nll_nats"]
    return out


def samples_folder(config, out_dir: str, ckpt_step: int) -> str:
    return os.path.join(out_dir, f"samples_{config.sampling.method}_ckpt{ckpt_step}")


def draw_samples(config, sde, model, data, folder: str, n: int) -> torch.Tensor:
    """n samples in data space (`data.to_data_space`), drawn in batches of sampling.batch_size. Each
    batch is saved to <folder>/batch_<b>.npz as soon as it is drawn, with the settings that drew it;
    a batch already there from the same settings is read back, not drawn again.

    Batch b depends on b alone (seed config.seed + 100_003 (b + 1), first sample b * batch_size):
    under torchrun rank b % world draws it into its own folder, and the batches are gathered to
    every rank through torch.distributed, so every rank returns what one process draws."""
    device = local_device(config)
    score_fn = factories.build_score_fn(config, sde, model, device)
    labels = factories.label_sampler(config)
    grid = fitted_grid(config, sde, score_fn, data, labels, folder) if config.sampling.grid == "fitted" else None
    gamma = None
    if config.sampling.method == "ancestral" and config.sampling.variance == "analytic":
        gamma = bound.sampler_gamma(config, sde, model, data, grid, folder, device)
    sample = (_task_sampler(config, sde, data, device) if config.sampling.task != "none"
              else factories.build_sampler(config, sde, device, grid, gamma=gamma))
    os.makedirs(folder, exist_ok=True)
    bs = config.sampling.batch_size
    text = caption_data.sample_cond(config, model, bs)  # the prompt tokenized (and any warning given) once

    def batch(b: int) -> np.ndarray:
        path, size = os.path.join(folder, f"batch_{b}.npz"), min(bs, n - b * bs)
        settings = _sample_settings(config, size)
        kept = read_batch(path, settings)
        if kept is None:
            with torch.no_grad():
                x, _ = sample(score_fn, data.sample_shape(size), seed=config.seed + 100_003 * (b + 1),
                              start=b * bs, cond={**labels(size, start=b * bs),
                                                  **super_resolution.sample_cond(config, data, size, b * bs),
                                                  **{k: v[:size] for k, v in text.items()}})
            kept = data.to_data_space(x).numpy()
            checkpoints.atomic_write_bytes(path, lambda f: np.savez(f, samples=kept, settings=np.array(settings)),
                                           what=f"sample batch {b}")
        return kept

    mine = distributed.my_batches(math.ceil(n / bs))
    parts = distributed.gather_dict({b: batch(b) for b in _progress(mine, "samples")})
    return torch.cat([torch.from_numpy(parts[b]) for b in sorted(parts)])[:n]


def fitted_grid(config, sde, score_fn, data, labels, folder: str) -> torch.Tensor:
    """sampling.grid = "fitted": the times `samplers.fit_grid` fits for this checkpoint (the folder
    names it), sampler and step count, on sampling.fit_pilot draws (seed config.seed + 7, labels as
    for the first samples) in one batch. Rank 0 fits once and keeps the times with their settings in
    <folder>/fitted_grid.json, read back while the settings match; every rank gets rank 0's times."""
    s, path, times = config.sampling, os.path.join(folder, "fitted_grid.json"), None
    settings = _sample_settings(config, s.fit_pilot)
    if distributed.is_main():
        os.makedirs(folder, exist_ok=True)
        times = _read_grid(path, settings)
        if times is None:
            times = _fit_grid(config, sde, score_fn, data, labels, path, settings)
    return torch.tensor(distributed.gather_dict({"times": times} if distributed.is_main() else {})["times"],
                        dtype=torch.float64)


def _fit_grid(config, sde, score_fn, data, labels, path: str, settings: str) -> List[float]:
    """Fit the grid (`fitted_grid`), write it atomically to `path` with `settings`; its times."""
    s, device, t0 = config.sampling, local_device(config), time.perf_counter()
    cond = {k: v.to(device) for k, v in labels(s.fit_pilot, start=0).items()}
    try:
        grid, info = samplers.fit_grid(sde, score_fn, data.sample_shape(s.fit_pilot), steps=s.steps, sampler=s.method,
                                       sampler_kwargs=factories.sampler_options(config), eps=s.eps,
                                       max_evals=s.fit_evals or None, seed=config.seed + 7, device=device, cond=cond)
    except ValueError as e:  # e.g. a stochastic choice of sampler options
        raise ConfigError(f"sampling.grid = 'fitted': {e}") from e
    times = grid.tolist()
    checkpoints.atomic_write_text(path, json.dumps({"settings": settings, "times": times, "info": info}, indent=1))
    logging.info("fitted a %d-step grid for %s on %d pilot draws in %.0f s (%d network calls): error against "
                 "the converged flow %.4g -> %.4g; kept in %s", s.steps, s.method, s.fit_pilot,
                 time.perf_counter() - t0, info["network_calls"], info["pilot_error_initial"], info["pilot_error"], path)
    return times


def _read_grid(path: str, settings: str) -> Optional[List[float]]:
    """The times of a fitted_grid.json written with `settings`, else None."""
    if not os.path.exists(path):
        return None
    with open(path) as f:
        kept = json.load(f)
    if kept.get("settings") == settings:
        return kept["times"]
    logging.info("%s was fitted with other sampling settings; fitting it again", path)
    return None


def _progress(batches: range, desc: str):
    """A bar over this rank's batches, shown by rank 0 alone and only when stderr is a terminal."""
    return tqdm(batches, desc=desc, dynamic_ncols=True, disable=None if distributed.is_main() else True)


def local_device(config) -> torch.device:
    """Where this process computes: config.device, or cuda:LOCAL_RANK for CUDA under torchrun."""
    return distributed.local_device(runtime.get_device(config))


def _task_sampler(config, sde, data, device: torch.device):
    """The sampler of config.sampling.task on `device`, on the observed images: a posterior sampler, or
    inpainting / colorization by replacement."""
    d = config.data
    shape = (d.num_channels, d.image_size, d.image_size)  # the images', also for a latent model
    try:
        observed = data_lib.load_observed(config.sampling.observed, shape)
        mask = data_lib.inpainting_mask(config.sampling.mask, shape) if config.sampling.task == "inpaint" else None
    except ValueError as e:
        raise ConfigError(str(e)) from e
    observed = data.scaler(image_data.to_unit_interval(observed))
    if isinstance(data, latent_data.LatentData):  # inpaint the latents: the known ones, and their values
        observed, mask = data.encode_observed(observed), data.latent_mask(mask)
    if inverse_problems.uses_posterior_sampler(config):
        return inverse_problems.build_posterior_sampler(config, sde, device, observed, mask)
    return factories.build_task_sampler(config, sde, device, observed, mask)


def _sample_settings(config, size: int) -> str:
    """What a batch's samples depend on besides the weights (the folder names the checkpoint step)."""
    return json.dumps({"sampling": config.sampling.to_dict(), "seed": config.seed, "size": size,
                       "sde": config.sde.to_dict(), "device": str(runtime.get_device(config))},
                      sort_keys=True, default=str)


def read_batch(path: str, settings: str) -> Optional[np.ndarray]:
    """The samples of a batch file drawn with `settings`, else None."""
    if not os.path.exists(path):
        return None
    try:
        with np.load(path) as f:
            if "settings" in f and str(f["settings"]) == settings:
                return f["samples"]
    except (OSError, ValueError, KeyError, zipfile.BadZipFile) as e:  # this toolkit's own file: draw it again
        logging.warning("%s is unreadable (%s: %s); drawing it again", path, type(e).__name__, e)
        os.remove(path)
        return None
    logging.info("%s was drawn with other sampling settings; drawing it again", path)
    return None


def load_samples(folder: str) -> np.ndarray:
    """Every batch in a samples folder, concatenated in batch order: uint8 images or float32 points."""
    paths = glob.glob(os.path.join(folder, "batch_*.npz"))
    paths.sort(key=lambda p: int(re.search(r"batch_(\d+)\.npz$", p).group(1)))
    if not paths:
        raise MissingInputError(f"no batch_<b>.npz files in {folder}")
    return np.concatenate([_samples_of(p) for p in paths])


def _samples_of(path: str) -> np.ndarray:
    try:
        with np.load(path) as f:
            return f["samples"]
    except (OSError, ValueError, KeyError, zipfile.BadZipFile) as e:
        raise BadFileError(f"{path}: not a readable sample batch ({type(e).__name__}: {e})") from e


def _prepare(config, workdir: str, eval_folder: str, mode: str, net=None):
    """What `evaluate` and `sample` start from: (sde, data, EMA model on config.device, its step,
    the output folder)."""
    net = check_inputs(config, workdir, mode) if net is None else net
    sde = factories.build_sde(config)
    data = super_resolution.wrap(config, latent_data.wrap(config, data_lib.load(config), local_device(config)), sde)
    model, ckpt_step = load_ema_model(config, workdir, net)
    if distributed.is_main():
        checkpoints.start_run(workdir, config)
        latent_data.pin_autoencoder(workdir, data)
    out_dir = os.path.join(workdir, eval_folder)
    os.makedirs(out_dir, exist_ok=True)
    return sde, data, model.to(local_device(config)), ckpt_step, out_dir


def evaluate(config, workdir: str, eval_folder: str = "eval", net=None) -> Dict[str, float]:
    """Everything config.eval enables; results in <workdir>/<eval_folder>/results.json. `net`: what
    `check_inputs(config, workdir, "eval")` returned (its checks are then not repeated). Under
    torchrun all ranks share the NLL and sampling work; rank 0 alone computes the rest, writes and
    returns the results, the other ranks return {}."""
    sde, data, model, ckpt_step, out_dir = _prepare(config, workdir, eval_folder, "eval", net)
    main = distributed.is_main()
    results: Dict[str, float] = {"checkpoint_step": ckpt_step}
    if config.eval.enable_loss and main:
        results["heldout_loss"] = heldout_loss(config, sde, model, data)
    if config.eval.enable_nll:
        results.update(heldout_nll(config, sde, model, data, out_dir, ckpt_step))
    if config.eval.enable_bound:
        results.update(bound.heldout_bound(config, sde, model, data, out_dir, ckpt_step, BatchLog))
    if config.eval.enable_samples:
        folder = samples_folder(config, out_dir, ckpt_step)
        x = draw_samples(config, sde, model, data, folder, config.eval.n_samples)
        if main:
            results.update(data.quality(x))
            data.plot(x, folder + ".png", f"{len(x)} EMA samples, step {ckpt_step}")
    if not main:
        return {}
    with open(os.path.join(out_dir, "results.json"), "w") as f:
        json.dump(results, f, indent=2)
    print(format_table(results))
    return results


def sample(config, workdir: str, eval_folder: str = "eval", net=None) -> str:
    """config.sampling.n_samples samples with the configured sampler, saved once: the batch files
    of `draw_samples` and a .png of them. Returns the folder of batch files (`load_samples` reads
    it). `net`: what `check_inputs(config, workdir, "sample")` returned. Under torchrun the ranks
    share the batches and rank 0 alone draws the picture."""
    sde, data, model, ckpt_step, out_dir = _prepare(config, workdir, eval_folder, "sample", net)
    folder = samples_folder(config, out_dir, ckpt_step)
    x = draw_samples(config, sde, model, data, folder, config.sampling.n_samples)
    if distributed.is_main():
        _plot_samples(config, data, x, folder, ckpt_step)
    return folder


def _plot_samples(config, data, x: torch.Tensor, folder: str, ckpt_step: int) -> None:
    """<folder>.png: the samples, one row per class when every class was sampled in turn."""
    labels = factories.sample_labels(config, len(x)).get("y")
    title = f"{len(x)} samples, step {ckpt_step}" + _guidance_note(config)
    if labels is not None and data.kind == "images" and config.sampling.class_label < 0:
        data.plot_by_class(x, labels, folder + ".png", title + "; one row per class")
    else:
        data.plot(x, folder + ".png", title)
    logging.info("wrote %d samples to %s/ and %s.png", len(x), folder, folder)


def _guidance_note(config) -> str:
    s = config.sampling
    return f", {s.guidance} guidance w={s.guidance_scale:g}" if s.guidance_scale > 0 else ""


def format_table(results: Dict[str, float]) -> str:
    """The results as a two-column table, each name with its METRIC_NOTES note ("KID (classifier
    features: ...)" takes KID's; "KID std" none)."""
    names = {k: next((f"{k} ({note})" for m, note in METRIC_NOTES.items() if k == m or k.startswith(m + " (")), k)
             for k in results}
    width = max(len(n) for n in names.values())
    lines: List[str] = [f"{'metric'.ljust(width)}  value", f"{'-' * width}  ------------"]
    for k, v in results.items():
        lines.append(f"{names[k].ljust(width)}  {v:.6g}" if isinstance(v, float) else f"{names[k].ljust(width)}  {v}")
    return "\n".join(lines)
