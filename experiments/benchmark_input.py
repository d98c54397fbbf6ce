"""Training-input throughput: our grain pipeline vs a PyTorch-DataLoader-style PIL pipeline.

    python experiments/benchmark_input.py [--images=2048] [--batches=12] [--repeats=3]

Both read the same prepared 256x256 JPEG records (quality 90, made here from the real photos
scikit-image ships, varied by crops, flips and scales) and produce 224x224 training batches of
128: decode, random crop, horizontal flip, PCA lighting, batch. Rows:

  ours (uint8 + flip + lighting offset)  what training uses: uint8 crops, a flip flag and one
                                  RGB lighting offset per image; the reflection, mean
                                  subtraction and offset happen inside the jitted train step
                                  (their cost there is not counted here).
  ours (float, on host)           data.normalize_on_host=True: the float work in the workers.
  PyTorch-style                   PIL decode, crop, flip, ToTensor (float CHW / 255), lighting,
                                  Normalize, torch DataLoader with default collation.

Each with 0 workers (the main process alone with one reader thread: one core) and 2 worker
processes (both cores of this machine). Like for like, compare "ours (float, on host)" with
the PyTorch-style row: both do all the float work on the host. Medians of --repeats runs; prints a table (--record appends it to BENCHMARKS.md).
"""
from __future__ import annotations

import argparse
import os
import statistics
import sys
import tempfile
import time

import numpy as np

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from alexnet_jax import datasets, images, input_pipeline, prepare, preprocess  # noqa: E402
from records import markdown_table, record  # noqa: E402

CROP = 224


def make_records(directory: str, count: int) -> str:
  """A prepared dataset of `count` distinct 256x256 JPEGs made from real photos."""
  import skimage.data  # pylint: disable=g-import-not-at-top
  from PIL import Image  # pylint: disable=g-import-not-at-top
  photos = [skimage.data.astronaut(), skimage.data.chelsea(), skimage.data.coffee(),
            skimage.data.rocket(), skimage.data.immunohistochemistry()]
  rng = np.random.default_rng(0)
  root = os.path.join(directory, 'folder')
  for split, n in (('train', count), ('validation', 8)):
    for c in range(len(photos)):
      os.makedirs(os.path.join(root, split, f'class{c}'), exist_ok=True)
    for i in range(n):
      c = i % len(photos)
      photo = photos[c]
      h, w = photo.shape[:2]
      s = rng.uniform(0.5, 1.0)
      ch, cw = int(h * s), int(w * s)
      top, left = rng.integers(0, h - ch + 1), rng.integers(0, w - cw + 1)
      view = photo[top:top + ch, left:left + cw]
      view = view[:, ::-1] if rng.random() < 0.5 else view
      scale = rng.uniform(0.6, 1.4)
      im = Image.fromarray(np.ascontiguousarray(view)).resize(
          (max(256, int(cw * scale)), max(256, int(ch * scale))))
      im.save(os.path.join(root, split, f'class{c}', f'{i}.jpg'), quality=90)
  out = os.path.join(directory, 'prepared')
  prepare.prepare('folder', root, out, size=256, quality=90, progress=False)
  return out


def ours(directory: str, workers: int, batches: int, on_host: bool, batch_size: int) -> float:
  source = datasets.PreparedSource(directory, 'train')
  stats = datasets.Stats(classes=())
  record = preprocess.Preprocessing(crop=CROP, mean=tuple(stats.mean_rgb),
                                    eigval=stats.eigval, eigvec=stats.eigvec)
  # With no worker processes, one reader thread: a single core, like the torch row.
  it = input_pipeline.train_dataset(source, input_pipeline.Augment(record),
                                    global_batch=batch_size, seed=0, workers=workers, prefetch=4,
                                    normalize_on_host=on_host,
                                    threads=1 if workers == 0 else None)
  next(it)  # Start-up (worker processes) is not throughput.
  start = time.perf_counter()
  for _ in range(batches):
    batch = next(it)
  seconds = time.perf_counter() - start
  assert batch['image'].shape == (batch_size, CROP, CROP, 3)
  it.close()
  return batches * batch_size / seconds


class TorchStyleDataset:
  """What a PyTorch ImageNet script does per image, with PIL and plain torch ops."""

  def __init__(self, directory: str):
    self.source = datasets.PreparedSource(directory, 'train')
    self.eigvec = np.asarray(datasets.IMAGENET_EIGVEC, np.float32)
    self.eigscale = np.sqrt(np.asarray(datasets.IMAGENET_EIGVAL, np.float32)) / 255.0
    self.mean = np.asarray(datasets.IMAGENET_MEAN_RGB, np.float32)[:, None, None] / 255.0
    self.std = np.asarray(datasets.IMAGENET_STD_RGB, np.float32)[:, None, None] / 255.0

  def __len__(self):
    return len(self.source)

  def __getitem__(self, i):
    import torch  # pylint: disable=g-import-not-at-top
    from PIL import Image  # pylint: disable=g-import-not-at-top
    example = self.source.example(i)
    im = images.open_rgb(example.image)  # Image.open(...).convert('RGB')
    label = example.label
    w, h = im.size
    top, left = np.random.randint(0, h - CROP + 1), np.random.randint(0, w - CROP + 1)
    im = im.crop((left, top, left + CROP, top + CROP))  # RandomCrop
    if np.random.rand() < 0.5:  # RandomHorizontalFlip
      im = im.transpose(Image.FLIP_LEFT_RIGHT)
    x = torch.from_numpy(np.asarray(im).copy()).permute(2, 0, 1).float().div(255)  # ToTensor
    alpha = np.random.normal(0, 0.1, 3).astype(np.float32)  # Lighting
    x = x + torch.from_numpy(self.eigvec @ (alpha * self.eigscale))[:, None, None]
    x = (x - torch.from_numpy(self.mean)) / torch.from_numpy(self.std)  # Normalize
    return x, label


def torch_style(directory: str, workers: int, batches: int, batch_size: int) -> float:
  import torch  # pylint: disable=g-import-not-at-top
  torch.set_num_threads(1)
  loader = torch.utils.data.DataLoader(TorchStyleDataset(directory), batch_size=batch_size,
                                       shuffle=True, num_workers=workers, drop_last=True,
                                       persistent_workers=workers > 0,
                                       prefetch_factor=4 if workers else None)
  it = iter(loader)
  next(it)
  start = time.perf_counter()
  for _ in range(batches):
    x, _ = next(it)
  seconds = time.perf_counter() - start
  assert tuple(x.shape) == (batch_size, 3, CROP, CROP)
  del it
  return batches * batch_size / seconds


def main():
  parser = argparse.ArgumentParser(description=__doc__.split('\n')[0])
  parser.add_argument('--images', type=int, default=2048, help='Training images to prepare.')
  parser.add_argument('--batch', type=int, default=128, help='Images per batch.')
  parser.add_argument('--batches', type=int, default=12, help='Batches timed per run.')
  parser.add_argument('--repeats', type=int, default=3, help='Runs per row (the median).')
  parser.add_argument('--workers', default='0,2', help='Worker counts to run, comma-separated.')
  parser.add_argument('--record', action='store_true',
                      help='Append the table to the tracked experiments/BENCHMARKS.md.')
  args = parser.parse_args()
  with tempfile.TemporaryDirectory() as tmp:
    directory = make_records(tmp, args.images)
    rows = []
    for workers in (int(w) for w in args.workers.split(',')):
      cases = [('ours (uint8 + flip + lighting offset)', lambda: ours(directory, workers, args.batches,
                                                              False, args.batch)),
               ('ours (float, on host)', lambda: ours(directory, workers, args.batches, True, args.batch)),
               ('PyTorch-style', lambda: torch_style(directory, workers, args.batches, args.batch))]
      results = {}
      for name, fn in cases:
        results[name] = statistics.median(fn() for _ in range(args.repeats))
      base = results['PyTorch-style']
      cores = max(1, workers)
      for name, rate in results.items():
        rows.append((name, str(workers), f'{rate:,.0f}', f'{rate / cores:,.0f}',
                     f'{rate / base:.2f}x'))
  header = ('pipeline', 'workers', 'images/s', 'images/s per core', 'vs PyTorch-style')
  table = markdown_table(header, rows)
  print(table)
  if args.record:
    record('Input pipeline', 'benchmark_input.py',
           f'batches of {args.batch} {CROP}x{CROP} crops from 256x256 JPEG records (quality 90), '
           f'median of {args.repeats} runs of {args.batches} batches.', table)

if __name__ == '__main__':
  main()
