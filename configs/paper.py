"""The paper's recipe on ImageNet (shared/docs/paper.md).

Variants: `--config=configs/paper.py:cuda_convnet` (run 145 as coded), `:one_tower`, `:owt`,
`:caffe`. Override any field: `--config.optim.base_lr=0.02`,
`--config.data.path=/data/imagenet_prepared`.
"""
import ml_collections

from alexnet_jax import train
from alexnet_jax import variants


def get_config(variant: str = 'paper') -> ml_collections.ConfigDict:
  c = train.base_config()  # Batch 128, about 90 epochs, momentum 0.9, decay 5e-4 (s3).
  c.model = variants.model_config(variant)  # The net (alexnet_jax/variants.py).
  c.data.source = 'prepared'  # python -m alexnet_jax.prepare --source=ilsvrc ... (s4).
  c.data.path = '~/data/imagenet2012_prepared'  # Where prepare wrote it.
  c.data.image_size = 256  # Shorter side 256, center crop 256x256 (s4).
  c.data.eval_split = 'validation'  # ILSVRC-2012 validation, 50,000 images (s5).
  c.data.mean = 'image'  # The code subtracts the per-pixel mean image (s4).
  c.data.workers = 8  # grain worker processes decoding JPEGs.
  c.optim.base_lr = 0.01  # eps starts at 0.01 ... (s3)
  c.optim.schedule = 'plateau'  # ... divided by 10 when validation error stops improving,
  c.optim.max_drops = 3  # three times in all (s3).
  c.num_epochs = 90  # Run 145 stopped at 91 (s3).
  if variant == 'cuda_convnet':  # Run 145 as coded: s2.6 and the /1.1 of s4.
    c.optim.bias_lr_multiplier = 2.0
    c.optim.bias_weight_decay = False
    c.data.divide = 1.1
  if variant == 'caffe':  # bvlc_alexnet's solver keeps the code's bias treatment.
    c.optim.bias_lr_multiplier = 2.0
    c.optim.bias_weight_decay = False
  return c
