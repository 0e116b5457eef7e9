"""sample_quality: FID, KID and IS against closed forms, the extractor loading paths, the stats
file and the small classifier."""
import math

import numpy as np
import pytest
import scipy.linalg
import torch

from score_toolkit import image_data
from score_toolkit import sample_quality as sq


def random_rotation(dim, seed):
    q, r = np.linalg.qr(np.random.default_rng(seed).normal(size=(dim, dim)))
    return q * np.sign(np.diag(r))


def commuting_case(a, b, seed=0):
    """S1 = Q diag(a) Q^T, S2 = Q diag(b) Q^T share eigenvectors, so
    tr((S1 S2)^(1/2)) = sum sqrt(a b) and FID = |dmu|^2 + sum (sqrt a - sqrt b)^2."""
    q = random_rotation(len(a), seed)
    s1, s2 = (q * a) @ q.T, (q * b) @ q.T
    mu1, mu2 = np.arange(len(a), dtype=float), np.arange(len(a), dtype=float)[::-1] * 0.5
    expected = np.sum((mu1 - mu2) ** 2) + np.sum((np.sqrt(a) - np.sqrt(b)) ** 2)
    return (mu1, s1, mu2, s2), expected


def test_frechet_diagonal_closed_form():
    a, b = np.array([1.0, 4.0, 9.0]), np.array([4.0, 1.0, 0.25])
    mu1, mu2 = np.array([0.0, 1.0, 2.0]), np.array([1.0, 1.0, 0.0])
    # |dmu|^2 = 5; sum (sqrt a - sqrt b)^2 = 1 + 1 + 6.25
    assert sq.frechet_distance(mu1, np.diag(a), mu2, np.diag(b)) == pytest.approx(13.25, rel=1e-12)


def test_frechet_full_rank_commuting_and_general():
    rng = np.random.default_rng(1)
    args, expected = commuting_case(rng.uniform(0.1, 5, 6), rng.uniform(0.1, 5, 6))
    assert sq.frechet_distance(*args) == pytest.approx(expected, rel=1e-10)
    # General (non-commuting) full-rank pair against the sqrtm-of-the-product formula.
    a, b = rng.normal(size=(5, 5)), rng.normal(size=(5, 5))
    s1, s2 = a @ a.T + 0.1 * np.eye(5), b @ b.T + 0.1 * np.eye(5)
    mu1, mu2 = rng.normal(size=5), rng.normal(size=5)
    root = scipy.linalg.sqrtm(s1 @ s2)
    independent = np.sum((mu1 - mu2) ** 2) + np.trace(s1 + s2 - 2 * root.real)
    assert abs(root.imag).max() < 1e-8
    assert sq.frechet_distance(mu1, s1, mu2, s2) == pytest.approx(independent, rel=1e-9)


def test_frechet_singular_covariances_need_no_offset():
    # Rank-deficient covariances (as with fewer samples than feature dimensions).
    a = np.array([3.0, 1.0, 0.0, 0.0, 0.0])
    b = np.array([0.0, 2.0, 5.0, 0.0, 0.0])
    args, expected = commuting_case(a, b, seed=3)
    assert sq.frechet_distance(*args) == pytest.approx(expected, rel=1e-7)


def test_frechet_checks_arguments():
    eye = np.eye(3)
    with pytest.raises(ValueError, match=r"sigma2 has shape \(2, 2\), expected \(3, 3\)"):
        sq.frechet_distance(np.zeros(3), eye, np.zeros(3), np.eye(2))
    with pytest.raises(ValueError, match="sigma1 is not positive semi-definite"):
        sq.frechet_distance(np.zeros(3), -eye, np.zeros(3), eye)


def test_fid_of_gaussian_samples_near_analytic_value():
    rng = np.random.default_rng(0)
    a, b = rng.normal(size=(3, 3)), rng.normal(size=(3, 3))
    s1, s2 = a @ a.T + 0.5 * np.eye(3), b @ b.T + 0.5 * np.eye(3)
    mu1, mu2 = np.zeros(3), np.array([0.5, -0.3, 0.2])
    exact = sq.frechet_distance(mu1, s1, mu2, s2)
    f1 = rng.multivariate_normal(mu1, s1, 20000)
    f2 = rng.multivariate_normal(mu2, s2, 20000)
    # Over 20 seeds the estimate had mean exact + 0.015 and std 0.043 (exact = 6.35).
    assert sq.fid_from_features(f1, f2) == pytest.approx(exact, abs=0.15)


def test_fid_of_a_set_with_itself_is_zero():
    features = np.random.default_rng(0).normal(size=(500, 64)) * 3 + 1
    assert abs(sq.fid_from_features(features, features)) < 1e-8


def test_feature_statistics_unbiased_covariance():
    features = np.array([[0.0, 1.0], [2.0, 1.0], [4.0, 4.0]])
    mu, sigma = sq.feature_statistics(features)
    np.testing.assert_allclose(mu, [2.0, 2.0])
    # deviations (-2,-1), (0,-1), (2,2): sums of products / (N - 1)
    np.testing.assert_allclose(sigma, [[4.0, 3.0], [3.0, 3.0]])
    assert mu.dtype == np.float64 and sigma.dtype == np.float64


# --------------------------------------------------------------------------- KID


def test_polynomial_mmd2_matches_the_double_sum():
    rng = np.random.default_rng(0)
    x, y = rng.normal(size=(6, 3)), rng.normal(size=(6, 3)) + 0.3
    k = lambda u, v: (u @ v / 3 + 1) ** 3
    m = 6
    xx = sum(k(x[i], x[j]) for i in range(m) for j in range(m) if i != j) / (m * (m - 1))
    yy = sum(k(y[i], y[j]) for i in range(m) for j in range(m) if i != j) / (m * (m - 1))
    xy = sum(k(x[i], y[j]) for i in range(m) for j in range(m)) / m ** 2
    assert sq.polynomial_mmd2(x, y) == pytest.approx(xx + yy - 2 * xy, rel=1e-12)
    assert sq.kid(x, y, num_subsets=3, subset_size=100)[0] == pytest.approx(xx + yy - 2 * xy)


def test_kid_matches_the_population_mmd_of_two_point_laws():
    # x, y in {0, 1} with P(1) = p, q and d = 1: k(a, b) = (ab + 1)^3 is 8 at (1, 1), else 1,
    # so MMD^2 = 7 p^2 + 7 q^2 - 14 p q = 7 (p - q)^2 = 1.12 for p = 0.2, q = 0.6.
    rng = np.random.default_rng(0)
    x = (rng.random((4000, 1)) < 0.2).astype(float)
    y = (rng.random((4000, 1)) < 0.6).astype(float)
    mean, std = sq.kid(x, y, num_subsets=50, subset_size=500, seed=1)
    assert mean == pytest.approx(1.12, abs=0.2)  # std of the mean over data draws: 0.07
    assert std > 0


def test_kid_near_zero_for_one_law_and_positive_for_a_shift():
    rng = np.random.default_rng(0)
    x, y = rng.normal(size=(2000, 16)), rng.normal(size=(2000, 16))
    same, _ = sq.kid(x, y, num_subsets=20, subset_size=500)
    shifted, _ = sq.kid(x, y + 0.5, num_subsets=20, subset_size=500)
    assert abs(same) < 0.01 and shifted > 0.1


# --------------------------------------------------------------------------- IS


def test_inception_score_known_values():
    uniform = np.full((40, 7), 1 / 7)
    assert sq.inception_score(uniform, splits=4) == pytest.approx((1.0, 0.0))
    one_hot = np.eye(5)[np.arange(40) % 5]  # every split of 10 holds each class twice
    mean, std = sq.inception_score(one_hot, splits=4)
    assert mean == pytest.approx(5.0) and std == pytest.approx(0.0, abs=1e-12)
    assert sq.inception_score(logits=one_hot * 200.0, splits=4)[0] == pytest.approx(5.0)
    # Half the samples say (0.9, 0.1), half (0.1, 0.9): p(y) uniform, IS = exp(ln 2 - H(0.9)).
    mixed = np.array([[0.9, 0.1], [0.1, 0.9]] * 10)
    entropy = -(0.9 * math.log(0.9) + 0.1 * math.log(0.1))
    assert sq.inception_score(mixed, splits=2)[0] == pytest.approx(math.exp(math.log(2) - entropy))
    with pytest.raises(ValueError, match="exactly one of probs or logits"):
        sq.inception_score()


# --------------------------------------------------------------------------- extractors


class StandInInception(torch.nn.Module):
    """Records what it is fed: features [mean of each channel, H, W, uint8?, 0 ...] (2048-d);
    with no_output_bias, a softmax over 1008 classes (class 0 favoured by bright images)."""

    def forward(self, img: torch.Tensor, return_features: bool = False, use_fp16: bool = False,
                no_output_bias: bool = False) -> torch.Tensor:
        if img.shape[1] != 3:
            raise ValueError("expected 3 channels")
        x = img.to(torch.float32)
        batch = x.shape[0]
        if return_features:
            out = torch.zeros(batch, 2048)
            out[:, :3] = x.mean(dim=(2, 3))
            out[:, 3] = float(img.shape[2])
            out[:, 4] = float(img.shape[3])
            out[:, 5] = float(img.dtype == torch.uint8)
            return out
        logits = torch.zeros(batch, 1008)
        logits[:, 0] = x.mean(dim=(1, 2, 3)) / 10
        return torch.softmax(logits, dim=1)


@pytest.mark.filterwarnings("ignore:`torch.jit.script` is deprecated:DeprecationWarning")
def test_inception_file_loading_and_call_convention(tmp_path):
    path = tmp_path / "inception-2015-12-05.pt"
    torch.jit.script(StandInInception()).save(str(path))
    extractor = sq.InceptionFeatures(path)
    grey = torch.full((2, 1, 20, 24), 0.5)  # float [0, 1], one channel
    features = extractor(grey)
    assert features.shape == (2, 2048)
    # 0.5 -> level round(127.5) = 128 in each of three repeated channels, at the native size.
    np.testing.assert_array_equal(features[0, :6].numpy(), [128, 128, 128, 20, 24, 1])
    probs = extractor.probabilities(torch.full((2, 3, 8, 8), 255, dtype=torch.uint8))
    assert probs.shape == (2, 1008) and float(probs[0, 0]) > float(probs[0, 1])
    assert extractor.metric_label("FID") == "FID"


def test_inception_file_errors_name_the_path(tmp_path):
    with pytest.raises(FileNotFoundError, match=str(tmp_path / "absent.pt")):
        sq.InceptionFeatures(tmp_path / "absent.pt")
    state_dict_file = tmp_path / "pt_inception-2015-12-05-6726825d.pth"
    torch.save({"w": torch.zeros(2)}, state_dict_file)
    with pytest.raises(ValueError, match="is not a TorchScript archive"):
        sq.InceptionFeatures(state_dict_file)


def test_stats_file_round_trip(tmp_path):
    features = np.random.default_rng(0).normal(size=(50, 4)).astype(np.float32)
    stats = sq.FeatureStats.from_features(features, "classifier:toy:abc")
    stats.save(tmp_path / "ref.npz")
    back = sq.FeatureStats.load(tmp_path / "ref.npz")
    np.testing.assert_array_equal(back.mu, stats.mu)
    np.testing.assert_array_equal(back.sigma, stats.sigma)
    np.testing.assert_array_equal(back.features, features)
    assert (back.num_samples, back.extractor_name) == (50, "classifier:toy:abc")
    lean = sq.FeatureStats.from_features(features, "other", keep_features=False)
    lean.save(tmp_path / "lean")  # saved under exactly the name given
    assert sq.FeatureStats.load(tmp_path / "lean").features is None
    with pytest.raises(ValueError, match="different extractors: 'other' vs 'classifier:toy:abc'"):
        sq.fid_from_stats(lean, back)
    with pytest.raises(FileNotFoundError, match=str(tmp_path / "none.npz")):
        sq.FeatureStats.load(tmp_path / "none.npz")


# --------------------------------------------------------------------------- classifier


def quadrant_images(n, seed):
    """1x12x12 uint8 images, class c in 0..3 = a bright 6x6 quadrant c, plus noise."""
    gen = torch.Generator().manual_seed(seed)
    labels = torch.arange(n) % 4
    images = torch.randint(0, 60, (n, 1, 12, 12), generator=gen)
    for c in range(4):
        rows, cols = slice(6 * (c // 2), 6 * (c // 2) + 6), slice(6 * (c % 2), 6 * (c % 2) + 6)
        images[labels == c, :, rows, cols] += 150
    return images.to(torch.uint8), labels


def test_classifier_trains_saves_and_reloads(tmp_path):
    images, labels = quadrant_images(256, seed=0)
    test_images, test_labels = quadrant_images(128, seed=1)
    net, accuracy = sq.train_classifier(images, labels, test_images, test_labels, steps=60,
                                        batch_size=32, width=8, embed_dim=16, lr=3e-3)
    assert accuracy >= 0.95
    assert sq.classifier_accuracy(net, test_images, test_labels) == accuracy
    sq.save_classifier(tmp_path / "clf.pt", net, "quadrants", accuracy)
    saved = torch.load(tmp_path / "clf.pt", weights_only=True)
    assert saved["arch"] == dict(in_channels=1, num_classes=4, width=8, embed_dim=16)
    extractor = sq.load_classifier(tmp_path / "clf.pt")
    assert extractor.test_accuracy == accuracy and extractor.feature_dim == 16
    with torch.no_grad():
        torch.testing.assert_close(extractor(test_images), net.embed(test_images), rtol=0, atol=0)
    assert extractor.metric_label("FID") == "FID (classifier features: quadrants)"
    assert extractor.name == f"classifier:quadrants:{sq.weights_fingerprint(net)}"


def test_classifier_training_is_seeded():
    images, labels = quadrant_images(64, seed=0)
    train = lambda seed: sq.train_classifier(images, labels, images, labels, steps=3,
                                             batch_size=16, width=4, embed_dim=8, seed=seed)[0]
    first, again, other = train(0), train(0), train(1)
    assert sq.weights_fingerprint(first) == sq.weights_fingerprint(again)
    assert sq.weights_fingerprint(first) != sq.weights_fingerprint(other)


def test_load_classifier_missing_file(tmp_path):
    with pytest.raises(FileNotFoundError, match=str(tmp_path / "clf.pt")):
        sq.load_classifier(tmp_path / "clf.pt")


def test_compute_features_streams_and_report_labels():
    torch.manual_seed(0)
    net = sq.SmallClassifier(in_channels=1, num_classes=4, width=4, embed_dim=8)
    extractor = sq.ClassifierFeatures(net, "toy", test_accuracy=0.0)
    images, labels = quadrant_images(40, seed=2)
    batches = image_data.iterate_batches(images, labels, 16, shuffle=False)  # (images, labels)
    features, probs = sq.compute_features(extractor, batches, with_probs=True)
    with torch.no_grad():
        np.testing.assert_allclose(features, net.embed(images).numpy(), rtol=1e-6, atol=1e-6)
        expected_probs = torch.softmax(net(images), 1).numpy()
    np.testing.assert_allclose(probs, expected_probs, rtol=1e-5, atol=1e-7)
    floats = [image_data.to_unit_interval(images[:25]), image_data.to_unit_interval(images[25:])]
    np.testing.assert_allclose(sq.compute_features(extractor, floats), features, atol=1e-6)
    reference = sq.FeatureStats.from_features(features, extractor.name)
    report = sq.quality_report(extractor, [images], reference, kid_subsets=2, kid_subset_size=20,
                               is_splits=2)
    assert report["FID (classifier features: toy)"] == pytest.approx(0.0, abs=1e-6)
    assert set(report) == {f"{m} (classifier features: toy)"
                           for m in ("FID", "KID", "KID std", "IS", "IS std")}
