"""The same AlexNet in PyTorch, written the way a PyTorch user would: the benchmark's baseline.

`TorchAlexNet(spec)` builds the net of one of our `ModelSpec`s (the paper's, torchvision's
`owt`, or the embedded default's scaled-down one) as a standard `nn.Module`: NCHW, the two
towers as `groups=2` convolutions (as Caffe's and torch's ports of the two-GPU net do),
torch's own `local_response_norm` per tower, `max_pool2d`, dropout and `Linear` layers. Its
`state_dict()` layouts are those of `alexnet_jax.weights.state_dict` (keys named by layer:
conv1 ... fc8), so the two nets can be loaded with the same weights and checked to compute
the same logits (tests/test_benchmark.py).
"""
from __future__ import annotations

import torch
from torch import nn
from torch.nn import functional as F

from alexnet_jax.model import ModelSpec


class TorchAlexNet(nn.Module):

  def __init__(self, spec: ModelSpec):
    super().__init__()
    unsupported = [f for f in ('lrn_across_towers', 'lrn1_before_relu', 'extra_norm2',
                               'skip_conv4') if getattr(spec, f)]
    if unsupported or not spec.cross_tower:
      raise NotImplementedError(f'TorchAlexNet: {unsupported or ["cross_tower=False"]}')
    self.spec = spec
    t = spec.towers
    c = spec.conv_widths

    def conv(name, cin, cout, k, stride=1, padding=0):
      groups = 1 if spec.reads_all_towers(name) else t
      setattr(self, name, nn.Conv2d(cin, cout, k, stride, padding, groups=groups))

    p = spec.conv_padding
    conv('conv1', 3, c[0], spec.conv1_kernel, spec.conv1_stride)
    conv('conv2', c[0], c[1], 5, padding=p[0])
    conv('conv3', c[1], c[2], 3, padding=p[1])
    conv('conv4', c[2], c[3], 3, padding=p[2])
    conv('conv5', c[3], c[4], 3, padding=p[3])
    fc6, fc7 = spec.fc_widths
    self.fc6 = nn.Linear(spec.fc6_inputs, fc6)
    self.fc7 = nn.Linear(fc6, fc7)
    self.fc8 = nn.Linear(fc7, spec.num_classes)

  def _lrn(self, h):
    s = self.spec
    alpha = s.lrn_alpha if s.lrn_alpha_over_n else s.lrn_alpha * s.lrn_size
    return torch.cat([F.local_response_norm(p, s.lrn_size, alpha, s.lrn_beta, s.lrn_k)
                      for p in torch.chunk(h, s.towers, dim=1)], dim=1)

  def forward(self, x):
    s = self.spec
    act = torch.relu if s.activation == 'relu' else torch.tanh
    pool = lambda h: F.max_pool2d(h, s.pool_window, s.pool_stride, ceil_mode=s.pool_ceil_mode)
    lo, hi = s.conv1_pads
    h = act(self.conv1(F.pad(x, (lo, hi, lo, hi))))
    h = pool(self._lrn(h) if s.lrn else h)
    h = act(self.conv2(h))
    h = pool(self._lrn(h) if s.lrn else h)
    h = act(self.conv5(act(self.conv4(act(self.conv3(h))))))
    h = pool(h)
    if s.adaptive_pool:
      h = F.adaptive_avg_pool2d(h, s.adaptive_pool)
    h = torch.flatten(h, 1)
    for fc in (self.fc6, self.fc7):
      if s.dropout_before_fc:  # torchvision's: dropout on the inputs of fc6 and fc7.
        h = act(fc(self._dropout(h)))
      else:  # The paper's: on their outputs.
        h = self._dropout(act(fc(h)))
    return self.fc8(h)

  def _dropout(self, h):
    s = self.spec
    if not s.dropout_rate:
      return h
    h = F.dropout(h, s.dropout_rate, self.training)  # Inverted: kept units / (1 - rate).
    if not s.dropout_inverted:  # The paper's: unscaled in training, x (1 - rate) in test.
      h = h * (1 - s.dropout_rate)
    return h
