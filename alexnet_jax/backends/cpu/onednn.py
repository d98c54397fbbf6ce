"""oneDNN's convolutions on the CPU, called from XLA through the FFI.

`load()` compiles `onednn_conv.cc` once per machine (into $XDG_CACHE_HOME/alexnet_jax, by
default ~/.cache/alexnet_jax, named by a hash of everything that goes into it; about 5 s),
loads it and registers its three handlers with XLA:CPU. `conv` is `ops.conv` with them: on
the CPU, float32 convolutions (and bfloat16 ones, on CPUs with oneDNN's bfloat16 kernels:
AVX-512) and both their gradients run on oneDNN; in a program lowered for any other
platform, and for other dtypes, XLA's own convolution.

Contract of each call, as `jax.lax.conv_general_dilated` with NHWC x HWIO -> NHWC, a square
`stride` and explicit ((top, bottom), (left, right)) zero padding; every operand float32, or
every operand bfloat16 (oneDNN accumulates in float32 and rounds the result once):

  forward(x, kernel)              -> y
  input_grad(dy, kernel, x_shape) -> d(sum(y * dy)) / dx
  kernel_grad(x, dy, kernel_shape) -> d(sum(y * dy)) / dkernel

The results equal lax's up to the summation order (tests/test_cpu_backend.py).
"""
from __future__ import annotations

import ctypes
import functools
import hashlib
import importlib.metadata
import os
import shutil
import subprocess
import tempfile

import jax
import numpy as np

from alexnet_jax import ops
from alexnet_jax import sharding
from alexnet_jax.backends.cpu import PACKAGES
from alexnet_jax.backends.cpu import Unavailable

SOURCE = os.path.join(os.path.dirname(os.path.abspath(__file__)), 'onednn_conv.cc')
_TARGETS = {'forward': 'AlexnetConvForward', 'input_grad': 'AlexnetConvInputGrad',
            'kernel_grad': 'AlexnetConvKernelGrad'}
Padding = ops.Padding


def _package_file(package: str, suffix: str) -> str:
  """The installed file of `package` whose path ends with `suffix`."""
  try:
    files = importlib.metadata.files(package) or []
  except importlib.metadata.PackageNotFoundError:
    raise Unavailable(f'the package {package} is not installed') from None
  for f in files:
    if ('/' + str(f).replace(os.sep, '/')).endswith('/' + suffix):
      return os.path.realpath(f.locate())
  raise Unavailable(f'the package {package} has no {suffix}')


def _cache_dir() -> str:
  root = os.environ.get('XDG_CACHE_HOME') or os.path.join(os.path.expanduser('~'), '.cache')
  return os.path.join(root, 'alexnet_jax')


def build() -> str:
  """Compiles onednn_conv.cc against the installed oneDNN (once; cached by a hash of the
  source, the headers' and library's paths, the compiler and jaxlib's version). Returns the
  shared library's path, or raises Unavailable. A build that fails leaves nothing behind."""
  library = _package_file(PACKAGES[0], 'libdnnl.so.3')
  header = _package_file(PACKAGES[1], 'include/oneapi/dnnl/dnnl.hpp')
  include = os.path.dirname(os.path.dirname(os.path.dirname(header)))  # .../include
  compiler = os.environ.get('CXX') or shutil.which('c++') or shutil.which('g++')
  if not compiler:
    raise Unavailable('no C++ compiler (c++, g++ or $CXX) to build them')
  with open(SOURCE, 'rb') as f:
    source = f.read()
  key = hashlib.sha256(b'\0'.join([source, library.encode(), include.encode(),
                                   compiler.encode(),
                                   importlib.metadata.version('jaxlib').encode()]))
  out_dir = _cache_dir()
  path = os.path.join(out_dir, f'onednn_conv-{key.hexdigest()[:16]}.so')
  if os.path.exists(path):
    return path
  os.makedirs(out_dir, exist_ok=True)
  lib_dir = os.path.dirname(library)
  # Written beside the final name and renamed: processes that build at once never load a
  # half-written file.
  fd, tmp = tempfile.mkstemp(suffix='.so', dir=out_dir)
  os.close(fd)
  command = [compiler, '-O2', '-std=c++17', '-shared', '-fPIC', '-w', f'-I{include}',
             f'-I{jax.ffi.include_dir()}', SOURCE, f'-L{lib_dir}', '-l:libdnnl.so.3',
             f'-Wl,-rpath,{lib_dir}', '-o', tmp]
  try:
    result = subprocess.run(command, capture_output=True, text=True, check=False)
    if result.returncode != 0:
      first = (result.stderr.strip().splitlines() or ['no output'])[0]
      raise Unavailable(f'building {os.path.basename(SOURCE)} failed: {first}')
    os.replace(tmp, path)
  finally:
    if os.path.exists(tmp):
      os.remove(tmp)
  return path


@functools.cache
def load() -> ctypes.CDLL:
  """The built library, loaded and its handlers registered with XLA:CPU (Unavailable, in one
  line, if it cannot be)."""
  # oneDNN's OpenMP threads share the cores with XLA's own thread pool. By default GNU
  # OpenMP keeps them spinning after each convolution, taking the cores from the XLA ops that
  # follow (and from another process on the same cores): let them sleep instead, unless the
  # user chose. Read when libgomp loads, just below.
  os.environ.setdefault('OMP_WAIT_POLICY', 'PASSIVE')
  try:
    library = ctypes.cdll.LoadLibrary(build())
  except OSError as e:  # A compiler or a library that does not run.
    raise Unavailable(str(e).splitlines()[0] if str(e) else type(e).__name__) from None
  for target, symbol in _TARGETS.items():
    jax.ffi.register_ffi_target(f'alexnet_jax_conv_{target}',
                                jax.ffi.pycapsule(getattr(library, symbol)), platform='cpu')
  return library


def supports(dtype) -> bool:
  """Whether oneDNN's convolutions run in `dtype` on this CPU: float32 wherever they load;
  bfloat16 only on CPUs with AVX-512 or newer (not on AVX2 alone)."""
  dtype = np.dtype(dtype)
  if dtype == np.float32:
    return True
  return dtype == jax.numpy.bfloat16 and _has_bfloat16_kernels()


@functools.cache
def _has_bfloat16_kernels() -> bool:
  return bool(load().AlexnetConvSupports(1))


def _call(target: str, shape, stride: int, padding: Padding, *args):
  (top, bottom), (left, right) = padding
  out = jax.ffi.ffi_call(f'alexnet_jax_conv_{target}',
                         jax.ShapeDtypeStruct(tuple(shape), args[0].dtype))(
      *args, stride=np.int64(stride), pad_top=np.int64(top), pad_bottom=np.int64(bottom),
      pad_left=np.int64(left), pad_right=np.int64(right))
  # Inside shard_map the result varies along every mesh axis an operand varies along, as a
  # convolution's would; an FFI call's result is typed as varying along none.
  axes = tuple(sorted(frozenset().union(*map(sharding.varying_axes, args))))
  return jax.lax.pcast(out, axes, to='varying') if axes else out


def output_shape(x_shape, kernel_shape, stride: int, padding: Padding) -> tuple[int, ...]:
  (top, bottom), (left, right) = padding
  size_h, size_w, _, out = kernel_shape
  return (x_shape[0], (x_shape[1] + top + bottom - size_h) // stride + 1,
          (x_shape[2] + left + right - size_w) // stride + 1, out)


def forward(x: jax.Array, kernel: jax.Array, stride: int, padding: Padding) -> jax.Array:
  shape = output_shape(x.shape, kernel.shape, stride, padding)
  return _call('forward', shape, stride, padding, x, kernel)


def input_grad(dy: jax.Array, kernel: jax.Array, x_shape, stride: int,
               padding: Padding) -> jax.Array:
  return _call('input_grad', x_shape, stride, padding, dy, kernel)


def kernel_grad(x: jax.Array, dy: jax.Array, kernel_shape, stride: int,
                padding: Padding) -> jax.Array:
  return _call('kernel_grad', kernel_shape, stride, padding, x, dy)


# ---- ops.conv's contract, on oneDNN where the program runs on a CPU ----------------------------


def _native(x, kernel) -> bool:
  return x.dtype == kernel.dtype and supports(x.dtype)


@functools.partial(jax.custom_vjp, nondiff_argnums=(2, 3))
def conv(x: jax.Array, kernel: jax.Array, stride: int, padding: Padding) -> jax.Array:
  """`ops.conv`, on oneDNN in CPU programs (float32, and bfloat16 where supported)."""
  return _conv_forward(x, kernel, stride, padding)


def _conv_forward(x, kernel, stride, padding):
  portable = lambda x, kernel: ops.conv(x, kernel, stride, padding)
  if not _native(x, kernel):
    return portable(x, kernel)
  return jax.lax.platform_dependent(
      x, kernel, cpu=lambda x, kernel: forward(x, kernel, stride, padding), default=portable)


def _conv_fwd(x, kernel, stride, padding):
  return _conv_forward(x, kernel, stride, padding), (x, kernel)


def _conv_bwd(stride, padding, residuals, dy):
  x, kernel = residuals
  portable_dx = lambda dy, kernel: jax.vjp(
      lambda x: ops.conv(x, kernel, stride, padding), x)[1](dy)[0]
  portable_dk = lambda x, dy: jax.vjp(
      lambda k: ops.conv(x, k, stride, padding), kernel)[1](dy)[0]
  if not _native(x, kernel):
    return portable_dx(dy, kernel), portable_dk(x, dy)
  native_dx = lambda dy, kernel: sharding.sum_to_axes_of(
      input_grad(dy, kernel, x.shape, stride, padding), x)
  native_dk = lambda x, dy: sharding.sum_to_axes_of(
      kernel_grad(x, dy, kernel.shape, stride, padding), kernel)
  return (jax.lax.platform_dependent(dy, kernel, cpu=native_dx, default=portable_dx),
          jax.lax.platform_dependent(x, dy, cpu=native_dk, default=portable_dk))


conv.defvjp(_conv_fwd, _conv_bwd)
