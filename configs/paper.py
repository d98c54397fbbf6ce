"""ImageNet, trained by a named recipe (alexnet_jax/recipes.py; docs/paper.md).

    --config=configs/paper.py                  the paper's text
    --config=configs/paper.py:cuda_convnet     run 145 as coded; any recipe by name
    --config=configs/paper.py:list             lists the recipes, what they reproduce, their size

The data: `--config.data.path=PREPARED`, written by
`python -m alexnet_jax.prepare --source=ilsvrc ...` (s4). Override any field as
`--config.optim.base_lr=0.02`; the recipe itself is chosen only by name.
"""
import ml_collections

from alexnet_jax import recipes


def get_config(recipe: str = 'paper') -> ml_collections.ConfigDict:
  c = recipes.config(recipe)  # The net, its training and its data handling.
  c.data.path = '~/data/imagenet2012_prepared'  # Where prepare wrote ILSVRC-2012.
  c.data.workers = 8  # grain worker processes decoding JPEGs.
  return c
