"""The paper's recipe on ImageNet (shared/docs/paper.md).

Variants: `--config=configs/paper.py:cuda_convnet` (run 145 as coded), `:one_tower`, `:owt`,
`:caffe`. Override any field: `--config.model.dropout_rate=0.3`,
`--config.data.path=/data/imagenet_prepared`.
"""
import ml_collections

from alexnet_jax import datasets
from alexnet_jax import variants


def get_config(variant: str = 'paper') -> ml_collections.ConfigDict:
  c = ml_collections.ConfigDict()
  c.model = variants.model_config(variant)  # The net (alexnet_jax/variants.py).
  c.data = datasets.config()
  c.data.source = 'prepared'  # python -m alexnet_jax.prepare --source=ilsvrc ... (s4).
  c.data.path = '~/data/imagenet2012_prepared'  # Where prepare wrote it.
  c.data.image_size = 256  # Shorter side 256, center crop 256x256 (s4).
  c.data.eval_split = 'validation'  # ILSVRC-2012 validation, 50,000 images (s5).
  c.data.mean = 'image'  # The code subtracts the per-pixel mean image (s4).
  c.data.divide = 1.1 if variant == 'cuda_convnet' else 1.0  # The code's /1.1 (s4).
  c.data.workers = 8  # grain worker processes decoding JPEGs.
  c.seed = 0  # Parameter init, data order, augmentation and dropout keys.
  c.batch_size = 128  # Global batch (s3).
  return c
