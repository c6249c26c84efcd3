"""PSNR, SSIM and l1 against scikit-image and NumPy; the Frechet distance against eigenvalues."""

import jax.numpy as jnp
import numpy as np
import pytest
from skimage.metrics import peak_signal_noise_ratio, structural_similarity

from lgnet_jax.evaluation import metrics


@pytest.fixture(scope='module')
def image_pairs() -> tuple[np.ndarray, np.ndarray]:
  rng = np.random.default_rng(0)
  a = rng.integers(0, 256, (4, 40, 56, 3), dtype=np.uint8)
  noise = rng.integers(-40, 41, a.shape)
  b = np.clip(a.astype(int) + noise, 0, 255).astype(np.uint8)
  b[1] = rng.integers(0, 256, a.shape[1:], dtype=np.uint8)  # an unrelated pair too
  return a, b


def test_ssim_matches_scikit_image(image_pairs):
  a, b = image_pairs
  ours = np.asarray(metrics.ssim(jnp.asarray(a, jnp.float32), jnp.asarray(b, jnp.float32)))
  for i in range(len(a)):
    reference = structural_similarity(
        a[i],
        b[i],
        gaussian_weights=True,
        sigma=1.5,
        use_sample_covariance=False,
        data_range=255,
        channel_axis=-1,
    )
    assert abs(ours[i] - reference) < 1e-5, (i, ours[i], reference)
  same = metrics.ssim(jnp.asarray(a, jnp.float32), jnp.asarray(a, jnp.float32))
  np.testing.assert_allclose(np.asarray(same), 1.0, atol=1e-6)


def test_psnr_and_l1_match_numpy(image_pairs):
  a, b = image_pairs
  fa, fb = jnp.asarray(a, jnp.float32), jnp.asarray(b, jnp.float32)
  ours = np.asarray(metrics.psnr(fa, fb))
  for i in range(len(a)):
    assert abs(ours[i] - peak_signal_noise_ratio(a[i], b[i], data_range=255)) < 1e-5 * ours[i]
  l1 = np.asarray(metrics.l1_percent(fa, fb))
  expected = np.abs(a.astype(np.float64) - b).mean(axis=(1, 2, 3)) / 255 * 100
  np.testing.assert_allclose(l1, expected, rtol=1e-5)


@pytest.mark.parametrize('samples_a, samples_b, dims', [(8, 5, 64), (40, 63, 64), (300, 200, 16)])
def test_frechet_distance_of_features_equals_the_statistics_route(samples_a, samples_b, dims):
  """The sample route (fewer samples than dimensions) and the covariance route agree."""
  rng = np.random.default_rng(2)
  a = rng.normal(size=(samples_a, dims))
  b = rng.normal(0.2, 1.5, size=(samples_b, dims)) @ rng.normal(size=(dims, dims)) * 0.4
  expected = metrics.frechet_distance(
      *metrics.feature_statistics(a), *metrics.feature_statistics(b)
  )
  assert abs(metrics.frechet_distance_of_features(a, b) - expected) < 1e-6 * (abs(expected) + 1)
  assert abs(metrics.frechet_distance_of_features(a, a)) < 1e-8 * np.sum(a**2)
  with pytest.raises(ValueError, match='at least 2 images per set, got 1 and'):
    metrics.frechet_distance_of_features(a[:1], b)


def test_uint8_mapping_truncates_like_the_reference():
  x = jnp.asarray([-1.0, -0.999, 0.0, 0.5, 0.99999, 1.0, 1.2])
  expected = np.clip((np.asarray(x, np.float64) + 1) / 2 * 255, 0, 255).astype(np.uint8)
  np.testing.assert_array_equal(np.asarray(metrics.to_uint8_values(x)), expected)
  assert float(metrics.to_uint8_values(jnp.asarray(0.0))) == 127.0  # 127.5 truncated, not rounded


# The second case has fewer samples than dimensions (singular covariances, as FID on a small
# test set): its zero eigenvalues are rounding noise of about 1e-13, whose square roots sum
# to about 1e-5 whichever way they are computed.
@pytest.mark.parametrize('samples, dims, tolerance', [(300, 16, 1e-10), (8, 64, 1e-6)])
def test_frechet_distance_matches_float64_eigenvalues(samples, dims, tolerance):
  rng = np.random.default_rng(1)
  f1 = rng.normal(size=(samples, dims))
  f2 = rng.normal(0.3, 1.2, size=(samples, dims)) @ rng.normal(size=(dims, dims)) * 0.5
  mu1, s1 = metrics.feature_statistics(f1)
  mu2, s2 = metrics.feature_statistics(f2)
  eigenvalues = np.linalg.eigvals(s1 @ s2)
  trace_sqrt = np.sum(np.sqrt(np.clip(eigenvalues.real, 0, None)))
  expected = np.sum((mu1 - mu2) ** 2) + np.trace(s1) + np.trace(s2) - 2 * trace_sqrt
  scale = np.trace(s1) + np.trace(s2)
  assert abs(metrics.frechet_distance(mu1, s1, mu2, s2) - expected) < tolerance * scale
  assert abs(metrics.frechet_distance(mu2, s2, mu1, s1) - expected) < tolerance * scale
  assert abs(metrics.frechet_distance(mu1, s1, mu1, s1)) < tolerance * scale
  np.testing.assert_allclose(s1, np.cov(f1.T), rtol=1e-12)
