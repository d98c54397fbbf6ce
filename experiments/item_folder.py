"""A 10-class image folder of 28x28 greyscale photographs, built from installed packages.

    python experiments/item_folder.py --out=/tmp/items [--train=2000] [--test=500]
    python -m alexnet_jax.main --config=configs/folder.py:small --config.data.path=/tmp/items \
        --workdir=/tmp/items_run

Each image is one of scikit-learn's 1797 handwritten digits (the class), enlarged, turned,
scaled and moved a little, drawn over a random 28x28 patch of one of scikit-image's
public-domain photographs, and saved as a greyscale PNG under `train/<class>/` or `test/<class>/`.
The two splits draw on disjoint sets of digits (80/20), so the test images are of digits the
net never saw. A stand-in for a small set of item photos that needs no download: what
`configs/folder.py:small` is measured on (experiments/BENCHMARKS.md).
"""
from __future__ import annotations

import argparse
import os

import numpy as np
from PIL import Image

CLASSES = 10
SIDE = 28


def _backgrounds() -> list[np.ndarray]:
  """scikit-image's photographs as greyscale float arrays in [0, 1]."""
  import skimage.color  # pylint: disable=g-import-not-at-top
  import skimage.data  # pylint: disable=g-import-not-at-top
  photos = [skimage.data.camera(), skimage.data.astronaut(), skimage.data.coffee(),
            skimage.data.chelsea(), skimage.data.rocket(), skimage.data.coins(),
            skimage.data.moon(), skimage.data.page()]
  return [(skimage.color.rgb2gray(p) if p.ndim == 3 else p / 255.0).astype(np.float32)
          for p in photos]


def _render(digit: np.ndarray, background: np.ndarray, rng: np.random.Generator) -> np.ndarray:
  """A 28x28 uint8 image: the 8x8 digit (0-16) drawn bright over a dim photo patch."""
  size = int(rng.integers(16, 23))
  ink = Image.fromarray((digit * (255 / 16)).astype(np.uint8)).resize((size, size),
                                                                       Image.BILINEAR)
  ink = ink.rotate(float(rng.uniform(-12, 12)), resample=Image.BILINEAR)
  canvas = np.zeros((SIDE, SIDE), np.float32)
  top, left = (int(v) for v in rng.integers(0, SIDE - size + 1, size=2))
  canvas[top:top + size, left:left + size] = np.asarray(ink, np.float32) / 255
  y, x = (int(rng.integers(0, n - SIDE)) for n in background.shape)
  patch = background[y:y + SIDE, x:x + SIDE] * rng.uniform(0.2, 0.5)
  return (255 * np.maximum(patch, canvas)).round().astype(np.uint8)


def build(root: str, *, train: int = 2000, test: int = 500, seed: int = 0) -> str:
  """Writes the folder under `root` (train/ and test/, 10 class folders each); returns root."""
  from sklearn.datasets import load_digits  # pylint: disable=g-import-not-at-top
  digits = load_digits()
  rng = np.random.default_rng(seed)
  order = rng.permutation(len(digits.target))
  bases = {'train': order[:int(0.8 * len(order))], 'test': order[int(0.8 * len(order)):]}
  backgrounds = _backgrounds()
  for split, count in (('train', train), ('test', test)):
    for c in range(CLASSES):
      os.makedirs(os.path.join(root, split, str(c)), exist_ok=True)
    per_class = {c: bases[split][digits.target[bases[split]] == c] for c in range(CLASSES)}
    for i in range(count):
      c = i % CLASSES
      digit = digits.images[rng.choice(per_class[c])]
      image = _render(digit, backgrounds[int(rng.integers(len(backgrounds)))], rng)
      Image.fromarray(image, 'L').save(os.path.join(root, split, str(c), f'{split}_{i:05d}.png'))
  return root


def main() -> None:
  parser = argparse.ArgumentParser(description=__doc__.split('\n\n')[0])
  parser.add_argument('--out', required=True, help='the folder to write')
  parser.add_argument('--train', type=int, default=2000, help='training images')
  parser.add_argument('--test', type=int, default=500, help='test images')
  parser.add_argument('--seed', type=int, default=0, help='which digits, patches and jitter')
  args = parser.parse_args()
  build(args.out, train=args.train, test=args.test, seed=args.seed)
  print(f'{args.train} training and {args.test} test images in {args.out}')


if __name__ == '__main__':
  main()
