"""Each convolution's three parts, per layer: as XLA lowers them, as matrix products, on oneDNN.

    python experiments/conv_lowering.py [--nets=paper,owt] [--batches=32] \
        [--dtypes=float32,bfloat16] [--repeats=5] [--output=FILE] [--record]

For every conv layer of each net (one tower's shapes: the paper's net runs each layer twice),
at each batch and compute dtype, it times, jitted on this machine's default JAX backend:

  forward    `lax.conv_general_dilated` against `conv_matmul` (im2col, one product) and
             the CPU backend's `onednn.forward`;
  input grad XLA's transposed convolution against `input_grad_matmul` and
             `onednn.input_grad` (stride 1 only: conv1's input gradient is never needed in
             training);
  kernel grad XLA's backward-filter convolution against `kernel_grad_im2col` and
             `onednn.kernel_grad`.

Medians of --repeats calls after two warm-up calls, all variants interleaved in one process so
that they see the same machine state. The table says, per layer and dtype, which lowering is
faster here: how the CPU backend's convolutions were chosen. The matrix-product lowerings
below are this experiment's alone (tests/test_benchmark.py checks them against lax). Prints a table (and writes it
to --output); with --record appends it to experiments/BENCHMARKS.md.
"""
from __future__ import annotations

import argparse
import os
import statistics
import sys
import time

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, os.path.dirname(HERE))
sys.path.insert(0, HERE)

import jax  # noqa: E402
import jax.numpy as jnp  # noqa: E402
import numpy as np  # noqa: E402

from alexnet_jax import backends  # noqa: E402
from alexnet_jax import model as model_lib  # noqa: E402
from alexnet_jax import ops  # noqa: E402
from alexnet_jax import recipes  # noqa: E402
from records import markdown_table, record  # noqa: E402

Padding = tuple[tuple[int, int], tuple[int, int]]


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
  """d(loss)/d(kernel) (size, size, C, O) of a convolution as one matrix product.

  A stride-s convolution is a stride-1 one over the input's s x s blocks (space to depth,
  s*s*C channels) with a k x k kernel of blocks, k = ceil(size / s). Its kernel gradient
  pairs the input under tap (a, d) with the output gradient, summed over the batch and the
  output positions. Rather than copying the input k*k times (im2col), the input is shifted
  along W (k copies: taps d) and the output gradient along H (k copies: taps a), so that
  one (B*Hq*W', k*s*s*C)^T x (B*Hq*W', k*O) product gives every tap at once.
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
  """A convolution as one matrix product of the input's patches (im2col) with the kernel:
  a stride-s convolution is a stride-1 one over the input's s x s blocks, the patches the
  k*k shifted views of the blocks side by side on the channel axis. Accumulates in float32
  and returns the input's dtype, as the convolution does."""
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
  """d(loss)/d(input) of a stride-1 convolution: the output gradient, padded, convolved with
  the kernel flipped in space and transposed (in <-> out), by `conv_matmul`."""
  size = kernel.shape[0]
  h, w = input_shape[1:3]
  pads = tuple((size - 1 - lo, n + size - 1 - dy.shape[axis] - (size - 1 - lo))
               for axis, n, (lo, _) in ((1, h, padding[0]), (2, w, padding[1])))
  flipped = jnp.flip(kernel, (0, 1)).transpose(0, 1, 3, 2)
  return conv_matmul(dy, flipped, 1, pads)


def onednn_module():
  """The CPU backend's oneDNN calls where they are installed and load on this machine."""
  if (jax.default_backend() != 'cpu' or
      backends.for_platforms(frozenset({'cpu'})) is ops.PORTABLE):
    return None
  from alexnet_jax.backends.cpu import onednn  # pylint: disable=g-import-not-at-top
  return onednn


def conv_layers(net: str, batch: int):
  """(layer, input shape, kernel shape, stride, padding) of one tower of each conv layer."""
  spec = model_lib.ModelSpec.from_config(recipes.model_config(net))
  sides = spec.feature_sizes()
  input_side = {'conv1': spec.image_size, 'conv2': sides['pool1'], 'conv3': sides['pool2'],
                'conv4': sides['conv3'], 'conv5': sides['conv4']}
  for layer in model_lib.CONV_LAYERS:
    kernel = spec.kernel_shape(layer)
    stride = spec.conv1_stride if layer == 'conv1' else 1
    yield (layer, (batch, input_side[layer], input_side[layer], kernel[2]), kernel, stride,
           spec.conv_pads(layer))


def xla_conv(x, kernel, stride, padding):
  return jax.lax.conv_general_dilated(x, kernel, (stride, stride), padding,
                                      dimension_numbers=('NHWC', 'HWIO', 'NHWC'))


def variants(x, kernel, stride, padding):
  """{(part, lowering): jitted function of (x, kernel, dy)}."""
  xla_dx = lambda x, k, dy: jax.vjp(lambda x: xla_conv(x, k, stride, padding), x)[1](dy)[0]
  xla_dk = lambda x, k, dy: jax.vjp(lambda k: xla_conv(x, k, stride, padding), k)[1](dy)[0]
  fns = {('forward', 'xla'): lambda x, k, dy: xla_conv(x, k, stride, padding),
         ('forward', 'matmul'): lambda x, k, dy: conv_matmul(x, k, stride, padding),
         ('kernel grad', 'xla'): xla_dk,
         ('kernel grad', 'matmul'): lambda x, k, dy: kernel_grad_im2col(
             x, dy, size=k.shape[0], stride=stride, padding=padding, dtype=k.dtype)}
  if stride == 1:
    fns[('input grad', 'xla')] = xla_dx
    fns[('input grad', 'matmul')] = lambda x, k, dy: input_grad_matmul(dy, k, x.shape,
                                                                       padding)
  onednn = onednn_module()
  if onednn and onednn.supports(x.dtype):  # What the CPU backend's conv runs on oneDNN.
    fns[('forward', 'onednn')] = lambda x, k, dy: onednn.forward(x, k, stride, padding)
    fns[('kernel grad', 'onednn')] = lambda x, k, dy: onednn.kernel_grad(x, dy, k.shape,
                                                                        stride, padding)
    if stride == 1:
      fns[('input grad', 'onednn')] = lambda x, k, dy: onednn.input_grad(dy, k, x.shape,
                                                                         stride, padding)
  return {key: jax.jit(fn) for key, fn in fns.items()}


def measure(net, batch, dtype, repeats):
  """Rows of (net, batch, dtype, layer, part, XLA ms, matmul ms, oneDNN ms, XLA / matmul,
  XLA / oneDNN, best GFLOP/s); '-' where oneDNN has no kernel for it here."""
  rng = np.random.default_rng(0)
  rows = []
  for layer, x_shape, k_shape, stride, padding in conv_layers(net, batch):
    x = jnp.asarray(rng.normal(size=x_shape), dtype)
    kernel = jnp.asarray(rng.normal(size=k_shape) * 0.01, dtype)
    y_shape = jax.eval_shape(lambda: xla_conv(x, kernel, stride, padding)).shape
    dy = jnp.asarray(rng.normal(size=y_shape), dtype)
    flops = 2 * np.prod(y_shape) * np.prod(k_shape[:-1])
    fns = variants(x, kernel, stride, padding)
    times = {key: [] for key in fns}
    for key, fn in fns.items():  # Compile and warm up.
      jax.block_until_ready(fn(x, kernel, dy))
      jax.block_until_ready(fn(x, kernel, dy))
    for _ in range(repeats):  # Interleaved: every variant sees the same machine state.
      for key, fn in fns.items():
        start = time.perf_counter()
        jax.block_until_ready(fn(x, kernel, dy))
        times[key].append(time.perf_counter() - start)
    for part in ('forward', 'input grad', 'kernel grad'):
      if (part, 'xla') not in times:
        continue
      ms = {kind: statistics.median(times[part, kind]) for kind in ('xla', 'matmul', 'onednn')
            if (part, kind) in times}
      a, b, c = ms['xla'], ms['matmul'], ms.get('onednn')
      rows.append((net, str(batch), dtype, layer, part, f'{a * 1e3:.1f}', f'{b * 1e3:.1f}',
                   f'{c * 1e3:.1f}' if c else '-', f'{a / b:.2f}x', f'{a / c:.2f}x' if c else '-',
                   f'{flops / min(ms.values()) / 1e9:.0f}'))
  return rows


def main():
  parser = argparse.ArgumentParser(description=__doc__.split('\n')[0])
  parser.add_argument('--nets', default='paper,owt', help='Comma-separated recipe names.')
  parser.add_argument('--batches', default='32', help='Comma-separated batch sizes.')
  parser.add_argument('--dtypes', default='float32,bfloat16', help='Comma-separated dtypes.')
  parser.add_argument('--repeats', type=int, default=5, help='Timed calls per variant.')
  parser.add_argument('--output', default=None, help='Also write the table to this file.')
  parser.add_argument('--record', action='store_true',
                      help='Append the table to the tracked experiments/BENCHMARKS.md.')
  args = parser.parse_args()
  rows = []
  for net in args.nets.split(','):
    for batch in map(int, args.batches.split(',')):
      for dtype in args.dtypes.split(','):
        rows += measure(net, batch, dtype, args.repeats)
        print(f'{net} batch {batch} {dtype} done', file=sys.stderr, flush=True)
  text = markdown_table(('net', 'batch', 'dtype', 'layer (one tower)', 'part', 'XLA ms',
                         'matmul ms', 'oneDNN ms', 'XLA / matmul', 'XLA / oneDNN',
                         'best GFLOP/s'), rows)
  print(text)
  if args.output:
    with open(args.output, 'w') as f:
      f.write(text + '\n')
  if args.record:
    record('Convolutions: XLA against matrix products and oneDNN, per layer', 'conv_lowering.py',
           f'medians of {args.repeats} interleaved calls; JAX on {jax.devices()[0].platform}.',
           text)


if __name__ == '__main__':
  main()
