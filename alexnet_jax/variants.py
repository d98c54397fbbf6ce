"""Model configurations: the paper's net, the original code's, and the nets people compare.

Every field is one line with its source. Section numbers refer to `shared/docs/paper.md`
(section 1: the layers; section 2: where the cuda-convnet code differs from the paper's
text; section 6: the torchvision and Caffe nets).
"""
from __future__ import annotations

import ml_collections

VARIANTS = ('paper', 'cuda_convnet', 'one_tower', 'owt', 'caffe')


def paper() -> ml_collections.ConfigDict:
  """The net of the paper's text and figure 2 (section 1)."""
  c = ml_collections.ConfigDict()
  c.variant = 'paper'  # Name, for logs and checkpoints.
  c.num_classes = 1000  # ILSVRC-2012 classes; fc8's width.
  c.image_size = 224  # Crop side (s2.1: 227 is the Caffe-style equivalent, no padding).
  c.towers = 2  # Two towers, one per GPU in the paper (s1).
  c.conv_filters = (96, 256, 384, 384, 256)  # conv1..conv5 filters, all towers together (s1).
  c.fc_units = 4096  # fc6 and fc7 units, all towers together (s1).
  c.width = 1.0  # Multiplies every conv and fc width; < 1 scales the net down for small data.
  c.conv1_kernel = 11  # conv1 is 11x11 (s1).
  c.conv1_stride = 4  # ... with stride 4 (s1).
  c.conv1_padding = 0  # Symmetric zero padding of conv1 (torchvision: 2).
  # cuda-convnet's conv1 computes ceil((n - 11) / 4) + 1 columns, reading zeros past the right
  # and bottom edges: 224 -> 55 with 3 pixels of padding, 227 -> 55 with none (s1, s2.1).
  c.conv1_ceil_mode = True
  c.pool_window = 3  # Overlapping max pooling, z=3 (s1; the ablation uses 2).
  c.pool_stride = 2  # ... stride s=2 (s1).
  c.adaptive_pool = 0  # torchvision's AdaptiveAvgPool2d side before fc6; 0 = none.
  c.activation = 'relu'  # 'relu' or 'tanh' (the paper's figure 1 comparison).
  c.lrn = True  # Local response normalization after conv1 and conv2 (s1).
  c.lrn_size = 5  # n: channels in the window (s1).
  c.lrn_alpha = 1e-4  # alpha (s1).
  c.lrn_beta = 0.75  # beta (s1).
  c.lrn_k = 2.0  # k (s1; Caffe uses 1).
  # alpha/n in the denominator, as cuda-convnet, Caffe and PyTorch compute it; the published
  # alpha was tuned that way (s1). False gives the paper's formula literally.
  c.lrn_alpha_over_n = True
  c.lrn_across_towers = False  # LRN over each tower's channels (s1); True: all channels (Caffe).
  c.lrn1_before_relu = False  # s2.3: the code normalizes conv1 before its ReLU.
  c.extra_norm2 = False  # s2.4: the code's extra 5x5 within-map normalization after LRN2.
  c.dropout_rate = 0.5  # Dropout on fc6 and fc7 (s1).
  c.dropout_inverted = False  # s2.8: False scales outputs by 1-rate at test time, as the paper.
  c.dropout_before_fc = False  # False: after fc6/fc7's ReLU (paper); True: on their inputs (torchvision).
  c.cross_tower = True  # conv3, fc6, fc7 read both towers (s1); False: run 150's ablation.
  c.skip_conv4 = False  # True: no conv4, conv3 feeds conv5 (s5: a middle layer removed).
  c.fc8_per_tower = True  # fc8 split over the towers, num_classes/2 each; s2.7: one fc8.
  c.weight_std = (0.01,) * 8  # Gaussian init std, conv1..fc8 (s1; s2.5: 0.03 for conv3-5).
  c.bias_init = (0., 1., 0., 1., 1., 1., 1., 0.)  # Bias init, conv1..fc8 (s1, s3).
  c.pytorch_init = False  # True: PyTorch's default uniform(+-1/sqrt(fan_in)) init (torchvision).
  c.compute_dtype = 'float32'  # Activations' dtype; parameters are always float32.
  return c


def cuda_convnet() -> ml_collections.ConfigDict:
  """Run 145 as coded: every difference of section 2 that concerns the net switched on.

  s2.1 (224 padded right/bottom, the code's choice) and s2.2 (alpha/n) are already the
  paper variant's defaults; s2.6 (bias learning rate and decay) acts in the optimizer, and
  configs/paper.py:cuda_convnet sets it there.
  """
  c = paper()
  c.variant = 'cuda_convnet'
  c.lrn1_before_relu = True
  c.extra_norm2 = True
  c.weight_std = (0.01, 0.01, 0.03, 0.03, 0.03, 0.01, 0.01, 0.01)
  c.fc8_per_tower = False
  return c


def one_tower() -> ml_collections.ConfigDict:
  """The paper's one-GPU ablation (s5): one tower with half the kernels in each conv layer.

  The fully connected layers keep their size. The paper's footnote 2 also keeps conv5 at 256
  filters so that both nets have about the same number of parameters; that net is
  `--config.model.conv_filters='(48, 128, 192, 192, 256)'` (59,798,312 parameters).
  """
  c = paper()
  c.variant = 'one_tower'
  c.towers = 1
  c.conv_filters = (48, 128, 192, 192, 128)
  c.fc8_per_tower = False
  return c


def owt() -> ml_collections.ConfigDict:
  """torchvision's AlexNet, the "one weird trick" single-tower net (s6)."""
  c = paper()
  c.variant = 'owt'
  c.towers = 1
  c.conv_filters = (64, 192, 384, 256, 256)
  c.conv1_padding = 2
  c.conv1_ceil_mode = False
  c.adaptive_pool = 6
  c.lrn = False
  c.dropout_inverted = True
  c.dropout_before_fc = True
  c.fc8_per_tower = False
  c.bias_init = (0.,) * 8
  c.pytorch_init = True
  return c


def caffe() -> ml_collections.ConfigDict:
  """Caffe's bvlc_alexnet (s6): groups=2 on conv2/4/5, LRN after ReLU across all channels."""
  c = paper()
  c.variant = 'caffe'
  c.image_size = 227
  c.conv1_ceil_mode = False  # Caffe's convolutions round down (227 -> 55 either way).
  c.lrn_k = 1.0
  c.lrn_across_towers = True
  c.dropout_inverted = True
  c.fc8_per_tower = False
  c.weight_std = (0.01, 0.01, 0.01, 0.01, 0.01, 0.005, 0.005, 0.01)
  c.bias_init = (0., 0.1, 0., 0.1, 0.1, 0.1, 0.1, 0.)
  return c


def model_config(variant: str = 'paper') -> ml_collections.ConfigDict:
  """The ConfigDict of a named variant."""
  if variant not in VARIANTS:
    raise ValueError(f'model.variant: unknown variant {variant!r}; choose one of {VARIANTS}')
  return globals()[variant]()
