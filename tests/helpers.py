"""What the tests share: small configs, real photos and files built on the spot, checkpoints
read through the project's own API, and the project's commands run as subprocesses (from any
directory; a run that hangs fails in one line saying where each process was)."""
from __future__ import annotations

import contextlib
import io
import json
import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
from absl import flags
from flax import nnx
from ml_collections import config_flags
from PIL import Image

import alexnet_jax
from alexnet_jax import checkpoint
from alexnet_jax import config as config_lib
from alexnet_jax import datasets
from alexnet_jax import records
from alexnet_jax import sharding

REPO = Path(__file__).resolve().parent.parent

# ---- Configs ----------------------------------------------------------------------------------


def load_config(spec: str, *overrides: str):
  """`configs/<spec>` (`file.py` or `file.py:arg`) with `--config.<override>`s, loaded
  exactly as the command lines load it."""
  argv = ['test', f'--config={REPO / "configs" / spec}', *(f'--config.{o}' for o in overrides)]
  values = flags.FlagValues()
  config_flags.DEFINE_config_file('config', None, flag_values=values, sys_argv=argv)
  values(argv)
  return values.config


def assert_error_counts(final: dict, examples: int) -> None:
  """A run's final errors are what they must be: for 1 and 10 views (where it evaluated
  them), a count of the `examples` evaluated (a multiple of 1/examples) and no more top-5
  errors than top-1."""
  assert '1view_top1_error' in final, final
  for views in (1, 10) if '10view_top1_error' in final else (1,):
    top1, top5 = final[f'{views}view_top1_error'], final[f'{views}view_top5_error']
    assert 0 <= top5 <= top1 <= 1, final
    for error in (top1, top5):
      assert abs(error * examples - round(error * examples)) < 1e-3, (error, examples)


def set_fields(config, overrides: dict):
  """config with 'a.b.c'-named fields set."""
  for name, value in overrides.items():
    *path, last = name.split('.')
    target = config
    for part in path:
      target = target[part]
    target[last] = value
  return config


def small_config(variant='paper', **overrides):
  """A variant scaled down to run in well under a second on a CPU, same topology.

  width 1/8 keeps every layer's tower split; a 5x5 stride-2 conv1 on 63x63 images reaches
  pool5 at 3x3, so all eight layers, both LRNs and all three pools are exercised.
  """
  c = alexnet_jax.model_config(variant)
  c.width = 0.125
  c.image_size = 63
  c.conv1_kernel = 5
  c.conv1_stride = 2
  c.num_classes = 10
  for k, v in overrides.items():
    setattr(c, k, v)
  return c


def train_config(**overrides):
  """The embedded default at 1/8 width, 2 epochs of 3 steps of 16 images: a whole run
  (training, validation, checkpoints, 1- and 10-view evaluation) in a few seconds."""
  c = load_config('digits.py')
  c.model.width = 0.125
  c.batch_size = 16
  c.optim.base_lr = 0.02  # The rate these tests were written for (the default's at batch 32).
  c.num_epochs = 2
  c.steps_per_epoch = 3
  c.progress = False
  c.eval.ten_views = False  # Where 10 views are not what a test is about (evaluation's own).
  return set_fields(c, overrides)


def data_config(**data_overrides):
  """What input_pipeline.create reads: the digits at 36x36, crops of 32, batches of 16."""
  c = ml_collections.ConfigDict({'data': config_lib.data_fields(), 'model': {'image_size': 32},
                                 'batch_size': 16, 'seed': 3})
  c.data.source = 'digits'
  c.data.image_size = 36
  c.data.eval_split = 'test'
  for k, v in data_overrides.items():
    setattr(c.data, k, v)
  return c


# Command-line flags of the same small run, for `python -m alexnet_jax.main`.
MAIN_FLAGS = ('--config.progress=False', '--config.batch_size=16', '--config.model.width=0.125',
              '--config.optim.base_lr=0.02')

def assert_close(got, want, scale=1.0):
  """Equal up to float32 summation order: errors relative to the result's largest value."""
  want = np.asarray(want)
  np.testing.assert_allclose(got, want, rtol=1e-5 * scale,
                             atol=2e-6 * scale * float(np.abs(want).max()))


def conv_case(size: int, side: int, seed: int):
  """(x (3, side, side, 5), kernel (size, size, 5, 7)), float32 normals."""
  rng = np.random.default_rng(seed)
  return (jnp.asarray(rng.normal(size=(3, side, side, 5)), jnp.float32),
          jnp.asarray(rng.normal(size=(size, size, 5, 7)), jnp.float32))


def mesh_gradients(config, devices, kernels=None):
  """Gradients of a cross-entropy loss, train mode, on a (data, tower) mesh of `devices`."""
  images = jax.random.normal(jax.random.key(1), (4, 63, 63, 3))
  labels = jnp.arange(4) % 10
  m = alexnet_jax.create_model(config, seed=3, mesh=sharding.make_mesh(2, devices=devices),
                               kernels=kernels)
  graphdef, state = nnx.split(m)

  def loss(s):
    logits = nnx.merge(graphdef, s)(images, train=True, dropout_key=jax.random.key(2))
    logp = jax.nn.log_softmax(logits)
    return -jnp.mean(jnp.sum(logp * jax.nn.one_hot(labels, 10), axis=-1))

  return [np.asarray(g) for g in jax.tree.leaves(jax.jit(jax.grad(loss))(state))]


def assert_gradients_close(grads_a, grads_b):
  for a, b in zip(grads_a, grads_b):
    np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-5 * np.abs(b).max())


# ---- Real images and files ------------------------------------------------------------------


def photos() -> dict[str, np.ndarray]:
  """Real public-domain photos that scikit-image ships."""
  import skimage.data  # pylint: disable=g-import-not-at-top
  return {'astronaut': skimage.data.astronaut(), 'chelsea': skimage.data.chelsea(),
          'coffee': skimage.data.coffee(), 'rocket': skimage.data.rocket()}


def encode(array: np.ndarray, fmt: str, **kw) -> bytes:
  buf = io.BytesIO()
  Image.fromarray(array).save(buf, fmt, **kw)
  return buf.getvalue()


def jpeg(array: np.ndarray) -> bytes:
  return encode(array, 'JPEG', quality=92)


def png(array: np.ndarray) -> bytes:
  return encode(array, 'PNG')


def cmyk_jpeg(array: np.ndarray) -> bytes:
  buf = io.BytesIO()
  Image.fromarray(array).convert('CMYK').save(buf, 'JPEG', quality=92)
  return buf.getvalue()


def grey16_png(array: np.ndarray) -> bytes:
  grey = np.asarray(Image.fromarray(array).convert('L'), np.uint16) * 257
  return encode(grey, 'PNG')


FOLDER_CLASSES = ('cat', 'coffee', 'space')


def other_photos() -> dict[str, np.ndarray]:
  """Photos of three other things than `photos()` shows (for a model of other classes)."""
  import skimage.data  # pylint: disable=g-import-not-at-top
  return {'astronaut': skimage.data.astronaut(), 'cells': skimage.data.immunohistochemistry(),
          'galaxy': skimage.data.hubble_deep_field()}


def make_folder(root: Path, *, side: int | None = None, train: int = 6, val: int = 2,
                sources: dict[str, np.ndarray] | None = None) -> Path:
  """root/{train,val}/{cat,coffee,space}/*.jpg from real photos, crops and flips of them;
  `side`: each shrunk to side x side, as small photos are; `sources`: other classes."""
  if sources is None:
    p = photos()
    sources = dict(zip(FOLDER_CLASSES, (p['chelsea'], p['coffee'], p['rocket'])))
  for split, count in (('train', train), ('val', val)):
    for c, photo in sources.items():
      os.makedirs(root / split / c)
      for i in range(count):
        h, w = photo.shape[:2]
        view = photo[i * 7:h - i * 5, i * 11:w - i * 3]
        view = np.ascontiguousarray(view[:, ::-1] if i % 2 else view)
        if side:
          view = np.asarray(Image.fromarray(view).resize((side, side), Image.BILINEAR))
        (root / split / c / f'{c}_{i}.jpg').write_bytes(jpeg(view))
  return root


def damage_record(directory, split: str, index: int) -> str:
  """Flips 8 bytes of prepared example `index`'s image data (three quarters into its
  record, past the JPEG's tables), inside its shard file; returns its original file name."""
  source = datasets.PreparedSource(str(directory), split)
  shard, j = source.locate(index)
  record = source.shards[shard][j]
  path = Path(source.shards[shard].path)
  data = bytearray(path.read_bytes())
  at = data.find(record)
  assert at > 0 and data.count(record) == 1, 'the record is not stored as it is'
  at += len(record) * 3 // 4
  data[at:at + 8] = bytes(255 - b for b in data[at:at + 8])
  path.write_bytes(bytes(data))
  return records.decode(record).name


def png_bomb(side: int = 40_000) -> bytes:
  """A small valid PNG whose header declares side x side pixels."""
  import struct  # pylint: disable=g-import-not-at-top
  import zlib  # pylint: disable=g-import-not-at-top
  data = bytearray(png(np.zeros((8, 8, 3), np.uint8)))
  ihdr = data.index(b'IHDR')
  data[ihdr + 4:ihdr + 12] = struct.pack('>II', side, side)
  data[ihdr + 17:ihdr + 21] = struct.pack('>I', zlib.crc32(bytes(data[ihdr:ihdr + 17])))
  return bytes(data)


def jpeg_bomb(side: int = 40_000) -> bytes:
  """A small JPEG whose frame header declares side x side pixels."""
  import struct  # pylint: disable=g-import-not-at-top
  data = bytearray(jpeg(np.zeros((16, 16, 3), np.uint8)))
  sof = data.index(b'\xff\xc0')
  data[sof + 5:sof + 9] = struct.pack('>HH', side, side)
  return bytes(data)


class BreakingSource:
  """Wraps a source; after `after` reads in a process, it raises, or kills that process (as
  the OOM killer would). Defined here so that grain's spawned workers can unpickle it."""

  def __init__(self, source, *, how: str, after: int):
    self.source, self.how, self.after, self.reads = source, how, after, 0

  def __len__(self):
    return len(self.source)

  def __getitem__(self, index):
    self.reads += 1
    if self.reads > self.after:
      if self.how == 'raise':
        raise OSError(f'disk read error on example {index}')
      os.kill(os.getpid(), signal.SIGKILL)
    return self.source[index]


# ---- Checkpoints, through the project's API ----------------------------------------------------


@contextlib.contextmanager
def read_checkpoints(workdir):
  """A run's checkpoints, read only (as evaluate does beside a running job)."""
  ckpts = checkpoint.Checkpoints(os.path.join(workdir, 'checkpoints'), read_only=True)
  try:
    yield ckpts
  finally:
    ckpts.close()


def checkpoint_steps(workdir) -> list[int]:
  """The committed checkpoints of a run."""
  with read_checkpoints(workdir) as ckpts:
    return ckpts.steps()


def unfinished_saves(workdir) -> list[int]:
  """The steps whose save was cut short (written, never committed)."""
  with read_checkpoints(workdir) as ckpts:
    return ckpts.unfinished()


def last_checkpoint_meta(workdir) -> tuple[list[int], dict]:
  """(committed steps, the newest one's JSON part: data state, schedule, checksum, config)."""
  with read_checkpoints(workdir) as ckpts:
    steps = ckpts.steps()
    return steps, ckpts.read_meta(steps[-1])


def tensorboard_steps(workdir, tag: str) -> list[int]:
  """The steps of `tag` as TensorBoard's own reader sees a run's event files."""
  from tensorboard.backend.event_processing import event_accumulator  # pylint: disable=g-import-not-at-top
  events = event_accumulator.EventAccumulator(str(Path(workdir) / 'tensorboard'),
                                              size_guidance={'scalars': 0})
  events.Reload()
  return [e.step for e in events.Scalars(tag)]


def metrics_rows(workdir) -> list[dict]:
  """The lines of a run's metrics.jsonl (a line cut short by a kill is left out)."""
  path = Path(workdir) / 'metrics.jsonl'
  if not path.exists():
    return []
  return [json.loads(l) for l in path.read_text().splitlines() if l.endswith('}')]


def train_steps_logged(workdir) -> list[int]:
  return [r['step'] for r in metrics_rows(workdir) if 'train_loss' in r]


# ---- Subprocesses --------------------------------------------------------------------------

# A line a library logs: absl's format (W1207 12:00:00.123 ...), Python logging's default
# (WARNING:absl:...), a Python warning (...: UserWarning: ...), or a traceback.
_LIBRARY_LINE = re.compile(r'^([IWEF]\d{4} \d\d:\d\d|(DEBUG|INFO|WARNING|ERROR|CRITICAL):\S+:'
                           r'|.*\b\w*Warning: |Traceback )')


def library_lines(output: str) -> list[str]:
  """The lines of a command's output that a library, not the project, wrote."""
  return [l for l in output.replace('\r', '\n').splitlines() if _LIBRARY_LINE.match(l)]



def python_env(**extra: str) -> dict[str, str]:
  """This environment (4 fake CPU devices, the compilation cache) with the repository on
  PYTHONPATH, so a child imports alexnet_jax from any directory."""
  path = [str(REPO)] + ([os.environ['PYTHONPATH']] if os.environ.get('PYTHONPATH') else [])
  return dict(os.environ, PYTHONPATH=os.pathsep.join(path), **extra)


def run_python(*args: str, timeout: float = 300, env=None, **kw) -> subprocess.CompletedProcess:
  """`python ARGS` from the repository root, to completion; output captured as text."""
  return subprocess.run([sys.executable, *args], cwd=REPO, env=env or python_env(),
                        capture_output=True, text=True, timeout=timeout, **kw)


class Process:
  """`python ARGS` started in the background from the repository root, its stdout and stderr
  going to `log` (a file, so that no pipe fills while another process is waited on)."""

  def __init__(self, *args: str, log: Path, env=None, **popen):
    self.log = Path(log)
    with open(self.log, 'w') as out:
      self.popen = subprocess.Popen([sys.executable, *args], cwd=REPO, env=env or python_env(),
                                    stdout=out, stderr=subprocess.STDOUT, **popen)

  @property
  def pid(self) -> int:
    return self.popen.pid

  @property
  def returncode(self) -> int | None:
    return self.popen.poll()

  def output(self) -> str:
    return self.log.read_text(errors='replace')


def start_main(workdir, *flags: str, log: Path | None = None, **popen) -> Process:
  """`python -m alexnet_jax.main --workdir=WORKDIR MAIN_FLAGS FLAGS` in the background."""
  log = log or Path(f'{workdir}.log')
  return Process('-m', 'alexnet_jax.main', f'--workdir={workdir}', *MAIN_FLAGS, *flags, log=log,
                 **popen)


def wait_all(procs: list[Process], timeout: float, what: str = 'the run') -> list[str]:
  """Each process's output once all have exited. If any is still running after `timeout`
  seconds, each is asked for its threads' stacks (SIGUSR1: faulthandler, registered by
  alexnet_jax.main), all are killed, and the test fails with one line naming where each
  process was, the stacks below it."""
  deadline = time.monotonic() + timeout
  for proc in procs:
    try:
      proc.popen.wait(timeout=max(0.0, deadline - time.monotonic()))
    except subprocess.TimeoutExpired:
      break
  running = [p for p in procs if p.returncode is None]
  if not running:
    return [p.output() for p in procs]
  for proc in running:
    proc.popen.send_signal(signal.SIGUSR1)
  deadline = time.monotonic() + 10  # The handlers write the stacks.
  while time.monotonic() < deadline and not all(stack_dump(p.output()) for p in running):
    time.sleep(0.1)
  for proc in procs:
    proc.popen.kill()
    proc.popen.wait()
  outputs = [p.output() for p in procs]
  places = [f'process {i} {where_stuck(out) if p in running else "had exited"}'
            for i, (p, out) in enumerate(zip(procs, outputs))]
  stacks = '\n\n'.join(f'---- process {i} ----\n{stack_dump(out)}'
                       for i, out in enumerate(outputs))
  raise AssertionError(f'{what} hung (no exit after {timeout:.0f} s): {"; ".join(places)}'
                       f'\n{stacks}')


_THREAD = re.compile(r'^(?:Current thread|Thread) 0x[0-9a-f]+', re.M)
_FRAME = re.compile(r'^\s+File "([^"]+)", line (\d+) in (\S+)', re.M)


def stack_dump(output: str) -> str:
  """The faulthandler dump at the end of a process's output ('' if none)."""
  start = _THREAD.search(output)
  return output[start.start():] if start else ''


def where_stuck(output: str) -> str:
  """'in main:53 > train_and_evaluate:432 > evaluate:170 (innermost: ...)': the project's
  frames of the main thread in the stack dump of `output`, outermost first."""
  for section in _THREAD.split(stack_dump(output))[1:]:
    frames = _FRAME.findall(section)  # Innermost first.
    if any(func == '<module>' for _, _, func in frames):  # The main thread.
      ours = [f'{func}:{line}' for path, line, func in reversed(frames)
              if f'{os.sep}alexnet_jax{os.sep}' in path]
      innermost = next((f'{func} ({os.path.basename(path)})' for path, _, func in frames), '?')
      return f'in {" > ".join(ours) or "startup"} (innermost: {innermost})'
  return 'in an unknown place (no stack dump)'
