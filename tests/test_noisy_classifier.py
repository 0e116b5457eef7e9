"""Noise-conditional classifiers: trained on the labelled 2-D mixture they approach the exact
classifier p_t(y | x) (the mixture's component posterior) at every t, and guide an unconditional
score to the class's component."""
import pytest
import torch

import samplers
from samplers.guidance import classifier_gradient, classifier_guided_score
from score_toolkit.noisy_classifier import (EVAL_FRACTIONS, build_noisy_classifier, classifier_logits_fn,
                                            load_noisy_classifier, noisy_accuracy, save_noisy_classifier,
                                            train_noisy_classifier)
from tests.helpers import make_sdes, mixture_2d

MIX = mixture_2d()
TIMES = (0.05, 0.4, 1.0)
SMALL = dict(hidden=64, num_layers=1)  # enough for two components; trains in ~1 s


def mixture_data():
    x, y = MIX.sample(4000, torch.Generator().manual_seed(0), return_labels=True)
    x_test, y_test = MIX.sample(2000, torch.Generator().manual_seed(1), return_labels=True)
    return x, y, x_test, y_test


@pytest.fixture(scope="module", params=["vp", "ve"])
def trained(request):
    sde = make_sdes()[request.param]
    x, y, x_test, y_test = mixture_data()
    net, accuracy = train_noisy_classifier(sde, x, y, steps=600, batch_size=256, seed=0, lr=3e-3, x_test=x_test,
                                           y_test=y_test, eval_times=TIMES, **SMALL)
    exact = noisy_accuracy(lambda x, t: MIX.log_posterior(x, sde, t), sde, x_test, y_test, TIMES)
    return sde, net, accuracy, exact


def test_accuracy_approaches_the_exact_classifier_and_falls_to_chance_at_T(trained):
    sde, net, accuracy, exact = trained
    assert set(accuracy) == set(TIMES)
    assert exact[0.05] > 0.99                                       # separated components at small t
    assert abs(exact[1.0] - float(MIX.weights.max())) < 0.03        # at T only the prior is left: chance
    for t in TIMES:
        assert abs(accuracy[t] - exact[t]) < 0.03, (t, accuracy, exact)
    assert accuracy[0.05] >= accuracy[0.4] >= accuracy[1.0] and accuracy[0.05] - accuracy[1.0] > 0.25


def test_guidance_with_the_trained_classifier_reaches_the_class_component(trained):
    sde, net, _, _ = trained
    n = 1000
    y = torch.arange(n) % 2
    score_fn = classifier_guided_score(MIX.score_fn(sde), classifier_logits_fn(net, sde), 1.0)
    for name, kwargs in (("dpmpp_2m", {"steps": 30}), ("pc", {"steps": 100})):
        x, _ = samplers.get_sampler(name)(sde, score_fn, (n, 2), seed=0, cond={"y": y}, **kwargs)
        for k in range(2):
            assert (MIX.component_of(x[y == k]) == k).double().mean() > 0.9, (name, k)


def test_training_is_seeded_and_leaves_the_global_rng_alone():
    sde, (x, y, _, _) = make_sdes()["vp"], mixture_data()
    state = torch.get_rng_state()
    runs = [train_noisy_classifier(sde, x, y, steps=20, batch_size=64, seed=s, eval_times=[0.5], **SMALL)[0]
            for s in (3, 3, 4)]
    assert torch.equal(torch.get_rng_state(), state)
    same = [torch.equal(a, b) for a, b in zip(runs[0].state_dict().values(), runs[1].state_dict().values())]
    other = [torch.equal(a, b) for a, b in zip(runs[0].state_dict().values(), runs[2].state_dict().values())]
    assert all(same) and not all(other)


def two_class_images(n, seed):
    """uint8 8x8 images: class 0 bright on top, class 1 bright at the bottom, with pixel noise."""
    g = torch.Generator().manual_seed(seed)
    y = torch.randint(0, 2, (n,), generator=g)
    top = torch.cat([torch.full((4, 8), 200.0), torch.full((4, 8), 55.0)])
    images = torch.where(y[:, None, None] == 0, top, top.flip(0)) + 30 * torch.randn(n, 8, 8, generator=g)
    return images.clamp(0, 255).round().to(torch.uint8)[:, None], y


def test_image_classifier_learns_noisy_images_and_guides_every_pixel():
    sde = make_sdes()["vp"]
    images, y = two_class_images(512, 0)
    test_images, test_y = two_class_images(400, 1)
    to_model_space = lambda k: k.float() / 127.5 - 1        # uint8 -> [-1, 1]
    net, accuracy = train_noisy_classifier(sde, images, y, steps=120, batch_size=64, seed=0, width=8, hidden=32,
                                           x_test=test_images, y_test=test_y, transform=to_model_space,
                                           eval_times=[0.05, 1.0])
    assert net.arch["kind"] == "images" and net.arch["in_channels"] == 1
    assert accuracy[0.05] > 0.95 and abs(accuracy[1.0] - 0.5) < 0.1, accuracy
    x = to_model_space(test_images[:6])
    with torch.no_grad():  # as inside a sampler
        grad = classifier_gradient(classifier_logits_fn(net, sde), x, torch.full((6,), 0.3), test_y[:6])
    assert grad.shape == x.shape and (grad != 0).all()


def test_save_and_load_give_the_same_classifier(tmp_path):
    sde = make_sdes()["ve"]
    torch.manual_seed(0)
    net = build_noisy_classifier("points", 3, conditioning="sigma", **SMALL)
    path = tmp_path / "noisy.pt"
    save_noisy_classifier(path, net, {0.05: 0.99, 1.0: 0.4}, data="gmm", sde="vesde")
    loaded, accuracy, info = load_noisy_classifier(path)
    x, t = torch.randn(5, 2), torch.rand(5) * 0.9 + 0.05
    assert torch.equal(classifier_logits_fn(net, sde)(x, t), classifier_logits_fn(loaded, sde)(x, t))
    assert accuracy == {0.05: 0.99, 1.0: 0.4} and info == {"data": "gmm", "sde": "vesde"}
    assert classifier_logits_fn(loaded, sde).num_classes == 3
    with pytest.raises(FileExistsError):
        save_noisy_classifier(path, net)
    with pytest.raises(FileNotFoundError, match="train one first"):
        load_noisy_classifier(tmp_path / "missing.pt")
    torch.save({"state_dict": {}}, tmp_path / "other.pt")
    with pytest.raises(ValueError, match="not a noisy classifier file, missing"):
        load_noisy_classifier(tmp_path / "other.pt")


def test_bad_arguments_are_refused_by_name():
    vp, ve = make_sdes()["vp"], make_sdes()["ve"]
    x, y = torch.randn(10, 2), torch.arange(10) % 2
    with pytest.raises(ValueError, match=r"kind must be one of \('points', 'images'\), got 'voxels'"):
        build_noisy_classifier("voxels", 2)
    with pytest.raises(ValueError, match="num_classes must be a positive integer, got 0"):
        build_noisy_classifier("points", 0)
    with pytest.raises(ValueError, match=r"trained on 'time' noise labels, but the SDE VESDE labels noise by 'sigma'"):
        classifier_logits_fn(build_noisy_classifier("points", 2), ve)
    with pytest.raises(ValueError, match=r"y_train must be integer class labels in \[0, 2\).*got y_train\[2\] = 2"):
        train_noisy_classifier(vp, x, torch.arange(10) % 3, steps=1, num_classes=2)
    with pytest.raises(ValueError, match=r"y_train must be integer class labels .* \(shape \[10\]\); got torch.float32"):
        train_noisy_classifier(vp, x, y.float(), steps=1)
    with pytest.raises(ValueError, match="x of dtype torch.uint8: pass data in model space"):
        train_noisy_classifier(vp, torch.zeros(10, 1, 4, 4, dtype=torch.uint8), y, steps=1)
    with pytest.raises(ValueError, match="steps must be a positive integer, got 0"):
        train_noisy_classifier(vp, x, y, steps=0)
    with pytest.raises(ValueError, match=r"eps must lie in \(0, T\) = \(0, 1\), got 2"):
        train_noisy_classifier(vp, x, y, steps=1, eps=2)
    assert EVAL_FRACTIONS[-1] == 1.0
