"""Transfer learning: start from a trained AlexNet, give it a new fc8 for your N classes.

    # Train the new head alone (every other layer frozen), from a run of this project:
    python -m alexnet_jax.main --config=configs/transfer.py:head \
        --config.transfer.source=/runs/alexnet --config.data.path=PREPARED \
        --config.model.num_classes=N --workdir=DIR
    # Or fine-tune everything, the pretrained layers at a tenth of the rate, from torchvision's
    # weights (exported with alexnet_jax.weights, or any .pth in its layout):
    python -m alexnet_jax.main --config=configs/transfer.py:finetune \
        --config.model.variant=owt --config.transfer.source=alexnet_owt.pth ...

The source is a work directory, one checkpoint (DIR/checkpoints/STEP), or a .npz/.pth state
dict of the same variant (`transfer.source_num_classes` says how many classes it has). Every
layer but `optim.new_layers` (fc8) is copied; fc8 starts from the variant's init. The mean
and the rest of the preprocessing are those of `data` (the new images), as usual. Only the
first start copies: a resumed run continues from its own checkpoints.
"""
import os
import sys

import ml_collections

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import folder  # pylint: disable=g-import-not-at-top,wrong-import-position  # configs/folder.py


def get_config(mode: str = 'head') -> ml_collections.ConfigDict:
  if mode not in ('head', 'finetune'):
    raise ValueError(f"transfer: mode must be 'head' or 'finetune', got {mode!r}")
  c = folder.get_config()
  c.transfer.source = ''  # Required: the trained model to start from.
  c.optim.new_layers = ('fc8',)
  # 'head': the pretrained layers get no updates at all (nor weight decay).
  # 'finetune': they learn at a tenth of the new head's rate.
  c.optim.pretrained_lr_multiplier = 0.0 if mode == 'head' else 0.1
  c.optim.base_lr = 0.01 if mode == 'head' else 0.001
  c.num_epochs = 15
  return c
