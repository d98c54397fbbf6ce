"""The CPU backend: oneDNN's convolutions through XLA's FFI equal XLA's own, forward and both
gradients, float32 and (where the CPU has the kernels) bfloat16, on every device thread and
summed over the mesh axes as autodiff sums them.

Skipped, with the reason, where the backend is not installed, cannot build (no compiler,
another architecture) or is switched off (ALEXNET_JAX_ONEDNN=0); requirements-test.txt
installs it, so on x86-64 Linux with a compiler these tests run.
"""
import os
import platform
import shutil

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from alexnet_jax import backends
from alexnet_jax import ops
from alexnet_jax.backends import cpu
from alexnet_jax.backends.cpu import onednn
import helpers
from helpers import assert_close
from helpers import conv_case


def _why_not() -> str | None:
  """Why the backend's tests cannot run here, or None."""
  if os.environ.get(backends.SWITCH, '1') == '0':
    return f'the CPU backend is switched off ({backends.SWITCH}=0)'
  if platform.system() != 'Linux' or platform.machine() != 'x86_64':
    return f'the CPU backend installs on x86-64 Linux only, not {platform.machine()}'
  if not cpu.installed():
    return 'the CPU backend is not installed (pip install -r requirements-cpu.txt)'
  if not (os.environ.get('CXX') or shutil.which('c++') or shutil.which('g++')):
    return 'no C++ compiler to build the CPU backend'
  return None


pytestmark = pytest.mark.skipif(_why_not() is not None, reason=str(_why_not()))
lax_conv = ops.conv  # XLA's own convolution, what the backend's must equal.


@pytest.fixture(scope='module', autouse=True)
def loaded():
  """Built and registered with XLA:CPU, as a model on CPU devices gets it."""
  onednn.load()


CONV_CASES = pytest.mark.parametrize('size,stride,padding,side', [
    (11, 4, ((0, 3), (0, 3)), 35),  # The paper's conv1: cuda-convnet's far-edge padding.
    (11, 4, ((2, 2), (2, 2)), 36),  # torchvision's conv1.
    (5, 1, ops.same_padding(5), 9),  # conv2.
    (3, 1, ops.same_padding(3), 6),  # conv3..conv5.
    (4, 2, ops.same_padding(4), 8),  # An even kernel: the extra padding row goes last.
    (3, 2, ((0, 2), (1, 0)), 7),  # Uneven padding, and a last row that no window reads.
])


def test_a_cpu_mesh_gets_the_backend_where_it_is_installed():
  """Installed and buildable (this test runs only then), it must be in use, not silently
  off: its build raises the reason, in one line, if it is not."""
  onednn.load()
  assert backends.for_platforms(frozenset({'cpu'})).conv is onednn.conv


@pytest.mark.slow
def test_a_failed_build_says_in_one_line_what_is_missing_and_leaves_nothing(monkeypatch,
                                                                              tmp_path):
  monkeypatch.setenv('XDG_CACHE_HOME', str(tmp_path))
  monkeypatch.delenv('CXX', raising=False)
  monkeypatch.setattr(onednn.shutil, 'which', lambda name: None)
  with pytest.raises(cpu.Unavailable, match='^no C\\+\\+ compiler'):
    onednn.build()
  monkeypatch.setenv('CXX', 'false')  # A compiler that fails half way.
  with pytest.raises(cpu.Unavailable, match='^building onednn_conv.cc failed: '):
    onednn.build()
  assert not list(tmp_path.rglob('*.so'))  # No broken library in the cache.


@CONV_CASES
def test_onednn_convolution_and_its_gradients_equal_laxs(size, stride, padding, side):
  """onednn.forward / input_grad / kernel_grad, called directly, against lax's
  convolution and its autodiff."""
  x, kernel = conv_case(size, side, size + side)
  y, vjp = jax.vjp(lambda x, k: lax_conv(x, k, stride, padding), x, kernel)
  dy = jnp.cos(y)
  dx, dk = vjp(dy)
  assert_close(jax.jit(onednn.forward, static_argnums=(2, 3))(x, kernel, stride, padding), y)
  assert_close(onednn.input_grad(dy, kernel, x.shape, stride, padding), dx)
  assert_close(onednn.kernel_grad(x, dy, kernel.shape, stride, padding), dk, scale=10)


@CONV_CASES
def test_the_backends_conv_and_its_gradients_run_on_onednn_and_equal_xlas(size, stride,
                                                                          padding, side):
  x, kernel = conv_case(size, side, size)
  # A linear loss: its output gradient (`probe`) does not pass on the forward's rounding.
  probe = jnp.cos(lax_conv(x, kernel, stride, padding))
  loss = lambda conv: lambda x, k: jnp.sum(conv(x, k, stride, padding) * probe)
  grads = {name: jax.jit(jax.grad(loss(conv), argnums=(0, 1)))
           for name, conv in (('ours', onednn.conv), ('xla', lax_conv))}
  # The gradient is oneDNN's two calls, input and kernel gradient (a linear loss needs no
  # forward).
  text = grads['ours'].lower(x, kernel).compile().as_text()
  assert text.count('custom_call_target="alexnet_jax_conv_') == 2, text
  assert_close(jax.jit(onednn.conv, static_argnums=(2, 3))(x, kernel, stride, padding),
               lax_conv(x, kernel, stride, padding))
  ours, xlas = grads['ours'](x, kernel), grads['xla'](x, kernel)
  assert_close(ours[0], xlas[0])
  assert_close(ours[1], xlas[1], scale=10)


def test_conv_of_an_input_that_needs_no_gradient_skips_its_input_gradient():
  """conv1 reads the image, whose gradient nobody asks for: the input-gradient call must
  not stay in the compiled step (for the paper's conv1 it would cost as much as the rest
  of the layer)."""
  x, kernel = conv_case(11, 35, 0)
  grad = jax.jit(jax.grad(lambda k: jnp.sum(onednn.conv(x, k, 4, ((0, 3), (0, 3))) ** 2)))
  text = grad.lower(kernel).compile().as_text()
  assert 'alexnet_jax_conv_input_grad' not in text and 'alexnet_jax_conv_kernel_grad' in text


def test_onednn_runs_on_every_device_thread_at_once():
  """XLA runs each device's program on its own thread, four at once here. On AVX2 CPUs
  oneDNN picks its gemm-based kernel for torchvision's conv1 (3 input channels, 224 px),
  which crashed the process when a thread ran a primitive another thread had built; every
  thread's primitives bring their own scratchpad."""
  mesh = jax.make_mesh((4,), ('data',))
  spec = jax.sharding.PartitionSpec
  rng = np.random.default_rng(0)
  x = jax.device_put(jnp.asarray(rng.normal(size=(4, 224, 224, 3)), jnp.float32),
                     jax.NamedSharding(mesh, spec('data')))
  kernel = jnp.asarray(rng.normal(size=(11, 11, 3, 8)), jnp.float32)
  padding = ((2, 2), (2, 2))
  conv = jax.jit(jax.shard_map(lambda x, k: onednn.forward(x, k, 4, padding), mesh=mesh,
                               in_specs=(spec('data'), spec()), out_specs=spec('data')))
  for _ in range(3):  # Later calls find the primitives built.
    assert_close(conv(x, kernel), lax_conv(x, kernel, 4, padding))


def cpu_flags() -> set[str]:
  with open('/proc/cpuinfo') as f:
    return {flag for line in f if line.startswith('flags') for flag in line.split()[2:]}


def test_onednn_has_bfloat16_kernels_where_the_cpu_does():
  """oneDNN's bfloat16 convolutions need AVX-512: with bf16 dot products (Zen 4, Cooper Lake
  and newer) they must be on; on AVX2 alone they must be off, so that conv keeps XLA's
  convolution instead of failing at run time."""
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
  bfloat16 (relative error <= 2^-8). Elsewhere the backend runs XLA's convolution."""
  x, kernel = (a.astype(jnp.bfloat16) for a in conv_case(size, side, size))
  wide = lambda *arrays: [a.astype(jnp.float32) for a in arrays]
  y, vjp = jax.vjp(lambda x, k: lax_conv(x, k, stride, padding), *wide(x, kernel))
  dy = jnp.cos(y).astype(jnp.bfloat16)
  dx, dk = vjp(*wide(dy))
  conv = lambda x, k: onednn.conv(x, k, stride, padding)
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


def test_gradients_on_a_mesh_sum_over_its_axes_as_xlas_do():
  """On a 2 data x 2 tower mesh, oneDNN's gradients must add the data shards' kernel
  gradients, and the towers' gradients of an input they share (conv1's image, conv3's
  gathered input), as XLA's own gradient does."""
  config = helpers.small_config()
  helpers.assert_gradients_close(
      helpers.mesh_gradients(config, jax.devices(), kernels=cpu.kernels()),
      helpers.mesh_gradients(config, jax.devices(), kernels=ops.PORTABLE))
