"""Tests for lgnet_jax.training.losses and the VGG16 weights: parity with the reference's loss values."""

from __future__ import annotations

import importlib.util
import pathlib
from collections.abc import Callable

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import traverse_util

from helpers import OFFICIAL_FIXTURE, REPO_ROOT, CliResult, run_cli_in_process
from lgnet_jax.training import losses
from lgnet_jax.weights import official, pth, vgg as vgg_weights
from lgnet_jax.models import Discriminator, VGG16Features
from lgnet_jax.tools import convert_vgg16

FIXTURES = OFFICIAL_FIXTURE
VGG_PTH = FIXTURES / "vgg16_features.pth"

SCALAR_TERMS = (
    [f"l1_{kind}_{s}" for s in (1, 2, 3) for kind in ("valid", "hole")]
    + [f"{kind}_{s}" for s in (2, 3) for kind in ("perceptual", "style", "tv")]
    + ["gan_g", "gan_d", "total_g"]
)
RTOL = 1e-4


def nhwc(array: np.ndarray) -> jax.Array:
  return jnp.asarray(np.transpose(array, (0, 2, 3, 1)))


def default_loss_config():
  """config.loss of configs/default.py: the paper's weights, with which total_g was computed."""
  spec = importlib.util.spec_from_file_location(
      "_test_losses_default_config", REPO_ROOT / "configs" / "default.py"
  )
  module = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(module)
  return module.get_config().loss


@pytest.fixture(scope="module")
def vgg_params() -> dict:
  return vgg_weights.load_vgg16_params(VGG_PTH)


@pytest.fixture(scope="module")
def vgg_fn(vgg_params):
  return jax.jit(lambda x: VGG16Features().apply({"params": vgg_params}, x))


@pytest.fixture(scope="module")
def computed_terms(vgg_fn) -> dict[str, float]:
  """Every loss term recomputed from the fixture's training-mode outputs, D in evaluation mode."""
  io = np.load(FIXTURES / "io.npz")
  images, masks = nhwc(io["images"]), nhwc(io["masks"])
  outputs = {
      f"{kind}{s}": nhwc(io[f"train_{kind}{s}"]) for s in (1, 2, 3) for kind in ("out", "merged")
  }

  abstract_d = jax.eval_shape(
      lambda: Discriminator().init(
          jax.random.PRNGKey(0), jnp.zeros((1, 256, 256, 3)), update_stats=False
      )
  )
  d_variables = official.torch_to_flax(
      pth.load_state_dict(FIXTURES / "latest_net_D.pth"),
      official.discriminator_entries(),
      abstract_d,
      "D",
  )
  discriminator = jax.jit(lambda x: Discriminator().apply(d_variables, x, update_stats=False))
  d_fake, d_real = discriminator(outputs["merged1"]), discriminator(images)

  config = default_loss_config()
  generator_terms = jax.jit(
      lambda o, i, m, d: losses.generator_loss_terms(o, i, m, vgg_fn, d, config)
  )(outputs, images, masks, d_fake)
  terms = dict(generator_terms, **losses.discriminator_loss_terms(d_fake, d_real))
  return {name: float(value) for name, value in terms.items()}


@pytest.mark.parametrize("name", SCALAR_TERMS)
def test_loss_term_matches_reference(computed_terms: dict[str, float], name: str) -> None:
  expected = float(np.load(FIXTURES / "losses.npz")[name])
  got = computed_terms[name]
  relative = abs(got - expected) / abs(expected)
  print(f"{name}: reference {expected:.9g}, ours {got:.9g}, relative error {relative:.2e}")
  assert relative <= RTOL, f"{name}: {got} vs reference {expected}"


def test_generator_terms_have_exactly_the_reference_names(computed_terms: dict[str, float]) -> None:
  assert set(computed_terms) == set(SCALAR_TERMS)


@pytest.mark.parametrize("pool", ["pool2", "pool3"])
def test_vgg_features_match_reference(vgg_fn, pool: str) -> None:
  images = nhwc(np.load(FIXTURES / "io.npz")["images"][:1])
  expected = np.transpose(np.load(FIXTURES / "losses.npz")[f"vgg_{pool}_image0"], (0, 2, 3, 1))
  got = np.asarray(vgg_fn(images)[pool])
  assert got.shape == expected.shape
  np.testing.assert_allclose(got, expected, rtol=0, atol=1e-4 * max(1.0, np.abs(expected).max()))


# ---------------------------------------------------------------------------
# Hand-computable values.


def test_l1_masked_by_hand() -> None:
  a = jnp.zeros((2, 2, 2, 3))
  b = jnp.ones((2, 2, 2, 3)).at[1].set(3.0)
  weight = jnp.zeros((2, 2, 2, 1)).at[0, 0, 0].set(1.0).at[1, :, 1].set(0.5)
  # Sample 0: one pixel of weight 1, |0 - 1| on 3 channels -> 3 / (1 * 3) = 1.
  # Sample 1: two pixels of weight 0.5, |0 - 1.5| on 3 channels -> 9 / (1 * 3) = 3.
  np.testing.assert_allclose(losses.l1_masked(a, b, weight), 2.0, rtol=1e-6)
  # An all-zero weight gives 0, not NaN.
  assert float(losses.l1_masked(a, b, jnp.zeros((2, 2, 2, 1)))) == 0.0


def test_total_variation_by_hand() -> None:
  # x[h, w] = 2h + 5w on a 3x4 grid, 2 channels: every vertical step 2, every horizontal step 5.
  h, w = np.meshgrid(np.arange(3), np.arange(4), indexing="ij")
  x = jnp.asarray(np.repeat((2.0 * h + 5.0 * w)[None, :, :, None], 2, axis=-1))
  np.testing.assert_allclose(losses.total_variation(x), 7.0, rtol=1e-6)
  np.testing.assert_allclose(losses.total_variation(jnp.full((1, 4, 4, 3), 0.3)), 0.0)


def test_gram_and_style_by_hand() -> None:
  f = jnp.asarray([[1.0, 2.0], [3.0, 4.0]]).reshape(
      1, 1, 2, 2
  )  # (B, H, W, C): positions (1,2), (3,4)
  # F^T F = [[1+9, 2+12], [2+12, 4+16]], divided by C*H*W = 4.
  np.testing.assert_allclose(
      losses.gram(f)[0], np.array([[10.0, 14.0], [14.0, 20.0]]) / 4, rtol=1e-6
  )
  feats = {k: f for k in losses.FEATURE_KEYS}
  zeros = {k: jnp.zeros_like(f) for k in losses.FEATURE_KEYS}
  np.testing.assert_allclose(losses.style(feats, zeros), 3 * (10 + 14 + 14 + 20) / 4 / 4, rtol=1e-6)


def test_lsgan_by_hand() -> None:
  d_fake, d_real = jnp.asarray([0.0, 2.0]), jnp.asarray([1.0, 3.0])
  np.testing.assert_allclose(losses.lsgan_generator(d_fake), (1 + 1) / 2)
  np.testing.assert_allclose(
      losses.discriminator_loss_terms(d_fake, d_real)["gan_d"], 0.5 * (2 + 2)
  )


# ---------------------------------------------------------------------------
# Variants, options and the GAN switch, on small inputs with a stand-in VGG.


def fake_vgg(calls: list):
  """A cheap stand-in for VGG16 that records its inputs."""

  def fn(x: jax.Array) -> dict[str, jax.Array]:
    calls.append(x)
    return {"pool1": x, "pool2": x[:, ::2, ::2] * 2, "pool3": x[:, ::4, ::4] ** 2}

  return fn


def small_outputs(stages: int, key: int = 0) -> tuple[dict, jax.Array, jax.Array]:
  keys = jax.random.split(jax.random.PRNGKey(key), 2 + stages)
  images = jax.random.uniform(keys[0], (2, 16, 16, 3), minval=-1, maxval=1)
  masks = (jax.random.uniform(keys[1], (2, 16, 16, 1)) > 0.6).astype(jnp.float32)
  outputs = {}
  for s in range(1, stages + 1):
    out = jnp.tanh(jax.random.normal(keys[1 + s], images.shape))
    outputs[f"out{s}"], outputs[f"merged{s}"] = out, images * (1 - masks) + out * masks
  return outputs, images, masks


@pytest.mark.parametrize("stages", [1, 2, 3])
def test_stage_count_is_read_from_the_outputs(stages: int) -> None:
  calls: list = []
  outputs, images, masks = small_outputs(stages)
  terms = losses.generator_loss_terms(
      outputs, images, masks, fake_vgg(calls), jnp.zeros((2, 3, 3, 1)), default_loss_config()
  )
  later = range(2, stages + 1)
  expected = (
      {f"l1_{k}_{s}" for s in range(1, stages + 1) for k in ("valid", "hole")}
      | {f"{k}_{s}" for s in later for k in ("perceptual", "style", "tv")}
      | {"gan_g", "total_g"}
  )
  assert set(terms) == expected
  # One VGG call for the ground truth, one for every later-stage output and merge; none for one stage.
  assert [c.shape[0] for c in calls] == ([2, 2 * 2 * (stages - 1)] if stages > 1 else [])
  assert float(terms["gan_g"]) == pytest.approx(1.0)
  config = default_loss_config()
  total = sum(
      config.lambda_valid * terms[f"l1_valid_{s}"] + config.lambda_hole * terms[f"l1_hole_{s}"]
      for s in range(1, stages + 1)
  )
  total += sum(
      config.lambda_perceptual * terms[f"perceptual_{s}"]
      + config.lambda_style * terms[f"style_{s}"]
      + config.lambda_tv * terms[f"tv_{s}"]
      for s in later
  )
  np.testing.assert_allclose(
      terms["total_g"], total + config.lambda_gan * terms["gan_g"], rtol=1e-6
  )


def test_no_discriminator_output_skips_the_gan_term() -> None:
  outputs, images, masks = small_outputs(3)
  config = default_loss_config()
  with_gan = losses.generator_loss_terms(
      outputs, images, masks, fake_vgg([]), jnp.full((2, 3, 3, 1), 3.0), config
  )
  without = losses.generator_loss_terms(outputs, images, masks, fake_vgg([]), None, config)
  assert float(without["gan_g"]) == 0.0
  np.testing.assert_allclose(
      with_gan["total_g"] - without["total_g"], config.lambda_gan * 4.0, rtol=1e-5
  )


def test_imagenet_normalization_is_optional() -> None:
  outputs, images, masks = small_outputs(2)
  config = default_loss_config()
  assert not config.vgg_imagenet_normalize
  plain: list = []
  losses.generator_loss_terms(outputs, images, masks, fake_vgg(plain), None, config)
  np.testing.assert_array_equal(plain[0][:2], images)

  config.vgg_imagenet_normalize = True
  normalized: list = []
  losses.generator_loss_terms(outputs, images, masks, fake_vgg(normalized), None, config)
  mean, std = np.array([0.485, 0.456, 0.406]), np.array([0.229, 0.224, 0.225])
  np.testing.assert_allclose(
      normalized[0][:2], ((np.asarray(images) + 1) / 2 - mean) / std, rtol=1e-5, atol=1e-6
  )


def test_generator_terms_are_differentiable() -> None:
  outputs, images, masks = small_outputs(3)
  config = default_loss_config()

  def total(o):
    return losses.generator_loss_terms(o, images, masks, fake_vgg([]), None, config)["total_g"]

  grads = jax.jit(jax.grad(total))(outputs)
  assert all(bool(jnp.all(jnp.isfinite(g))) for g in grads.values())
  assert all(float(jnp.abs(grads[f"out{s}"]).sum()) > 0 for s in (1, 2, 3))


# ---------------------------------------------------------------------------
# VGG weights: loading, conversion and errors.


@pytest.fixture
def run_converter(capsys: pytest.CaptureFixture) -> Callable[..., CliResult]:
  """Runs `python -m lgnet_jax.tools.convert_vgg16 ARGS` in this process."""
  return lambda *args: run_cli_in_process(capsys, convert_vgg16, *args)


def test_loaded_params_fit_vgg16_features(vgg_params: dict) -> None:
  expected = vgg_weights.expected_params()
  assert jax.tree.map(lambda x: x.shape, vgg_params) == jax.tree.map(lambda x: x.shape, expected)
  state = pth.load_state_dict(VGG_PTH)
  np.testing.assert_array_equal(
      vgg_params["conv1_1"]["kernel"], state["features.0.weight"].transpose(2, 3, 1, 0)
  )
  np.testing.assert_array_equal(vgg_params["conv3_3"]["bias"], state["features.14.bias"])


def test_convert_round_trip(tmp_path: pathlib.Path, vgg_params: dict, run_converter) -> None:
  target = tmp_path / "vgg16.npz"
  result = run_converter(str(VGG_PTH), str(target))
  assert result.returncode == 0, result.stderr
  assert "wrote" in result.stdout and str(target) in result.stdout
  assert [p.name for p in tmp_path.iterdir()] == ["vgg16.npz"]  # no temporary file left
  loaded = vgg_weights.load_vgg16_params(target)
  flat_loaded, flat_pth = traverse_util.flatten_dict(loaded), traverse_util.flatten_dict(vgg_params)
  assert set(flat_loaded) == set(flat_pth)
  for key, value in flat_pth.items():
    assert flat_loaded[key].dtype == np.float32
    np.testing.assert_array_equal(flat_loaded[key], value)


def test_full_torchvision_state_dict_is_accepted(
    monkeypatch: pytest.MonkeyPatch, vgg_params: dict
) -> None:
  """torchvision's vgg16-397923af.pth also holds conv4/conv5 and the classifier; those are ignored."""
  state = dict(pth.load_state_dict(VGG_PTH))
  for index in (17, 19, 21, 24, 26, 28):
    state[f"features.{index}.weight"] = np.zeros((512, 512, 3, 3), np.float32)
    state[f"features.{index}.bias"] = np.zeros((512,), np.float32)
  for index, shape in ((0, (4096, 25088)), (3, (4096, 4096)), (6, (1000, 4096))):
    state[f"classifier.{index}.weight"] = np.zeros(shape, np.float32)
    state[f"classifier.{index}.bias"] = np.zeros(shape[:1], np.float32)
  monkeypatch.setattr(vgg_weights.pth, "load_state_dict", lambda path, select=None: state)
  loaded = vgg_weights.load_vgg16_params(VGG_PTH)
  jax.tree.map(np.testing.assert_array_equal, loaded, vgg_params)


def assert_one_line_error(path, *fragments: str) -> str:
  with pytest.raises(vgg_weights.VGGWeightsError) as info:
    vgg_weights.load_vgg16_params(path)
  message = str(info.value)
  assert "\n" not in message
  for fragment in fragments:
    assert fragment in message
  return message


def test_missing_weights_say_where_to_get_them(tmp_path: pathlib.Path, run_converter) -> None:
  missing = tmp_path / "vgg16-397923af.pth"
  assert_one_line_error(
      missing,
      str(missing),
      "vgg16-397923af.pth",
      "torchvision",
      "python -m lgnet_jax.tools.convert_vgg16",
  )
  assert_one_line_error(None, "vgg16-397923af.pth", "convert_vgg16")
  result = run_converter(str(missing), str(tmp_path / "out.npz"))
  assert result.returncode == 2
  lines = result.stderr.strip().splitlines()
  assert len(lines) == 1 and lines[0].startswith("error: ") and "vgg16-397923af.pth" in lines[0]
  assert not (tmp_path / "out.npz").exists()


def test_wrong_files_are_named(tmp_path: pathlib.Path) -> None:
  discriminator = FIXTURES / "latest_net_D.pth"
  assert_one_line_error(discriminator, str(discriminator), "VGG16")
  text = tmp_path / "notes.pth"
  text.write_text("not a checkpoint")
  assert_one_line_error(text, str(text))
  bad_npz = tmp_path / "bad.npz"
  flat = vgg_weights.flatten_params(vgg_weights.load_vgg16_params(VGG_PTH))
  flat["conv1_1/kernel"] = flat["conv1_1/kernel"][..., :32]
  del flat["conv3_3/bias"]
  np.savez(bad_npz, **flat)
  assert_one_line_error(bad_npz, str(bad_npz), "conv1_1/kernel", "missing keys: conv3_3/bias")
  assert_one_line_error(tmp_path, str(tmp_path))
