"""Your own images, by a named recipe: an image folder or a directory that
`python -m alexnet_jax.prepare --source=folder` wrote.

    python -m alexnet_jax.main --config=configs/folder.py:small --config.data.path=ROOT \
        --workdir=DIR          # a quarter-width net from scratch, on a CPU, in minutes
    python -m alexnet_jax.main --config=configs/folder.py --config.data.path=PREPARED \
        --workdir=DIR          # the paper's net and recipe (any recipe by name; :list lists them)

ROOT holds `train/<class>/*.jpg` (or .png, ...) and `val/`, `validation/` or `test/` beside
it. The class count and names come from the data, and so does the image size: small images
are enlarged to the least the net reads, larger ones stored at the recipe's size (256, crops
of 224, for the paper); the batch is no larger than the training set (data.fit).
"""
import ml_collections

from alexnet_jax import recipes


def get_config(recipe: str = 'paper') -> ml_collections.ConfigDict:
  return recipes.own_images(recipes.config(recipe))  # data.path: the folder's root.
