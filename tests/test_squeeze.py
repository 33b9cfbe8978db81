"""Feature-squeezing detection: squeezers, threshold, detector, adaptive attacker, metrics."""

import pytest
import torch
from torch import nn

from dsara.errors import DsaraError
from dsara.evaluate.squeeze import (
    SqueezeConfig,
    adaptive_attack,
    bit_depth,
    detection_metrics,
    fit_detector,
    median_filter,
    nl_means,
    squeeze_scores,
    squeezers,
    threshold_at_fpr,
)

NO_NL = SqueezeConfig(nlmeans="off")


def tiny_net():
    return nn.Sequential(nn.Conv2d(3, 4, 3, padding=1), nn.ReLU(), nn.Flatten(),
                         nn.Linear(4 * 8 * 8, 5)).eval()


def reference_median(img, k):
    """Loop version: window {i - k//2, ..., i + (k-1)//2}, edges mirrored (-1 -> 0, n -> n-1),
    the element of rank k*k // 2 (the upper median for even k)."""
    h, w = img.shape

    def mirror(i, n):
        return -i - 1 if i < 0 else (2 * n - i - 1 if i >= n else i)
    out = torch.empty_like(img)
    for i in range(h):
        for j in range(w):
            vals = sorted(img[mirror(i + di, h), mirror(j + dj, w)].item()
                          for di in range(-(k // 2), (k - 1) // 2 + 1)
                          for dj in range(-(k // 2), (k - 1) // 2 + 1))
            out[i, j] = vals[(k * k) // 2]
    return out


@pytest.mark.parametrize("k", [2, 3, 4])
def test_median_filter_matches_the_loop_reference(k):
    x = torch.rand(2, 3, 6, 5)
    got = median_filter(x, k)
    for b in range(2):
        for c in range(3):
            torch.testing.assert_close(got[b, c], reference_median(x[b, c], k))


def test_median_2x2_by_hand():
    x = torch.tensor([[1.0, 5, 2], [4, 3, 9], [8, 7, 6]]).view(1, 1, 3, 3)
    # (1,1): window {1,5,4,3} -> sorted 1,3,4,5 -> upper median 4; (0,0): {1,1,1,1} -> 1
    out = median_filter(x, 2)[0, 0]
    assert out[1, 1] == 4 and out[0, 0] == 1 and out[2, 2] == 7  # {3,9,7,6} -> 3,6,7,9


@pytest.mark.parametrize("k", [2, 3])
def test_a_constant_image_passes_the_median_filter_unchanged(k):
    x = torch.full((2, 3, 7, 7), 0.3)
    x[1] = 0.8
    assert torch.equal(median_filter(x, k), x)


def test_an_image_already_at_the_bit_depth_scores_zero():
    gen = torch.Generator().manual_seed(0)
    x = torch.randint(0, 32, (4, 3, 8, 8), generator=gen).float() / 31  # 5-bit images
    assert torch.equal(bit_depth(x, 5), x)
    bits_only = {"bits": lambda t: bit_depth(t, 5)}
    assert (squeeze_scores(tiny_net(), x, bits_only) == 0).all()
    noisy = (x + 0.01 * torch.randn(x.shape, generator=gen)).clamp(0, 1)
    assert (squeeze_scores(tiny_net(), noisy, bits_only) > 0).all()  # the score is not always 0


def test_scores_1_to_100_at_fpr_5_percent_flag_exactly_5():
    scores = torch.arange(1, 101).float()[torch.randperm(100)]
    t = threshold_at_fpr(scores, 0.05)
    assert t == 95 and int((scores > t).sum()) == 5
    assert int((scores > threshold_at_fpr(scores, 0.10)).sum()) == 10


def test_nl_means_when_opencv_is_installed():
    pytest.importorskip("cv2")
    x = torch.full((2, 3, 8, 8), 100 / 255)
    torch.testing.assert_close(nl_means(x, 13, 3, 2.0), x)  # a constant image stays constant
    noisy = torch.rand(2, 3, 8, 8)
    out = nl_means(noisy, 13, 3, 10.0)
    assert out.shape == noisy.shape and 0 <= out.min() and out.max() <= 1
    assert not torch.equal(out, (noisy * 255).round() / 255)
    assert list(squeezers(SqueezeConfig()))[-1] == "nl_means_13_3_2"


def test_detector_threshold_flags_the_fpr_on_its_own_images():
    model = tiny_net()
    clean = torch.rand(40, 3, 8, 8)
    det = fit_detector(model, clean, SqueezeConfig(nlmeans="off", fpr=0.1))
    assert int(det.flags(model, clean).sum()) <= 4 and det.n_fit == 40
    assert det.describe()["squeezers"] == ["bit_depth_5", "median_2x2"]


def test_adaptive_attack_stays_in_the_ball():
    model, x = tiny_net(), torch.rand(4, 3, 8, 8)
    y = torch.tensor([0, 1, 2, 3])
    eps = 8 / 255
    x_adv = adaptive_attack(SqueezeConfig(nlmeans="off", adaptive_steps=3))(
        model, x, y, eps, torch.Generator().manual_seed(0))
    assert (x_adv - x).abs().max() <= eps + 1e-6 and 0 <= x_adv.min() and x_adv.max() <= 1
    assert not torch.equal(x_adv, x)


def test_detection_metrics_by_hand():
    clean_correct = torch.tensor([True, True, True, False])
    clean_flag = torch.tensor([False, False, True, False])
    adv = {"pgd": (torch.tensor([False, True, False, False]),  # 0 and 2 are successful
                   torch.tensor([True, False, False, True]))}
    m = detection_metrics(clean_correct, clean_flag, adv)
    assert m["clean_fpr"] == 0.25
    assert m["attacks"]["pgd"]["successful_adversarial"] == 2
    assert m["attacks"]["pgd"]["detection_rate"] == 0.5  # 0 flagged, 2 not
    # defended: 0 (flagged), 1 (correct); 2 is a clean false positive, 3 wrong when clean
    assert m["attacks"]["pgd"]["accuracy_with_rejection"] == 0.5
    assert m["worst_case_with_rejection"] == 0.5


def test_bad_config_is_one_line():
    with pytest.raises(DsaraError, match="fpr"):
        SqueezeConfig(fpr=1.5).validate()
    with pytest.raises(DsaraError, match="auto, on, off"):
        SqueezeConfig(nlmeans="maybe").validate()
