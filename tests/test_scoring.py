"""Map post-processing and losses against scipy and the written-out formulas."""

import numpy as np
import pytest
import torch
from scipy.ndimage import gaussian_filter, gaussian_filter1d

from zsad.losses import dice_loss, focal_loss
from zsad.scoring import anomaly_maps_from_probabilities, gaussian_blur, gaussian_kernel, upsample_patch_scores


@pytest.mark.parametrize(("shape", "sigma"), [((2, 40, 40), 4.0), ((1, 23, 57), 1.5), ((3, 9, 12), 4.0)])
def test_gaussian_blur_equals_scipy(shape, sigma):
    maps = torch.rand(shape, generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    ours = gaussian_blur(maps, sigma).numpy()
    expected = np.stack([gaussian_filter(m, sigma=sigma, mode="reflect", truncate=4.0) for m in maps.numpy()])
    np.testing.assert_allclose(ours, expected, atol=1e-12)


def test_gaussian_blur_keeps_dtype_and_zero_sigma_is_identity():
    maps = torch.rand(2, 16, 16)
    assert gaussian_blur(maps, 2.0).dtype == torch.float32
    assert gaussian_blur(maps, 0) is maps


def test_anomaly_map_is_mean_of_layer_maps_then_blurred():
    generator = torch.Generator().manual_seed(3)
    probabilities = [torch.rand(2, 2, 24, 20, generator=generator, dtype=torch.float64) for _ in range(3)]
    mean = sum((p[:, 1] + 1 - p[:, 0]) / 2 for p in probabilities) / 3
    blurred = np.stack([gaussian_filter(m, sigma=2.0, mode="reflect", truncate=4.0) for m in mean.numpy()])
    ours = anomaly_maps_from_probabilities(probabilities, 2.0)
    np.testing.assert_allclose(ours.numpy(), blurred, atol=1e-12)
    assert np.abs(blurred - mean.numpy()).max() > 0.05  # the blur is visible at this sigma
    assert torch.allclose(anomaly_maps_from_probabilities(probabilities, 0), mean)


def _scipy_kernel(sigma: float, truncate: float = 4.0) -> np.ndarray:
    """scipy's 1-D Gaussian weights, read off as its response to a unit impulse (zeros outside)."""
    impulse = np.zeros(257)
    impulse[128] = 1.0
    response = gaussian_filter1d(impulse, sigma, mode="constant", truncate=truncate)
    support = np.flatnonzero(response)
    return response[support.min() : support.max() + 1]


@pytest.mark.parametrize("sigma", [0.3, 0.6, 0.625, 1.0, 1.5, 2.4, 3.7, 4.0, 6.1])
@pytest.mark.parametrize("truncate", [4.0, 2.0])
def test_gaussian_kernel_radius_and_weights_equal_scipy(sigma, truncate):
    expected = _scipy_kernel(sigma, truncate)
    kernel = gaussian_kernel(sigma, truncate, dtype=torch.float64).numpy()
    assert (len(kernel) - 1) // 2 == int(truncate * sigma + 0.5) == (len(expected) - 1) // 2
    np.testing.assert_allclose(kernel, expected, atol=1e-15)


@pytest.mark.parametrize("sigma", [0.6, 2.4, 4.0, 7.0])
def test_gaussian_blur_equals_scipy_across_sigmas_and_small_maps(sigma):
    """Reflection when the radius exceeds the map (sigma 7 on 10 x 13) included."""
    maps = torch.rand(2, 10, 13, generator=torch.Generator().manual_seed(5), dtype=torch.float64)
    expected = np.stack([gaussian_filter(m, sigma=sigma, mode="reflect", truncate=4.0) for m in maps.numpy()])
    np.testing.assert_allclose(gaussian_blur(maps, sigma).numpy(), expected, atol=1e-12)


def test_upsample_patch_scores_layout():
    probs = torch.arange(2 * 6 * 2, dtype=torch.float32).view(2, 6, 2)  # grid 2 x 3
    same = upsample_patch_scores(probs, (2, 3), (2, 3))
    assert torch.equal(same[1, 0], probs[1, :, 0].view(2, 3))
    assert upsample_patch_scores(probs, (2, 3), (20, 30)).shape == (2, 2, 20, 30)


def test_focal_loss_formula():
    torch.manual_seed(0)
    probs = torch.rand(2, 2, 5, 5).softmax(dim=1)
    target = (torch.rand(2, 5, 5) > 0.5).long()
    eps = 1e-5
    p_t = torch.where(target == 1, probs[:, 1] * (1 - eps) + probs[:, 0] * eps, probs[:, 0] * (1 - eps) + probs[:, 1] * eps) + eps
    expected = (-((1 - p_t) ** 2) * torch.log(p_t)).mean()
    assert torch.allclose(focal_loss(probs, target), expected)


def test_dice_loss_formula():
    prediction = torch.tensor([[[0.5, 1.0], [0.0, 0.0]], [[0.0, 0.0], [0.0, 0.0]]])
    target = torch.tensor([[[1.0, 1.0], [0.0, 0.0]], [[0.0, 0.0], [0.0, 0.0]]])
    first = 1 - (2 * 1.5 + 1) / (1.5 + 2 + 1)
    second = 1 - 1 / 1
    assert torch.allclose(dice_loss(prediction, target), torch.tensor((first + second) / 2))
