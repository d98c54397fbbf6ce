"""The CPU backend: oneDNN's convolutions for XLA:CPU, and how CPU programs compile.

XLA:CPU's own convolution kernels run this net's layers 1.5-4x slower than oneDNN's (the
library PyTorch uses on CPUs), forward and both gradients (experiments/BENCHMARKS.md).
`onednn.py` builds `onednn_conv.cc` (oneDNN's three convolution primitives as XLA FFI
handlers) with the machine's C++ compiler, once, loads it, and gives `ops.conv`'s contract
on top of it. This package imports nothing heavy: `alexnet_jax.backends` asks `installed()`
and `kernels()` only for a mesh of CPU devices.

Install: `pip install -r requirements-cpu.txt` (the pip packages of oneDNN and its headers,
x86-64 Linux) and a C++ compiler (`c++`, or $CXX).
"""
from __future__ import annotations

from importlib import metadata

from alexnet_jax import ops

PACKAGES = ('onednn-cpu-gomp', 'onednn-devel-cpu-gomp')  # The library and its headers.
# XLA:CPU compiles at LLVM -O1 instead of -O2: the small net's train step compiles in 3.0 s
# instead of 4.7 and runs at the same rate, the heavy work being oneDNN's and Eigen's
# precompiled kernels (experiments/BENCHMARKS.md).
COMPILER_OPTIONS = {'xla_backend_optimization_level': 1}


class Unavailable(RuntimeError):
  """Why oneDNN's convolutions cannot be used here (one line)."""


def installed() -> bool:
  """Whether the backend's packages are installed (nothing is imported, built or loaded)."""
  try:
    for package in PACKAGES:
      metadata.version(package)
  except metadata.PackageNotFoundError:
    return False
  return True


def kernels() -> ops.Kernels:
  """oneDNN's convolutions with the portable fully connected product; builds and loads the
  library on first use (Unavailable, one line, if it cannot be)."""
  from alexnet_jax.backends.cpu import onednn  # pylint: disable=g-import-not-at-top
  onednn.load()
  return ops.Kernels('oneDNN\'s convolutions on this CPU', onednn.conv, ops.dense)
