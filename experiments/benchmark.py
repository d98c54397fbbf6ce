"""Training and inference throughput: ours against the same net in PyTorch, side by side.

    python experiments/benchmark.py [--models=paper,owt] [--batches=32,128] [--repeats=3]
                                    [--steps=6] [--dtype=float32] [--frameworks=jax,torch]

Needs PyTorch's CPU build (`pip install -r requirements-test.txt`). For each model (the
paper's two-tower net, torchvision's single-tower `owt` net, or the embedded default
`digits`) and each batch it measures, on this machine's default JAX backend:

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

Ours computes with the kernels a model on this machine gets (alexnet_jax/backends: on a CPU,
oneDNN's convolutions where requirements-cpu.txt is installed); `ALEXNET_JAX_ONEDNN=0` in the
environment measures the portable core alone. The table's notes say which.

With --dtype=bfloat16 ours computes in bfloat16 (float32 parameters, optimizer state, loss
and softmax) and PyTorch runs its float32 net under `torch.autocast('cpu', torch.bfloat16)`,
its own mixed-precision recipe.

Each (framework, model, batch) runs in its own process, --repeats times, alternating, so both
see the same machine state; a process builds the net, runs the first step (for us: compiling
it; reported apart, as "first step s"), one more to settle, then times --steps steps of each
kind. Rates are medians over all timed steps of all repeats; "spread" is the lowest and
highest of the per-process medians. PyTorch runs in both memory formats (NCHW and
channels-last) and the faster counts. Peak host memory is the process's maximum resident
set. On an accelerator the table adds device memory and the fraction of the chip's peak FLOP
rate reached (XLA's FLOP count of the compiled step). Both frameworks inherit this process's
environment (allocator settings included): run it once with the default allocator, and once
with GLIBC_TUNABLES=glibc.malloc.hugetlb=1 for a labelled huge-pages row. Prints a table (and
writes it to --output); with --record, appends it, with the command and the machine, to
BENCHMARKS.md.
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
  """(model ConfigDict, optim ConfigDict, data.divide) of a benchmarked model: a recipe's net
  (paper, owt) or the embedded default as it trains (digits)."""
  from alexnet_jax import recipes  # pylint: disable=g-import-not-at-top
  if name in ('paper', 'owt'):
    c = recipes.config(name)
  elif name == 'digits':
    from configs import digits  # pylint: disable=g-import-not-at-top
    c = digits.get_config()
  else:
    raise ValueError(f'--models: unknown model {name!r}; choose paper, owt or digits')
  c.model.compute_dtype = dtype
  return c.model, c.optim, c.data.divide


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
  from alexnet_jax import evaluation, preprocess, sharding, train

  model_cfg, optim_cfg, divide = model_config(name, dtype)
  mesh = sharding.single_device_mesh()  # One device runs both towers.
  net = alexnet_jax.create_model(model_cfg, mesh=mesh)
  spec = net.spec
  size, classes = spec.image_size, spec.num_classes
  rng = np.random.default_rng(0)
  device = jax.devices()[0]
  put = lambda a: jax.device_put(a, device)
  u8 = put(rng.integers(0, 256, (batch, size, size, 3), dtype=np.uint8))
  # As training preprocesses: a mean image and a scalar divide (the paper's kind).
  record = preprocess.Preprocessing(size=size, crop=size, std=(divide,),
                                    mean=np.full((size, size, 3), 120.0, np.float32))
  arrays = put(record.arrays())
  labels = put(rng.integers(0, classes, (batch,), dtype=np.int32))
  u8_batch = {'image': u8, 'label': labels, 'flip': put(rng.random(batch) < 0.5),
              'lighting': put(rng.normal(0, 5, (batch, 3)).astype(np.float32))}
  float_batch = dict(u8_batch, image=put(preprocess.normalize(
      np.asarray(u8), record, record.arrays(), lighting=np.asarray(u8_batch['lighting']),
      flip=np.asarray(u8_batch['flip']), train=True)))
  result = {'peak_flops': None, 'device': device.device_kind, 'platform': device.platform,
            'kernels': net.kernels.name}
  graphdef, state, tx = train.init_state(net, optim_cfg)
  with jax.set_mesh(mesh):
    steps_of = {normalized: train.make_train_step(graphdef, tx, seed=0, num_classes=classes,
                                                  preprocessing=record, normalized=normalized)
                for normalized in (False, True)}
    # XLA's FLOP count of the step, from the lowered program (no extra compilation).
    cost = steps_of[False].lower(state, u8_batch, arrays).cost_analysis() or {}
    result['train_flops'] = float(cost.get('flops', 0.0))

    def train_times(b, normalized):
      def one():
        nonlocal state
        state, metrics = steps_of[normalized](state, b, arrays)
        jax.block_until_ready(metrics)
      first = _timed(one, 1)[0]  # Compiles ...
      one()  # ... and lets the allocator settle.
      return first, _timed(one, steps)

    result['first: train'], result['train'] = train_times(u8_batch, False)
    _, result['train, host-normalized'] = train_times(float_batch, True)

    # The program `predict` and the ensemble evaluation run (compiled as the project does).
    infer = evaluation.probabilities_fn(nnx.merge(graphdef, state.params), record, 1)
    run = lambda: jax.block_until_ready(infer(u8))
    result['first: inference'] = _timed(run, 1)[0]
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

  model_cfg, optim_cfg, _ = model_config(name, 'float32')
  spec = ModelSpec.from_config(model_cfg)
  torch.manual_seed(0)
  x = torch.randn(batch, 3, spec.image_size, spec.image_size)
  y = torch.randint(0, spec.num_classes, (batch,))
  # bfloat16: PyTorch's own mixed precision (float32 weights, bf16 convolutions and matmuls).
  autocast = lambda: torch.autocast('cpu', torch.bfloat16, enabled=dtype == 'bfloat16')
  best = None
  for memory_format in (torch.contiguous_format, torch.channels_last):
    net = TorchAlexNet(spec).to(memory_format=memory_format)
    xs = x.contiguous(memory_format=memory_format)
    sgd = torch.optim.SGD(net.parameters(), lr=optim_cfg.base_lr, momentum=optim_cfg.momentum,
                          weight_decay=optim_cfg.weight_decay)

    def train_step():
      sgd.zero_grad(set_to_none=True)
      with autocast():
        loss = F.cross_entropy(net(xs).float(), y)
      loss.backward()
      sgd.step()

    def infer():
      with torch.inference_mode(), autocast():
        torch.softmax(net(xs).float(), -1)

    net.train()
    first_train = _timed(train_step, 1)[0]
    train_step()
    train = _timed(train_step, steps)
    net.eval()
    first_inference = _timed(infer, 1)[0]
    infer()
    inference = _timed(infer, steps)
    if best is None or statistics.median(train) < statistics.median(best['train']):
      best = {'train': train, 'inference': inference, 'first: train': first_train,
              'first: inference': first_inference,
              'memory_format': str(memory_format).split('.')[-1]}
  best['peak_rss_mib'] = _peak_rss_mib()
  best['threads'] = torch.get_num_threads()
  return best


WORKERS = {'jax': jax_worker, 'torch': torch_worker}


def run_worker(framework: str, name: str, batch: int, steps: int, dtype: str) -> dict:
  """One worker in a fresh process (its own peak memory, its own thread pools)."""
  cmd = [sys.executable, os.path.abspath(__file__), f'--worker={framework}', f'--models={name}',
         f'--batches={batch}', f'--steps={steps}', f'--dtype={dtype}']
  out = subprocess.run(cmd, capture_output=True, text=True, check=False)
  if out.returncode:
    raise RuntimeError(f'{framework} worker for {name} failed:\n{out.stderr[-3000:]}')
  return json.loads(out.stdout.strip().splitlines()[-1])


# ---- The table ----------------------------------------------------------------------------------


def measure(models, batches, frameworks, repeats: int, steps: int, dtype: str):
  """{(model, batch, framework): merged worker results over the repeats}: timed steps
  concatenated, per-process medians kept for the spread, first-step times as medians."""
  results = {}
  for r in range(repeats):
    order = frameworks if r % 2 == 0 else frameworks[::-1]
    for name in models:
      for batch in batches:
        for framework in order:
          got = run_worker(framework, name, batch, steps, dtype)
          # As each worker ends: a run stopped early still leaves what it measured.
          rates = ', '.join(f'{kind} {batch / statistics.median(got[kind]):.1f} img/s'
                            for kind in KINDS if got.get(kind))
          print(f'repeat {r + 1}/{repeats}: {framework} {name} batch {batch}: {rates}',
                file=sys.stderr, flush=True)
          merged = results.setdefault((name, batch, framework), {'batch': batch})
          for key, value in got.items():
            if isinstance(value, list):
              merged.setdefault(key, []).extend(value)
              merged.setdefault(f'per process: {key}', []).append(statistics.median(value))
            elif key.startswith('first: '):
              merged.setdefault(key, []).append(value)
            elif key in ('peak_rss_mib', 'device_peak_mib'):
              merged[key] = max(merged.get(key, 0.0), value)
            else:
              merged[key] = value
  return results


KINDS = ('train', 'train, host-normalized', 'inference')


def table(results, models, batches) -> str:
  header = ('model', 'batch', 'step', 'ours img/s', 'ours spread', 'PyTorch img/s',
            'PyTorch spread', 'ours / PyTorch', 'ours first step s', 'PyTorch first step s',
            'ours peak host MiB', 'PyTorch peak host MiB')
  rows = []
  accel = any(r.get('platform') not in (None, 'cpu') for r in results.values())
  if accel:
    header += ('device peak MiB', 'of peak FLOP/s')
  fmt = lambda v: f'{v:,.1f}' if v is not None else '-'
  for name in models:
    for batch in batches:
      ours, theirs = results.get((name, batch, 'jax')), results.get((name, batch, 'torch'))
      for kind in KINDS:
        if not any(r and kind in r for r in (ours, theirs)):
          continue
        has = lambda r: r is not None and kind in r
        rate = lambda r: batch / statistics.median(r[kind]) if has(r) else None
        spread = lambda r: (f'{batch / max(r["per process: " + kind]):,.1f}-'
                            f'{batch / min(r["per process: " + kind]):,.1f}') if has(r) else '-'
        first = lambda r: (f'{statistics.median(r["first: " + kind]):.2f}'
                           if r is not None and f'first: {kind}' in r else '-')
        a, b = rate(ours), rate(theirs)
        row = (name, str(batch), kind, fmt(a), spread(ours), fmt(b), spread(theirs),
               f'{a / b:.2f}x' if a and b else '-', first(ours), first(theirs),
               f'{ours["peak_rss_mib"]:,.0f}' if ours else '-',
               f'{theirs["peak_rss_mib"]:,.0f}' if theirs else '-')
        if accel:
          frac = '-'
          if has(ours) and kind == 'train' and ours.get('peak_flops') and ours.get('train_flops'):
            flops = ours['train_flops'] / statistics.median(ours[kind])
            frac = f'{flops / ours["peak_flops"]:.1%}'
          row += (f'{ours.get("device_peak_mib", 0):,.0f}' if ours else '-', frac)
        rows.append(row)
  return markdown_table(header, rows)


def main():
  parser = argparse.ArgumentParser(description=__doc__.split('\n')[0])
  parser.add_argument('--models', default='paper,owt',
                      help='Comma-separated: paper (the two-tower net), owt (torchvision\'s), '
                      'digits (the embedded default).')
  parser.add_argument('--batches', default='32,128', help='Comma-separated batch sizes.')
  parser.add_argument('--frameworks', default='jax,torch', help='Comma-separated: jax, torch.')
  parser.add_argument('--repeats', type=int, default=3,
                      help='Processes per framework, model and batch, alternating.')
  parser.add_argument('--steps', type=int, default=6, help='Timed steps per process.')
  parser.add_argument('--dtype', default='float32', choices=('float32', 'bfloat16'),
                      help='Compute dtype: ours with float32 parameters and optimizer state; '
                      'PyTorch under torch.autocast for bfloat16.')
  parser.add_argument('--worker', choices=sorted(WORKERS), help=argparse.SUPPRESS)
  parser.add_argument('--output', default=None, help='Also write the table to this file.')
  parser.add_argument('--record', action='store_true',
                      help='Append the table to the tracked experiments/BENCHMARKS.md.')
  args = parser.parse_args()
  models = [m for m in args.models.split(',') if m]
  batches = [int(b) for b in args.batches.split(',') if b]
  if args.worker:
    print(json.dumps(WORKERS[args.worker](models[0], batches[0], args.steps, args.dtype)))
    return
  frameworks = [f for f in args.frameworks.split(',') if f]
  results = measure(models, batches, frameworks, args.repeats, args.steps, args.dtype)
  text = table(results, models, batches)
  ours = next((r for key, r in results.items() if key[2] == 'jax'), {})
  notes = [f'ours: JAX on {ours.get("platform", "?")} ({ours.get("device", "?")}), '
           f'compute dtype {args.dtype}, kernels {ours.get("kernels", "?")}'] if ours else []
  formats = [f'{name}@{batch} {r.get("memory_format")}'
             for (name, batch, f), r in results.items() if f == 'torch']
  if formats:
    threads = next(r['threads'] for key, r in results.items() if key[2] == 'torch')
    autocast = ' under bf16 autocast' if args.dtype == 'bfloat16' else ''
    notes.append(f'PyTorch {threads} threads{autocast}, faster memory format: '
                 f'{", ".join(formats)}')
  # Workers inherit the environment: `python -m alexnet_jax.main` sets glibc.malloc.hugetlb=1.
  notes.append(f'GLIBC_TUNABLES {os.environ.get("GLIBC_TUNABLES", "unset")} for both')
  print(text)
  print('; '.join(notes))
  if args.output:
    with open(args.output, 'w') as f:
      f.write(f'{text}\n{"; ".join(notes)}\n')
  if args.record:
    record('Training and inference vs PyTorch', 'benchmark.py',
           f'medians of {args.repeats} processes x {args.steps} timed steps. '
           f'{"; ".join(notes)}.', text)


if __name__ == '__main__':
  main()
