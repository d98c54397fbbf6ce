"""The network's layer primitives: plain JAX that means the same on every platform.

The model computes its convolutions and fully connected products through a `Kernels` record:
`PORTABLE` (this module's), or a platform backend's (alexnet_jax/backends: oneDNN's
convolutions on a CPU), chosen from the mesh's devices before anything is traced. Where a
gradient written by hand is faster than autodiff's on every backend, it is written here
(checked against XLA's own in tests/test_ops.py):

- `dense`: the kernel gradient is one product straight into the kernel's (in, out) layout;
  autodiff of the einsum computes it (out, in) and then transposes it (fc6: 151 MB a step).
- `max_pool`: the gradient goes to the first maximum of each window, in window order, as
  XLA's select-and-scatter sends it, but computed from strided slices, comparisons, shifts
  and one interleave: elementwise work that fuses, 5-7x faster than select-and-scatter on a
  CPU for the paper's pools, and without its scatter on a GPU.
- `local_response_norm`: the window sum as one banded matmul, beta = 3/4 without a power.
"""
from __future__ import annotations

import dataclasses
import functools
from typing import Callable

import jax
import jax.numpy as jnp
import numpy as np

from alexnet_jax import sharding

Padding = tuple[tuple[int, int], tuple[int, int]]
_NHWC = ('NHWC', 'HWIO', 'NHWC')


@dataclasses.dataclass(frozen=True)
class Kernels:
  """The primitives a model computes its layers with (hashable: a static jit argument)."""
  name: str  # For the line a run prints and for reports.
  conv: Callable  # (x NHWC, kernel HWIO, stride, ((top, bottom), (left, right))) -> y NHWC
  dense: Callable  # (x (stacks, B, in), kernel (stacks, in, out)) -> (stacks, B, out) float32


def same_padding(kernel: int) -> Padding:
  """Stride-1 padding that keeps the spatial size (the extra row goes last, as 'SAME')."""
  lo = (kernel - 1) // 2
  return ((lo, kernel - 1 - lo),) * 2


def _strided_window(x: jax.Array, i: int, j: int, stride: int, out_h: int, out_w: int):
  """x[:, i + stride*r, j + stride*c] for r < out_h, c < out_w: the (i, j) tap of every
  window."""
  return x[:, i:i + stride * (out_h - 1) + 1:stride, j:j + stride * (out_w - 1) + 1:stride]


# ---- Convolution ------------------------------------------------------------------------------


def conv(x: jax.Array, kernel: jax.Array, stride: int, padding: Padding) -> jax.Array:
  """NHWC x HWIO convolution with explicit ((top, bottom), (left, right)) zero padding."""
  return jax.lax.conv_general_dilated(x, kernel, (stride, stride), padding,
                                      dimension_numbers=_NHWC)


# ---- Fully connected layers -------------------------------------------------------------------


def dense_product(x: jax.Array, kernel: jax.Array) -> jax.Array:
  """(stacks, B, in) x (stacks, in, out) -> (stacks, B, out), accumulated in float32."""
  return jnp.einsum('tbi,tio->tbo', x, kernel, preferred_element_type=jnp.float32)


def dense(x: jax.Array, kernel: jax.Array) -> jax.Array:
  """`dense_product`, with the hand-written gradient for float32 operands (other dtypes take
  autodiff's)."""
  if x.dtype == kernel.dtype == jnp.float32:
    return _float32_dense(x, kernel)
  return dense_product(x, kernel)


@jax.custom_vjp
def _float32_dense(x, kernel):
  return dense_product(x, kernel)


def _dense_fwd(x, kernel):
  return dense_product(x, kernel), (x, kernel)


def _dense_bwd(residuals, dy):
  # d/dkernel straight into the kernel's (in, out) layout; inside shard_map, summed over the
  # mesh axes the gradient varies along but the primal does not (as autodiff does).
  x, kernel = residuals
  dx = jnp.einsum('tbo,tio->tbi', dy, kernel)
  dk = jnp.einsum('tbi,tbo->tio', x, dy)
  return sharding.sum_to_axes_of(dx, x), sharding.sum_to_axes_of(dk, kernel)


_float32_dense.defvjp(_dense_fwd, _dense_bwd)

PORTABLE = Kernels('XLA\'s own', conv, dense)  # Every platform's, and a CPU's without a backend.


# ---- Max pooling ------------------------------------------------------------------------------


def max_pool(x: jax.Array, window: int, stride: int) -> jax.Array:
  """window x window max pooling at `stride`, no padding, over NHWC."""
  return _masked_max_pool(x, window, stride)


def _reduce_max(x, window, stride):
  return jax.lax.reduce_window(x, -jnp.inf, jax.lax.max,
                               (1, window, window, 1), (1, stride, stride, 1), 'VALID')


@functools.partial(jax.custom_vjp, nondiff_argnums=(1, 2))
def _masked_max_pool(x, window, stride):
  return _reduce_max(x, window, stride)


def _max_pool_fwd(x, window, stride):
  y = _reduce_max(x, window, stride)
  return y, (x, y)


def _max_pool_bwd(window, stride, residuals, dy):
  x, y = residuals
  b, h, w, c = x.shape
  _, out_h, out_w, _ = y.shape
  zero = jnp.zeros((), x.dtype)
  # Each window's gradient goes to its first maximum, in window order: routed[i, j] is the
  # gradient (in output positions) that tap (i, j) receives.
  taken = jnp.zeros(y.shape, bool)
  routed = {}
  for i in range(window):
    for j in range(window):
      first = (_strided_window(x, i, j, stride, out_h, out_w) == y) & ~taken
      taken = taken | first
      routed[i, j] = jnp.where(first, dy, zero)
  # Input row stride*q + p is tap p + stride*m of output row q - m. So each of the stride^2
  # phases (p_h, p_w) of dx is a sum of a few shifted output-sized arrays, and dx is those
  # planes interleaved: small fused sums instead of window^2 full-size padded terms.
  qh, qw = -(-h // stride), -(-w // stride)

  def shifted(g, m_h, m_w):  # g[q_h - m_h, q_w - m_w] on the (qh, qw) grid, zero outside.
    return jax.lax.pad(g, zero, ((0, 0, 0), (m_h, qh - out_h - m_h, 0),
                                 (m_w, qw - out_w - m_w, 0), (0, 0, 0)))

  def plane(p_h, p_w):
    terms = [shifted(routed[i, j], (i - p_h) // stride, (j - p_w) // stride)
             for i in range(p_h, window, stride) for j in range(p_w, window, stride)]
    return sum(terms[1:], terms[0]) if terms else jnp.zeros((b, qh, qw, c), x.dtype)

  dx = jnp.stack([jnp.stack([plane(p_h, p_w) for p_w in range(stride)], axis=3)
                  for p_h in range(stride)], axis=2)  # (b, qh, p_h, qw, p_w, c)
  return (dx.reshape(b, qh * stride, qw * stride, c)[:, :h, :w],)


_masked_max_pool.defvjp(_max_pool_fwd, _max_pool_bwd)


# ---- Local response normalization -------------------------------------------------------------


def local_response_norm(x: jax.Array, *, size: int, alpha: float, beta: float, k: float,
                        alpha_over_n: bool) -> jax.Array:
  """b_c = a_c / (k + alpha' * sum_{|j-c| <= size//2} a_j^2) ** beta over the channel axis.

  alpha' is alpha/size when `alpha_over_n` (the code's convention), else alpha (the text's).
  The window sum is a product with a banded 0/1 matrix: one small matmul, fast on every
  backend and with a cheap gradient. The paper's beta = 3/4 is computed as rsqrt(d) *
  sqrt(rsqrt(d)), which is 2x cheaper than a general power (exp and log) on CPU.
  """
  c = x.shape[-1]
  idx = np.arange(c)
  lo = idx - size // 2
  band = ((idx[:, None] >= lo[None, :]) & (idx[:, None] < lo[None, :] + size)).astype(np.float32)
  x32 = x.astype(jnp.float32)
  window = jnp.einsum('...c,cd->...d', x32 * x32, band)
  denominator = k + (alpha / size if alpha_over_n else alpha) * window
  if beta == 0.75:
    inv = jax.lax.rsqrt(denominator)
    scale = inv * jnp.sqrt(inv)
  else:
    scale = denominator ** -beta
  return (x32 * scale).astype(x.dtype)
