"""Decoding the files real datasets contain into 3-channel RGB, and the paper's resizing."""
from __future__ import annotations

import io

import numpy as np
from PIL import Image
from PIL import UnidentifiedImageError

# The most pixels a file may declare: comfortably above ImageNet's largest image (about 32M
# pixels), far below what would exhaust a machine (a 40,000 x 40,000 PNG of a few MB decodes
# to 4.8 GB). Checked on the header, before any pixel is decoded (data.max_image_pixels).
MAX_IMAGE_PIXELS = 100_000_000
Image.MAX_IMAGE_PIXELS = None  # PIL's own check (a warning, then an error at 2x): ours instead.


class BadImage(ValueError):
  """A file that is empty, truncated or not an image at all."""


def _to_rgb(im: Image.Image) -> Image.Image:
  if im.mode == 'RGB':
    return im
  if im.mode in ('I;16', 'I;16B', 'I;16L', 'I;16N', 'I'):
    # 16-bit greyscale: PIL's convert('RGB') would clip at 255; keep the top 8 bits.
    grey = (np.asarray(im, np.uint32) >> 8).clip(0, 255).astype(np.uint8)
    return Image.fromarray(np.repeat(grey[..., None], 3, axis=-1))
  if im.mode == 'F':
    a = np.asarray(im, np.float32)
    grey = (255 * (a - a.min()) / max(float(np.ptp(a)), 1e-12)).astype(np.uint8)
    return Image.fromarray(np.repeat(grey[..., None], 3, axis=-1))
  if im.mode in ('RGBA', 'LA', 'PA') or (im.mode == 'P' and 'transparency' in im.info):
    # Transparent pixels over white, as a viewer shows them.
    rgba = im.convert('RGBA')
    white = Image.new('RGBA', rgba.size, (255, 255, 255, 255))
    return Image.alpha_composite(white, rgba).convert('RGB')
  return im.convert('RGB')  # L, P, 1, CMYK (PIL undoes Adobe's inverted CMYK), YCbCr, ...


def open_rgb(data: bytes, *, draft_size: int | None = None,
             max_pixels: int = MAX_IMAGE_PIXELS) -> Image.Image:
  """Decodes any image file's bytes (whatever its extension says) into an RGB PIL image.

  `draft_size` lets the JPEG decoder downscale by a power of two while decoding, never
  below that size on the shorter side: much faster for large photos. A file whose header
  declares more than `max_pixels` is refused before anything is decoded.
  """
  if not data:
    raise BadImage('empty file')
  try:
    im = Image.open(io.BytesIO(data))
    w, h = im.size
    if w * h > max_pixels:
      raise BadImage(f'declares {w}x{h} pixels, more than the {max_pixels:,} allowed '
                     '(data.max_image_pixels)')
    if draft_size and im.format == 'JPEG':
      w, h = im.size
      scale = min(w, h) / draft_size
      if scale >= 2:
        im.draft('RGB', (int(w / scale), int(h / scale)))
    im.load()  # Raises on truncated data (PIL does not load truncated images by default).
    return _to_rgb(im)
  except BadImage:
    raise
  except UnidentifiedImageError:
    raise BadImage('not an image file') from None
  except (OSError, SyntaxError, ValueError, Image.DecompressionBombError) as e:
    raise BadImage(str(e) or type(e).__name__) from None


try:  # libjpeg-turbo without PIL's object overhead: about 2x faster for 256x256 JPEGs.
  import simplejpeg  # pylint: disable=g-import-not-at-top
except ImportError:  # pragma: no cover
  simplejpeg = None


def decode_prepared_jpeg(record) -> np.ndarray:
  """A JPEG that `prepare` wrote (baseline, RGB) -> (H, W, 3) uint8, the fast way.

  Same decoder settings as PIL's (accurate DCT, smooth upsampling), so the same pixels.
  """
  data = record.tobytes() if hasattr(record, 'tobytes') else bytes(record)
  if simplejpeg is not None:
    try:
      return simplejpeg.decode_jpeg(data, colorspace='RGB')
    except ValueError:
      pass  # Anything unusual: PIL's path below, which handles every kind of file.
  return decode_rgb(data)


def decode_rgb(data: bytes) -> np.ndarray:
  """Any image file's bytes -> (H, W, 3) uint8."""
  return np.asarray(open_rgb(data))


def resize_and_center_crop(im: Image.Image, size: int) -> np.ndarray:
  """The paper's preprocessing: shorter side to `size`, then the central size x size."""
  w, h = im.size
  side = min(w, h)  # The central square of the original: resizing only it bounds memory
  left, top = (w - side) / 2, (h - side) / 2  # even for extreme aspect ratios.
  if side == size:
    return np.asarray(im.crop((int(left), int(top), int(left) + size, int(top) + size)))
  return np.asarray(im.resize((size, size), Image.BILINEAR,
                              box=(left, top, left + side, top + side)))


def array_resized(image: np.ndarray, size: int) -> np.ndarray:
  """A decoded (H, W), (H, W, 1) or (H, W, 3+) uint8 array -> (size, size, 3), as above."""
  if image.ndim == 2 or image.shape[-1] == 1:
    image = np.repeat(image.reshape(image.shape[:2] + (1,)), 3, axis=-1)
  return resize_and_center_crop(Image.fromarray(np.ascontiguousarray(image[..., :3])), size)


def load_resized(data: bytes, size: int, max_pixels: int = MAX_IMAGE_PIXELS) -> np.ndarray:
  """File bytes -> (size, size, 3) uint8: decode, shorter side to size, center crop."""
  return resize_and_center_crop(open_rgb(data, draft_size=size, max_pixels=max_pixels), size)


def encode_jpeg(image: np.ndarray, quality: int) -> bytes:
  buf = io.BytesIO()
  Image.fromarray(image).save(buf, 'JPEG', quality=quality)
  return buf.getvalue()
