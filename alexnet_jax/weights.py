"""Weights in PyTorch's layout, to and from `.npz` (and `.pth` when torch is installed).

Layouts (every array float32):
  * `owt`: torchvision's `alexnet` state dict exactly (`features.{0,3,6,8,10}`,
    `classifier.{1,4,6}`), so torchvision's published weights load and give its logits.
  * every other recipe: Caffe's bvlc_alexnet blobs under the names `conv1`..`conv5`,
    `fc6`..`fc8` with `.weight` and `.bias`. Conv weights are (out, in/groups, kh, kw) where a
    layer that reads only its own tower has groups = towers (conv2, conv4, conv5 of the paper's
    net); output channels are tower-major (tower 0's first); dense weights are (out, in), with
    fc6's input a (C, H, W) flatten of pool5, as torch's `flatten` of an NCHW map gives.
    Our conv1 reads RGB; Caffe's own bvlc_alexnet blobs read BGR (reverse conv1's input
    channels when converting one).
"""
from __future__ import annotations

import os
import zipfile

import jax
import numpy as np

from alexnet_jax.model import LAYERS, AlexNet, ModelSpec

TORCHVISION_KEYS = {'conv1': 'features.0', 'conv2': 'features.3', 'conv3': 'features.6',
                    'conv4': 'features.8', 'conv5': 'features.10', 'fc6': 'classifier.1',
                    'fc7': 'classifier.4', 'fc8': 'classifier.6'}


def layer_keys(spec: ModelSpec) -> dict[str, str]:
  """Our layer name -> the state dict's key prefix."""
  keys = TORCHVISION_KEYS if spec.weights_layout == 'torchvision' else {l: l for l in LAYERS}
  return {l: k for l, k in keys.items() if l in spec.layers}


def _fc6_hwc_to_chw(spec: ModelSpec, stacks: int):
  """Row permutation taking fc6's (H, W, C)-flattened input rows to (C, H, W) order."""
  side = spec.feature_sizes()['fc6_in']
  channels = spec.fc6_inputs // side**2 // (1 if spec.reads_all_towers('fc6') else stacks)
  return np.arange(side * side * channels).reshape(side, side, channels).transpose(2, 0, 1).ravel()


def to_torch(spec: ModelSpec, layer: str, kernel: np.ndarray, bias: np.ndarray):
  """Our stacked (kernel, bias) -> PyTorch (weight, bias)."""
  stacks = kernel.shape[0]
  if kernel.ndim == 5:  # (S, kh, kw, in, out) -> (S*out, in, kh, kw)
    weight = np.concatenate([k.transpose(3, 2, 0, 1) for k in kernel])
  else:  # (S, in, out) -> (S*out, in)
    weight = np.concatenate([k.T for k in kernel])
    if layer == 'fc6':
      weight = weight[:, _fc6_hwc_to_chw(spec, stacks)]
  return np.ascontiguousarray(weight, np.float32), bias.reshape(-1).astype(np.float32)


def from_torch(spec: ModelSpec, layer: str, weight: np.ndarray, bias: np.ndarray):
  """PyTorch (weight, bias) -> our stacked (kernel, bias)."""
  stacks = spec.stacks(layer)
  w = np.asarray(weight, np.float32)
  if w.ndim == 4:
    kernel = np.stack([k.transpose(2, 3, 1, 0) for k in np.split(w, stacks)])
  else:
    if layer == 'fc6':
      w = w[:, np.argsort(_fc6_hwc_to_chw(spec, stacks))]
    kernel = np.stack([k.T for k in np.split(w, stacks)])
  return kernel, np.asarray(bias, np.float32).reshape(stacks, -1)


def state_dict(model: AlexNet) -> dict[str, np.ndarray]:
  """The model's weights as a PyTorch-layout dict of numpy arrays."""
  out = {}
  for layer, key in layer_keys(model.spec).items():
    p = model.layer(layer)
    out[f'{key}.weight'], out[f'{key}.bias'] = to_torch(
        model.spec, layer, np.asarray(jax.device_get(p.kernel[...])),
        np.asarray(jax.device_get(p.bias[...])))
  return out


def expected_shapes(spec: ModelSpec) -> dict[str, tuple[int, ...]]:
  """The state dict's key -> shape for a model of this spec."""
  out = {}
  for layer, key in layer_keys(spec).items():
    shape, stacks = spec.kernel_shape(layer), spec.stacks(layer)
    if len(shape) == 4:  # (kh, kw, in, out) -> (stacks * out, in, kh, kw)
      out[f'{key}.weight'] = (stacks * shape[3], shape[2], shape[0], shape[1])
    else:  # (in, out) -> (stacks * out, in)
      out[f'{key}.weight'] = (stacks * shape[1], shape[0])
    out[f'{key}.bias'] = (stacks * shape[-1],)
  return out


def load_state_dict(model: AlexNet, tensors: dict[str, np.ndarray]) -> AlexNet:
  """Copies a PyTorch-layout dict into the model, keeping every parameter's sharding.

  Raises a one-line ValueError naming the first missing, unexpected or misshapen key.
  """
  expected = expected_shapes(model.spec)
  for key in expected:
    if key not in tensors:
      raise ValueError(f'weights: missing key {key!r} for this net '
                       f'({model.spec.weights_layout} layout)')
  for key in tensors:
    if key not in expected:
      raise ValueError(f'weights: unexpected key {key!r} for this net '
                       f'({model.spec.weights_layout} layout)')
  for key, shape in expected.items():
    got = tuple(np.shape(tensors[key]))
    if got != shape:
      raise ValueError(f'weights: {key!r} has shape {got}, this net needs {shape}')
  for layer, key in layer_keys(model.spec).items():
    kernel, bias = from_torch(model.spec, layer, tensors[f'{key}.weight'],
                              tensors[f'{key}.bias'])
    p = model.layer(layer)
    p.kernel[...] = jax.device_put(kernel, p.kernel[...].sharding)
    p.bias[...] = jax.device_put(bias, p.bias[...].sharding)
  return model


def preprocessing_path(weights_path: str | os.PathLike) -> str:
  """Where a weights file's preprocessing record lies: `alexnet.npz` ->
  `alexnet.preprocessing.json` (alexnet_jax/preprocess.py)."""
  return os.path.splitext(os.fspath(weights_path))[0] + '.preprocessing.json'


def export_state_dict(model: AlexNet, path: str | os.PathLike, preprocessing=None) -> None:
  """Writes the weights to `path`: `.npz`, or `.pth` (needs torch); with `preprocessing` (a
  preprocess.Preprocessing), its record beside them, so that whoever loads them feeds them
  the pixels they were trained on."""
  tensors = state_dict(model)
  path = os.fspath(path)
  if preprocessing is not None:
    with open(preprocessing_path(path), 'w') as f:
      f.write(preprocessing.to_json())
  if path.endswith('.pth') or path.endswith('.pt'):
    import torch  # pylint: disable=g-import-not-at-top
    torch.save({k: torch.from_numpy(v) for k, v in tensors.items()}, path)
  elif path.endswith('.npz'):
    np.savez(path, **tensors)
  else:
    raise ValueError(f'weights: {path!r} must end in .npz or .pth')


def read_state_dict(path: str | os.PathLike) -> dict[str, np.ndarray]:
  """Reads a `.npz` or `.pth` state dict into numpy arrays."""
  path = os.fspath(path)
  if not os.path.isfile(path):
    raise FileNotFoundError(f'weights: no file {path!r}')
  if path.endswith('.npz'):
    try:
      with np.load(path) as f:
        return {k: f[k] for k in f.files}
    except (zipfile.BadZipFile, ValueError, OSError) as e:
      raise ValueError(f'weights: {path!r} is not a readable .npz file ({e})') from None
  if path.endswith('.pth') or path.endswith('.pt'):
    try:
      import torch  # pylint: disable=g-import-not-at-top
    except ImportError:
      raise ValueError(f'weights: reading {path!r} needs torch; convert it to .npz') from None
    try:
      loaded = torch.load(path, map_location='cpu', weights_only=True)
    except Exception as e:  # torch raises several types for a damaged file.
      raise ValueError(f'weights: {path!r} is not a readable .pth file ({e})') from None
    loaded = loaded.get('state_dict', loaded) if isinstance(loaded, dict) else loaded
    return {k: v.detach().float().numpy() for k, v in loaded.items()}
  raise ValueError(f'weights: {path!r} must end in .npz or .pth')


def import_state_dict(model: AlexNet, path: str | os.PathLike) -> AlexNet:
  """Loads weights written by `export_state_dict` (or torchvision's, for `owt`)."""
  return load_state_dict(model, read_state_dict(path))
