"""Decoding the files real datasets contain into RGB, and the paper's resizing (s4)."""
import numpy as np
import pytest
from PIL import Image

from alexnet_jax import images
from helpers import cmyk_jpeg, grey16_png, jpeg, photos, png


def test_every_kind_of_file_comes_out_as_rgb():
  photo = photos()['chelsea']
  grey = np.asarray(Image.fromarray(photo).convert('L'))
  rgba = np.concatenate([photo, np.full(photo.shape[:2] + (1,), 255, np.uint8)], -1)
  for name, data in [('rgb jpeg', jpeg(photo)), ('grey jpeg', jpeg(grey)),
                     ('cmyk jpeg', cmyk_jpeg(photo)), ('rgba png', png(rgba)),
                     ('16-bit png', grey16_png(photo)), ('png named .JPEG', png(photo))]:
    out = images.decode_rgb(data)
    assert out.shape == photo.shape[:2] + (3,) and out.dtype == np.uint8, name
    # Colours survive: within JPEG error of the original (greys against its luminance).
    target = photo if name in ('rgb jpeg', 'cmyk jpeg', 'rgba png', 'png named .JPEG') else \
        np.repeat(grey[..., None], 3, -1)
    assert np.abs(out.astype(float) - target).mean() < 8, name


@pytest.mark.parametrize('data,why', [(b'', 'empty'), (b'GIF89a not really', 'not an image file'),
                                      (None, 'truncated')])
def test_bad_files_raise_bad_image(data, why):
  if data is None:
    data = jpeg(photos()['coffee'])[:3000]
  with pytest.raises(images.BadImage, match=why):
    images.decode_rgb(data)


def test_resize_shorter_side_and_center_crop():
  photo = photos()['coffee']  # 400 x 600
  out = images.load_resized(jpeg(photo), 256)
  assert out.shape == (256, 256, 3)
  want = np.asarray(Image.fromarray(photo).resize((384, 256), Image.BILINEAR))[:, 64:320]
  assert np.abs(out.astype(float) - want).mean() < 4
