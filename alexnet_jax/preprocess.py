"""How an image becomes the network's input: one `Preprocessing` record, and the functions that
apply it.

The record says how a file is resized into the canvas the crops come from, the crop size,
the channel order, the scaling, the mean and the standard deviation, and the training-time
augmentation (docs/paper.md s4, s6). Training, evaluation (1 and 10 views), predict, features
and transfer all take it from here, and it travels with the model: in every checkpoint, and
beside every exported weights file as JSON. Three kinds:

  data         the paper's (and this project's recipes'): the shorter side to 256 and the
               central square (what `prepare` stores), the training set's mean image or
               per-channel mean, 0-255 units divided by a scalar (1 for the paper).
  torchvision  the shorter side to 256 with PIL's bilinear filter (antialiased when it
               shrinks), the centre 224 crop, pixels / 255, then (x - mean) / std per channel
               with ImageNet's (0.485, 0.456, 0.406) and (0.229, 0.224, 0.225).
  caffe        resized to 256x256 (aspect not kept; bilinear without antialiasing, as OpenCV
               stored Caffe's training images), BGR, 0-255, minus the 256x256 mean image
               (its centre crop) or the per-channel (104, 117, 123), 227 crops.

`normalize` is the one function from uint8 pixels to inputs: numpy on the host, jax.numpy
inside the jitted steps.
"""
from __future__ import annotations

import base64
import dataclasses
import json
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from PIL import Image

from alexnet_jax import images

RESIZE_RULES = ('square', 'shorter_side', 'warp')
KINDS = ('data', 'torchvision', 'caffe')
INTERPOLATIONS = {'bilinear': Image.BILINEAR, 'bicubic': Image.BICUBIC}
# ImageNet's statistics as torchvision normalizes them (pixels / 255).
TORCHVISION_MEAN = (0.485, 0.456, 0.406)
TORCHVISION_STD = (0.229, 0.224, 0.225)
CAFFE_MEAN_BGR = (104.0, 117.0, 123.0)  # bvlc_alexnet's per-channel mean, when no image.
# ImageNet's RGB statistics in 0-255 units (docs/paper.md s4): the code's per-axis lighting scales
# (square roots of the covariance's eigenvalues) and eigenvectors (columns).
IMAGENET_EIGVAL = (19.72**2, 37.09**2, 121.78**2)
IMAGENET_EIGVEC = ((0.4180, -0.7126, -0.5635),
                   (-0.8170, -0.0235, -0.5762),
                   (0.3973, 0.7012, -0.5920))
IMAGENET_MEAN_RGB = (123.68, 116.78, 103.94)
IMAGENET_STD_RGB = (58.39, 57.12, 57.38)


@dataclasses.dataclass(frozen=True)
class Preprocessing:
  """Everything between an image file and the network's input (see the module doc)."""
  # The canvas crops come from: 'square' (shorter side to `size`, the central square),
  # 'shorter_side' (torchvision's Resize(size): aspect kept; the canvas is the size x size
  # window whose centre crop is torchvision's CenterCrop), 'warp' (size x size, Caffe's).
  resize: str = 'square'
  size: int = 256
  interpolation: str = 'bilinear'  # PIL's filter.
  antialias: bool = True  # PIL's filters widen when shrinking; False samples 2x2 neighbours.
  crop: int = 224  # The net's input side.
  channels: str = 'RGB'  # 'BGR': the order Caffe's weights expect.
  unit_scale: bool = False  # Divide pixels by 255 first (torchvision's ToTensor).
  # Subtracted, in the units and channel order above: a per-channel (3,) mean; a per-pixel
  # image (crop, crop, 3), the centre crop of the training set's mean image, subtracted from
  # every crop (cuda-convnet); or the whole (size, size, 3) mean image, whose pixels under
  # each crop are subtracted from it, wherever it was taken (Caffe's data layer).
  mean: Any = (0.0, 0.0, 0.0)
  std: tuple[float, ...] = (1.0,)  # Divides: per channel (3,) or one scalar (1,).
  # Training only (s4).
  flip: bool = True  # Random horizontal reflections.
  lighting_std: float = 0.1  # PCA lighting, alpha ~ N(0, lighting_std).
  eigval: tuple[float, ...] = IMAGENET_EIGVAL  # The RGB covariance's eigenvalues (0-255).
  eigvec: tuple[tuple[float, ...], ...] = IMAGENET_EIGVEC  # Its eigenvectors (columns).
  lighting_rescale: bool = False  # Noisy training crops also divided by 1 + lighting_std.

  def __post_init__(self):
    def fail(field, why):
      raise ValueError(f'data.preprocessing: {field} {why}')
    if self.resize not in RESIZE_RULES:
      fail('resize', f'must be one of {RESIZE_RULES}, got {self.resize!r}')
    if self.interpolation not in INTERPOLATIONS:
      fail('interpolation', f'must be one of {tuple(INTERPOLATIONS)}')
    if self.channels not in ('RGB', 'BGR'):
      fail('channels', f"must be 'RGB' or 'BGR', got {self.channels!r}")
    if not 0 < self.crop <= self.size:
      fail('crop', f'{self.crop} does not fit in the {self.size}x{self.size} canvas')
    if np.shape(self.mean) not in ((3,), (self.crop, self.crop, 3), (self.size, self.size, 3)):
      fail('mean', f'must be (3,), ({self.crop}, {self.crop}, 3) or ({self.size}, {self.size}, '
           f'3), got {np.shape(self.mean)}')
    if len(self.std) not in (1, 3) or min(self.std) <= 0:
      fail('std', f'must be 1 or 3 positive values, got {self.std}')
    if self.lighting_std < 0:
      fail('lighting_std', f'must be >= 0, got {self.lighting_std}')

  def __hash__(self):  # The mean image is an array: hash its bytes.
    return hash(self.to_json())

  def __eq__(self, other):
    return isinstance(other, Preprocessing) and self.to_json() == other.to_json()

  @property
  def kind(self) -> str:
    """Which of KINDS it is, for reports: the owners' two by their defining numbers."""
    if self.resize == 'shorter_side' and self.unit_scale and \
        tuple(np.ravel(self.mean)) == TORCHVISION_MEAN and self.std == TORCHVISION_STD:
      return 'torchvision'
    if self.resize == 'warp' and self.channels == 'BGR' and not self.unit_scale:
      return 'caffe'
    return 'data'

  def summary(self) -> str:
    """One line: what the record does, for reports."""
    resize = {'square': f'shorter side to {self.size}, central square',
              'shorter_side': f'shorter side to {self.size}',
              'warp': f'resized to {self.size}x{self.size}'}[self.resize]
    mean = (f'mean image {np.shape(self.mean)[0]}x{np.shape(self.mean)[1]}'
            if np.ndim(self.mean) == 3 else f'mean {tuple(round(v, 4) for v in self.mean)}')
    std = f'std {tuple(round(v, 4) for v in self.std)}' if len(self.std) == 3 else \
        f'divided by {self.std[0]:g}'
    return (f'{self.kind}: {resize} ({self.interpolation}'
            f'{", antialiased" if self.antialias else ""}), centre {self.crop}, '
            f'{"/ 255, " if self.unit_scale else ""}{self.channels}, {mean}, {std}')

  # ---- Files to canvases ---------------------------------------------------------------------

  def canvas(self, image: Image.Image) -> np.ndarray:
    """A decoded image -> the (size, size, 3) uint8 RGB canvas its crops come from."""
    w, h = image.size
    s = self.size
    if self.resize == 'warp':
      return self._resized(image, (s, s))
    if self.resize == 'square':
      return images.resize_and_center_crop(image, s) if self.antialias and \
          self.interpolation == 'bilinear' else self._square(image)
    # torchvision's Resize(s): the shorter side to s, the longer int(s * long / short) ...
    size = (s, int(s * h / w)) if w <= h else (int(s * w / h), s)
    resized = self._resized(image, size)
    # ... and its CenterCrop(crop) rounds the offsets: the canvas is placed so that its
    # centre crop (offset (s - crop) // 2) is exactly that crop.
    top, left = (int(round((n - self.crop) / 2)) - (s - self.crop) // 2
                 for n in (size[1], size[0]))
    return resized[top:top + s, left:left + s]

  def load(self, data: bytes, max_pixels: int = images.MAX_IMAGE_PIXELS) -> np.ndarray:
    """An image file's bytes -> its canvas (images.BadImage if it cannot be read, or
    declares more than `max_pixels`). For the square canvas, as `prepare` stores it, large
    JPEGs are decoded at a reduced size first (never below `size`); the owners' kinds decode
    in full, as their pipelines do."""
    draft = self.size if self.resize == 'square' else None
    return self.canvas(images.open_rgb(data, draft_size=draft, max_pixels=max_pixels))

  def _square(self, image: Image.Image) -> np.ndarray:
    w, h = image.size
    side = min(w, h)
    left, top = (w - side) // 2, (h - side) // 2
    return self._resized(image.crop((left, top, left + side, top + side)), (self.size,) * 2)

  def _resized(self, image: Image.Image, size: tuple[int, int]) -> np.ndarray:
    if image.size == size:
      return np.asarray(image)
    if self.antialias:
      return np.asarray(image.resize(size, INTERPOLATIONS[self.interpolation]))
    return _resize_without_antialias(np.asarray(image), size)

  def with_inputs_of(self, other: Preprocessing) -> Preprocessing:
    """This record's canvas and augmentation with `other`'s pixel scaling, channel order,
    mean and std: what a net trained on `other` expects of its inputs (transfer learning)."""
    if np.ndim(other.mean) == 3 and np.shape(other.mean)[0] not in (self.crop, self.size):
      raise ValueError(f'preprocessing: a {np.shape(other.mean)[0]}px mean image cannot centre '
                       f'{self.crop}px crops')
    return dataclasses.replace(self, unit_scale=other.unit_scale, channels=other.channels,
                               mean=other.mean, std=other.std)

  # ---- Canvases to inputs --------------------------------------------------------------------

  def arrays(self) -> dict[str, np.ndarray]:
    """The record's numbers as float32 arrays: what the jitted steps take as arguments."""
    return {'mean': np.asarray(self.mean, np.float32), 'std': np.asarray(self.std, np.float32)}

  def train_divide(self) -> float:
    """What training crops are divided by besides std (s4: 1.1 for the code)."""
    return 1.0 + self.lighting_std if self.lighting_rescale and self.lighting_std > 0 else 1.0

  def lighting(self, rng: np.random.Generator) -> np.ndarray:
    """sum_i alpha_i * lambda_i * p_i, an RGB offset in 0-255 units (s4).

    lambda_i is the standard deviation along eigenvector p_i (the square root of the
    eigenvalue), as the code's per-axis scales are: the noise's covariance is then
    lighting_std^2 times the pixels' covariance.
    """
    alpha = rng.normal(0.0, self.lighting_std, 3)
    return (np.asarray(self.eigvec) @ (alpha * np.sqrt(self.eigval))).astype(np.float32)

  # ---- The record as JSON --------------------------------------------------------------------

  def to_dict(self) -> dict[str, Any]:
    d = dataclasses.asdict(self)
    if np.ndim(self.mean) == 1:
      d['mean'] = [float(v) for v in self.mean]
    else:
      mean = np.asarray(self.mean, np.float32)
      d['mean'] = {'shape': list(mean.shape), 'float32': base64.b64encode(mean.tobytes()).decode()}
    d['eigvec'] = [list(v) for v in self.eigvec]
    return d

  def to_json(self) -> str:
    return json.dumps(self.to_dict(), sort_keys=True)

  @classmethod
  def from_dict(cls, d: dict[str, Any]) -> Preprocessing:
    d = dict(d)
    unknown = set(d) - {f.name for f in dataclasses.fields(cls)}
    if unknown:
      raise ValueError(f'preprocessing: unknown fields {sorted(unknown)}')
    mean = d.get('mean', (0.0, 0.0, 0.0))
    if isinstance(mean, dict):
      mean = np.frombuffer(base64.b64decode(mean['float32']), np.float32).reshape(mean['shape'])
    d['mean'] = mean if isinstance(mean, np.ndarray) else tuple(mean)
    for k in ('std', 'eigval'):
      if k in d:
        d[k] = tuple(d[k])
    if 'eigvec' in d:
      d['eigvec'] = tuple(tuple(v) for v in d['eigvec'])
    return cls(**d)

  @classmethod
  def from_json(cls, text: str) -> Preprocessing:
    return cls.from_dict(json.loads(text))


def normalize(images_u8, preprocessing: Preprocessing, arrays, *, lighting=None, flip=None,
              offsets=None, train: bool = False):
  """uint8 RGB crops (B, c, c, 3) -> the net's float32 input, as `preprocessing` says.

  Reflects where `flip`, adds the lighting offset (0-255 RGB), scales to [0, 1] if
  unit_scale, reorders the channels, subtracts the mean, divides by std (and, for training
  crops given lighting offsets, by 1 + lighting_std when the record says so). `arrays` is
  `preprocessing.arrays()` (device arrays inside jit). A whole mean image larger than the
  crops is subtracted at each crop's (top, left) in `offsets` (B, 2) (default: the centre),
  reflected with it. jax.numpy inside jit, numpy on the host: the same arithmetic in the
  same order. Whole canvases with a mean image their size are normalized as they are.
  """
  xp = jnp if isinstance(images_u8, jax.Array) else np
  if flip is not None:
    images_u8 = xp.where(flip[:, None, None, None], images_u8[:, :, ::-1], images_u8)
  x = images_u8.astype(xp.float32)
  if lighting is not None:
    x = x + lighting[:, None, None, :]
  if preprocessing.unit_scale:
    x = x * xp.float32(1 / 255)
  if preprocessing.channels == 'BGR':
    x = x[..., ::-1]
  mean = arrays['mean']
  if mean.ndim == 3 and mean.shape[0] > x.shape[1]:
    mean = mean_under_crops(mean, x.shape[1], len(x), offsets, flip)
  x = (x - mean) / arrays['std']
  divide = preprocessing.train_divide() if train and lighting is not None else 1.0
  return x / xp.float32(divide) if divide != 1.0 else x


def mean_under_crops(mean, crop: int, count: int, offsets=None, flip=None):
  """(count, crop, crop, 3): the mean image's pixels under each crop at `offsets` (top, left)
  (default: the centre), reflected where the crop was."""
  xp = jnp if isinstance(mean, jax.Array) else np
  if offsets is None:
    c = (mean.shape[0] - crop) // 2
    offsets = xp.full((count, 2), c, xp.int32)
  if xp is jnp:
    patches = jax.vmap(lambda o: jax.lax.dynamic_slice(mean, (o[0], o[1], 0),
                                                      (crop, crop, mean.shape[2])))(offsets)
  else:
    patches = np.stack([mean[t:t + crop, l:l + crop] for t, l in np.asarray(offsets)])
  if flip is not None:
    patches = xp.where(flip[:, None, None, None], patches[:, :, ::-1], patches)
  return patches


def center_crop(image: np.ndarray, crop: int) -> np.ndarray:
  top, left = (image.shape[0] - crop) // 2, (image.shape[1] - crop) // 2
  return image[top:top + crop, left:left + crop]


def ten_views(images_NHWC, crop: int):
  """(B, S, S, 3) -> (B, 10, crop, crop, 3): the four corners and the center, then the
  same five reflected (paper s4). Works on numpy and jax arrays (inside jit too)."""
  s = images_NHWC.shape[1]
  c = (s - crop) // 2
  starts = ((0, 0), (0, s - crop), (s - crop, 0), (s - crop, s - crop), (c, c))
  xp = jnp if isinstance(images_NHWC, jax.Array) else np
  views = [images_NHWC[:, t:t + crop, l:l + crop] for t, l in starts]
  views += [v[:, :, ::-1] for v in views]
  return xp.stack(views, axis=1)


def _resize_without_antialias(image: np.ndarray, size: tuple[int, int]) -> np.ndarray:
  """Bilinear sampling at the output pixels' centres from the 2x2 nearest input pixels, with
  no prefilter (OpenCV's INTER_LINEAR): aliases when shrinking much."""
  h, w = image.shape[:2]
  out_w, out_h = size

  def coords(n_in, n_out):
    x = np.clip((np.arange(n_out) + 0.5) * n_in / n_out - 0.5, 0, n_in - 1)
    lo = np.floor(x).astype(int)
    return lo, np.minimum(lo + 1, n_in - 1), (x - lo)[:, None]

  y0, y1, fy = coords(h, out_h)
  x0, x1, fx = coords(w, out_w)
  img = image.astype(np.float32)
  rows = img[y0] * (1 - fy[..., None]) + img[y1] * fy[..., None]
  out = rows[:, x0] * (1 - fx) + rows[:, x1] * fx
  return np.clip(np.round(out), 0, 255).astype(np.uint8)


RESIZE_OF_KIND = {'data': 'square', 'torchvision': 'shorter_side', 'caffe': 'warp'}


def canvas_of(data) -> Preprocessing:
  """The canvas part alone of a config's `data` section: what a data source needs to turn
  files into canvases before the data's statistics are known."""
  if data.preprocessing not in KINDS:
    raise ValueError(f'data.preprocessing: must be one of {KINDS}, got {data.preprocessing!r}')
  return Preprocessing(resize=RESIZE_OF_KIND[data.preprocessing], size=data.image_size,
                       antialias=data.preprocessing != 'caffe', crop=min(data.image_size, 224))


def torchvision(crop: int = 224, size: int = 256, **training) -> Preprocessing:
  """torchvision's ImageNet evaluation: Resize(size) (PIL bilinear, antialiased), CenterCrop,
  ToTensor, Normalize with ImageNet's mean and std."""
  return Preprocessing(resize='shorter_side', size=size, crop=crop, unit_scale=True,
                       mean=TORCHVISION_MEAN, std=TORCHVISION_STD, **training)


def caffe(mean_image_bgr: np.ndarray | None = None, crop: int = 227, size: int = 256,
          **training) -> Preprocessing:
  """Caffe's bvlc_alexnet: images warped to size x size as its `convert_imageset --resize`
  stored them (OpenCV's bilinear, no antialiasing), BGR, 0-255, minus the mean image
  (`mean_image_bgr`, (size, size, 3) BGR, e.g. ilsvrc_2012_mean.npy transposed to HWC, at
  each crop's own position, as Caffe's data layer subtracts it) or, without one, the
  per-channel (104, 117, 123)."""
  mean = (np.asarray(mean_image_bgr, np.float32) if mean_image_bgr is not None
          else CAFFE_MEAN_BGR)
  return Preprocessing(resize='warp', size=size, antialias=False, crop=crop, channels='BGR',
                       mean=mean, **training)


def from_config(data, crop: int, stats) -> Preprocessing:
  """The record of a config's `data` section (its `preprocessing` kind) for crops of `crop`,
  the training set's `stats` (datasets.Stats) supplying the data's own numbers."""
  kind = data.preprocessing
  canvas_of(data)  # Checks the kind.
  training = dict(flip=data.flip, lighting_std=data.lighting_std, eigval=tuple(stats.eigval),
                  eigvec=tuple(map(tuple, stats.eigvec)),
                  lighting_rescale=data.lighting_rescale)
  if kind == 'torchvision':
    return torchvision(crop, data.image_size, **training)
  if kind == 'caffe':
    mean = stats.mean_image[..., ::-1] if stats.mean_image is not None else None
    return caffe(mean, crop, data.image_size, **training)
  if data.mean == 'image':
    if stats.mean_image is None:
      raise ValueError("data.mean: 'image' needs a per-pixel mean image (a prepared dataset, "
                       "an image folder or digits); use 'rgb'")
    mean = np.asarray(center_crop(stats.mean_image, crop), np.float32)
  elif data.mean == 'rgb':
    mean = tuple(float(v) for v in stats.mean_rgb)
  else:
    raise ValueError(f"data.mean: must be 'image' or 'rgb', got {data.mean!r}")
  return Preprocessing(size=data.image_size, crop=crop, mean=mean, std=(float(data.divide),),
                       **training)
