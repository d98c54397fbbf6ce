"""Choosing the kernels from a mesh's devices, and one portable program for every platform:
the project's programs lower for TPU and CUDA on this CPU with no custom call of ours and
exactly the paper's collectives."""
import collections
import dataclasses
import json
import sys

import numpy as np
import pytest

from alexnet_jax import backends
from alexnet_jax import ops
import helpers


@dataclasses.dataclass(frozen=True)
class FakeDevice:
  platform: str


class FakeMesh:
  """What `kernels_for` reads of a mesh: its devices."""

  def __init__(self, platform: str):
    self.devices = np.asarray([FakeDevice(platform)] * 2, dtype=object).reshape(1, 2)


@pytest.fixture
def fresh_choice():
  """The choice is cached per process: make it again here, and again after."""
  backends._chosen.cache_clear()  # pylint: disable=protected-access
  yield
  backends._chosen.cache_clear()  # pylint: disable=protected-access


@pytest.mark.parametrize('platform', ['tpu', 'gpu'])
def test_a_mesh_of_accelerators_never_reaches_the_cpu_backend(platform, monkeypatch,
                                                               fresh_choice):
  """Not imported, probed, built or loaded: any import of it fails here."""
  monkeypatch.delattr(backends, 'cpu', raising=False)
  monkeypatch.setitem(sys.modules, 'alexnet_jax.backends.cpu', None)
  monkeypatch.setitem(sys.modules, 'alexnet_jax.backends.cpu.onednn', None)
  assert backends.kernels_for(FakeMesh(platform)) is ops.PORTABLE


def test_a_cpu_run_says_in_one_line_what_it_computes_with(monkeypatch, fresh_choice, caplog):
  from alexnet_jax.backends import cpu  # pylint: disable=g-import-not-at-top
  caplog.set_level('INFO', logger='alexnet_jax')
  monkeypatch.setenv(backends.SWITCH, '0')
  assert backends.kernels_for(FakeMesh('cpu')) is ops.PORTABLE
  monkeypatch.setenv(backends.SWITCH, '1')
  monkeypatch.setattr(cpu, 'installed', lambda: False)
  assert backends.kernels_for(FakeMesh('cpu')) is ops.PORTABLE
  monkeypatch.setattr(cpu, 'installed', lambda: True)

  def unbuildable():
    raise cpu.Unavailable('no C++ compiler (c++, g++ or $CXX) to build them')

  monkeypatch.setattr(cpu, 'kernels', unbuildable)
  backends._chosen.cache_clear()  # pylint: disable=protected-access
  assert backends.kernels_for(FakeMesh('cpu')) is ops.PORTABLE
  assert caplog.messages == [
      "kernels: XLA's own on this CPU (ALEXNET_JAX_ONEDNN=0)",
      "kernels: XLA's own on this CPU; pip install -r requirements-cpu.txt adds oneDNN's "
      'convolutions',
      "kernels: XLA's own on this CPU; oneDNN's convolutions are off (no C++ compiler (c++, "
      'g++ or $CXX) to build them)']


def test_cpu_programs_compile_at_llvm_o1_unless_xla_flags_say_otherwise(monkeypatch):
  monkeypatch.setenv('XLA_FLAGS', '--xla_force_host_platform_device_count=4')
  assert backends.compiler_options() == {'xla_backend_optimization_level': 1}
  # This jaxlib takes the option (an unknown one fails to compile) and still computes.
  double = backends.jit(lambda x: x * 2)
  assert double.lower(3.0).compile()(3.0) == 6.0
  monkeypatch.setenv('XLA_FLAGS', '--xla_backend_optimization_level=3')
  assert backends.compiler_options() is None


TOWER_GROUPS = [[0, 1], [2, 3], [4, 5], [6, 7]]  # (data 4 x tower 2): each tower pair.
DATA_GROUPS = [[0, 2, 4, 6], [1, 3, 5, 7]]  # Each tower's devices across the data axis.
CASES = ('paper:float32:auto', 'owt:float32:auto', 'paper:bfloat16:auto',
         'paper:float32:portable')


@pytest.fixture(scope='module')
def lowered():
  run = helpers.run_python('tests/lowering_worker.py', *CASES, timeout=600)
  assert run.returncode == 0, run.stderr[-3000:]
  return json.loads(run.stdout.strip().splitlines()[-1])


def kinds(collectives):
  return collections.Counter((kind, json.dumps(groups)) for kind, groups in collectives)


@pytest.mark.parametrize('case', CASES)
def test_every_program_lowers_for_tpu_and_cuda_with_the_papers_collectives_only(lowered,
                                                                                 case):
  """The train step, the 10-view evaluation and inference, on (data 4 x tower 2) fake CPU
  devices, lowered for TPU and CUDA: no custom call of ours (the CPU's own lowering of the
  same programs holds oneDNN's where the backend is in use); the paper's net gathers at its
  four cross-tower links and, backward, reduce-scatters there, and sums its gradients over
  the data axis only (one sum per parameter). The paper's train step exports for both."""
  result = lowered[case]
  recipe, _, kernels = case.split(':')
  gather = (json.dumps(TOWER_GROUPS),)
  for platform in ('tpu', 'cuda'):
    train, ten, infer = (result[f'{p} {platform}'] for p in
                         ('train step', '10-view evaluation', 'inference'))
    assert not train['custom_calls'] + ten['custom_calls'] + infer['custom_calls'], result
    if recipe == 'paper':
      assert kinds(train['collectives']) == {
          ('all_gather', *gather): 4, ('reduce_scatter', *gather): 4,
          ('all_reduce', json.dumps(DATA_GROUPS)): 16}, train
      assert kinds(ten['collectives']) == kinds(infer['collectives']) == {
          ('all_gather', *gather): 4}
    else:  # One tower: data parallel over all 8 devices, nothing else.
      assert kinds(train['collectives']) == {('all_reduce', json.dumps([list(range(8))])): 16}
      assert not ten['collectives'] and not infer['collectives']
  in_use = result['kernels'] != ops.PORTABLE.name
  assert kernels == 'auto' or not in_use
  assert bool(result['train step cpu']['custom_calls']) == in_use
  if recipe == 'paper':
    assert result['exports'] == ['tpu', 'cuda']
