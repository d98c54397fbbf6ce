"""The hand-written gradients of ops.py equal XLA's own, and are the ones taken.

Forward passes are plain jax.lax (conv, reduce_window) and are not compared with themselves;
the gradients are compared on CPU, where ops.py swaps them in above a size that the tests set
to 0, and each test checks from the compiled program or the jaxpr that the swap happened."""
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from alexnet_jax import ops


def lax_conv(x, kernel, stride, padding):
  return jax.lax.conv_general_dilated(x, kernel, (stride, stride), padding,
                                      dimension_numbers=('NHWC', 'HWIO', 'NHWC'))


@pytest.mark.parametrize('size,stride,padding,side', [
    (11, 4, ((0, 3), (0, 3)), 35),  # The paper's conv1: cuda-convnet's far-edge padding.
    (5, 1, ops.same_padding(5), 9),  # conv2.
    (3, 1, ops.same_padding(3), 6),  # conv3..conv5.
    (4, 2, ops.same_padding(4), 8),  # An even kernel: the extra padding row goes last.
])
def test_conv_and_its_gradients_equal_xlas(size, stride, padding, side, monkeypatch):
  monkeypatch.setattr(ops, 'IM2COL_MIN_FLOPS', 0)  # The im2col gradient at any size.
  rng = np.random.default_rng(size)
  x = jnp.asarray(rng.normal(size=(3, side, side, 5)), jnp.float32)
  kernel = jnp.asarray(rng.normal(size=(size, size, 5, 7)), jnp.float32)
  loss = lambda conv: lambda x, k: jnp.sum(jnp.sin(conv(x, k, stride, padding)))
  grads = {name: jax.jit(jax.grad(loss(conv), argnums=(0, 1)))
           for name, conv in (('ours', ops.conv), ('xla', lax_conv))}
  # XLA's gradient is three convolutions (forward, input and kernel gradients); ours takes
  # the kernel gradient as a matrix product instead.
  convolutions = {name: g.lower(x, kernel).compile().as_text().count(' convolution(')
                  for name, g in grads.items()}
  assert convolutions == {'ours': 2, 'xla': 3}, convolutions
  ours, xlas = grads['ours'](x, kernel), grads['xla'](x, kernel)
  np.testing.assert_allclose(ours[0], xlas[0], rtol=1e-5, atol=1e-5)
  np.testing.assert_allclose(ours[1], xlas[1], rtol=1e-4, atol=1e-4)
  # On CPU, ours is the im2col product: check that formula on its own as well.
  dy = jnp.cos(lax_conv(x, kernel, stride, padding))
  direct = ops.kernel_grad_im2col(x, dy, size=size, stride=stride, padding=padding,
                                  dtype=jnp.float32)
  np.testing.assert_allclose(direct, xlas[1], rtol=1e-4, atol=1e-4)


def test_conv_kernel_gradient_in_bfloat16_keeps_the_kernels_dtype(monkeypatch):
  monkeypatch.setattr(ops, 'IM2COL_MIN_FLOPS', 0)
  x = jnp.ones((2, 6, 6, 3), jnp.bfloat16)
  kernel = jnp.ones((3, 3, 3, 4), jnp.bfloat16)
  grad = jax.grad(lambda k: jnp.sum(ops.conv(x, k, 1, ops.same_padding(3)).astype(
      jnp.float32)))(kernel)
  assert grad.dtype == jnp.bfloat16
  # The center tap sees every one of the 2x6x6 positions; a corner tap 2x5x5 of them.
  assert float(grad[1, 1, 0, 0]) == 72 and float(grad[0, 0, 0, 0]) == 50


@pytest.mark.parametrize('window,stride', [(3, 2), (2, 2), (3, 1), (2, 3)])
def test_max_pool_gradient_goes_where_xlas_goes_ties_included(window, stride, monkeypatch):
  monkeypatch.setattr(ops, 'MASKED_POOL_MIN_SIZE', 0)  # The masked gradient at any size.
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
