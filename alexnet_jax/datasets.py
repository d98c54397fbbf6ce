"""Image sources that need no download."""
from __future__ import annotations

import numpy as np
from PIL import Image

DIGITS_CLASSES = tuple(str(i) for i in range(10))
DIGITS_TEST_FRACTION = 0.2  # A fixed 80/20 split of scikit-learn's 1797 digits.


def digits(split: str, image_size: int) -> tuple[np.ndarray, np.ndarray]:
  """scikit-learn's real 8x8 handwritten digits as (N, S, S, 3) uint8 RGB and int32 labels.

  Each 0..16 grey image is scaled to 0..255, resized bilinearly to `image_size` and repeated
  over the three channels. The train/test split is fixed (seeded), the same everywhere.
  """
  from sklearn.datasets import load_digits  # pylint: disable=g-import-not-at-top
  if split not in ('train', 'test'):
    raise ValueError(f"data.split: digits has 'train' and 'test', not {split!r}")
  d = load_digits()
  order = np.random.default_rng(0).permutation(len(d.target))
  n_test = int(round(len(order) * DIGITS_TEST_FRACTION))
  index = order[n_test:] if split == 'train' else order[:n_test]
  grey = (d.images[index] * (255.0 / 16.0)).astype(np.uint8)
  resized = np.stack([np.asarray(Image.fromarray(g).resize((image_size, image_size),
                                                           Image.BILINEAR)) for g in grey])
  return np.repeat(resized[..., None], 3, axis=-1), d.target[index].astype(np.int32)
