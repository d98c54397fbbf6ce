"""Independent references in plain PyTorch, fed our exported (PyTorch-layout) state dicts.

`reference_logits` is the single-device formulation of any recipe's net: grouped convolutions for
the layers that read one tower, torch's own LocalResponseNorm applied per tower (or across
all channels for Caffe), NCHW layout, a (C, H, W) flatten. `TorchvisionAlexNet` is
torchvision's module structure, key for key, so `load_state_dict(strict=True)` proves that
the `owt` export is torchvision's layout.
"""
import numpy as np
import torch
from torch import nn
from torch.nn import functional as F


def _groups(weight, inputs):
  return inputs.shape[1] // weight.shape[1]


def _conv(sd, name, x, stride=1, padding=0):
  w = sd[f'{name}.weight']
  return F.conv2d(x, w, sd[f'{name}.bias'], stride=stride, padding=padding,
                  groups=_groups(w, x))


def reference_logits(spec, state_dict, images_nhwc):
  """Eval-mode logits of `spec`'s net with `state_dict`'s weights (float32, NCHW)."""
  sd = {k: torch.from_numpy(np.asarray(v, np.float32)) for k, v in state_dict.items()}
  if spec.weights_layout == 'torchvision':
    names = dict(conv1='features.0', conv2='features.3', conv3='features.6',
                 conv4='features.8', conv5='features.10', fc6='classifier.1',
                 fc7='classifier.4', fc8='classifier.6')
    sd = {f'{l}.{p}': sd[f'{k}.{p}'] for l, k in names.items() for p in ('weight', 'bias')}
  act = torch.relu if spec.activation == 'relu' else torch.tanh
  x = torch.from_numpy(np.array(images_nhwc, np.float32)).permute(0, 3, 1, 2)
  towers = spec.towers

  def lrn(h):
    alpha = spec.lrn_alpha if spec.lrn_alpha_over_n else spec.lrn_alpha * spec.lrn_size
    parts = [h] if spec.lrn_across_towers else torch.chunk(h, towers, dim=1)
    return torch.cat([F.local_response_norm(p, spec.lrn_size, alpha=alpha, beta=spec.lrn_beta,
                                            k=spec.lrn_k) for p in parts], dim=1)

  def pool(h):
    return F.max_pool2d(h, spec.pool_window, spec.pool_stride, ceil_mode=spec.pool_ceil_mode)

  lo, hi = spec.conv1_pads
  h = _conv(sd, 'conv1', F.pad(x, (lo, hi, lo, hi)), stride=spec.conv1_stride)
  if spec.lrn and spec.lrn1_before_relu:
    h = act(lrn(h))
  else:
    h = act(h)
    h = lrn(h) if spec.lrn else h
  h = pool(h)
  pads = dict(zip(('conv2', 'conv3', 'conv4', 'conv5'), spec.conv_padding))
  h = act(_conv(sd, 'conv2', h, padding=pads['conv2']))
  h = lrn(h) if spec.lrn else h
  if spec.extra_norm2:  # 5x5 within-map sum of squares, zero padded.
    window = F.avg_pool2d(h * h, 5, stride=1, padding=2, count_include_pad=True) * 25
    h = h * (1 + 1e-3 / 25 * window) ** -0.75
  h = pool(h)
  for name in ('conv3', 'conv4', 'conv5'):
    if f'{name}.weight' in sd:  # conv4 is absent in the s5 ablation.
      h = act(_conv(sd, name, h, padding=pads[name]))
  h = pool(h)
  if spec.adaptive_pool:
    h = F.adaptive_avg_pool2d(h, spec.adaptive_pool)
  keep = 1 - spec.dropout_rate
  drop = (lambda v: v) if spec.dropout_inverted else (lambda v: v * keep)
  h = torch.flatten(h, 1)
  for name in ('fc6', 'fc7'):
    w = sd[f'{name}.weight']
    if w.shape[1] != h.shape[1]:  # No cross-tower links: each tower reads its own half.
      parts = torch.chunk(h, towers, dim=1)
      outs = torch.chunk(w, towers, dim=0)
      bias = torch.chunk(sd[f'{name}.bias'], towers)
      h = torch.cat([F.linear(p, o, b) for p, o, b in zip(parts, outs, bias)], dim=1)
    else:
      h = F.linear(h, w, sd[f'{name}.bias'])
    h = drop(act(h))
  return F.linear(h, sd['fc8.weight'], sd['fc8.bias']).numpy()


class TorchvisionAlexNet(nn.Module):
  """torchvision.models.AlexNet's structure (the keys of its published weights)."""

  def __init__(self, num_classes=1000, dropout=0.5):
    super().__init__()
    self.features = nn.Sequential(
        nn.Conv2d(3, 64, kernel_size=11, stride=4, padding=2), nn.ReLU(inplace=True),
        nn.MaxPool2d(kernel_size=3, stride=2),
        nn.Conv2d(64, 192, kernel_size=5, padding=2), nn.ReLU(inplace=True),
        nn.MaxPool2d(kernel_size=3, stride=2),
        nn.Conv2d(192, 384, kernel_size=3, padding=1), nn.ReLU(inplace=True),
        nn.Conv2d(384, 256, kernel_size=3, padding=1), nn.ReLU(inplace=True),
        nn.Conv2d(256, 256, kernel_size=3, padding=1), nn.ReLU(inplace=True),
        nn.MaxPool2d(kernel_size=3, stride=2))
    self.avgpool = nn.AdaptiveAvgPool2d((6, 6))
    self.classifier = nn.Sequential(
        nn.Dropout(p=dropout), nn.Linear(256 * 6 * 6, 4096), nn.ReLU(inplace=True),
        nn.Dropout(p=dropout), nn.Linear(4096, 4096), nn.ReLU(inplace=True),
        nn.Linear(4096, num_classes))

  def forward(self, x):
    x = self.avgpool(self.features(x))
    return self.classifier(torch.flatten(x, 1))
