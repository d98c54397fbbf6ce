"""The embedded default: a scaled-down AlexNet of the paper's topology on scikit-learn's digits.

Two towers, LRN, overlapping pooling, dropout, PCA lighting and the paper's optimizer, as in
the paper; a quarter of the widths and 32x32 crops of 36x36 renderings of the 8x8 digits, with
a 5x5 stride-1 conv1, so that it reaches 95-97% test accuracy in under a minute on a 2-core
CPU, compilation included (experiments/BENCHMARKS.md).

Two departures make such a small net train in a few hundred steps: inputs are scaled to unit
variance (data.divide) and weights drawn with He's std sqrt(2 / fan_in) instead of the
paper's 0.01 (with biases 0.1 instead of 1). With the paper's init and 0-255 inputs this net
still sits at chance after 300 steps, as the full net does for its first epochs.
"""
import math

import ml_collections

from alexnet_jax import model
from alexnet_jax import train
from alexnet_jax import variants


def get_config() -> ml_collections.ConfigDict:
  c = train.base_config()
  c.model = variants.model_config('paper')  # The paper's net ...
  c.model.num_classes = 10  # ... for the ten digits,
  c.model.image_size = 32  # on 32x32 crops,
  c.model.width = 0.25  # with a quarter of every layer's units,
  c.model.conv1_kernel = 5  # a 5x5 conv1 ...
  c.model.conv1_stride = 1  # ... at stride 1,
  c.model.conv1_padding = 2  # padded to keep 32x32: pool5 is then 3x3x64.
  c.data.source = 'digits'  # scikit-learn's 1797 real 8x8 digits, no download.
  c.data.image_size = 36  # Rendered at 36x36: random 32x32 crops, as 224 of 256 (s4).
  c.data.eval_split = 'test'  # The fixed 20% test split.
  c.data.divide = 64.0  # Unit-variance inputs (pixel std is about 64 in 0-255 units).
  spec = model.ModelSpec.from_config(c.model)
  fan_in = [math.prod(spec.kernel_shape(layer)[:-1]) for layer in model.LAYERS]
  c.model.weight_std = tuple(round(math.sqrt(2 / n), 4) for n in fan_in[:-1]) + (0.01,)
  c.model.bias_init = (0., 0.1, 0., 0.1, 0.1, 0.1, 0.1, 0.)  # The paper's pattern, scaled.
  c.batch_size = 32  # Global batch: as fast per image as 64 on a CPU, twice the updates.
  c.num_epochs = 7  # 45 steps each.
  c.optim.base_lr = 0.02  # Momentum 0.9 and weight decay 5e-4 as in the paper.
  # eps / 10 for the last two epochs, fixed in advance as run 145's drops were (s3): seven
  # epochs are too few for the plateau rule (optim.schedule='plateau') to see a plateau.
  c.optim.schedule = 'manual'
  c.optim.manual_drop_epochs = (5,)
  return c
