"""The main job: `python -m alexnet_jax.main --config=configs/paper.py --workdir=DIR`.

With no --config it trains the embedded default, configs/digits.py. Re-running the same
command resumes from the newest good checkpoint in DIR/checkpoints. Training itself lives in
`alexnet_jax.train` (notebooks import it); this file only reads flags and, for a run over
several processes, starts `jax.distributed` (see `alexnet_jax.distributed`): e.g. per process
  --config.distributed.coordinator_address=host0:1234 --config.distributed.num_processes=2
  --config.distributed.process_id=0
"""
import os
import sys


def reexec_with_huge_pages() -> None:
  """Starts this command again with glibc's malloc backing large blocks with transparent
  huge pages (GLIBC_TUNABLES=glibc.malloc.hugetlb=1; glibc 2.35 and later, ignored by others).

  XLA:CPU allocates a step's temporary buffers afresh on every call (0.9 GB for the paper
  net at batch 32), and the kernel zeroes each new 4 KiB page on first touch: 16 s of system
  time in the embedded default's one-minute run on a 2-core machine, 7 s with huge pages
  (experiments/BENCHMARKS.md). The setting is read when a process starts, hence the re-exec.
  Set GLIBC_TUNABLES yourself (e.g. to glibc.malloc.hugetlb=0) and it is left alone.
  """
  if sys.platform == 'linux' and 'GLIBC_TUNABLES' not in os.environ:
    env = dict(os.environ, GLIBC_TUNABLES='glibc.malloc.hugetlb=1')
    os.execve(sys.executable, [sys.executable, *sys.orig_argv[1:]], env)


if __name__ == '__main__':
  reexec_with_huge_pages()  # Before the imports below: they take 2-3 s, and would run twice.

# pylint: disable=g-import-not-at-top,wrong-import-position
import faulthandler
import signal

from absl import app
from absl import flags

from alexnet_jax import cli

_REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
cli.define_config_flag(os.path.join(_REPO, 'configs', 'digits.py'),
                       'Config file, `file.py` or `file.py:recipe` (`:list` lists the '
                       'recipes); override fields as --config.section.field=value.')
flags.DEFINE_string('workdir', 'workdir/digits', 'Directory for checkpoints and metrics.')
flags.adopt_module_key_flags(cli)  # --help lists --config too.


def cache_compilations(workdir: str) -> None:
  """Keeps compiled programs in WORKDIR/compilation_cache (those that took over a second to
  compile), so that a resumed or repeated run loads its steps instead of compiling them
  again; JAX_COMPILATION_CACHE_DIR, when set, says where instead."""
  import jax  # pylint: disable=g-import-not-at-top
  if not os.environ.get('JAX_COMPILATION_CACHE_DIR'):
    jax.config.update('jax_compilation_cache_dir', os.path.join(workdir, 'compilation_cache'))


def main(argv):
  if len(argv) > 1:
    raise app.UsageError(f'unexpected arguments: {argv[1:]}')
  # `kill -USR1 PID` prints where every thread of a run that seems stuck is, and the run goes
  # on. Written by the signal handler itself, so it works while Python waits inside XLA.
  faulthandler.register(signal.SIGUSR1, all_threads=True)
  f = flags.FLAGS
  workdir = os.path.expanduser(f.workdir)
  if os.path.exists(workdir) and not os.path.isdir(workdir):
    cli.fail(f'--workdir: {workdir!r} is a file, not a directory')
  from alexnet_jax import checkpoint  # pylint: disable=g-import-not-at-top
  from alexnet_jax import distributed  # pylint: disable=g-import-not-at-top
  from alexnet_jax import input_pipeline  # pylint: disable=g-import-not-at-top
  from alexnet_jax import train  # pylint: disable=g-import-not-at-top
  try:
    distributed.initialize(f.config.distributed)  # Before anything touches a device.
    cache_compilations(workdir)
    train.train_and_evaluate(f.config, workdir)
  except checkpoint.CheckpointError as e:
    # Orbax's failed writer threads are still printing tracebacks, a piece at a time (the
    # source line and its newline are separate writes), so the terminal may be mid-line. The
    # state on disk is already safe: point stdout and stderr at /dev/null for everyone else,
    # then end whatever line is open and write ours, in one call to the terminal's own
    # descriptor, and leave without waiting for those threads.
    sys.stdout.flush()
    terminal = os.dup(2)
    quiet = os.open(os.devnull, os.O_WRONLY)
    os.dup2(quiet, 1)
    os.dup2(quiet, 2)
    os.write(terminal, f'\nerror: {e}\n'.encode())
    os._exit(1)  # pylint: disable=protected-access
  except ValueError as e:  # A config or data that cannot work, found before training.
    cli.fail(str(e))
  except (train.TrainingError, input_pipeline.InputError) as e:
    raise SystemExit(f'error: {e}') from None  # One line naming the problem, exit 1.


if __name__ == '__main__':
  cli.run(main)
