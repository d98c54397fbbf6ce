"""ops.py's portable primitives compute what XLA's own do, their hand-written gradients
included; they mean the same on every platform (tests/test_backends.py lowers them for TPU
and GPU)."""
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from alexnet_jax import ops
import helpers


def test_same_padding_keeps_the_size_with_the_extra_row_last():
  x, kernel = helpers.conv_case(4, 8, 0)
  assert ops.same_padding(4) == ((1, 2), (1, 2))
  assert ops.conv(x, kernel, 1, ops.same_padding(4)).shape == (3, 8, 8, 7)
  helpers.assert_close(ops.conv(x, kernel, 1, ops.same_padding(4)),
               jax.lax.conv_general_dilated(x, kernel, (1, 1), 'SAME',
                                            dimension_numbers=('NHWC', 'HWIO', 'NHWC')))


@pytest.mark.parametrize('batch', [8, 128])
def test_dense_and_its_gradients_equal_the_plain_product(batch):
  """ops.dense and its two gradients (the kernel's written in its own layout) compute the
  einsum's values."""
  rng = np.random.default_rng(batch)
  x = jnp.asarray(rng.normal(size=(2, batch, 64)), jnp.float32)
  kernel = jnp.asarray(rng.normal(size=(2, 64, 32)), jnp.float32)
  plain = lambda x, kernel: jnp.einsum('tbi,tio->tbo', x, kernel)
  loss = lambda dense: lambda x, kernel: jnp.sum(jnp.sin(dense(x, kernel)))
  ours = jax.jit(jax.value_and_grad(loss(ops.dense), (0, 1)))(x, kernel)
  want = jax.jit(jax.value_and_grad(loss(plain), (0, 1)))(x, kernel)
  for got, expected in zip(jax.tree.leaves(ours), jax.tree.leaves(want)):
    helpers.assert_close(got, expected)
  half = ops.dense(x.astype(jnp.bfloat16), kernel.astype(jnp.bfloat16))
  assert half.dtype == jnp.float32  # bfloat16 inputs accumulate in float32.
  assert float(jnp.max(jnp.abs(half - plain(x, kernel)))) < 0.02 * float(jnp.std(half))


@pytest.mark.parametrize('window,stride', [(3, 2), (2, 2), (3, 1), (2, 3)])
def test_max_pool_gradient_goes_where_xlas_goes_ties_included(window, stride):
  rng = np.random.default_rng(window * 10 + stride)
  # Small integers: most windows hold several equal maxima, as ReLU's zeros do.
  x = jnp.asarray(rng.integers(0, 3, size=(2, 13, 11, 4)), jnp.float32)
  dy = jnp.asarray(rng.normal(size=ops.max_pool(x, window, stride).shape), jnp.float32)
  xla_pool = lambda x: jax.lax.reduce_window(x, -jnp.inf, jax.lax.max, (1, window, window, 1),
                                             (1, stride, stride, 1), 'VALID')
  backward = lambda pool: lambda x, dy: jax.vjp(pool, x)[1](dy)[0]
  ours_fn = backward(lambda x: ops.max_pool(x, window, stride))
  xla_fn = backward(xla_pool)
  # XLA routes the gradient with select-and-scatter; ours with masks and shifts.
  assert 'select_and_scatter_add' in str(jax.make_jaxpr(xla_fn)(x, dy))
  assert 'select_and_scatter_add' not in str(jax.make_jaxpr(ours_fn)(x, dy))
  ours, xlas = ours_fn(x, dy), xla_fn(x, dy)
  np.testing.assert_array_equal(ours != 0, xlas != 0)  # The same inputs get gradient ...
  # ... the same sums, where overlapping windows share a maximum, up to summation order.
  np.testing.assert_allclose(ours, xlas, rtol=1e-6, atol=1e-6)


def test_lrn_at_three_quarters_equals_the_general_power():
  x = jnp.asarray(np.random.default_rng(0).normal(0, 30, (2, 5, 5, 16)), jnp.float32)
  args = dict(size=5, alpha=1e-4, k=2.0, alpha_over_n=True)
  fast = ops.local_response_norm(x, beta=0.75, **args)
  general = ops.local_response_norm(x, beta=0.75 + 1e-9, **args)  # Takes the power path.
  np.testing.assert_allclose(fast, general, rtol=2e-6)
