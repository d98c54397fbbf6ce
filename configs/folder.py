"""Your own images, by a named recipe: an image folder or a directory that
`python -m alexnet_jax.prepare --source=folder` wrote.

    python -m alexnet_jax.main --config=configs/folder.py:small --config.data.path=ROOT \
        --workdir=DIR          # a quarter-width net from scratch, on a CPU, in minutes
    python -m alexnet_jax.main --config=configs/folder.py --config.data.path=PREPARED \
        --workdir=DIR          # the paper's net and recipe (any recipe by name; :list lists them)

ROOT holds `train/<class>/*.jpg` (or .png, ...) and `val/`, `validation/` or `test/` beside
it. The class count and names, the evaluation split, the batch (no larger than the training
set) and the image size come from the data, by one rule for a folder and its prepared form
(alexnet_jax/fitting.py); the run says what it fitted in its first lines.
"""
import ml_collections

from alexnet_jax import recipes


def get_config(recipe: str = 'paper') -> ml_collections.ConfigDict:
  return recipes.own_images(recipes.config(recipe))  # data.path: the folder's root.
