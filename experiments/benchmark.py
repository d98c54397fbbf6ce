"""Training and inference throughput: ours against the same net in PyTorch, side by side.

    python experiments/benchmark.py [--models=paper,digits] [--repeats=3] [--steps=6]
                                    [--dtype=float32] [--batch=N] [--frameworks=jax,torch]

Needs PyTorch's CPU build (`pip install -r requirements-test.txt`). For each model (the
paper's net at batch 32, the embedded default at its config's batch, or --batch) it
measures, on this machine's default JAX backend:

  train      one optimizer step: forward, backward and the paper's momentum SGD with weight
             decay, images/s. Ours is the training loop's own jitted step, fed uint8 crops
             (flip, mean subtraction and lighting happen inside it); PyTorch's is
             zero_grad, forward, cross-entropy, backward and torch.optim.SGD, fed float NCHW
             tensors normalized beforehand (its work is a subset of ours).
  train, host-normalized
             ours fed float crops normalized beforehand, PyTorch's way: the difference to
             `train` is what fusing normalization into the step costs on the device.
  inference  softmax of a batch in evaluation mode (ours: the evaluation's jitted function
             from uint8; PyTorch: `inference_mode`, from float).

Each (framework, model) runs in its own process, --repeats times, alternating, so both see
the same machine state; a process builds the net, warms up (compiles), then times --steps
steps of each kind. Figures are medians over all timed steps of all repeats. PyTorch runs in
both memory formats (NCHW and channels-last) and the faster counts. Peak host memory is the
process's maximum resident set. On an accelerator the table adds device memory and the
fraction of the chip's peak FLOP rate reached (XLA's FLOP count of the compiled step).
Prints a table and appends it, with the command and the machine, to BENCHMARKS.md.
"""
from __future__ import annotations

import argparse
import json
import os
import resource
import statistics
import subprocess
import sys
import time

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, os.path.dirname(HERE))
sys.path.insert(0, HERE)

from records import markdown_table, record  # noqa: E402

# Dense peak FLOP/s of accelerators we may be lent, by JAX device_kind prefix and dtype.
PEAK_FLOPS = {('NVIDIA H100', 'bfloat16'): 989e12, ('NVIDIA H100', 'float32'): 67e12,
              ('NVIDIA H200', 'bfloat16'): 989e12, ('NVIDIA H200', 'float32'): 67e12}


def model_config(name: str, dtype: str):
  """(model ConfigDict, optim ConfigDict, data.divide, default batch) of a benchmarked model:
  the paper's net at the batch of the issue's target, or the embedded default as it trains."""
  from alexnet_jax import recipes  # pylint: disable=g-import-not-at-top
  if name == 'paper':
    c = recipes.config('paper')
    model, opt, divide, batch = c.model, c.optim, c.data.divide, 32
  elif name == 'digits':
    from configs import digits  # pylint: disable=g-import-not-at-top
    c = digits.get_config()
    model, opt, divide, batch = c.model, c.optim, c.data.divide, c.batch_size
  else:
    raise ValueError(f'--models: unknown model {name!r}; choose paper or digits')
  model.compute_dtype = dtype
  return model, opt, divide, batch


def _timed(fn, steps: int) -> list[float]:
  times = []
  for _ in range(steps):
    start = time.perf_counter()
    fn()
    times.append(time.perf_counter() - start)
  return times


def _peak_rss_mib() -> float:
  return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # kB on Linux.


# ---- Workers: one (framework, model) per process -----------------------------------------------


def jax_worker(name: str, batch: int, steps: int, dtype: str) -> dict:
  import jax  # pylint: disable=g-import-not-at-top
  import numpy as np  # pylint: disable=g-import-not-at-top
  from flax import nnx  # pylint: disable=g-import-not-at-top
  import alexnet_jax  # pylint: disable=g-import-not-at-top
  # pylint: disable=g-import-not-at-top
  from alexnet_jax import evaluation, input_pipeline, sharding, train

  model_cfg, optim_cfg, divide, _ = model_config(name, dtype)
  mesh = sharding.single_device_mesh()  # One device runs both towers.
  net = alexnet_jax.create_model(model_cfg, mesh=mesh)
  spec = net.spec
  size, classes = spec.image_size, spec.num_classes
  rng = np.random.default_rng(0)
  device = jax.devices()[0]
  put = lambda a: jax.device_put(a, device)
  u8 = put(rng.integers(0, 256, (batch, size, size, 3), dtype=np.uint8))
  mean = put(np.full((size, size, 3), 120.0, np.float32))
  labels = put(rng.integers(0, classes, (batch,), dtype=np.int32))
  u8_batch = {'image': u8, 'label': labels, 'flip': put(rng.random(batch) < 0.5),
              'lighting': put(rng.normal(0, 5, (batch, 3)).astype(np.float32))}
  float_batch = dict(u8_batch, image=put(
      input_pipeline.normalize(np.asarray(u8), np.asarray(u8_batch['lighting']), 120.0,
                               divide, np.asarray(u8_batch['flip']))))
  result = {'peak_flops': None, 'device': device.device_kind, 'platform': device.platform}
  graphdef, state, tx = train.init_state(net, optim_cfg)
  with jax.set_mesh(mesh):
    step = train.make_train_step(graphdef, tx, seed=0, num_classes=classes, divide=divide)
    # XLA's FLOP count of the step, from the lowered program (no extra compilation).
    cost = step.lower(state, u8_batch, mean).cost_analysis() or {}
    result['train_flops'] = float(cost.get('flops', 0.0))

    def train_times(b):
      def one():
        nonlocal state
        state, metrics = step(state, b, mean)
        jax.block_until_ready(metrics)
      one()  # Compiles (or warms up) ...
      one()  # ... and lets the allocator settle.
      return _timed(one, steps)

    result['train'] = train_times(u8_batch)
    result['train, host-normalized'] = train_times(float_batch)

    @jax.jit
    def infer(params, images):
      return evaluation.view_probabilities(nnx.merge(graphdef, params), images, mean,
                                           divide=divide, crop=size, views=1)

    run = lambda: jax.block_until_ready(infer(state.params, u8))
    run()
    run()
    result['inference'] = _timed(run, steps)
  stats = device.memory_stats() or {}
  if 'peak_bytes_in_use' in stats:
    result['device_peak_mib'] = stats['peak_bytes_in_use'] / 2**20
  for (kind, kind_dtype), flops in PEAK_FLOPS.items():
    if device.device_kind.startswith(kind) and kind_dtype == dtype:
      result['peak_flops'] = flops
  result['peak_rss_mib'] = _peak_rss_mib()
  return result


def torch_worker(name: str, batch: int, steps: int, dtype: str) -> dict:
  import torch  # pylint: disable=g-import-not-at-top
  from torch.nn import functional as F  # pylint: disable=g-import-not-at-top
  from alexnet_jax.model import ModelSpec  # pylint: disable=g-import-not-at-top
  from torch_alexnet import TorchAlexNet  # pylint: disable=g-import-not-at-top

  if dtype != 'float32':
    raise ValueError('the PyTorch baseline runs in float32 only on the CPU')
  model_cfg, optim_cfg, _, _ = model_config(name, dtype)
  spec = ModelSpec.from_config(model_cfg)
  torch.manual_seed(0)
  x = torch.randn(batch, 3, spec.image_size, spec.image_size)
  y = torch.randint(0, spec.num_classes, (batch,))
  best = None
  for memory_format in (torch.contiguous_format, torch.channels_last):
    net = TorchAlexNet(spec).to(memory_format=memory_format)
    xs = x.contiguous(memory_format=memory_format)
    sgd = torch.optim.SGD(net.parameters(), lr=optim_cfg.base_lr, momentum=optim_cfg.momentum,
                          weight_decay=optim_cfg.weight_decay)

    def train_step():
      sgd.zero_grad(set_to_none=True)
      F.cross_entropy(net(xs), y).backward()
      sgd.step()

    def infer():
      with torch.inference_mode():
        torch.softmax(net(xs), -1)

    net.train()
    train_step()
    train_step()
    train = _timed(train_step, steps)
    net.eval()
    infer()
    infer()
    inference = _timed(infer, steps)
    if best is None or statistics.median(train) < statistics.median(best['train']):
      best = {'train': train, 'inference': inference,
              'memory_format': str(memory_format).split('.')[-1]}
  best['peak_rss_mib'] = _peak_rss_mib()
  best['threads'] = torch.get_num_threads()
  return best


WORKERS = {'jax': jax_worker, 'torch': torch_worker}


def run_worker(framework: str, name: str, batch: int, steps: int, dtype: str) -> dict:
  """One worker in a fresh process (its own peak memory, its own thread pools)."""
  cmd = [sys.executable, os.path.abspath(__file__), f'--worker={framework}', f'--models={name}',
         f'--batch={batch}', f'--steps={steps}', f'--dtype={dtype}']
  out = subprocess.run(cmd, capture_output=True, text=True, check=False)
  if out.returncode:
    raise RuntimeError(f'{framework} worker for {name} failed:\n{out.stderr[-3000:]}')
  return json.loads(out.stdout.strip().splitlines()[-1])


# ---- The table ----------------------------------------------------------------------------------


def measure(models, frameworks, repeats: int, steps: int, dtype: str, batch: int | None):
  """{(model, framework): merged worker results over the repeats}."""
  results = {}
  for r in range(repeats):
    order = frameworks if r % 2 == 0 else frameworks[::-1]
    for name in models:
      b = batch or model_config(name, dtype)[3]
      for framework in order:
        if framework == 'torch' and dtype != 'float32':
          continue
        print(f'repeat {r + 1}/{repeats}: {framework} {name} batch {b}', file=sys.stderr,
              flush=True)
        got = run_worker(framework, name, b, steps, dtype)
        merged = results.setdefault((name, framework), {'batch': b})
        for key, value in got.items():
          if isinstance(value, list):
            merged.setdefault(key, []).extend(value)
          elif key in ('peak_rss_mib', 'device_peak_mib'):
            merged[key] = max(merged.get(key, 0.0), value)
          else:
            merged[key] = value
  return results


def table(results, models) -> str:
  header = ('model', 'batch', 'step', 'ours img/s', 'PyTorch img/s', 'ours / PyTorch',
            'ours peak host MiB', 'PyTorch peak host MiB')
  rows = []
  accel = any(r.get('platform') not in (None, 'cpu') for r in results.values())
  if accel:
    header += ('device peak MiB', 'of peak FLOP/s')
  for name in models:
    ours, theirs = results.get((name, 'jax')), results.get((name, 'torch'))
    first = ours or theirs
    for kind in ('train', 'train, host-normalized', 'inference'):
      if not (ours and kind in ours) and not (theirs and kind in theirs):
        continue
      rate = lambda r: r['batch'] / statistics.median(r[kind]) if r and kind in r else None
      a, b = rate(ours), rate(theirs)
      fmt = lambda v: f'{v:,.1f}' if v is not None else '-'
      row = (name, str(first['batch']), kind, fmt(a), fmt(b),
             f'{a / b:.2f}x' if a and b else '-',
             f'{ours["peak_rss_mib"]:,.0f}' if ours else '-',
             f'{theirs["peak_rss_mib"]:,.0f}' if theirs else '-')
      if accel:
        frac = '-'
        if ours and kind == 'train' and ours.get('peak_flops') and ours.get('train_flops'):
          frac = f'{ours["train_flops"] / statistics.median(ours[kind]) / ours["peak_flops"]:.1%}'
        row += (f'{ours.get("device_peak_mib", 0):,.0f}' if ours else '-', frac)
      rows.append(row)
  return markdown_table(header, rows)


def main():
  parser = argparse.ArgumentParser(description=__doc__.split('\n')[0])
  parser.add_argument('--models', default='paper,digits')
  parser.add_argument('--frameworks', default='jax,torch')
  parser.add_argument('--repeats', type=int, default=3)
  parser.add_argument('--steps', type=int, default=6)
  parser.add_argument('--batch', type=int, default=None,
                      help='Batch for every model (default: paper 32, digits its config\'s).')
  parser.add_argument('--dtype', default='float32', choices=('float32', 'bfloat16'),
                      help='Our compute dtype (parameters and optimizer state stay float32).')
  parser.add_argument('--worker', choices=sorted(WORKERS), help=argparse.SUPPRESS)
  parser.add_argument('--no-record', action='store_true', help='Do not append to BENCHMARKS.md.')
  args = parser.parse_args()
  models = [m for m in args.models.split(',') if m]
  if args.worker:
    print(json.dumps(WORKERS[args.worker](models[0], args.batch, args.steps, args.dtype)))
    return
  frameworks = [f for f in args.frameworks.split(',') if f]
  results = measure(models, frameworks, args.repeats, args.steps, args.dtype, args.batch)
  text = table(results, models)
  ours = next((r for (_, f), r in results.items() if f == 'jax'), {})
  notes = [f'ours: JAX on {ours.get("platform", "?")} ({ours.get("device", "?")}), '
           f'compute dtype {args.dtype}'] if ours else []
  formats = [f'{name} {r.get("memory_format")}' for (name, f), r in results.items()
             if f == 'torch']
  if formats:
    threads = next(r['threads'] for (_, f), r in results.items() if f == 'torch')
    notes.append(f'PyTorch {threads} threads, faster memory format: {", ".join(formats)}')
  # Workers inherit the environment: `python -m alexnet_jax.main` sets glibc.malloc.hugetlb=1.
  notes.append(f'GLIBC_TUNABLES {os.environ.get("GLIBC_TUNABLES", "unset")} for both')
  print(text)
  print('; '.join(notes))
  if not args.no_record:
    record('Training and inference vs PyTorch', 'benchmark.py',
           f'medians of {args.repeats} processes x {args.steps} timed steps. '
           f'{"; ".join(notes)}.', text)

if __name__ == '__main__':
  main()
