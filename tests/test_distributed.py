"""Several processes on localhost train as one: the same parameters, disjoint reads, and
checkpoints that move between process counts; SIGTERM to one stops all; when
`jax.distributed` starts.

Why "the same" is to float rounding and not to the bit: the compiled programs are identical,
and with the data axis inside each process (towers split over processes) the parameters are
bit-identical; but summing the data-parallel gradients across processes goes through gloo
instead of XLA's in-process all-reduce, and the two differ in the last bit of some conv1
gradients (measured: at most 5e-10 on values of 2e-3).

A run that hangs fails in one line naming where each process was (helpers.wait_all), with
both stacks below it; experiments/multihost_soak.py runs the first test many times in a row.
"""
import json
import os
import socket
import time

import jax
import numpy as np
import pytest
from flax import nnx

from alexnet_jax import config
from alexnet_jax import distributed
from alexnet_jax import inference
import helpers

BATCH, STEPS_PER_EPOCH = 16, 3
FLAGS = ['--config.progress=False', f'--config.batch_size={BATCH}', '--config.model.width=0.125',
         f'--config.steps_per_epoch={STEPS_PER_EPOCH}', '--config.checkpoint.keep=5']
TIMEOUT_S = 240  # A 2-process run of 2 epochs takes 15-25 s on 2 cores.


def free_port() -> int:
  with socket.socket() as s:
    s.bind(('localhost', 0))
    return s.getsockname()[1]


def start(workdir, processes: int, epochs: int, tag: str, *extra_flags):
  """Starts training `epochs` in `workdir` with `processes` processes of 4/processes CPU
  devices each; returns them and the files where they record what they read."""
  flags = [f'--workdir={workdir}', f'--config.num_epochs={epochs}', *FLAGS, *extra_flags]
  if processes > 1:
    flags.append(f'--config.distributed.coordinator_address=localhost:{free_port()}')
    flags.append(f'--config.distributed.num_processes={processes}')
  procs, reads_paths = [], []
  for p in range(processes):
    reads_paths.append(workdir.parent / f'reads-{tag}-{p}.json')
    extra = [f'--config.distributed.process_id={p}'] if processes > 1 else []
    xla_flags = os.environ['XLA_FLAGS'].replace(  # conftest.py's, with fewer devices.
        'device_count=4', f'device_count={4 // processes}')
    env = helpers.python_env(XLA_FLAGS=xla_flags,
                             READS_PATH=str(reads_paths[-1]))
    procs.append(helpers.Process('tests/multihost_worker.py', *flags, *extra, env=env,
                                 log=workdir.parent / f'{tag}-{p}.log'))
  return procs, reads_paths


def run(*runs):
  """Trains each (workdir, processes, epochs, tag) to the end, all at once (they share no
  files, and their imports and compilations then overlap on the two cores); returns, per
  run, each process's output and the (example, position) pairs it read."""
  started = [start(*r) for r in runs]
  results = []
  for (_, processes, _, tag), (procs, reads_paths) in zip(runs, started):
    outputs = helpers.wait_all(procs, TIMEOUT_S, f'{processes}-process run {tag!r}')
    for proc, out in zip(procs, outputs):
      assert proc.returncode == 0, out[-3000:]
    results.append((outputs, [json.loads(path.read_text()) for path in reads_paths]))
  return results


def trained_params(workdir):
  """The parameters of the run's newest checkpoint, on the host (checksum verified)."""
  _, params = nnx.split(inference.load(str(workdir)).net, nnx.Param)
  return [np.asarray(x) for x in jax.tree.leaves(params)]


def assert_same_params(workdir_a, workdir_b):
  for x, y in zip(trained_params(workdir_a), trained_params(workdir_b)):
    np.testing.assert_allclose(x, y, rtol=1e-5, atol=1e-7)


def trained_reads(reads, steps):
  """The pairs of the first `steps` batches (grain reads ahead of the last step)."""
  return [tuple(r) for r in reads if r[1] < steps * BATCH]


@pytest.mark.slow
def test_two_processes_train_exactly_like_one_and_share_checkpoints(tmp_path):
  one, two = tmp_path / 'one', tmp_path / 'two'
  (_, (reads_one,)), (logs, reads_two) = run((one, 1, 1, 'one'), (two, 2, 1, 'two'))
  assert '2 processes' in logs[0] and '2 processes' not in logs[1]  # Only process 0 prints.
  steps_one, meta_one = helpers.last_checkpoint_meta(one)
  steps_two, meta_two = helpers.last_checkpoint_meta(two)
  assert steps_one == steps_two == [STEPS_PER_EPOCH]
  assert meta_one['data'] == meta_two['data'] and meta_one['plateau'] == meta_two['plateau']
  assert_same_params(one, two)

  # Each process read only its rows: disjoint halves of each batch, no example twice in the
  # epoch, and together exactly what the single process read.
  per_process = [trained_reads(r, STEPS_PER_EPOCH) for r in reads_two]
  assert all(len(r) == STEPS_PER_EPOCH * BATCH // 2 for r in per_process)
  rows = [{position % BATCH for _, position in r} for r in per_process]
  assert rows == [set(range(BATCH // 2)), set(range(BATCH // 2, BATCH))]
  examples = [index for r in per_process for index, _ in r]
  assert len(set(examples)) == len(examples) == STEPS_PER_EPOCH * BATCH
  assert sorted(per_process[0] + per_process[1]) == \
      sorted(trained_reads(reads_one, STEPS_PER_EPOCH))

  # Metrics come from process 0 alone: one line per step.
  assert helpers.train_steps_logged(two) == list(range(1, STEPS_PER_EPOCH + 1))

  # The 2-process checkpoint resumes in 1 process, the 1-process one in 2, and they stay
  # equal; both end with the final 1- and 10-view evaluations.
  (logs_two, _), (logs_one, _) = run((two, 1, 2, 'two-then-one'), (one, 2, 2, 'one-then-two'))
  assert f'resumed from step {STEPS_PER_EPOCH}' in logs_two[0]
  assert all(f'resumed from step {STEPS_PER_EPOCH}' in log for log in logs_one)
  (_, meta_one), (_, meta_two) = (helpers.last_checkpoint_meta(one),
                                  helpers.last_checkpoint_meta(two))
  assert meta_one['data']['step'] == meta_two['data']['step'] == 2 * STEPS_PER_EPOCH
  assert_same_params(one, two)
  final_one = json.load(open(one / 'final_metrics.json'))
  final_two = json.load(open(two / 'final_metrics.json'))
  assert final_one.keys() == final_two.keys() and '10view_top1_error' in final_one
  for key, value in final_one.items():
    # Parameters agree to float rounding, so an example whose two top classes tie to within
    # it may flip: error rates may differ by one example in 359.
    assert np.isclose(value, final_two[key], rtol=1e-4, atol=1.01 / 359 if 'error' in key
                      else 0), key


@pytest.mark.slow
def test_sigterm_to_one_process_stops_all_after_the_same_step(tmp_path):
  workdir = tmp_path / 'run'
  procs, _ = start(workdir, 2, 1, 'sigterm', '--config.steps_per_epoch=1000')
  metrics = workdir / 'metrics.jsonl'
  deadline = time.time() + TIMEOUT_S
  while time.time() < deadline and not (metrics.exists() and metrics.stat().st_size > 500) \
      and all(p.returncode is None for p in procs):
    time.sleep(0.05)
  procs[1].popen.send_signal(15)  # SIGTERM: a preemption notice reaches one host.
  outputs = helpers.wait_all(procs, TIMEOUT_S, 'the 2-process run after SIGTERM')
  for proc, out in zip(procs, outputs):
    assert proc.returncode == 75, out[-3000:]
  steps, meta = helpers.last_checkpoint_meta(workdir)
  assert len(steps) == 1 and 0 < steps[0] < 1000 and meta['data']['step'] == steps[0]


def test_when_jax_distributed_is_started(monkeypatch):
  for var in ('JAX_COORDINATOR_ADDRESS', 'SLURM_NTASKS', 'SLURM_PROCID',
              'OMPI_COMM_WORLD_SIZE', 'TPU_WORKER_HOSTNAMES'):
    monkeypatch.delenv(var, raising=False)
  c = config.distributed_fields()
  assert not distributed.initialize(c)  # A plain single-process run: nothing to start.
  monkeypatch.setenv('SLURM_NTASKS', '1')
  monkeypatch.setenv('SLURM_PROCID', '0')
  assert not distributed.launched_as_several_processes()  # sbatch with one task.
  for var, value in (('SLURM_NTASKS', '4'), ('OMPI_COMM_WORLD_SIZE', '2'),
                     ('TPU_WORKER_HOSTNAMES', 'w0,w1'), ('JAX_COORDINATOR_ADDRESS', 'h:1')):
    with monkeypatch.context() as m:
      m.setenv(var, value)
      assert distributed.launched_as_several_processes(), var
  c.initialize = 'sometimes'
  with pytest.raises(ValueError, match="distributed.initialize: must be 'auto'"):
    distributed.initialize(c)
  c.initialize, c.coordinator_address = 'auto', 'localhost:1234'
  with pytest.raises(ValueError, match='give num_processes >= 1'):
    distributed.initialize(c)  # Checked before anything is started.


@pytest.mark.slow
def test_a_hung_process_is_reported_with_where_it_was(tmp_path):
  """What the timeout of the tests above prints: one line naming each process's place in
  the project's code, then the stacks (faulthandler, on SIGUSR1, in alexnet_jax.main)."""
  stuck = ('import sys, time; from absl import app; from alexnet_jax import main, train; '
           'train.train_and_evaluate = lambda config, workdir: (print("stuck", flush=True), '
           'time.sleep(600)); sys.argv = ["main"]; app.run(main.main)')
  procs = [helpers.Process('-c', stuck, log=tmp_path / f'{i}.log') for i in range(2)]
  deadline = time.time() + TIMEOUT_S
  while time.time() < deadline and not all('stuck' in p.output() for p in procs):
    time.sleep(0.1)  # Both have started and registered the handler.
  with pytest.raises(AssertionError) as e:
    helpers.wait_all(procs, 1, 'the stuck run')
  first, *rest = str(e.value).splitlines()
  assert first.startswith('the stuck run hung (no exit after 1 s): process 0 in main:'), first
  assert '; process 1 in main:' in first and '(innermost: <lambda> (<string>))' in first, first
  assert any('---- process 1 ----' == line for line in rest)
