"""Transfer learning: a trained AlexNet with a new fc8 for your images' classes.

    # The new head alone (every other layer frozen), from a run of this project:
    python -m alexnet_jax.main --config=configs/transfer.py:head \
        --config.transfer.source=/runs/alexnet --config.data.path=ROOT --workdir=DIR
    # Everything fine-tuned, the pretrained layers at a tenth of the rate, from torchvision's
    # weights (any .pth in its layout), with torchvision's net: mode,recipe.
    python -m alexnet_jax.main --config=configs/transfer.py:finetune,owt \
        --config.transfer.source=alexnet_owt.pth --config.data.path=ROOT --workdir=DIR

The source is a work directory or one checkpoint (DIR/checkpoints/STEP), whose net (recipe,
sizes, image geometry) is read from it (alexnet_jax/transfer.py), or a .npz/.pth state dict
of the net of the recipe named here (`transfer.source_num_classes` says how many classes it
has). Every layer but `optim.new_layers` (fc8) is copied; fc8 starts from the recipe's init.
The data, a folder or a prepared directory, gives the classes, as for configs/folder.py; its
images are read at the size the source was trained at. Only the first start copies: a
resumed run continues from its own checkpoints.
"""
import ml_collections

from alexnet_jax import recipes

MODES = ('head', 'finetune')


def get_config(arg: str = 'head') -> ml_collections.ConfigDict:
  mode, _, recipe = arg.partition(',')
  if mode not in MODES:
    raise ValueError(f"transfer: the mode must be 'head' or 'finetune', got {mode!r} "
                     '(configs/transfer.py:MODE or :MODE,RECIPE)')
  c = recipes.own_images(recipes.config(recipe or 'paper'))  # As configs/folder.py.
  c.transfer.source = ''  # Required: the trained model to start from.
  c.optim.new_layers = ('fc8',)
  # 'head': the pretrained layers get no updates at all (nor weight decay); 'finetune': they
  # learn at a tenth of the new head's rate.
  c.optim.pretrained_lr_multiplier = 0.0 if mode == 'head' else 0.1
  c.optim.base_lr = 0.01 if mode == 'head' else 0.001
  c.num_epochs = 15
  return c
