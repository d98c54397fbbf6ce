"""Your own images: `root/train/<class>/*.jpg` (and `root/validation/...` or `root/val/...`).

    python -m alexnet_jax.prepare --source=folder --input=ROOT --output=PREPARED
    python -m alexnet_jax.main --config=configs/folder.py --config.data.path=PREPARED \
        --config.model.num_classes=N --workdir=DIR

Or read the folder directly, resizing on the fly (slower), with
`--config.data.source=folder --config.data.path=ROOT`. The paper's net and recipe; the
plateau schedule judges validation error every epoch.
"""
import ml_collections

from alexnet_jax import train
from alexnet_jax import variants


def get_config(variant: str = 'paper') -> ml_collections.ConfigDict:
  c = train.base_config()
  c.model = variants.model_config(variant)
  c.model.num_classes = 2  # Set to your number of classes.
  c.model.fc8_per_tower = False  # One fc8 over both towers: any number of classes (s2.7).
  c.data.source = 'prepared'  # Or 'folder' to read ROOT directly.
  c.data.path = ''  # The prepared directory (or the folder root).
  c.data.image_size = 256  # Shorter side 256, center crop (s4).
  c.data.eval_split = 'validation'
  c.data.mean = 'image'  # Needs a prepared dataset; use 'rgb' with source='folder'.
  c.data.workers = 4
  c.num_epochs = 30
  return c
