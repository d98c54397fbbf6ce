"""`python -m alexnet_jax.main` as users run it: the README's first command, one-line errors,
and what preemptible machines and full disks do to a run (nothing is lost).

Every test here starts real processes (marked slow). Kills land at fixed points: after a
given step's metrics line, or inside a checkpoint save held open by the test-only hook
checkpoint.HOLD_SAVE_ENV (written, never committed), never at a random moment.
"""
import json
import os
import re
import resource
import signal
import time

import pytest

from alexnet_jax import checkpoint
from alexnet_jax import inference
import helpers
import item_folder

pytestmark = pytest.mark.slow
STEPS_PER_EPOCH, EPOCHS = 4, 6
RUN_FLAGS = (f'--config.steps_per_epoch={STEPS_PER_EPOCH}', '--config.checkpoint.keep=2')
TIMEOUT_S = 300


def start(workdir, *flags, **popen) -> helpers.Process:
  return helpers.start_main(workdir, *RUN_FLAGS, *flags, **popen)


def finish(proc: helpers.Process) -> tuple[int, str]:
  (out,) = helpers.wait_all([proc], TIMEOUT_S, f'main in {proc.log.name}')
  return proc.returncode, out


def wait_for(condition, proc: helpers.Process, what: str):
  deadline = time.time() + TIMEOUT_S
  while not condition():
    assert proc.returncode is None, f'exited ({proc.returncode}) before {what}: ' + \
        proc.output()[-2000:]
    assert time.time() < deadline, f'no {what} after {TIMEOUT_S} s'
    time.sleep(0.02)


def test_main_runs_the_default_job(tmp_path):
  """The default job, cut to 2 short epochs: it trains, evaluates and reports."""
  result = helpers.run_python('-m', 'alexnet_jax.main', f'--workdir={tmp_path / "run"}',
                              '--config.num_epochs=2', '--config.steps_per_epoch=4')
  assert result.returncode == 0, result.stderr[-2000:]
  assert 'final: 1-view top-1 error' in result.stdout
  final = json.load(open(tmp_path / 'run' / 'final_metrics.json'))
  assert final['step'] == 8 and final['1view_top1_error'] < 0.9  # Better than chance.
  # The terminal: no library's INFO line (absl's format: I1202 01:02:03.456 ...), the
  # project's events as plain lines: where the run is and what it trains, where it went.
  err = result.stderr.replace('\r', '\n')
  assert not helpers.library_lines(err), err[-2000:]
  assert f'training the small recipe in {tmp_path / "run"} on mesh' in err
  assert '1,796,458' in err  # The digits net's parameters, from the layer table.
  assert f'written to {tmp_path / "run"}: final_metrics.json, metrics.jsonl' in err
  events = [l for l in err.splitlines() if l and '%|' not in l]  # Not the progress bar.
  assert len(events) <= 40, events
  # Run again, it is finished: one line, exit 0, nothing appended.
  metrics = (tmp_path / 'run' / 'metrics.jsonl').read_bytes()
  event_files = sorted((tmp_path / 'run' / 'tensorboard').iterdir())
  again = helpers.run_python('-m', 'alexnet_jax.main', f'--workdir={tmp_path / "run"}',
                             '--config.num_epochs=2', '--config.steps_per_epoch=4')
  assert again.returncode == 0, again.stderr[-2000:]
  assert f'{tmp_path / "run"} finished at step 8' in again.stderr
  assert 'nothing to do (--config.reevaluate=true evaluates it again)' in again.stderr
  assert (tmp_path / 'run' / 'metrics.jsonl').read_bytes() == metrics
  assert sorted((tmp_path / 'run' / 'tensorboard').iterdir()) == event_files


@pytest.mark.parametrize('args,line', [
    (['--config.model.activation=gelu'],
     "error: model.activation: must be 'relu' or 'tanh', got 'gelu'"),
    (['--config.optim.base_rate=0.1'],
     "error: optim.base_rate: no such config field (did you mean 'optim.base_lr'?)"),
    (['--config.optim.base_lr=abc'],
     "error: flag --config.optim.base_lr=abc: could not convert string to float: 'abc'"),
    (['--config=configs/paper.py:cuda_convent'],
     "error: recipe: unknown recipe 'cuda_convent' (did you mean 'cuda_convnet'?); choose "
     'one of paper, cuda_convnet, one_tower, no_lrn, no_overlap, no_cross_tower, no_conv4, '
     'caffe, owt, small'),
    (['--config=configs/paper.py', '--config.model.variant=owt'],
     "error: model.variant: the recipe is chosen by name, as the config file's argument: "
     '--config=configs/paper.py:<recipe> (--config=configs/paper.py:list lists them)'),
    (['--config.recipe=owt'], "error: recipe: the recipe is chosen by name"),
], ids=['bad-value', 'unknown-field', 'wrong-type', 'unknown-recipe', 'variant', 'recipe'])
def test_main_reports_a_bad_config_in_one_line_with_exit_2(tmp_path, args, line):
  result = helpers.run_python('-m', 'alexnet_jax.main', f'--workdir={tmp_path / "run"}', *args)
  assert result.returncode == 2, result.stderr[-2000:]
  assert result.stderr.strip().splitlines()[-1].startswith(line), result.stderr[-2000:]
  assert 'Traceback' not in result.stderr and not (tmp_path / 'run').exists()


def test_the_cpu_recipe_for_your_own_images_runs_with_nothing_but_the_path(tmp_path):
  """configs/folder.py:small on a tiny 10-class folder of 28x28 photos: the classes, the size
  and the batch come from the data (the full-size figure is in experiments/BENCHMARKS.md),
  and are said in one line. Ctrl-C to its process group, input worker included, saves a
  checkpoint and stops in one line; the same command continues."""
  root = item_folder.build(str(tmp_path / 'items'), train=40, test=20)
  args = ('-m', 'alexnet_jax.main', '--config=configs/folder.py:small',
          f'--config.data.path={root}', f'--workdir={tmp_path / "run"}')
  proc = helpers.Process(*args, '--config.data.workers=1', log=tmp_path / 'interrupted.log',
                         start_new_session=True)
  wait_for(lambda: len(helpers.train_steps_logged(tmp_path / 'run')) >= 3, proc, 'step 3')
  os.killpg(proc.pid, signal.SIGINT)
  code, out = finish(proc)
  lines = [l for l in out.replace('\r', '\n').splitlines() if l.strip() and '%|' not in l]
  assert code == 130 and re.fullmatch(
      r'stopped by SIGINT \(Ctrl-C\) at step (\d+) of 12, its checkpoint saved: run the '
      r'same command again to continue', lines[-1]), out[-3000:]
  assert not helpers.library_lines(out), out[-3000:]
  assert (f'data: folder {root}: 10 classes (0, 1, 2, 3, 4, 5, ... (10 in all)); 40 train '
          'and 20 test examples (evaluated); images read at 28x28, crops of 25; batch 32'
          ) in lines
  stopped = int(lines[-1].split()[6])
  assert helpers.checkpoint_steps(tmp_path / 'run')[-1] == stopped
  result = helpers.run_python(*args)
  assert result.returncode == 0 and f'resumed from step {stopped}' in result.stderr, \
      result.stderr[-3000:]
  final = json.load(open(tmp_path / 'run' / 'final_metrics.json'))
  assert final['step'] == 12  # 12 epochs of 1 step.
  helpers.assert_error_counts(final, 20)  # The 20 test examples.
  trained = inference.load(str(tmp_path / 'run'))
  assert trained.classes == tuple(str(c) for c in range(10))
  assert (trained.config.model.image_size, trained.config.batch_size) == (25, 32)


@pytest.mark.parametrize('flag', [['--config=configs/paper.py:list'],
                                  ['--config', 'configs/paper.py:list']], ids=['=', 'space'])
def test_main_lists_the_recipes(flag):
  result = helpers.run_python('-m', 'alexnet_jax.main', *flag)
  assert result.returncode == 0, result.stderr[-2000:]
  assert ('| no_overlap | run 145 with non-overlapping 2x2 stride-2 pooling | cuda-convnet '
          'layers-147.cfg (run 147: 41.06 / 18.51) | 60,965,224 |') in result.stdout


def test_a_second_process_loads_the_train_step_from_the_workdirs_cache(tmp_path):
  """Unless JAX_COMPILATION_CACHE_DIR says otherwise, compiled programs land in
  WORKDIR/compilation_cache, and a second process running the same step loads it from there
  (a hit counted by JAX's own cache events), compiling nothing. Where XLA:CPU rejects its own
  cached entries on this CPU (jax-ml/jax#38445), every start recompiles: said, then skipped."""
  env = {k: v for k, v in helpers.python_env().items() if k != 'JAX_COMPILATION_CACHE_DIR'}
  runs = []
  for _ in range(2):
    run = helpers.run_python('tests/cache_worker.py', str(tmp_path), env=env, timeout=120)
    assert run.returncode == 0, run.stderr[-2000:]
    runs.append(json.loads(run.stdout.strip().splitlines()[-1]))
  first, second = runs
  assert first['hits'] == 0 and first['misses'] >= 1 and first['entries'] >= 1, runs
  if second['hits'] == 0 and second['misses'] >= 1:
    pytest.skip('the persistent compilation cache does not hit on this CPU: every training '
                f'start recompiles its steps ({runs})')
  assert second['hits'] >= 1 and second['misses'] == 0, runs
  assert second['entries'] == first['entries'], runs


def test_main_restarts_itself_with_huge_pages_unless_told_otherwise():
  """The command re-execs itself with the same arguments and glibc.malloc.hugetlb=1, once;
  a GLIBC_TUNABLES the user set is left alone."""
  probe = ('import os; from alexnet_jax import main; '
           'os.execve = lambda exe, argv, env: print(argv[1:], env["GLIBC_TUNABLES"]); '
           'main.reexec_with_huge_pages(); print("no re-exec")')
  env = {k: v for k, v in helpers.python_env().items() if k != 'GLIBC_TUNABLES'}
  run = lambda env: helpers.run_python('-c', probe, '--flag', env=env, timeout=120).stdout
  assert run(env).splitlines()[0] == f"{['-c', probe, '--flag']} glibc.malloc.hugetlb=1"
  assert run({**env, 'GLIBC_TUNABLES': 'glibc.malloc.hugetlb=0'}).strip() == 'no re-exec'


@pytest.fixture(scope='module')
def uninterrupted(tmp_path_factory):
  """The run every interrupted run must end equal to, bit for bit."""
  workdir = tmp_path_factory.mktemp('uninterrupted')
  code, out = finish(start(workdir, f'--config.num_epochs={EPOCHS}'))
  assert code == 0, out[-3000:]
  return helpers.last_checkpoint_meta(workdir)[1]['checksum']


def test_kills_and_preemptions_anywhere_lose_nothing(tmp_path, uninterrupted):
  """One run interrupted six ways, as machines and schedulers do, each restart resuming from
  the newest committed checkpoint:
  - SIGTERM (a preemption notice) to the main process alone, and to its whole process group,
    an input worker included: a checkpoint, one line, exit 75;
  - SIGKILL to the process group twice inside a checkpoint save (its files written, its
    folder not yet committed) and once right after a training step;
  - a full disk while saving: one line, exit 1, the checkpoints before it kept.
  The half-written saves are removed, and the end is bit-identical to the uninterrupted run,
  each step logged once (also as TensorBoard's reader sees the event files)."""
  epoch, total = STEPS_PER_EPOCH, STEPS_PER_EPOCH * EPOCHS
  # (what, at which step; process-group signal; input workers)
  # A signal after a step waits for that step in metrics.jsonl: each is past every step the
  # runs before logged (a held save lets training run on to the next save).
  interruptions = [('sigterm', epoch + 2, False, 0), ('sigterm', 2 * epoch + 2, True, 1),
                   ('kill in save', 4 * epoch, True, 0), ('kill after step', 5 * epoch + 2, True, 0),
                   ('kill in save', 6 * epoch, True, 0)]
  for what, step, group, workers in interruptions:
    committed = helpers.checkpoint_steps(tmp_path) if (tmp_path / 'checkpoints').exists() \
        else []
    held = what == 'kill in save'
    env = helpers.python_env(**{checkpoint.HOLD_SAVE_ENV: str(step)} if held else {})
    proc = start(tmp_path, f'--config.num_epochs={EPOCHS}', f'--config.data.workers={workers}',
                 env=env, start_new_session=group)
    if held:
      wait_for(lambda: f'holding the save of step {step}' in proc.output(), proc,
               f'the held save of step {step}')
    else:
      wait_for(lambda: step in helpers.train_steps_logged(tmp_path), proc, f'step {step}')
    signum = signal.SIGTERM if what == 'sigterm' else signal.SIGKILL
    if group:
      os.killpg(proc.pid, signum)
    else:
      proc.popen.send_signal(signum)
    code, out = finish(proc)
    if committed:  # The restart took the newest committed checkpoint.
      assert f'resumed from step {committed[-1]}' in out, out[-3000:]
    if held:  # The held save: written, never committed.
      assert step not in helpers.checkpoint_steps(tmp_path)
      assert helpers.unfinished_saves(tmp_path) == [step]
    if what == 'sigterm':
      assert code == 75, out[-3000:]
      saved, meta = helpers.last_checkpoint_meta(tmp_path)
      assert (f'stopped by SIGTERM at step {saved[-1]} of {total}, its checkpoint saved: run '
              'the same command again to continue') in out.splitlines()
      assert step <= saved[-1] < total and meta['data']['step'] == saved[-1]

  committed = helpers.checkpoint_steps(tmp_path)
  assert committed[-1] == 5 * epoch  # The held save of the last step never committed.
  # A full disk while saving the last step: one line, exit 1, the checkpoints before kept.
  # (The command is started by a Python that limits the file size and ignores SIGXFSZ, so
  # that writes fail with EFBIG as on a full disk; both survive its exec. Not a preexec_fn,
  # which would fork this multithreaded process.)
  small_disk = ('import os, resource, signal, sys; signal.signal(signal.SIGXFSZ, signal.SIG_IGN); '
                'resource.setrlimit(resource.RLIMIT_FSIZE, (200_000, 200_000)); '
                'os.execv(sys.executable, [sys.executable, *sys.argv[1:]])')
  code, out = finish(helpers.Process(
      '-c', small_disk, '-m', 'alexnet_jax.main', f'--workdir={tmp_path}', *helpers.MAIN_FLAGS,
      *RUN_FLAGS, f'--config.num_epochs={EPOCHS}', log=tmp_path.with_suffix('.disk.log')))
  assert code == 1, out[-3000:]
  # Our one line, on a line of its own; orbax's failed writer threads may print their own
  # tracebacks before it.
  assert (f'error: checkpoint: saving step {total} in {tmp_path}/checkpoints failed: File too '
          'large (errno 27); the checkpoints before it are kept') in out.splitlines(), \
      [line for line in out.splitlines() if 'error:' in line]
  assert helpers.checkpoint_steps(tmp_path) == committed
  # Resumed without input workers: batches depend on the step alone, not on the worker count.
  code, out = finish(start(tmp_path, f'--config.num_epochs={EPOCHS}'))
  assert code == 0 and f'resumed from step {committed[-1]}' in out, out[-3000:]
  assert not helpers.unfinished_saves(tmp_path)  # Half-written saves were cleaned up.
  steps, meta = helpers.last_checkpoint_meta(tmp_path)
  assert steps[-1] == total
  assert meta['checksum'] == uninterrupted  # Bit-identical parameters and optimizer state.
  assert helpers.train_steps_logged(tmp_path) == list(range(1, total + 1))
  # TensorBoard's reader too sees each step once, across the event files.
  assert helpers.tensorboard_steps(tmp_path, 'train/loss') == list(range(1, total + 1))
