"""The training loop: denoising score matching with Adam, warm-up, clipping and EMA, resumable exactly.

Every source of randomness (data batches, diffusion times and noise, dropout) is drawn from RNGs
whose states go into each checkpoint, so a run killed at any point and started again ends with
the same weights, bit for bit, as one that never stopped.
"""
from __future__ import annotations

import contextlib
import json
import logging
import math
import os
import signal
import threading
import time
from typing import Optional

import torch
from tqdm.auto import tqdm

from score_toolkit import bound
from score_toolkit import caption_data
from score_toolkit import checkpoints
from score_toolkit import data_lib
from score_toolkit import distributed
from score_toolkit import evaluation
from score_toolkit import latent_data
from score_toolkit import memory
from score_toolkit import factories
import models
from score_toolkit import plotting
from score_toolkit import run_config
from score_toolkit import runtime
from score_toolkit import super_resolution
from score_toolkit import validation
from score_toolkit.errors import ConfigError, UserError
from score_toolkit.run_config import config_differences, describe_differences


def make_grad_scaler(device: torch.device, enabled: bool) -> torch.amp.GradScaler:
    """The fp16 loss scaler (a disabled one, which passes everything through, in other modes)."""
    return torch.amp.GradScaler(device.type, enabled=enabled)


class TrainState:
    """Model, EMA, optimizer, step and RNG states: everything a run needs to continue exactly."""

    def __init__(self, config, net: Optional[torch.nn.Module] = None, loss_fn=None):
        """`net`: the network as `validation.validate_config` built it (seeded by config.seed); built here if None.
        `loss_fn`: the loss, whose state (the bound's term sampler, `vlb_losses.VLBLoss`) is checkpointed
        where it has one."""
        self.loss_fn = loss_fn
        torch.manual_seed(config.seed)  # seeds CUDA's generators too
        self.device = evaluation.local_device(config)
        # Built on the CPU, then moved: the same seed gives the same initial weights on every device.
        self.model = (net if net is not None else factories.build_model(config)).to(self.device)
        self.ema = models.ExponentialMovingAverage(self.model.parameters(), decay=config.model.ema_rate)
        self.precision = config.training.precision
        if config.training.channels_last:
            self.model.to(memory_format=torch.channels_last)
        o = config.optim
        impl = {} if o.impl == "default" else {o.impl: True}  # foreach=True or fused=True
        self.optimizer = torch.optim.Adam(self.model.parameters(), lr=o.lr, betas=(o.beta1, 0.999), eps=o.eps,
                                          weight_decay=o.weight_decay, **impl)
        self.scaler = make_grad_scaler(self.device, enabled=self.precision == "fp16")
        self.step = 0
        # Batches, times and noise come from this CPU generator on every device, so a run's data
        # stream does not depend on where it trains; dropout draws from the device's own RNG.
        self.generator = torch.Generator().manual_seed(config.seed + 1)

    def autocast(self):
        """The forward pass's context: torch.autocast for bf16 and fp16, nothing otherwise."""
        dtype = runtime.AUTOCAST_DTYPES.get(self.precision)
        return torch.autocast(self.device.type, dtype=dtype) if dtype else contextlib.nullcontext()

    @contextlib.contextmanager
    def matmul_precision(self):
        """TF32 matmuls and convolutions while training with precision "tf32" on CUDA; the flags are
        restored after, so sampling and likelihoods stay fp32."""
        if self.precision != "tf32" or self.device.type != "cuda":
            yield
            return
        saved = torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32
        torch.backends.cuda.matmul.allow_tf32 = torch.backends.cudnn.allow_tf32 = True
        try:
            yield
        finally:
            torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32 = saved

    def rng_state(self) -> dict:
        state = {"generator": self.generator.get_state(), "torch": torch.get_rng_state()}
        if self.device.type == "cuda":
            state["cuda"] = torch.cuda.get_rng_state(self.device)
        return state

    def state_dict(self, config) -> dict:
        state = {"model": self.model.state_dict(), "ema": self.ema.state_dict(),
                 "optimizer": self.optimizer.state_dict(), "step": self.step,
                 "rng": self.rng_state(), "config": config.to_json(), "world_size": distributed.world()}
        if self.scaler.is_enabled():  # fp16: the loss scale and its growth counter, for an exact resume
            state["scaler"] = self.scaler.state_dict()
        if hasattr(self.loss_fn, "state_dict"):  # e.g. the importance sampler's loss history
            state["loss"] = self.loss_fn.state_dict()
        return state

    def load_state_dict(self, state: dict) -> None:
        self.model.load_state_dict(state["model"])
        self.ema.load_state_dict(state["ema"])
        self.optimizer.load_state_dict(state["optimizer"])
        self.step = int(state["step"])
        if self.scaler.is_enabled() and "scaler" in state:
            self.scaler.load_state_dict(state["scaler"])
        if hasattr(self.loss_fn, "load_state_dict") and "loss" in state:
            self.loss_fn.load_state_dict(state["loss"])
        self.generator.set_state(state["rng"]["generator"])
        torch.set_rng_state(state["rng"]["torch"])
        if self.device.type == "cuda" and "cuda" in state["rng"]:
            torch.cuda.set_rng_state(state["rng"]["cuda"], self.device)


def _lr(config, step: int) -> float:
    """Linear warm-up to config.optim.lr over config.optim.warmup steps."""
    warmup = config.optim.warmup
    return config.optim.lr * min(1.0, (step + 1) / warmup) if warmup > 0 else config.optim.lr


def train_step(state: TrainState, loss_fn, model, batch: torch.Tensor, config, cond: Optional[dict] = None) -> tuple:
    """One optimizer step on `batch` with its conditioning `cond`; returns (loss, grad_norm) as floats.
    `model` is the network's `models.Precond` wrapper (or any score_fn).

    Under fp16 the loss is scaled before backward and the gradients unscaled before clipping; an
    overflow (non-finite gradients, finite loss) skips the optimizer and EMA updates, halves the
    scale and logs a warning, and the step still counts. A non-finite loss returns before any update."""
    for group in state.optimizer.param_groups:
        group["lr"] = _lr(config, state.step)
    with state.matmul_precision():
        with state.autocast():
            loss = loss_fn(model, batch, state.generator, cond)
        state.optimizer.zero_grad(set_to_none=True)
        state.scaler.scale(loss).backward()
    state.scaler.unscale_(state.optimizer)  # a no-op unless fp16
    clip = config.optim.grad_clip if config.optim.grad_clip > 0 else math.inf
    grad_norm = torch.nn.utils.clip_grad_norm_(state.model.parameters(), clip)
    loss_value = loss.item()
    if not math.isfinite(loss_value):
        return loss_value, float(grad_norm)
    scale = state.scaler.get_scale() if state.scaler.is_enabled() else None
    state.scaler.step(state.optimizer)  # optimizer.step(), skipped by an enabled scaler on inf/NaN gradients
    state.scaler.update()
    if scale is not None and state.scaler.get_scale() < scale:
        logging.warning("step %d: fp16 gradients overflowed at loss scale %g; optimizer step skipped, "
                        "loss scale now %g", state.step + 1, scale, state.scaler.get_scale())
    else:
        state.ema.update(state.model.parameters())
    state.step += 1
    return loss_value, float(grad_norm)


def resume_or_start(config, ckpt_dir: str, net: Optional[torch.nn.Module] = None, loss_fn=None) -> TrainState:
    state = TrainState(config, net, loss_fn)
    latest = checkpoints.load_latest(ckpt_dir, move_aside=distributed.is_main())
    if latest is not None:
        step, saved = latest
        refused, _ = config_differences(json.loads(saved["config"]), config) if saved.get("config") else ([], [])
        if refused:
            raise checkpoints.WorkdirMismatchError(f"the checkpoint of step {step} in {ckpt_dir} was trained with "
                                                   f"another config: {describe_differences(refused)}")
        state.load_state_dict(saved)
        logging.info("resumed from step %d (%s)", step, ckpt_dir)
        if int(saved.get("world_size", 1)) != distributed.world():  # the data stream does not depend on it
            logging.info("the checkpoint was trained on %d process(es), this run has %d",
                         int(saved.get("world_size", 1)), distributed.world())
    return state


@contextlib.contextmanager
def ema_weights(state):
    """state.model holds the EMA weights inside the block, its own weights again after it."""
    params = list(state.model.parameters())
    state.ema.store(params)
    state.ema.copy_to(params)
    try:
        yield
    finally:
        state.ema.restore(params)


def snapshot(state: TrainState, config, sde, data, workdir: str) -> str:
    """Samples from the EMA weights, saved as a PNG; the training RNGs are left untouched."""
    devices = [state.device] if state.device.type == "cuda" else []
    state.model.eval()
    try:
        with ema_weights(state), torch.no_grad(), torch.random.fork_rng(devices=devices):
            n = config.sampling.n_samples
            gamma = bound.snapshot_gamma(config, sde, state.model, data, state.device)
            sample = factories.build_sampler(config, sde, state.device, gamma=gamma)
            x, nfe = sample(factories.build_score_fn(config, sde, state.model, state.device), data.sample_shape(n),
                            seed=config.seed + state.step,
                            cond={**factories.sample_labels(config, n), **super_resolution.sample_cond(config, data, n),
                                  **caption_data.sample_cond(config, state.model, n)})
    finally:
        state.model.train()
    path = os.path.join(workdir, "samples", f"samples_{state.step}.png")
    data.plot(data.to_data_space(x), path, f"step {state.step} ({nfe} score evaluations)")
    return path


def save_stage(state: TrainState, config, workdir: str, name: str) -> str:
    """The EMA weights of a finished stage -> <workdir>/distilled/<name>.pt, in --mode export's layout
    (for config.eval.weights_path); written atomically, and never over an existing file."""
    path = os.path.join(workdir, "distilled", f"{name}.pt")
    if os.path.exists(path):  # a resumed run that reached this stage before: the same weights
        return path
    with ema_weights(state):
        weights = {k: v.detach().cpu().clone() for k, v in state.model.state_dict().items()}
    checkpoints.atomic_save(run_config.exported_weights(weights, state.step, config), path,
                            what=f"the distilled weights {name}")
    logging.info("stage %s done at step %d: %s", name, state.step, path)
    return path


class MetricsLog:
    """metrics.jsonl in the workdir: one JSON object per logged step, trimmed on resume."""

    def __init__(self, path: str, resume_step: int):
        self.path = path
        if os.path.exists(path):  # drop lines logged after the checkpoint we resume from
            with open(path) as f:
                kept = [line for line in f if line.strip() and json.loads(line)["step"] <= resume_step]
            with open(path, "w") as f:
                f.writelines(kept)

    def write(self, record: dict) -> None:
        with open(self.path, "a") as f:
            f.write(json.dumps(record) + "\n")

    def plot(self, path: str) -> None:
        with open(self.path) as f:
            rows = [json.loads(line) for line in f if line.strip()]
        if rows:
            plotting.loss_curve([r["step"] for r in rows], [r["loss"] for r in rows], path)


class TrainingStopped(KeyboardInterrupt):
    """Training stopped on SIGINT or SIGTERM after saving the step in progress; `signum` is the signal."""

    def __init__(self, message: str, signum: int):
        super().__init__(message)
        self.signum = signum


class TrainingDiverged(UserError, FloatingPointError):
    """The loss became NaN or infinite; nothing after the last checkpoint was saved."""

    exit_code = 1


class StopRequest:
    """While active, SIGINT (Ctrl-C) and SIGTERM (`kill`, `timeout`, a scheduler's pre-emption)
    only set `signum`: the loop finishes the step in progress, and `train` saves it and stops.
    A second signal interrupts at once. Signal handlers exist only in the main thread."""

    SIGNALS = (signal.SIGINT, signal.SIGTERM)

    def __init__(self):
        self.signum, self._previous = None, {}

    def __enter__(self) -> "StopRequest":
        if threading.current_thread() is threading.main_thread():
            self._previous = {s: signal.signal(s, self._handle) for s in self.SIGNALS}
        return self

    def _handle(self, signum, frame) -> None:
        if self.signum is not None:
            raise KeyboardInterrupt
        self.signum = signum

    def __exit__(self, *exc) -> None:
        for s, handler in self._previous.items():
            signal.signal(s, handler)


def _stop_if_not_finite(loss: float, step: int, ckpt_dir: str) -> None:
    if not math.isfinite(loss):
        last = checkpoints.list_checkpoints(ckpt_dir)
        raise TrainingDiverged(
            f"training loss is {loss} at step {step}; training stopped without saving. "
            f"The last good checkpoint is {last[0][1] if last else 'none (no checkpoint was written yet)'}")


def _agreed_stop(stop: StopRequest) -> Optional[int]:
    """The signal that stops training, agreed by all ranks: any rank's signal stops every rank."""
    return distributed.all_reduce_max(stop.signum or 0) or None if distributed.active() else stop.signum


def training_model(config, sde, state: TrainState) -> "models.Precond":
    """The preconditioned network that training steps call: state.model, its forward compiled by
    torch.compile when config.compile (the same parameters; snapshots sample with the uncompiled one).
    Under torchrun the network runs on this rank's rows of each global batch (distributed.ShardedNet)."""
    model = factories.build_precond(config, sde, state.model)
    if config.compile:
        model.net = torch.compile(state.model)
    if distributed.active():
        model.net = distributed.ShardedNet(model.net, state.device)
    return model


def check_inputs(config, workdir: str) -> torch.nn.Module:
    """Every check `train` needs, with nothing written: the config (validation.validate_config), the
    training data's files, and, for an existing workdir, that it was made with an equivalent config
    (checkpoints.check_run_config). Returns the network validate_config built."""
    net = validation.validate_config(config)
    world = distributed.env_world_size()
    validation.check_world_size(config, world)
    shape = (config.model.dim,) if config.data.kind == "points" else \
        (config.model.num_channels, config.model.image_size, config.model.image_size)
    memory.check_batch_fits(net, shape, config.training.batch_size // max(world, 1), runtime.get_device(config),
                            "training.batch_size")
    data_lib.check_files(config, ("train",))
    checkpoints.check_run_config(workdir, config)
    return net


def train(config, workdir: str, max_steps: Optional[int] = None, net: Optional[torch.nn.Module] = None,
          loss_fn=None) -> TrainState:
    """Train per config into workdir, resuming from its newest readable checkpoint.

    `max_steps` stops after that many steps of this call (a test hook); checkpoints still follow
    config.training.checkpoint_freq. `net`: what `check_inputs` returned, whose checks are then not
    repeated. SIGINT or SIGTERM saves the step in progress and raises TrainingStopped.
    Under torchrun every rank runs this; rank 0 alone writes, and a signal on any rank stops all of
    them after the same step.

    `loss_fn`: the loss to train (default `factories.build_loss(config, sde)`). One with hooks
    (`distillation`) has `before_step(state)` called before each step and `after_step(state)` after
    it; a name that after_step returns ends a stage, whose EMA weights are then written to
    <workdir>/distilled/<name>.pt (as --mode export writes them) beside a checkpoint.
    """
    if config.distill.method and loss_fn is None:
        raise ConfigError(f"config.distill.method = {config.distill.method!r} trains a student: use "
                          "distill_run.run (--mode distill), which attaches its teacher")
    if net is None:
        net = check_inputs(config, workdir)
    main = distributed.is_main()
    if main:
        checkpoints.start_run(workdir, config)
        os.makedirs(os.path.join(workdir, "samples"), exist_ok=True)
    ckpt_dir = os.path.join(workdir, "checkpoints")
    sde = factories.build_sde(config)
    data = super_resolution.wrap(config, latent_data.wrap(config, data_lib.load(config), evaluation.local_device(config)), sde)
    if main:
        latent_data.pin_autoencoder(workdir, data)
    loss_fn = factories.build_loss(config, sde) if loss_fn is None else loss_fn
    before, after = getattr(loss_fn, "before_step", None), getattr(loss_fn, "after_step", None)
    state = resume_or_start(config, ckpt_dir, net, loss_fn)
    data = caption_data.wrap(config, data, state.model)  # after the resume: the checkpoint's vocabulary
    if distributed.active():
        distributed.seed_rank_rng(config.seed, state.step)
    model = training_model(config, sde, state)
    if state.precision == "tf32" and state.device.type != "cuda":
        logging.info("training.precision = 'tf32' applies to CUDA matmuls only; on %s training runs in fp32",
                     state.device)
    metrics = MetricsLog(os.path.join(workdir, "metrics.jsonl"), state.step) if main else None
    t = config.training
    end = t.n_iters if max_steps is None else min(t.n_iters, state.step + max_steps)
    state.model.train()
    t0, s0 = time.perf_counter(), state.step
    with StopRequest() as stop, tqdm(total=t.n_iters, initial=state.step, desc="train", dynamic_ncols=True,
                                     disable=None if main else True) as bar:  # None: no bar unless a terminal
        signum = None
        while state.step < end and signum is None:
            batch, cond = data.train_batch(t.batch_size, state.generator)
            cond = {k: v.to(state.device) for k, v in model.select(cond).items()}
            batch = batch.to(state.device)
            if t.channels_last:
                batch = batch.contiguous(memory_format=torch.channels_last)
            if before is not None:
                before(state)
            loss, grad_norm = train_step(state, loss_fn, model, batch, config, cond)
            _stop_if_not_finite(loss, state.step + 1, ckpt_dir)
            stage = after(state) if after is not None else None
            bar.update(1)
            step = state.step
            if main and (step % t.log_freq == 0 or step == end):
                rate = (step - s0) / (time.perf_counter() - t0)
                bar.set_postfix(loss=f"{loss:.4f}", refresh=False)
                record = {"step": step, "loss": loss, "grad_norm": grad_norm, "lr": _lr(config, step - 1),
                          "steps_per_s": round(rate, 2)}
                if state.scaler.is_enabled():
                    record["loss_scale"] = state.scaler.get_scale()
                metrics.write(record)
                logging.info("step %d  loss %.5f  grad_norm %.3f  %.1f steps/s", step, loss, grad_norm, rate)
            if main and (step % t.checkpoint_freq == 0 or step == t.n_iters or stage):
                checkpoints.save_checkpoint(ckpt_dir, step, state.state_dict(config), t.keep_checkpoints)
            if main and stage:
                save_stage(state, config, workdir, stage)
            if main and (step % t.snapshot_freq == 0 or step == t.n_iters):
                logging.info("samples: %s", snapshot(state, config, sde, data, workdir))
                metrics.plot(os.path.join(workdir, "loss.png"))
            signum = _agreed_stop(stop)
    signum = _agreed_stop(stop)
    if signum is not None:
        if main and state.step and not os.path.exists(checkpoints.checkpoint_path(ckpt_dir, state.step)):
            checkpoints.save_checkpoint(ckpt_dir, state.step, state.state_dict(config), t.keep_checkpoints)
        distributed.barrier()  # no rank exits (which makes torchrun stop the others) before the save
        name = signal.Signals(signum).name
        saved = f"which is saved in {ckpt_dir}" if state.step else "before its first step"
        raise TrainingStopped(f"{name}: training stopped after step {state.step}, {saved}", signum)
    return state
