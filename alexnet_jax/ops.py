"""The network's layer primitives, with gradients written for speed where XLA's are slow.

Each function computes what its plain `jax.lax` form does, up to the summation order
(measured in experiments/BENCHMARKS.md; checked in tests/test_ops.py):

- `conv`: on CPU, float32 convolutions and both their gradients run on oneDNN, through
  `onednn.py` (up to 9x faster than XLA:CPU's own kernels per part, in most parts
  1.2-2.6x), and bfloat16 ones too on CPUs with oneDNN's bfloat16 kernels (AVX-512; on
  AVX2 alone bfloat16 stays on XLA). Without oneDNN XLA's convolution runs, and for large
  layers the kernel gradient is one explicit matrix product (`kernel_grad_im2col`): XLA:CPU
  lowers the backward-filter convolution (a convolution whose "kernel" is the whole 27x27 or
  55x55 output gradient) to a path that runs 1.5-2x slower than the same arithmetic as
  matmuls. Other backends keep
  XLA's own convolutions and gradients (cuDNN's kernels are fast).
- `dense`: the fully connected product of every stacked tower. XLA:CPU hands float32
  products to YNNPACK, whose forward product at a small batch runs 3-4x slower than Eigen's
  (owt's fc6 at batch 32: 150 ms against 44) while its input gradient runs 4x faster than
  Eigen's. Up to `EIGEN_DENSE_MAX_ROWS` rows the forward product reads a materialized x^T,
  which YNNPACK does not take, so Eigen runs it; the input gradient stays YNNPACK's, and the
  kernel gradient lands in the kernel's layout without a transpose. owt's fully connected
  layers train 3.5x faster at batch 32 and 1.7x at 128. Other backends run the plain
  product; bfloat16 inputs too.
- `max_pool`: the gradient goes to the first maximum of each window, in window order, as
  XLA's select-and-scatter sends it, but computed from strided slices, comparisons, shifts
  and one interleave: elementwise work that fuses, 5-7x faster than select-and-scatter on CPU
  for the paper's pools, and without its scatter on GPU. On the embedded default's small
  pools XLA:CPU's select-and-scatter costs more still (an index array per window tap, then a
  scatter): its train step is 20% faster with the masks.

The im2col kernel gradient switches by size (below): on small layers its extra ops cost more
than they save.
"""
from __future__ import annotations

import functools
import math

import jax
import jax.numpy as jnp
import numpy as np

from alexnet_jax import onednn
from alexnet_jax import sharding

Padding = tuple[tuple[int, int], tuple[int, int]]
# The im2col kernel gradient wins from about this size of product up (the paper's conv
# layers at batch 32: 2.4-7.2 GFLOP each); below it, the extra slices and concatenations cost
# more than they save (the embedded default's layers, 0.1-0.3 GFLOP: 7% slower steps).
IM2COL_MIN_FLOPS = 1e9
# XLA:CPU gives float32 products to YNNPACK, whose forward fully connected product at a small
# batch is 3-4x slower than Eigen's (fc6 at batch 32: 150 ms against 44; at batch 128 YNNPACK
# is the faster, 155 ms against 185): up to this many rows `dense` runs on Eigen.
EIGEN_DENSE_MAX_ROWS = 96
_NHWC = ('NHWC', 'HWIO', 'NHWC')


def same_padding(kernel: int) -> Padding:
  """Stride-1 padding that keeps the spatial size (the extra row goes last, as 'SAME')."""
  lo = (kernel - 1) // 2
  return ((lo, kernel - 1 - lo),) * 2


def _strided_window(x: jax.Array, i: int, j: int, stride: int, out_h: int, out_w: int):
  """x[:, i + stride*r, j + stride*c] for r < out_h, c < out_w: the (i, j) tap of every
  window."""
  return x[:, i:i + stride * (out_h - 1) + 1:stride, j:j + stride * (out_w - 1) + 1:stride]


# ---- Convolution ------------------------------------------------------------------------------


def _conv(x, kernel, stride: int, padding: Padding):
  return jax.lax.conv_general_dilated(x, kernel, (stride, stride), padding,
                                      dimension_numbers=_NHWC)


@functools.partial(jax.custom_vjp, nondiff_argnums=(2, 3))
def conv(x: jax.Array, kernel: jax.Array, stride: int, padding: Padding) -> jax.Array:
  """NHWC x HWIO convolution with explicit ((top, bottom), (left, right)) zero padding."""
  return _conv_forward(x, kernel, stride, padding)


def _on_onednn(x: jax.Array, kernel: jax.Array) -> bool:
  """Whether this convolution runs on oneDNN where it runs on the CPU: float32, or bfloat16
  on CPUs with oneDNN kernels for it (with bf16 dot-product instructions 1.3-1.8x faster
  than its float32)."""
  return x.dtype == kernel.dtype and onednn.supports(x.dtype)


def _conv_forward(x, kernel, stride, padding):
  xla = lambda x, kernel: _conv(x, kernel, stride, padding)
  if not _on_onednn(x, kernel):
    return xla(x, kernel)
  return jax.lax.platform_dependent(
      x, kernel, cpu=lambda x, kernel: onednn.forward(x, kernel, stride, padding), default=xla)


def _conv_fwd(x, kernel, stride, padding):
  return _conv_forward(x, kernel, stride, padding), (x, kernel)


def _conv_bwd(stride, padding, residuals, dy):
  x, kernel = residuals
  xla_dx = lambda dy, kernel: jax.vjp(lambda x: _conv(x, kernel, stride, padding), x)[1](dy)[0]
  native_dk = lambda x, dy: jax.vjp(lambda k: _conv(x, k, stride, padding), kernel)[1](dy)[0]
  if _on_onednn(x, kernel):
    onednn_dx = lambda dy, kernel: _sum_to_axes_of(
        onednn.input_grad(dy, kernel, x.shape, stride, padding), x)
    onednn_dk = lambda x, dy: _sum_to_axes_of(
        onednn.kernel_grad(x, dy, kernel.shape, stride, padding), kernel)
    return (jax.lax.platform_dependent(dy, kernel, cpu=onednn_dx, default=xla_dx),
            jax.lax.platform_dependent(x, dy, cpu=onednn_dk, default=native_dk))
  dx = xla_dx(dy, kernel)
  if 2 * dy.size * math.prod(kernel.shape[:-1]) < IM2COL_MIN_FLOPS:
    return dx, native_dk(x, dy)
  im2col_dk = lambda x, dy: _sum_to_axes_of(kernel_grad_im2col(
      x, dy, size=kernel.shape[0], stride=stride, padding=padding, dtype=kernel.dtype), kernel)
  return dx, jax.lax.platform_dependent(x, dy, cpu=im2col_dk, default=native_dk)


def _sum_to_axes_of(grad, primal):
  """Inside shard_map: `grad` summed over the mesh axes it varies along but `primal` does
  not, as the autodiff of `_conv` does: a kernel replicated over the data axis gets the sum
  of every batch shard's gradient, an input shared by the towers (conv1's image, conv3's
  gathered input) the sum of every tower's."""
  extra = tuple(sorted(sharding.varying_axes(grad) - sharding.varying_axes(primal)))
  return jax.lax.psum(grad, extra) if extra else grad


conv.defvjp(_conv_fwd, _conv_bwd)


def _blocks(x: jax.Array, padding: Padding, s: int, k: int, out_h: int, out_w: int):
  """x zero-padded to the (out_h + k - 1) x (out_w + k - 1) blocks of s x s pixels that some
  output reads (k = blocks per kernel side), each block's pixels on the channel axis (space
  to depth, s*s*C channels, in (row, column, C) order)."""
  (top, _), (left, _) = padding
  b, h, w, c = x.shape
  hq, wq = out_h + k - 1, out_w + k - 1
  x = jax.lax.pad(x, jnp.zeros((), x.dtype), ((0, 0, 0), (top, hq * s - h - top, 0),
                                              (left, wq * s - w - left, 0), (0, 0, 0)))
  if s > 1:
    x = x.reshape(b, hq, s, wq, s, c).transpose(0, 1, 3, 2, 4, 5).reshape(b, hq, wq, s * s * c)
  return x


def kernel_grad_im2col(x: jax.Array, dy: jax.Array, *, size: int, stride: int,
                       padding: Padding, dtype) -> jax.Array:
  """d(loss)/d(kernel) (size, size, C, O) of `conv` as one matrix product.

  A stride-s convolution is a stride-1 one over the input's s x s blocks (space to depth,
  s*s*C channels) with a k x k kernel of blocks, k = ceil(size / s). Its kernel gradient
  pairs the input under tap (a, d) with the output gradient, summed over the batch and the
  output positions. Rather than copying the input k*k times (im2col), the input is shifted
  along W (k copies: taps d) and the output gradient along H (k copies: taps a), so that
  one (B*Hq*W', k*s*s*C)^T x (B*Hq*W', k*O) product gives every tap at once. The padding
  rows this adds cost 10-15% more FLOPs than im2col; the copies it saves cost more.
  """
  c = x.shape[-1]
  _, out_h, out_w, out = dy.shape
  s, k = stride, -(-size // stride)
  x = _blocks(x, padding, s, k, out_h, out_w)
  hq = out_h + k - 1
  # patches[:, r, q, d] = block (r, q + d); shifted[:, r, q, a] = dy[:, r - a, q] (0 outside).
  patches = jnp.concatenate([x[:, :, d:d + out_w] for d in range(k)], axis=-1)
  dy = jnp.pad(dy, ((0, 0), (k - 1, k - 1), (0, 0), (0, 0)))
  shifted = jnp.concatenate([dy[:, k - 1 - a:k - 1 - a + hq] for a in range(k)], axis=-1)
  grad = jnp.matmul(patches.reshape(-1, patches.shape[-1]).T,
                    shifted.reshape(-1, shifted.shape[-1]), preferred_element_type=jnp.float32)
  # (d, row in block, column in block, C, a, O) -> kernel (a*s + row, d*s + column, C, O).
  grad = grad.reshape(k, s, s, c, k, out).transpose(4, 1, 0, 2, 3, 5)
  return grad.reshape(k * s, k * s, c, out)[:size, :size].astype(dtype)


def conv_matmul(x: jax.Array, kernel: jax.Array, stride: int, padding: Padding) -> jax.Array:
  """`conv` as one matrix product of the input's patches (im2col) with the kernel.

  A stride-s convolution is a stride-1 one over the input's s x s blocks (space to depth,
  s*s*C channels) with a k x k kernel of blocks, k = ceil(size / s); the patches are the
  k*k shifted views of the blocks, side by side on the channel axis. The product
  accumulates in float32 (bfloat16 inputs take the CPU's bf16 dot-product instructions)
  and returns the input's dtype, as the convolution does.
  """
  (top, bottom), (left, right) = padding
  b, h, w, c = x.shape
  size, _, _, out = kernel.shape
  s, k = stride, -(-size // stride)
  out_h, out_w = (h + top + bottom - size) // s + 1, (w + left + right - size) // s + 1
  x = _blocks(x, padding, s, k, out_h, out_w)
  patches = jnp.concatenate([x[:, a:a + out_h, d:d + out_w]
                             for a in range(k) for d in range(k)], axis=-1)
  # Kernel (a*s + row, d*s + column, C, O) -> rows in the patches' (a, d, row, column, C) order.
  kernel = jnp.pad(kernel, ((0, k * s - size), (0, k * s - size), (0, 0), (0, 0)))
  kernel = kernel.reshape(k, s, k, s, c, out).transpose(0, 2, 1, 3, 4, 5).reshape(-1, out)
  y = jnp.matmul(patches.reshape(-1, patches.shape[-1]), kernel.astype(x.dtype),
                 preferred_element_type=jnp.float32)
  return y.reshape(b, out_h, out_w, out).astype(x.dtype)


def input_grad_matmul(dy: jax.Array, kernel: jax.Array, input_shape: tuple[int, ...],
                      padding: Padding) -> jax.Array:
  """d(loss)/d(input) of a stride-1 `conv`: the output gradient, padded, convolved with the
  kernel flipped in space and transposed (in <-> out), by `conv_matmul`."""
  size = kernel.shape[0]
  h, w = input_shape[1:3]
  pads = tuple((size - 1 - lo, n + size - 1 - dy.shape[axis] - (size - 1 - lo))
               for axis, n, (lo, _) in ((1, h, padding[0]), (2, w, padding[1])))
  flipped = jnp.flip(kernel, (0, 1)).transpose(0, 1, 3, 2)
  return conv_matmul(dy, flipped, 1, pads)


# ---- Fully connected layers -------------------------------------------------------------------


def _dense(x, kernel):
  return jnp.einsum('tbi,tio->tbo', x, kernel, preferred_element_type=jnp.float32)


def _dense_by_eigen(x, kernel):
  """`_dense` with the batch on the minor axis of a materialized x^T, which YNNPACK's
  product does not take: XLA:CPU hands it to Eigen instead. The barrier keeps the
  simplifier from folding the transpose back into the product."""
  x_t = jax.lax.optimization_barrier(jnp.swapaxes(x, 1, 2))
  return jax.lax.dot_general(x_t, kernel, (((1,), (1,)), ((0,), (0,))),
                             preferred_element_type=jnp.float32)


def dense(x: jax.Array, kernel: jax.Array) -> jax.Array:
  """(stacks, B, in) x (stacks, in, out) -> (stacks, B, out), accumulated in float32."""
  if x.dtype == kernel.dtype == jnp.float32:
    return _dense_float32(x, kernel)
  return _dense(x, kernel)


@jax.custom_vjp
def _dense_float32(x, kernel):
  if x.shape[1] > EIGEN_DENSE_MAX_ROWS:
    return _dense(x, kernel)
  return jax.lax.platform_dependent(x, kernel, cpu=_dense_by_eigen, default=_dense)


def _dense_fwd(x, kernel):
  return _dense_float32(x, kernel), (x, kernel)


def _dense_bwd(residuals, dy):
  # d/dx contracts the kernel's minor axis, which YNNPACK runs 4x faster than Eigen. d/dkernel
  # is one product straight into the kernel's (in, out) layout: autodiff of the einsum made
  # it (out, in) and then transposed it (fc6: 151 MB, 156 ms of owt's 2.4 s step at batch
  # 32). owt's three layers, forward, gradients and update, alone: 877 -> 247 ms a step at
  # batch 32, 1,150 -> 683 ms at 128.
  x, kernel = residuals
  dx = jnp.einsum('tbo,tio->tbi', dy, kernel)
  dk = jnp.einsum('tbi,tbo->tio', x, dy)
  return _sum_to_axes_of(dx, x), _sum_to_axes_of(dk, kernel)


_dense_float32.defvjp(_dense_fwd, _dense_bwd)


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
