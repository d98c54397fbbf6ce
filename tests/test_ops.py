"""ops.py's convolution, fully connected product and pooling equal XLA's own, and are the
ones taken.

On CPU, float32 convolutions run on oneDNN (onednn.py), bfloat16 ones too where the CPU has
oneDNN's bfloat16 kernels (AVX-512); without oneDNN they take XLA's convolution with the
im2col kernel gradient above a size that the tests set to 0. The max-pool gradient is
always the masked one. Each test compares values with lax and checks from the
compiled program or the jaxpr that the swap happened."""
import platform

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from alexnet_jax import onednn
from alexnet_jax import ops


def lax_conv(x, kernel, stride, padding):
  return jax.lax.conv_general_dilated(x, kernel, (stride, stride), padding,
                                      dimension_numbers=('NHWC', 'HWIO', 'NHWC'))


CONV_CASES = pytest.mark.parametrize('size,stride,padding,side', [
    (11, 4, ((0, 3), (0, 3)), 35),  # The paper's conv1: cuda-convnet's far-edge padding.
    (11, 4, ((2, 2), (2, 2)), 36),  # torchvision's conv1.
    (5, 1, ops.same_padding(5), 9),  # conv2.
    (3, 1, ops.same_padding(3), 6),  # conv3..conv5.
    (4, 2, ops.same_padding(4), 8),  # An even kernel: the extra padding row goes last.
    (3, 2, ((0, 2), (1, 0)), 7),  # Uneven padding, and a last row that no window reads.
])


def assert_close(got, want, scale=1.0):
  """Equal up to float32 summation order: errors relative to the result's largest value."""
  want = np.asarray(want)
  np.testing.assert_allclose(got, want, rtol=1e-5 * scale,
                             atol=2e-6 * scale * float(np.abs(want).max()))


def conv_case(size, side, seed):
  rng = np.random.default_rng(seed)
  x = jnp.asarray(rng.normal(size=(3, side, side, 5)), jnp.float32)
  kernel = jnp.asarray(rng.normal(size=(size, size, 5, 7)), jnp.float32)
  return x, kernel


def test_onednn_is_built_where_requirements_install_it():
  """requirements.txt installs oneDNN on x86-64 Linux (this suite's machines): the fast
  convolutions must be on there, not silently off."""
  if platform.system() == 'Linux' and platform.machine() == 'x86_64':
    assert onednn.available(), onednn.build()  # build() raises the reason, in one line.


def test_onednn_build_says_in_one_line_what_is_missing(monkeypatch):
  monkeypatch.delenv('CXX', raising=False)
  monkeypatch.setattr(onednn.shutil, 'which', lambda name: None)
  with pytest.raises(onednn.Unavailable, match='no C\\+\\+ compiler'):
    onednn.build()


@CONV_CASES
def test_onednn_convolution_and_its_gradients_equal_laxs(size, stride, padding, side):
  """onednn.forward / input_grad / kernel_grad, called directly, against lax's
  convolution and its autodiff."""
  assert onednn.available()
  x, kernel = conv_case(size, side, size + side)
  y, vjp = jax.vjp(lambda x, k: lax_conv(x, k, stride, padding), x, kernel)
  dy = jnp.cos(y)
  dx, dk = vjp(dy)
  assert_close(jax.jit(onednn.forward, static_argnums=(2, 3))(x, kernel, stride, padding), y)
  assert_close(onednn.input_grad(dy, kernel, x.shape, stride, padding), dx)
  assert_close(onednn.kernel_grad(x, dy, kernel.shape, stride, padding), dk, scale=10)


def test_onednn_runs_on_every_device_thread():
  """XLA runs each device's program on its own thread. On AVX2 CPUs oneDNN picks its
  gemm-based kernel for torchvision's conv1 (3 input channels, 224 px), which crashed the
  process when a thread ran a primitive another thread had built."""
  assert onednn.available()
  mesh = jax.make_mesh((4,), ('data',))
  spec = jax.sharding.PartitionSpec
  rng = np.random.default_rng(0)
  x = jax.device_put(jnp.asarray(rng.normal(size=(4, 224, 224, 3)), jnp.float32),
                     jax.NamedSharding(mesh, spec('data')))
  kernel = jnp.asarray(rng.normal(size=(11, 11, 3, 8)), jnp.float32)
  padding = ((2, 2), (2, 2))
  conv = jax.jit(jax.shard_map(lambda x, k: onednn.forward(x, k, 4, padding), mesh=mesh,
                               in_specs=(spec('data'), spec()), out_specs=spec('data')))
  for _ in range(2):  # The second call finds the primitives built.
    assert_close(conv(x, kernel), lax_conv(x, kernel, 4, padding))


def cpu_flags() -> set[str]:
  with open('/proc/cpuinfo') as f:
    return {flag for line in f if line.startswith('flags') for flag in line.split()[2:]}


def test_onednn_has_bfloat16_kernels_where_the_cpu_does():
  """oneDNN's bfloat16 convolutions need AVX-512: with bf16 dot products (Zen 4, Cooper Lake
  and newer) they must be on; on AVX2 alone they must be off, so that ops.conv keeps XLA's
  convolution instead of failing at run time."""
  if platform.system() != 'Linux' or platform.machine() != 'x86_64':
    return
  flags = cpu_flags()
  if 'avx512_bf16' in flags or 'amx_bf16' in flags:
    assert onednn.supports(jnp.bfloat16)
  if 'avx512f' not in flags:
    assert not onednn.supports(jnp.bfloat16)
  assert onednn.supports(jnp.float32) and not onednn.supports(jnp.float16)


@pytest.mark.parametrize('size,stride,padding,side', [(11, 4, ((0, 3), (0, 3)), 35),
                                                      (5, 1, ops.same_padding(5), 9)])
def test_conv_in_bfloat16_rounds_only_its_results(size, stride, padding, side):
  """All-bfloat16 operands: oneDNN (where this CPU has its bfloat16 kernels) accumulates in
  float32, so each result is float32 arithmetic on the bfloat16 inputs, rounded once to
  bfloat16 (relative error <= 2^-8). Elsewhere ops.conv runs XLA's convolution."""
  x, kernel = (a.astype(jnp.bfloat16) for a in conv_case(size, side, size))
  wide = lambda *arrays: [a.astype(jnp.float32) for a in arrays]
  y, vjp = jax.vjp(lambda x, k: lax_conv(x, k, stride, padding), *wide(x, kernel))
  dy = jnp.cos(y).astype(jnp.bfloat16)
  dx, dk = vjp(*wide(dy))
  conv = lambda x, k: ops.conv(x, k, stride, padding)
  program = jax.jit(lambda x, k: jax.vjp(conv, x, k)[1](dy)).lower(x, kernel).compile()
  calls = program.as_text().count('custom_call_target="alexnet_jax_conv_')
  assert calls == (2 if onednn.supports(jnp.bfloat16) else 0)
  if not onednn.supports(jnp.bfloat16):
    np.testing.assert_allclose(np.asarray(jax.jit(conv)(x, kernel), np.float32), y,
                               rtol=2 ** -7, atol=1e-2 * float(jnp.abs(y).max()))
    return
  got = (onednn.forward(x, kernel, stride, padding),
         onednn.input_grad(dy, kernel, x.shape, stride, padding),
         onednn.kernel_grad(x, dy, kernel.shape, stride, padding))
  for ours, want in zip(got, (y, dx, dk)):
    assert ours.dtype == jnp.bfloat16
    np.testing.assert_allclose(np.asarray(ours, np.float32), want, rtol=2 ** -8,
                               atol=1e-5 * float(jnp.abs(want).max()))


@CONV_CASES
@pytest.mark.parametrize('path', ['onednn', 'im2col'])
def test_conv_and_its_gradients_equal_xlas(size, stride, padding, side, path, monkeypatch):
  """ops.conv on CPU: float32 on oneDNN (forward and both gradients), or without oneDNN
  XLA's convolution with the im2col kernel gradient (at any size here)."""
  if path == 'onednn':
    assert onednn.available()
  else:
    monkeypatch.setattr(onednn, 'available', lambda: False)
    monkeypatch.setattr(ops, 'IM2COL_MIN_FLOPS', 0)
  x, kernel = conv_case(size, side, size)
  # A linear loss: its output gradient (`probe`) does not pass on the forward's rounding.
  probe = jnp.cos(lax_conv(x, kernel, stride, padding))
  loss = lambda conv: lambda x, k: jnp.sum(conv(x, k, stride, padding) * probe)
  grads = {name: jax.jit(jax.grad(loss(conv), argnums=(0, 1)))
           for name, conv in (('ours', ops.conv), ('xla', lax_conv))}
  # XLA's gradient is two convolutions (input and kernel gradients; a linear loss needs no
  # forward); ours calls oneDNN's two, or takes the kernel gradient as a matrix product.
  programs = {name: g.lower(x, kernel).compile().as_text() for name, g in grads.items()}
  convolutions = {name: text.count(' convolution(') for name, text in programs.items()}
  calls = programs['ours'].count('custom_call_target="alexnet_jax_conv_')
  want = (0, 2) if path == 'onednn' else (1, 0)
  assert (convolutions['ours'], calls) == want and convolutions['xla'] == 2, programs['ours']
  assert_close(jax.jit(ops.conv, static_argnums=(2, 3))(x, kernel, stride, padding),
               lax_conv(x, kernel, stride, padding))
  ours, xlas = grads['ours'](x, kernel), grads['xla'](x, kernel)
  assert_close(ours[0], xlas[0])
  assert_close(ours[1], xlas[1], scale=10)
  if path == 'im2col':  # Check the formula on its own as well.
    direct = ops.kernel_grad_im2col(x, probe, size=size, stride=stride, padding=padding,
                                    dtype=jnp.float32)
    np.testing.assert_allclose(direct, xlas[1], rtol=1e-4, atol=1e-4)


def test_conv_of_an_input_that_needs_no_gradient_skips_its_input_gradient():
  """conv1 reads the image, whose gradient nobody asks for: the input-gradient call must
  not stay in the compiled step (for the paper's conv1 it would cost as much as the rest
  of the layer)."""
  x, kernel = conv_case(11, 35, 0)
  grad = jax.jit(jax.grad(lambda k: jnp.sum(ops.conv(x, k, 4, ((0, 3), (0, 3))) ** 2)))
  text = grad.lower(kernel).compile().as_text()
  assert 'alexnet_jax_conv_input_grad' not in text and 'alexnet_jax_conv_kernel_grad' in text


@pytest.mark.parametrize('size,stride,padding,side', [
    (11, 4, ((0, 3), (0, 3)), 35),  # The paper's conv1.
    (11, 4, ((2, 2), (2, 2)), 36),  # torchvision's conv1.
    (5, 1, ops.same_padding(5), 9),
    (3, 1, ((1, 1), (1, 1)), 6),
    (4, 2, ops.same_padding(4), 8),
])
def test_the_matmul_lowerings_equal_xlas_convolution(size, stride, padding, side):
  """ops.conv_matmul and ops.input_grad_matmul, the alternatives experiments/conv_lowering.py
  times against XLA's own, compute what lax computes (float32 and bfloat16 inputs)."""
  rng = np.random.default_rng(size + stride)
  x = jnp.asarray(rng.normal(size=(3, side, side, 5)), jnp.float32)
  kernel = jnp.asarray(rng.normal(size=(size, size, 5, 7)), jnp.float32)
  want = lax_conv(x, kernel, stride, padding)
  np.testing.assert_allclose(ops.conv_matmul(x, kernel, stride, padding), want,
                             rtol=1e-5, atol=1e-4)
  half = ops.conv_matmul(x.astype(jnp.bfloat16), kernel.astype(jnp.bfloat16), stride, padding)
  assert half.dtype == jnp.bfloat16
  assert float(jnp.max(jnp.abs(half.astype(jnp.float32) - want))) < 0.02 * float(jnp.std(want))
  if stride == 1:
    dy = jnp.cos(want)
    dx = jax.vjp(lambda x: lax_conv(x, kernel, stride, padding), x)[1](dy)[0]
    np.testing.assert_allclose(ops.input_grad_matmul(dy, kernel, x.shape, padding), dx,
                               rtol=1e-5, atol=1e-4)


def test_conv_kernel_gradient_in_bfloat16_keeps_the_kernels_dtype(monkeypatch):
  monkeypatch.setattr(ops, 'IM2COL_MIN_FLOPS', 0)
  x = jnp.ones((2, 6, 6, 3), jnp.bfloat16)
  kernel = jnp.ones((3, 3, 3, 4), jnp.bfloat16)
  grad = jax.grad(lambda k: jnp.sum(ops.conv(x, k, 1, ops.same_padding(3)).astype(
      jnp.float32)))(kernel)
  assert grad.dtype == jnp.bfloat16
  # The center tap sees every one of the 2x6x6 positions; a corner tap 2x5x5 of them.
  assert float(grad[1, 1, 0, 0]) == 72 and float(grad[0, 0, 0, 0]) == 50


@pytest.mark.parametrize('batch', [8, ops.EIGEN_DENSE_MAX_ROWS + 1])
def test_dense_and_its_gradients_equal_the_plain_product(batch):
  """ops.dense and its two gradients compute the einsum's values. On CPU its float32 forward
  product is kept away from YNNPACK (which takes the plain product) up to
  EIGEN_DENSE_MAX_ROWS rows, and is the plain product above."""
  rng = np.random.default_rng(batch)
  x = jnp.asarray(rng.normal(size=(2, batch, 64)), jnp.float32)
  kernel = jnp.asarray(rng.normal(size=(2, 64, 32)), jnp.float32)
  plain = lambda x, kernel: jnp.einsum('tbi,tio->tbo', x, kernel)
  loss = lambda dense: lambda x, kernel: jnp.sum(jnp.sin(dense(x, kernel)))
  ours = jax.jit(jax.value_and_grad(loss(ops.dense), (0, 1)))(x, kernel)
  want = jax.jit(jax.value_and_grad(loss(plain), (0, 1)))(x, kernel)
  for got, expected in zip(jax.tree.leaves(ours), jax.tree.leaves(want)):
    assert_close(got, expected)
  # Where XLA:CPU gives float32 products to YNNPACK at all (every x86 CPU these tests ran on).
  ynn = lambda f: '__ynn_fusion' in jax.jit(f).lower(x, kernel).compile().as_text()
  assert ynn(ops.dense) == (ynn(plain) and batch > ops.EIGEN_DENSE_MAX_ROWS)
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
