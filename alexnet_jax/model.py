"""AlexNet (Krizhevsky, Sutskever, Hinton 2012) as a Flax NNX module with explicit towers.

Every tower layer stores its parameters stacked on a leading axis of size `towers`:
conv kernels are (towers, kh, kw, in, out), dense kernels (towers, in, out), biases
(towers, out). That axis is sharded over the mesh's `tower` axis, and the forward pass runs
under `jax.shard_map`: each device computes the towers it holds, one after the other, with
plain (ungrouped) convolutions, and the only collective is `sharding.gather_towers` at the
paper's four cross-tower links (the inputs of conv3, fc6, fc7 and fc8; Caffe's LRN across
all channels adds two more, before LRN1 and LRN2).

Channel order wherever towers are concatenated is tower-major (tower 0's channels first), and
dense inputs are flattened in (H, W, C) order; `weights.py` converts to PyTorch's layouts.
"""
from __future__ import annotations

import dataclasses
import difflib
import functools
import math
from typing import Any

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
from flax import nnx
from jax.sharding import Mesh

from alexnet_jax import backends
from alexnet_jax import config as config_lib
from alexnet_jax import ops
from alexnet_jax import recipes
from alexnet_jax import sharding

LAYERS = config_lib.LAYERS
CONV_LAYERS = LAYERS[:5]
FC_LAYERS = LAYERS[5:]
# Layers whose input is every tower's output: the paper's cross-tower connections.
CROSS_TOWER_LAYERS = ('conv3', 'fc6', 'fc7', 'fc8')
CONV_KERNELS = (None, 5, 3, 3, 3)  # conv2..conv5's kernel sides (s1); conv1's is a field.
DTYPES = {'float32': jnp.float32, 'bfloat16': jnp.bfloat16, 'float16': jnp.float16}
INITS = ('gaussian', 'he', 'pytorch')
WEIGHTS_LAYOUTS = ('caffe', 'torchvision')


def _frozen(value):
  return tuple(value) if isinstance(value, list) else value


# The schema is config.model_fields(): one dataclass field for each of its fields, with its
# default. Nothing here re-declares them.
_MODEL_FIELDS = {k: _frozen(v) for k, v in config_lib.model_fields().to_dict().items()}
_ModelFields = dataclasses.make_dataclass(
    '_ModelFields', [(k, Any, dataclasses.field(default=v)) for k, v in _MODEL_FIELDS.items()],
    frozen=True)


class ModelSpec(_ModelFields):
  """A validated, hashable `model` section (config.model_fields() says what each field is)
  and the shapes that follow from it."""

  @classmethod
  def from_config(cls, config: ml_collections.ConfigDict | dict | ModelSpec) -> ModelSpec:
    """A spec from a whole or partial `model` section (absent fields take the paper's
    values); one-line errors name the field."""
    if isinstance(config, ModelSpec):
      return config
    d = dict(config.to_dict() if isinstance(config, ml_collections.ConfigDict) else config)
    for name in sorted(set(d) - set(_MODEL_FIELDS)):
      close = difflib.get_close_matches(name, _MODEL_FIELDS, n=1)
      hint = f" (did you mean 'model.{close[0]}'?)" if close else ''
      raise ValueError(f'model.{name}: no such field{hint}')
    spec = cls(**{k: _frozen(v) for k, v in d.items()})
    spec.validate()
    return spec

  def validate(self) -> None:
    def fail(field, why):
      raise ValueError(f'model.{field}: {why}')

    for field, length in (('conv_filters', 5), ('fc_units', 2), ('conv_padding', 4),
                          ('weight_std', 8), ('bias_init', 8)):
      value = getattr(self, field)
      if not isinstance(value, tuple) or len(value) != length:
        fail(field, f'needs {length} values, got {value!r}')
    if self.towers not in (1, 2):
      fail('towers', f'must be 1 or 2, got {self.towers}')
    for field in ('conv1_kernel', 'conv1_stride', 'pool_window', 'pool_stride'):
      if getattr(self, field) < 1:
        fail(field, f'must be >= 1, got {getattr(self, field)}')
    for field in ('conv_filters', 'fc_units'):
      if min(getattr(self, field)) < 1:
        fail(field, f'must all be >= 1, got {getattr(self, field)}')
    if min(self.conv_padding) < 0 or self.conv1_padding < 0:
      fail('conv_padding' if min(self.conv_padding) < 0 else 'conv1_padding', 'must be >= 0')
    if self.adaptive_pool < 0:
      fail('adaptive_pool', f'must be >= 0, got {self.adaptive_pool}')
    if self.num_classes < 1:
      fail('num_classes', f'must be positive, got {self.num_classes}')
    if self.width <= 0:
      fail('width', f'must be positive, got {self.width}')
    if self.activation not in ('relu', 'tanh'):
      fail('activation', f"must be 'relu' or 'tanh', got {self.activation!r}")
    if not 0 <= self.dropout_rate < 1:
      fail('dropout_rate', f'must be in [0, 1), got {self.dropout_rate}')
    if self.compute_dtype not in DTYPES:
      fail('compute_dtype', f'must be one of {tuple(DTYPES)}, got {self.compute_dtype!r}')
    if self.init not in INITS:
      fail('init', f'must be one of {INITS}, got {self.init!r}')
    if self.weights_layout not in WEIGHTS_LAYOUTS:
      fail('weights_layout', f'must be one of {WEIGHTS_LAYOUTS}, got {self.weights_layout!r}')
    if self.lrn and self.lrn_size < 1:
      fail('lrn_size', f'must be >= 1, got {self.lrn_size}')
    if self.fc8_per_tower and self.towers > 1 and self.num_classes % self.towers:
      fail('fc8_per_tower', f'{self.num_classes} classes cannot be split over {self.towers} '
           'towers; set model.fc8_per_tower=False')
    self.feature_sizes()  # Raises if the image is too small for the net.

  # ---- Derived shapes ----------------------------------------------------------------------

  @property
  def layers(self) -> tuple[str, ...]:
    """The layers this net has: all eight, or seven without conv4 (the s5 ablation)."""
    return tuple(l for l in LAYERS if not (l == 'conv4' and self.skip_conv4))

  def _scaled(self, n: int) -> int:
    """n * width, rounded to a multiple of the tower count."""
    return max(1, round(n * self.width / self.towers)) * self.towers

  @property
  def conv_widths(self) -> tuple[int, ...]:
    """conv1..conv5's filters, all towers together, after `width`."""
    return tuple(self._scaled(n) for n in self.conv_filters)

  @property
  def fc_widths(self) -> tuple[int, int]:
    """fc6's and fc7's units, all towers together, after `width`."""
    return tuple(self._scaled(n) for n in self.fc_units)

  @property
  def conv1_pads(self) -> tuple[int, int]:
    """(low, high) zero padding of conv1 on each spatial axis."""
    p = self.conv1_padding
    if not self.conv1_ceil_mode:
      return p, p
    # ceil((n - k) / s) + 1 output columns, the last ones reading zeros past the far edge.
    k, s, n = self.conv1_kernel, self.conv1_stride, self.image_size + 2 * p
    out = -(-(n - k) // s) + 1
    return p, p + max(0, (out - 1) * s + k - n)

  def pool_output(self, n: int) -> int:
    """The side after a max pool of side `n`: rounded up (cuda-convnet) or down."""
    z, s = self.pool_window, self.pool_stride
    if not self.pool_ceil_mode:
      return (n - z) // s + 1
    out = -(-(n - z) // s) + 1
    # A last window that would start past the edge (possible only with a window smaller than
    # the stride) is dropped, as PyTorch does: it would see nothing but padding.
    return out - 1 if (out - 1) * s >= n else out

  def feature_sizes(self) -> dict[str, int]:
    """Spatial side after each stage, raising if the image is too small for the net."""
    lo, hi = self.conv1_pads
    sizes = {'conv1': (self.image_size + lo + hi - self.conv1_kernel) // self.conv1_stride + 1}
    if sizes['conv1'] < 1:
      raise ValueError(f'model.image_size: {self.image_size} is smaller than conv1\'s kernel')

    def too_small(name, n, needs):
      raise ValueError(f'model.image_size: {self.image_size} is too small for the net: '
                       f'{name} gets a {n}x{n} map, smaller than its {needs}x{needs} window')

    side = sizes['conv1']
    for layer in ('pool1', 'conv2', 'pool2', 'conv3', 'conv4', 'conv5', 'pool5'):
      if layer.startswith('pool'):
        if side < self.pool_window:
          too_small(layer, side, self.pool_window)
        side = self.pool_output(side)
      elif layer in self.layers:
        i = CONV_LAYERS.index(layer)
        side = side + 2 * self.conv_padding[i - 1] - CONV_KERNELS[i] + 1
        if side < 1:
          too_small(layer, side + CONV_KERNELS[i] - 1, CONV_KERNELS[i])
      else:
        continue  # conv4, removed.
      sizes[layer] = side
    sizes['fc6_in'] = self.adaptive_pool or sizes['pool5']
    return sizes

  @property
  def fc6_inputs(self) -> int:
    """Features entering fc6: H * W * conv5 channels (9216 for the paper's net)."""
    return self.feature_sizes()['fc6_in'] ** 2 * self.conv_widths[4]

  def stacks(self, layer: str) -> int:
    """How many tower stacks a layer has: `towers`, or 1 for the code's single fc8."""
    if layer == 'fc8' and not self.fc8_per_tower:
      return 1
    return self.towers

  def reads_all_towers(self, layer: str) -> bool:
    if layer == 'conv1':
      return True  # The whole image, in every tower.
    if layer == 'fc8':
      return True  # The classifier always sees both towers.
    return layer in CROSS_TOWER_LAYERS and self.cross_tower

  def kernel_shape(self, layer: str) -> tuple[int, ...]:
    """One tower's kernel shape: (kh, kw, in, out) or (in, out)."""
    t = self.towers
    convs = self.conv_widths
    fc6, fc7 = self.fc_widths
    share = 1 if self.reads_all_towers(layer) else t
    if layer == 'conv1':
      return (self.conv1_kernel, self.conv1_kernel, 3, convs[0] // t)
    if layer in CONV_LAYERS:
      previous = self.layers[self.layers.index(layer) - 1]  # conv3 feeds conv5 without conv4.
      k = CONV_KERNELS[CONV_LAYERS.index(layer)]
      return (k, k, convs[CONV_LAYERS.index(previous)] // share,
              convs[CONV_LAYERS.index(layer)] // t)
    if layer == 'fc6':
      return (self.fc6_inputs // share, fc6 // t)
    if layer == 'fc7':
      return (fc6 // share, fc7 // t)
    return (fc7, self.num_classes // self.stacks(layer))  # fc8

  def conv_pads(self, layer: str) -> tuple[tuple[int, int], tuple[int, int]]:
    """((top, bottom), (left, right)) zero padding of a conv layer."""
    if layer == 'conv1':
      return (self.conv1_pads,) * 2
    p = self.conv_padding[CONV_LAYERS.index(layer) - 1]
    return ((p, p),) * 2

  def param_count(self) -> int:
    return sum(self.stacks(l) * (math.prod(self.kernel_shape(l)) + self.kernel_shape(l)[-1])
               for l in self.layers)

  def dropout_sites(self) -> dict[str, tuple[int, ...]]:
    """One tower's activation shape at each dropout site (the masks' trailing shape)."""
    if self.dropout_rate == 0:
      return {}
    fc6, fc7 = (n // self.towers for n in self.fc_widths)
    if self.dropout_before_fc:
      side = self.feature_sizes()['fc6_in']
      return {'fc6': (side, side, self.conv_widths[4] // self.towers), 'fc7': (fc6,)}
    return {'fc6': (fc6,), 'fc7': (fc7,)}


# ---- Layers -----------------------------------------------------------------------------------


def within_map_norm(x: jax.Array, *, size: int = 5, scale: float = 1e-3, beta: float = 0.75,
                    k: float = 1.0) -> jax.Array:
  """cuda-convnet's extra normalization after LRN2 (docs/paper.md s2.4), within each map.

  b = a / (k + scale/size^2 * sum over a size x size spatial window of a^2) ** beta; like
  the code's cross-map LRN, the scale is divided by the number of terms in the window.
  """
  x32 = x.astype(jnp.float32)
  window = jax.lax.reduce_window(x32 * x32, 0., jax.lax.add, (1, size, size, 1), (1, 1, 1, 1),
                                 'SAME')
  return (x32 * (k + scale / size**2 * window) ** -beta).astype(x.dtype)


def adaptive_avg_pool(x: jax.Array, out: int) -> jax.Array:
  """PyTorch's AdaptiveAvgPool2d: bin i averages rows floor(i*n/out) .. ceil((i+1)*n/out)-1."""
  n = x.shape[1]
  if n == out:
    return x
  m = np.zeros((out, n), np.float32)
  for i in range(out):
    a, b = (i * n) // out, -(-((i + 1) * n) // out)
    m[i, a:b] = 1.0 / (b - a)
  m = jnp.asarray(m, x.dtype)
  return jnp.einsum('bhwc,ih,jw->bijc', x, m, m)


# ---- The tower-parallel forward pass (runs inside shard_map) ---------------------------------


def _concat_towers(hs: list[jax.Array], reader: str, *, replicated: bool = False) -> jax.Array:
  """Local towers' activations -> every tower's, concatenated tower-major on channels.

  The gather is named `<reader>_input` (in profiles and in the compiled program's metadata),
  after the layer that reads both towers: the paper's conv3, fc6, fc7 and fc8.
  """
  with jax.named_scope(f'{reader}_input'):
    everyone = sharding.gather_towers(jnp.stack(hs), replicated=replicated)  # (towers, B, ..., C)
    return jnp.concatenate(list(everyone), axis=-1)


# Points of the forward pass that `AlexNet.features` can return: conv and fc outputs after
# their activation (before pooling and dropout; before LRN too, except conv1 under
# `lrn1_before_relu`, where the code normalizes first), pool5, and the logits.
FEATURES = ('conv1', 'conv2', 'conv3', 'conv4', 'conv5', 'pool5', 'fc6', 'fc7', 'logits')


def forward_towers(spec: ModelSpec, kernels: ops.Kernels,
                   params: dict[str, tuple[jax.Array, jax.Array]], images: jax.Array,
                   masks: dict[str, jax.Array], *, train: bool,
                   stop_at: str = 'logits') -> jax.Array:
  """The forward pass over the towers held by this device, up to the point `stop_at`, its
  convolutions and fully connected products computed by `kernels`.

  params: layer -> (kernel (stacks_local, ...), bias (stacks_local, out));
  images: (B_local, H, W, 3); masks: site -> (B_local, towers_local, ...) keep-masks.
  Returns (B_local, classes held here) logits, or at another point every tower's
  activations concatenated tower-major on the last axis.
  """
  for name, h in _tower_stages(spec, kernels, params, images, masks, train=train):
    if name == stop_at:
      return h if name == 'logits' else _concat_towers(h, 'features', replicated=True)
  raise ValueError(f'features: unknown point {stop_at!r}; choose one of {FEATURES}')


def _tower_stages(spec, kernels, params, images, masks, *, train):
  """Yields (point, activations): a list over local towers, or the logits array at the end."""
  dtype = DTYPES[spec.compute_dtype]
  act = jax.nn.relu if spec.activation == 'relu' else jnp.tanh
  keep = 1.0 - spec.dropout_rate
  x = images.astype(dtype)
  local = params['conv1'][0].shape[0]

  def weights(layer):
    kernel, bias = params[layer]
    return kernel.astype(dtype), bias.astype(dtype)

  def lrn(layer, hs):
    norm = functools.partial(ops.local_response_norm, size=spec.lrn_size, alpha=spec.lrn_alpha,
                             beta=spec.lrn_beta, k=spec.lrn_k,
                             alpha_over_n=spec.lrn_alpha_over_n)
    if not spec.lrn_across_towers:
      return [norm(h) for h in hs]
    # Caffe normalizes across all channels: the window straddles the towers' boundary.
    full = norm(_concat_towers(hs, layer))
    per_tower = full.reshape(full.shape[:-1] + (spec.towers, -1))
    mine = jax.lax.dynamic_slice_in_dim(per_tower, sharding.tower_index(local), local, axis=-2)
    return [mine[..., t, :] for t in range(local)]

  def dropout(site, hs):
    if site not in spec.dropout_sites():
      return hs
    if not train:
      return hs if spec.dropout_inverted else [h * keep for h in hs]
    scale = 1.0 / keep if spec.dropout_inverted else 1.0
    m = masks[site]
    return [jnp.where(m[:, t], h * scale, 0).astype(h.dtype) for t, h in enumerate(hs)]

  def conv_layer(layer, inputs, stride=1):
    kernel, bias = weights(layer)
    padding = spec.conv_pads(layer)
    return [kernels.conv(h, kernel[t], stride, padding) + bias[t]
            for t, h in enumerate(inputs)]

  def dense_layer(layer, inputs):
    """All local towers' `layer` as one batched matmul over the stacked kernel: slicing a
    tower's kernel out of the stack would copy it (75 MB for fc6), and the batched form's
    gradient lands in the stack directly."""
    kernel, bias = weights(layer)
    flat = jnp.stack([a.reshape(a.shape[0], -1) for a in inputs])  # (stacks, B, in)
    # Accumulated in float32 whatever the compute dtype: XLA:CPU's bfloat16 x bfloat16 ->
    # bfloat16 product takes a slow path (fc6: 46 ms against 27 ms accumulating in float32,
    # and 14 ms all in float32; experiments/BENCHMARKS.md), and a long sum loses bits in bf16.
    out = kernels.dense(flat, kernel)
    return list(out.astype(kernel.dtype) + bias[:, None, :])

  def pool(hs):
    if spec.pool_ceil_mode:  # The last window overhangs the far edge: pad it with -inf.
      side = hs[0].shape[1]
      extra = (spec.pool_output(side) - 1) * spec.pool_stride + spec.pool_window - side
      if extra > 0:
        pads = ((0, 0), (0, extra), (0, extra), (0, 0))
        hs = [jnp.pad(h, pads, constant_values=-jnp.inf) for h in hs]
    return [ops.max_pool(h, spec.pool_window, spec.pool_stride) for h in hs]

  def tower_inputs(layer, hs):
    """The input of each local tower's `layer`: its own, or all towers' (a cross link)."""
    if spec.reads_all_towers(layer):
      return [_concat_towers(hs, layer)] * local
    return hs

  # conv1: every tower sees the whole image.
  h = conv_layer('conv1', [x] * local, stride=spec.conv1_stride)
  if spec.lrn and spec.lrn1_before_relu:
    h = [act(a) for a in lrn('lrn1', h)]  # The code: LRN on conv1's pre-activations (s2.3).
  else:
    h = [act(a) for a in h]
  yield 'conv1', h
  h = lrn('lrn1', h) if spec.lrn and not spec.lrn1_before_relu else h
  h = pool(h)

  h = [act(a) for a in conv_layer('conv2', h)]
  yield 'conv2', h
  h = lrn('lrn2', h) if spec.lrn else h
  h = [within_map_norm(a) for a in h] if spec.extra_norm2 else h
  h = pool(h)

  for layer in ('conv3', 'conv4', 'conv5'):
    if layer not in spec.layers:
      continue
    h = [act(a) for a in conv_layer(layer, tower_inputs(layer, h))]
    yield layer, h
  h = pool(h)
  if spec.adaptive_pool:
    h = [adaptive_avg_pool(a, spec.adaptive_pool) for a in h]
  yield 'pool5', h

  # Dropout sites: the outputs of fc6 and fc7 (paper), or the inputs of fc6 and fc7
  # (torchvision); `dropout_sites` names each by the layer it follows or precedes.
  if spec.dropout_before_fc:
    h = dropout('fc6', h)
  for layer in ('fc6', 'fc7'):
    h = [act(a) for a in dense_layer(layer, tower_inputs(layer, h))]
    yield layer, h
    if not spec.dropout_before_fc:
      h = dropout(layer, h)
    elif layer == 'fc6':
      h = dropout('fc7', h)

  # fc8 reads every tower; split over the towers (paper) or a single layer (the code).
  features = _concat_towers(h, 'fc8', replicated=spec.stacks('fc8') == 1)
  logits = dense_layer('fc8', [features] * params['fc8'][0].shape[0])
  yield 'logits', jnp.concatenate(logits, axis=-1).astype(jnp.float32)


# ---- The module -------------------------------------------------------------------------------


class TowerLayer(nnx.Module):
  """A conv or dense layer stacked over towers: kernel (stacks, *shape), bias (stacks, out)."""

  def __init__(self, kernel: jax.Array, bias: jax.Array, mesh: Mesh):
    out = sharding.named(mesh, sharding.tower_param_spec(kernel.shape[0], mesh))
    self.kernel = nnx.Param(jax.sharding.reshard(kernel, out))
    self.bias = nnx.Param(jax.sharding.reshard(bias, out))


def initial_params(spec: ModelSpec, key: jax.Array) -> dict[str, tuple[jax.Array, jax.Array]]:
  """`spec.init`: kernels ~ N(0, std^2) with std weight_std (the paper's) or sqrt(2 / fan_in)
  up to fc7 ('he'), constant biases; or PyTorch's default init.

  All draws come from one flat vector: one random-number program compiles in a fraction of
  the time of one per layer, and the values do not depend on the mesh.
  """
  shapes = {l: ((spec.stacks(l), *spec.kernel_shape(l)), (spec.stacks(l), spec.kernel_shape(l)[-1]))
            for l in spec.layers}
  sizes = [math.prod(s) for l in spec.layers for s in shapes[l]]
  if spec.init == 'pytorch':
    flat = jax.random.uniform(key, (sum(sizes),), minval=-1.0, maxval=1.0)
  else:
    flat = jax.random.normal(key, (sum(sizes),))
  pieces = iter(jnp.split(flat, np.cumsum(sizes)[:-1]))
  params = {}
  for layer in spec.layers:
    i = LAYERS.index(layer)  # weight_std and bias_init list all eight layers.
    kshape, bshape = shapes[layer]
    kernel, bias = next(pieces).reshape(kshape), next(pieces).reshape(bshape)
    fan_in = math.prod(kshape[1:-1])
    if spec.init == 'pytorch':
      # torch.nn's default: kaiming_uniform(a=sqrt(5)) == U(+-1/sqrt(fan_in)), bias likewise.
      bound = 1.0 / math.sqrt(fan_in)
      params[layer] = (bound * kernel, bound * bias)
    else:
      # float32, not weak-typed: the train step's outputs must match its inputs' types, or
      # the second step compiles the step again.
      bias = jnp.full(bshape, spec.bias_init[i], jnp.float32)
      he = spec.init == 'he' and layer != 'fc8'  # fc8 feeds the softmax, not a ReLU.
      std = math.sqrt(2 / fan_in) if he else spec.weight_std[i]
      params[layer] = (std * kernel, bias)
  return params


class AlexNet(nnx.Module):
  """AlexNet with its towers on a (data, tower) mesh.

  `model(images_NHWC)` returns logits (B, num_classes); with `train=True` pass
  `dropout_key`. Images are float, mean-subtracted, batch divisible by the mesh's data axis.
  `kernels` compute its convolutions and products: by default those of the mesh's platform
  (backends.kernels_for).
  """

  def __init__(self, spec: ModelSpec, *, mesh: Mesh, key: jax.Array,
               kernels: ops.Kernels | None = None):
    if spec.towers == 1 and sharding.tower_size(mesh) != 1:
      raise ValueError('mesh: this net has one tower; build the mesh with '
                       'sharding.make_mesh(towers=1)')
    self.spec = spec
    self.mesh = mesh
    self.kernels = kernels or backends.kernels_for(mesh)
    for layer, (kernel, bias) in initial_params(spec, key).items():
      setattr(self, layer, TowerLayer(kernel, bias, mesh))

  def layer(self, name: str) -> TowerLayer:
    return getattr(self, name)

  def __call__(self, images_NHWC: jax.Array, *, train: bool = False,
               dropout_key: jax.Array | None = None) -> jax.Array:
    """Logits (B, num_classes); `train=True` applies dropout drawn from `dropout_key`."""
    self._check_images(images_NHWC)
    train = bool(train and self.spec.dropout_sites())
    if train and dropout_key is None:
      raise ValueError('model(train=True) needs dropout_key')
    if train:  # On the mesh, so the masks are drawn there, shard by shard.
      dropout_key = jax.device_put(dropout_key, sharding.named(self.mesh, sharding.REPLICATED))
    return _apply(self.spec, self.mesh, self.kernels, 'logits', self._params(), images_NHWC,
                  dropout_key if train else None)

  def features(self, images_NHWC: jax.Array, point: str = 'fc7') -> jax.Array:
    """Evaluation-mode activations at `point` (one of FEATURES), all towers concatenated
    tower-major on the last axis: (B, H, W, C) for conv points and pool5, (B, units) for fc."""
    if point not in FEATURES or (point in LAYERS and point not in self.spec.layers):
      raise ValueError(f'features: unknown point {point!r} for this net; choose one of '
                       f'{tuple(p for p in FEATURES if p not in LAYERS or p in self.spec.layers)}')
    self._check_images(images_NHWC)
    return _apply(self.spec, self.mesh, self.kernels, point, self._params(), images_NHWC,
                  None)

  def _params(self):
    return {l: (self.layer(l).kernel[...], self.layer(l).bias[...]) for l in self.spec.layers}

  def _check_images(self, images_NHWC):
    spec, mesh = self.spec, self.mesh
    b, hgt, wid, ch = images_NHWC.shape
    if (hgt, wid, ch) != (spec.image_size, spec.image_size, 3):
      raise ValueError(f'images: expected (batch, {spec.image_size}, {spec.image_size}, 3), '
                       f'got {tuple(images_NHWC.shape)}')
    if b % sharding.data_size(mesh):
      raise ValueError(f'images: batch {b} is not divisible by the mesh\'s data axis '
                       f'({sharding.data_size(mesh)})')


@functools.partial(jax.jit, static_argnums=(0, 1, 2, 3))
def _apply(spec: ModelSpec, mesh: Mesh, kernels: ops.Kernels, stop_at: str, params,
           images_NHWC, dropout_key):
  """The shard_mapped forward pass; jitted so that eager calls compile once."""
  # shard_map takes every array without the mesh axes of size 1 (sharding.manual_spec): on
  # one device the forward pass and its gradient then hold no collective at all.
  manual = lambda partition: sharding.manual_spec(partition, mesh)
  place = lambda a, partition: jax.sharding.reshard(a, sharding.named(mesh, manual(partition)))
  masks = {}
  if dropout_key is not None:
    # Drawn in the global view: a key gives the same masks on every mesh.
    out = sharding.named(mesh, manual(sharding.BATCH_BY_TOWER))
    keep = 1.0 - spec.dropout_rate
    batch = images_NHWC.shape[0]
    masks = {site: jax.random.bernoulli(jax.random.fold_in(dropout_key, i), keep,
                                        (batch, spec.towers, *shape), out_sharding=out)
             for i, (site, shape) in enumerate(sorted(spec.dropout_sites().items()))}
  param_specs = {l: sharding.tower_param_spec(spec.stacks(l), mesh) for l in spec.layers}
  # Split fc8 leaves each tower's classes on its devices; everything else is whole per tower.
  split_logits = stop_at == 'logits' and spec.stacks('fc8') > 1
  out_spec = sharding.BATCH_BY_TOWER if split_logits else sharding.BATCH
  fn = jax.shard_map(
      functools.partial(forward_towers, spec, kernels, train=dropout_key is not None,
                        stop_at=stop_at),
      mesh=mesh,
      in_specs=({l: (manual(p),) * 2 for l, p in param_specs.items()}, manual(sharding.BATCH),
                {k: manual(sharding.BATCH_BY_TOWER) for k in masks}),
      out_specs=manual(out_spec))
  out = fn({l: tuple(place(a, param_specs[l]) for a in arrays) for l, arrays in params.items()},
           place(images_NHWC, sharding.BATCH), masks)
  return jax.sharding.reshard(out, sharding.named(mesh, out_spec))


def create_model(model_config: Any = None, *, mesh: Mesh | None = None, seed: int = 0,
                 kernels: ops.Kernels | None = None) -> AlexNet:
  """The model described by `model_config`: a recipe's name (recipes.py), or a `model`
  section as a ConfigDict, dict or ModelSpec.

  Parameters are created already placed: tower weights on their towers' devices of `mesh`.
  Without a mesh, one device holds and runs both towers. The same seed gives the same
  weights on every mesh. `kernels`: by default the mesh's platform's (backends.kernels_for),
  chosen here, before anything is traced.
  """
  if model_config is None or isinstance(model_config, str):
    model_config = recipes.model_config(model_config or 'paper')
  spec = ModelSpec.from_config(model_config)
  if mesh is None:
    mesh = sharding.single_device_mesh()
  kernels = kernels or backends.kernels_for(mesh)
  graphdef = nnx.graphdef(nnx.eval_shape(
      lambda: AlexNet(spec, mesh=mesh, key=jax.random.key(0), kernels=kernels)))
  with jax.set_mesh(mesh):
    params = _init_params(spec, mesh, kernels, jax.random.key(seed))
  return nnx.merge(graphdef, params)


@functools.partial(jax.jit, static_argnums=(0, 1, 2))
def _init_params(spec: ModelSpec, mesh: Mesh, kernels: ops.Kernels, key: jax.Array):
  """One compiled program (per spec and mesh) draws every parameter straight into its shards."""
  return nnx.state(AlexNet(spec, mesh=mesh, key=key, kernels=kernels))


def summary(model: AlexNet) -> str:
  """A table of the layers: per-tower kernel, stacks, placement, parameters."""
  spec = model.spec
  rows = [('layer', 'kernel per tower', 'towers', 'reads', 'sharding', 'params')]
  for layer in spec.layers:
    p = model.layer(layer)
    reads = 'all towers' if spec.reads_all_towers(layer) else 'own tower'
    rows.append((layer, 'x'.join(map(str, p.kernel.shape[1:])), str(p.kernel.shape[0]), reads,
                 str(p.kernel[...].sharding.spec), f'{p.kernel.size + p.bias.size:,}'))
  rows.append(('total', '', '', '', '', f'{spec.param_count():,}'))
  widths = [max(len(r[i]) for r in rows) for i in range(len(rows[0]))]
  lines = ['  '.join(c.ljust(w) for c, w in zip(r, widths)).rstrip() for r in rows]
  lines.insert(1, '  '.join('-' * w for w in widths))
  return '\n'.join(lines)
