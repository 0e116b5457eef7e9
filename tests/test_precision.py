"""Mixed precision and the speed options of training: bf16 and fp16 track fp32, fp16 overflows skip
the step, fp16 runs resume exactly, and options the device cannot run are refused up front."""
import json
import logging
import os

import pytest
import torch

from configs.image_defaults import get_image_config
from score_toolkit import checkpoints
from score_toolkit import data_lib
from score_toolkit import errors
from score_toolkit import factories
from score_toolkit import runtime
from score_toolkit import training
from score_toolkit import validation
from score_toolkit.config_keys import set_keys
from tests.helpers import assert_same_state, small_config

# Largest relative difference allowed between a bf16 / fp16 run's logged losses and fp32's over the
# same 100 steps (same data, times and noise). Measured here: ~1e-3 for both.
LOSS_RTOL = 0.02


def run(tmp_path, name, max_steps=None, **overrides):
    c = small_config(**{"training.n_iters": 100, "training.log_freq": 10, "training.checkpoint_freq": 10,
                        "training.snapshot_freq": 10 ** 6, **overrides})
    workdir = str(tmp_path / name)
    training.train(c, workdir, max_steps=max_steps)
    rows = [json.loads(line) for line in open(os.path.join(workdir, "metrics.jsonl"))]
    return workdir, rows


def scaler_options(monkeypatch, **options):
    """make TrainState's fp16 loss scaler with these GradScaler options (init_scale, growth_interval)."""
    monkeypatch.setattr(training, "make_grad_scaler",
                        lambda device, enabled: torch.amp.GradScaler(device.type, enabled=enabled, **options))


@pytest.fixture(scope="module")
def fp32_losses(tmp_path_factory):
    return [r["loss"] for r in run(tmp_path_factory.mktemp("fp32"), "run")[1]]


@pytest.mark.parametrize("precision", ["bf16", "fp16"])
def test_half_precision_losses_track_fp32_and_weights_stay_fp32(tmp_path, fp32_losses, precision):
    workdir, rows = run(tmp_path, precision, **{"training.precision": precision})
    losses = [r["loss"] for r in rows]
    assert len(losses) == len(fp32_losses) == 10
    for a, b in zip(losses, fp32_losses):
        assert abs(a - b) <= LOSS_RTOL * b, (losses, fp32_losses)
    assert losses != fp32_losses  # autocast did run the network in half precision
    _, state = checkpoints.load_latest(os.path.join(workdir, "checkpoints"))
    tensors = list(state["model"].values()) + state["ema"]["shadow_params"] + [
        v for s in state["optimizer"]["state"].values() for k, v in s.items() if k != "step"]
    assert all(t.dtype == torch.float32 for t in tensors)
    assert ("scaler" in state) == (precision == "fp16") and ("loss_scale" in rows[-1]) == (precision == "fp16")


def test_tf32_on_cpu_is_fp32_bit_for_bit(tmp_path, caplog):
    with caplog.at_level(logging.INFO):
        a, _ = run(tmp_path, "tf32", max_steps=20, **{"training.precision": "tf32"})
    b, _ = run(tmp_path, "fp32", max_steps=20)
    assert "runs in fp32" in caplog.text
    assert_same_state(checkpoints.load_latest(a + "/checkpoints")[1], checkpoints.load_latest(b + "/checkpoints")[1])


def one_step_setup(config):
    net = validation.validate_config(config)
    state = training.TrainState(config, net)
    sde = factories.build_sde(config)
    batch, _ = data_lib.load(config).train_batch(config.training.batch_size, state.generator)
    return state, factories.build_loss(config, sde), factories.build_precond(config, sde, state.model), batch


def test_fp16_overflow_skips_the_step_and_says_so(tmp_path, monkeypatch, caplog):
    scaler_options(monkeypatch, init_scale=2.0 ** 40)  # gradients x 2^40 overflow float16 (max 65504)
    config = small_config(**{"training.precision": "fp16"})
    state, loss_fn, model, batch = one_step_setup(config)
    before = [p.detach().clone() for p in state.model.parameters()]
    ema_before = [p.clone() for p in state.ema.shadow_params]
    with caplog.at_level(logging.WARNING):
        loss, grad_norm = training.train_step(state, loss_fn, model, batch, config)
    assert torch.isfinite(torch.tensor(loss)) and not torch.isfinite(torch.tensor(grad_norm))
    assert all(torch.equal(a, b) for a, b in zip(before, state.model.parameters()))
    assert all(torch.equal(a, b) for a, b in zip(ema_before, state.ema.shadow_params))
    assert state.step == 1 and state.scaler.get_scale() == 2.0 ** 39
    assert "step 1: fp16 gradients overflowed at loss scale 1.09951e+12; optimizer step skipped, " \
           "loss scale now 5.49756e+11" in caplog.text


def test_fp16_overflows_do_not_stop_training_but_a_nan_loss_does(tmp_path, monkeypatch, caplog):
    scaler_options(monkeypatch, init_scale=2.0 ** 40)
    with caplog.at_level(logging.WARNING):
        _, rows = run(tmp_path, "overflow", max_steps=40, **{"training.precision": "fp16"})
    assert caplog.text.count("optimizer step skipped") >= 20  # 2^40 halves to below 2^20 before steps succeed
    assert rows[-1]["step"] == 40 and rows[-1]["loss_scale"] < 2.0 ** 20
    real = factories.build_loss

    def poisoned(config, sde):
        fn, calls = real(config, sde), [0]

        def loss_fn(score_fn, x, g, cond=None):
            calls[0] += 1
            return fn(score_fn, x, g, cond) * (float("nan") if calls[0] == 15 else 1.0)

        return loss_fn

    monkeypatch.setattr(training.factories, "build_loss", poisoned)
    with pytest.raises(training.TrainingDiverged, match=r"loss is nan at step 15"):
        run(tmp_path, "nan", **{"training.precision": "fp16"})


def test_fp16_resume_with_its_loss_scale_is_bit_identical(tmp_path, monkeypatch):
    # A scale that overflows at first and grows every 4 good steps: the scaler's state changes all run long.
    scaler_options(monkeypatch, init_scale=2.0 ** 30, growth_interval=4)
    fp16 = {"training.precision": "fp16", "training.n_iters": 40, "training.checkpoint_freq": 20}
    whole, _ = run(tmp_path, "whole", **fp16)
    run(tmp_path, "halves", max_steps=20, **fp16)
    halves, _ = run(tmp_path, "halves", **fp16)
    a, b = (checkpoints.load_latest(w + "/checkpoints") for w in (whole, halves))
    assert a[0] == b[0] == 40
    assert_same_state(a[1], b[1])
    assert a[1]["scaler"] == b[1]["scaler"] and a[1]["scaler"]["scale"] != 2.0 ** 30


@pytest.mark.parametrize("impl", ["foreach", "fused"])
def test_adam_implementations_agree(tmp_path, impl):
    a, _ = run(tmp_path, impl, max_steps=10, **{"optim.impl": impl})
    b, _ = run(tmp_path, "default", max_steps=10)
    wa, wb = (checkpoints.load_latest(w + "/checkpoints")[1]["model"] for w in (a, b))
    for k in wa:
        torch.testing.assert_close(wa[k], wb[k], rtol=1e-5, atol=1e-6)


def tiny_image_config(**overrides):
    c = get_image_config("cifar10", "vpsde", "ddpmpp", "small")
    c.device, c.num_threads = "cpu", 1
    c.model.nf, c.model.ch_mult, c.model.num_res_blocks, c.model.attn_resolutions = 8, (1, 2), 1, ()
    c.data.image_size = c.model.image_size = 16
    c.training.batch_size = 4
    return set_keys(c, **overrides)


def test_channels_last_trains_the_same_step(monkeypatch):
    results = []
    for channels_last in (False, True):
        c = tiny_image_config(**{"training.channels_last": channels_last})
        state = training.TrainState(c, validation.validate_config(c))
        sde = factories.build_sde(c)
        x = torch.randn(4, 3, 16, 16, generator=torch.Generator().manual_seed(0))
        if channels_last:
            x = x.contiguous(memory_format=torch.channels_last)
        loss, _ = training.train_step(state, factories.build_loss(c, sde), factories.build_precond(c, sde, state.model), x, c)
        conv = next(p for p in state.model.parameters() if p.ndim == 4)
        assert conv.is_contiguous(memory_format=torch.channels_last) == channels_last
        results.append((loss, [p.detach().clone() for p in state.model.parameters()]))
    assert results[0][0] == pytest.approx(results[1][0], rel=1e-5)
    for a, b in zip(results[0][1], results[1][1]):
        torch.testing.assert_close(a, b, rtol=1e-4, atol=1e-6)


def test_compile_flag_compiles_the_training_forward_only(tmp_path, monkeypatch):
    compiled = []

    def fake_compile(module):  # torch.compile of the tiny MLP took 55 s on this 2-core CPU: too long for a unit test
        compiled.append(module)
        return module

    monkeypatch.setattr(training.torch, "compile", fake_compile)
    state = training.train(small_config(**{"compile": True}), str(tmp_path), max_steps=3)
    assert compiled == [state.model]


@pytest.mark.parametrize("key, value, message", [
    ("training.precision", "fp8", r"config.training.precision = 'fp8' is not allowed: must be one of \['bf16', "
                                  r"'fp16', 'fp32', 'tf32'\]"),
    ("optim.impl", "apex", r"config.optim.impl = 'apex' is not allowed: must be one of \['default', 'foreach', 'fused'\]"),
    ("training.channels_last", True, r"config.training.channels_last = True is not allowed: .*point data"),
])
def test_bad_speed_options_are_refused(key, value, message):
    with pytest.raises(errors.ConfigError, match=message):
        validation.validate_config(small_config(**{key: value}))


def test_what_this_torch_runs_on_the_cpu():
    """The facts the checks rely on here: CPU autocast takes both half types, and fused Adam runs on the CPU."""
    assert runtime.autocast_supported("cpu", torch.bfloat16) and runtime.autocast_supported("cpu", torch.float16)
    assert runtime.fused_adam_supported(torch.device("cpu"))


def test_device_limits_are_refused_before_any_work(monkeypatch):
    monkeypatch.setattr(runtime, "get_device", lambda config: torch.device("cuda"))
    monkeypatch.setattr(torch.cuda, "is_bf16_supported", lambda: False)
    monkeypatch.setattr(torch.cuda, "get_device_name", lambda device=None: "Tesla V100")
    with pytest.raises(errors.ConfigError, match=r"training.precision = 'bf16' .*Tesla V100 does not support bfloat16"):
        validation.validate_config(small_config(**{"training.precision": "bf16"}))
    monkeypatch.setattr(runtime, "autocast_supported", lambda device_type, dtype: False)
    with pytest.raises(errors.ConfigError, match=r"training.precision = 'fp16' .*no torch.float16 autocast on cuda"):
        validation.validate_config(small_config(**{"training.precision": "fp16"}))
    monkeypatch.setattr(runtime, "fused_adam_supported", lambda device: False)
    with pytest.raises(errors.ConfigError, match=r"optim.impl = 'fused' .*no fused Adam on cuda; use 'foreach'"):
        validation.validate_config(small_config(**{"optim.impl": "fused"}))
