"""The checks and benchmarks that need an NVIDIA GPU (run by experiments/gpu_check.sh).

    python experiments/gpu_check.py --output=DIR [--batch=256] [--record]

1. towers   with two or more GPUs: the paper net's logits with its towers on two devices
            equal those with both towers on one (float32, `highest` matmul precision), and
            the compiled forward pass has exactly the paper's four cross-tower all-gathers.
2. bf16     the paper net in bfloat16 compute against float32 on the same weights and
            images: logits within 5% of their spread, the same top-1 on >= 90% of images,
            and five training steps whose losses stay within 2% of float32's.
3. speed    experiments/benchmark.py for the paper net at --batch in bfloat16 (synthetic
            batches: training step and inference), then end to end: `python -m
            alexnet_jax.main` on prepared JPEG records read by grain, its logged images/s.

Each check prints one PASS/FAIL line; the tables go to --output (and, with --record, to
experiments/BENCHMARKS.md). Exits 1 if a check fails, 2 if there is no GPU.
"""
from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(HERE)
sys.path.insert(0, ROOT)
sys.path.insert(0, HERE)

import jax  # noqa: E402
import jax.numpy as jnp  # noqa: E402
import numpy as np  # noqa: E402

from alexnet_jax import recipes, sharding  # noqa: E402
import alexnet_jax  # noqa: E402
from records import markdown_table, record  # noqa: E402

SIZE = recipes.model_config('paper').image_size  # The paper net's input side.


def check_towers() -> tuple[bool, str]:
  if len(jax.devices()) < 2:
    return True, 'towers: one GPU here, nothing to compare (needs two)'
  images = jnp.asarray(np.random.default_rng(0).normal(size=(8, SIZE, SIZE, 3)), jnp.float32)
  with jax.default_matmul_precision('highest'):
    one = alexnet_jax.create_model('paper', mesh=sharding.make_mesh(devices=jax.devices()[:1]))
    two_mesh = sharding.make_mesh(devices=jax.devices()[:2])
    two = alexnet_jax.create_model('paper', mesh=two_mesh)
    a, b = np.asarray(one(images)), np.asarray(two(images))
  err = float(np.max(np.abs(a - b)) / (np.ptp(a) + 1e-12))
  hlo = jax.jit(lambda m, x: m(x)).lower(two, images).compile().as_text()
  gathers = hlo.count(' all-gather(') + hlo.count(' all-gather-start(')
  ok = err < 1e-4 and gathers == 4
  return ok, f'towers: 2 devices vs 1, max |logit diff| / spread {err:.1e}; {gathers} all-gathers'


def check_bf16() -> tuple[bool, str]:
  from alexnet_jax import preprocess, train  # pylint: disable=g-import-not-at-top
  rng = np.random.default_rng(0)
  images = jnp.asarray(rng.normal(size=(64, SIZE, SIZE, 3)), jnp.float32)
  mesh = sharding.single_device_mesh()
  nets = {}
  for dtype in ('float32', 'bfloat16'):
    c = recipes.model_config('paper')
    c.compute_dtype = dtype
    nets[dtype] = alexnet_jax.create_model(c, mesh=mesh)
  f32, bf16 = (np.asarray(nets[d](images)) for d in ('float32', 'bfloat16'))
  err = float(np.max(np.abs(f32 - bf16)) / (np.ptp(f32) + 1e-12))
  agree = float(np.mean(f32.argmax(-1) == bf16.argmax(-1)))
  # Five steps of the paper's update on the same batch in both dtypes.
  optim_config = recipes.config('paper').optim
  prep = preprocess.Preprocessing(size=SIZE, crop=SIZE)
  batch = {'image': jnp.asarray(rng.integers(0, 256, (64, SIZE, SIZE, 3)), jnp.uint8),
           'label': jnp.asarray(rng.integers(0, 1000, 64), jnp.int32),
           'flip': jnp.zeros(64, bool), 'lighting': jnp.zeros((64, 3), jnp.float32)}
  losses = {}
  with jax.set_mesh(mesh):
    for dtype, net in nets.items():
      graphdef, state, tx = train.init_state(net, optim_config)
      step = train.make_train_step(graphdef, tx, seed=0, num_classes=1000, preprocessing=prep,
                                   normalized=False)
      losses[dtype] = []
      for _ in range(5):
        state, metrics = step(state, batch, prep.arrays())
        losses[dtype].append(float(metrics['loss']))
  loss_err = max(abs(a - b) / abs(a) for a, b in zip(losses['float32'], losses['bfloat16']))
  ok = err < 0.05 and agree >= 0.9 and loss_err < 0.02
  return ok, (f'bf16: logits max diff / spread {err:.3f}, top-1 agreement {agree:.0%}, '
              f'5-step loss max relative diff {loss_err:.3%}')


def synthetic(batch: int, output: str) -> str:
  out = os.path.join(output, 'benchmark.md')
  subprocess.run([sys.executable, os.path.join(HERE, 'benchmark.py'), '--models=paper',
                  f'--batches={batch}', '--dtype=bfloat16', '--frameworks=jax',
                  f'--output={out}'], check=True)
  return open(out).read()


def end_to_end(batch: int, output: str) -> str:
  from benchmark_input import make_records  # pylint: disable=g-import-not-at-top
  with tempfile.TemporaryDirectory() as tmp:
    data = make_records(tmp, 8 * batch)
    workdir = os.path.join(output, 'end_to_end')
    subprocess.run([sys.executable, '-m', 'alexnet_jax.main', '--config=configs/paper.py',
                    f'--workdir={workdir}', '--config.data.source=prepared',
                    f'--config.data.path={data}', f'--config.batch_size={batch}',
                    '--config.model.compute_dtype=bfloat16', '--config.num_epochs=4',
                    # The records hold 5 classes (make_records' photos): one fc8 over both
                    # towers, as for any class count.
                    '--config.model.num_classes=5', '--config.model.fc8_per_tower=False',
                    '--config.data.eval_split=validation', '--config.log_every_steps=1',
                    '--config.progress=False'],
                   check=True, cwd=ROOT)
  rows = [json.loads(l) for l in open(os.path.join(workdir, 'metrics.jsonl'))
          if l.endswith('}\n') and '"images_per_s"' in l]
  rates = sorted(r['images_per_s'] for r in rows)
  return markdown_table(
      ('run', 'batch', 'steps timed', 'median img/s', 'min', 'max'),
      [('main, prepared JPEGs through grain, bf16', str(batch), str(len(rates)),
        f'{statistics.median(rates):,.0f}', f'{rates[0]:,.0f}', f'{rates[-1]:,.0f}')])


def main():
  parser = argparse.ArgumentParser(description=__doc__.split('\n')[0])
  parser.add_argument('--output', required=True, help='Folder for the tables and runs.')
  parser.add_argument('--batch', type=int, default=256, help='Batch for the benchmarks.')
  parser.add_argument('--record', action='store_true',
                      help='Append the tables to the tracked experiments/BENCHMARKS.md.')
  args = parser.parse_args()
  device = jax.devices()[0]
  if device.platform != 'gpu':
    print(f'gpu_check: no GPU here (JAX sees {device.platform}: {device.device_kind})',
          file=sys.stderr)
    sys.exit(2)
  os.makedirs(args.output, exist_ok=True)
  failed = False
  for check in (check_towers, check_bf16):
    ok, line = check()
    failed |= not ok
    print(('PASS ' if ok else 'FAIL ') + line, flush=True)
  tables = synthetic(args.batch, args.output) + '\n' + end_to_end(args.batch, args.output)
  print(tables)
  with open(os.path.join(args.output, 'gpu_check.md'), 'w') as f:
    f.write(tables)
  if args.record:
    record(f'GPU check on {device.device_kind} x {len(jax.devices())}', 'gpu_check.py',
           'targets on an H100/H200: >= 25,000 train img/s, >= 80,000 inference.', tables)
  sys.exit(1 if failed else 0)


if __name__ == '__main__':
  main()
