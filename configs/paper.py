"""The paper's recipe on ImageNet (shared/docs/paper.md).

Variants: `--config=configs/paper.py:cuda_convnet` (run 145 as coded), `:one_tower`, `:owt`,
`:caffe`. Override any field: `--config.model.dropout_rate=0.3`.
"""
import ml_collections

from alexnet_jax import variants


def get_config(variant: str = 'paper') -> ml_collections.ConfigDict:
  c = ml_collections.ConfigDict()
  c.model = variants.model_config(variant)  # The net (alexnet_jax/variants.py).
  c.seed = 0  # Parameter init and dropout keys.
  c.batch_size = 128  # Global batch (paper s3).
  return c
