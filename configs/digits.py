"""The embedded default: a scaled-down AlexNet of the paper's topology on scikit-learn's digits.

Two towers, LRN, overlapping pooling and dropout as in the paper; a quarter of the widths and
32x32 crops of 36x36 renderings of the 8x8 digits, with a 5x5 stride-1 conv1, so that it
trains on a CPU.
"""
import ml_collections

from alexnet_jax import datasets
from alexnet_jax import variants


def get_config() -> ml_collections.ConfigDict:
  c = ml_collections.ConfigDict()
  c.model = variants.model_config('paper')  # The paper's net ...
  c.model.num_classes = 10  # ... for the ten digits,
  c.model.image_size = 32  # on 32x32 crops,
  c.model.width = 0.25  # with a quarter of every layer's units,
  c.model.conv1_kernel = 5  # a 5x5 conv1 ...
  c.model.conv1_stride = 1  # ... at stride 1,
  c.model.conv1_padding = 2  # padded to keep 32x32: pool5 is then 3x3x64.
  c.data = datasets.config()
  c.data.source = 'digits'  # scikit-learn's 1797 real 8x8 digits, no download.
  c.data.image_size = 36  # Rendered at 36x36: random 32x32 crops, as 224 of 256 (s4).
  c.data.eval_split = 'test'  # The fixed 20% test split.
  c.seed = 0  # Parameter init, data order, augmentation and dropout keys.
  c.batch_size = 64  # Global batch.
  return c
