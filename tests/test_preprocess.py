"""The preprocessing record: one function on host and device, no dead fields, and the owners'
pixels for imported weights, checked against torchvision's and pycaffe's pipelines written out
independently with PIL and torch on real photographs."""
import dataclasses
import io

import jax
import numpy as np
import pytest
import torch
from PIL import Image
from torch.nn import functional as F

import alexnet_jax
from alexnet_jax import inference
from alexnet_jax import input_pipeline
from alexnet_jax import predict
from alexnet_jax import preprocess
from alexnet_jax import weights
import helpers
import torch_reference


def small_records():
  """One record of each kind on 40x40 canvases and 32 crops, every number not trivial."""
  mean_image = np.random.default_rng(0).uniform(0, 255, (40, 40, 3)).astype(np.float32)
  return {
      'data': preprocess.Preprocessing(size=40, crop=32, mean=preprocess.center_crop(
          mean_image, 32), std=(2.0,), lighting_rescale=True),
      'torchvision': preprocess.torchvision(crop=32, size=40),
      'caffe': preprocess.caffe(mean_image, crop=32, size=40)}


@pytest.mark.parametrize('kind', ['data', 'torchvision', 'caffe'])
def test_the_jitted_step_normalizes_as_the_host_does(kind):
  record = small_records()[kind]
  assert record.kind == kind
  rng = np.random.default_rng(1)
  crops = rng.integers(0, 256, (4, 32, 32, 3), dtype=np.uint8)
  flip = np.asarray([True, False, True, False])
  light = np.stack([record.lighting(rng) for _ in range(4)])
  offsets = rng.integers(0, 40 - 32 + 1, (4, 2)).astype(np.int32)
  for train in (False, True):
    host = preprocess.normalize(crops, record, record.arrays(), lighting=light, flip=flip,
                                offsets=offsets, train=train)
    device = jax.jit(lambda x, l, f, o, a, train=train: preprocess.normalize(
        x, record, a, lighting=l, flip=f, offsets=o, train=train))(
            crops, light, flip, offsets, record.arrays())
    np.testing.assert_allclose(np.asarray(device), host, rtol=1e-6, atol=1e-6)
  # The host's numbers by hand: reflect, add the lighting, scale, reorder, centre, divide.
  x = np.where(flip[:, None, None, None], crops[:, :, ::-1], crops) + light[:, None, None]
  x = x / 255 if record.unit_scale else x
  x = x[..., ::-1] if record.channels == 'BGR' else x
  mean = np.asarray(record.mean)
  if kind == 'caffe':  # The whole mean image: the pixels under each crop, reflected with it.
    mean = np.stack([mean[t:t + 32, l:l + 32][:, ::-1] if f else mean[t:t + 32, l:l + 32]
                     for (t, l), f in zip(offsets, flip)])
  want = (x - mean) / np.asarray(record.std) / record.train_divide()
  np.testing.assert_allclose(host, want, rtol=1e-5, atol=1e-5)
  # Without lighting offsets (data.lighting_end_epoch passed) training crops are not divided.
  plain = (np.where(flip[:, None, None, None], crops[:, :, ::-1], crops).astype(np.float32)
           / (255 if record.unit_scale else 1))
  plain = plain[..., ::-1] if record.channels == 'BGR' else plain
  np.testing.assert_allclose(
      preprocess.normalize(crops, record, record.arrays(), flip=flip, offsets=offsets,
                           train=True),
      (plain - mean) / np.asarray(record.std), rtol=1e-5, atol=1e-5)


def test_caffe_subtracts_the_mean_image_under_each_crop_as_its_data_layer_does():
  """Caffe's DataTransformer: out[h, w] = datum[h_off + h, w_off + w] - mean[h_off + h,
  w_off + w], written mirrored when mirroring. So a crop taken anywhere (a training crop, or
  one of the 10 views) is the same crop of the canvas minus the whole mean image."""
  record = small_records()['caffe']
  rng = np.random.default_rng(2)
  canvases = rng.integers(0, 256, (3, 40, 40, 3), dtype=np.uint8)
  whole = canvases[..., ::-1].astype(np.float32) - np.asarray(record.mean)  # BGR - mean.
  offsets = np.asarray([[0, 8], [5, 3], [8, 0]], np.int32)
  flip = np.asarray([False, True, True])
  crops = np.stack([c[t:t + 32, l:l + 32] for c, (t, l) in zip(canvases, offsets)])
  want = np.stack([w[t:t + 32, l:l + 32][:, ::-1] if f else w[t:t + 32, l:l + 32]
                   for w, (t, l), f in zip(whole, offsets, flip)])
  got = jax.jit(lambda x, f, o, a: preprocess.normalize(x, record, a, flip=f, offsets=o))(
      crops, flip, offsets, record.arrays())
  np.testing.assert_allclose(np.asarray(got), want, rtol=1e-5, atol=1e-4)
  # The 10 views: each the view of (canvas - mean), as if normalized at its own position.
  views = preprocess.ten_views(whole, 32)
  firsts = preprocess.ten_views(canvases, 32)[:, :5]
  starts = np.asarray([[0, 0], [0, 8], [8, 0], [8, 8], [4, 4]], np.int32)
  for v in range(10):
    one = preprocess.normalize(firsts[:, v % 5], record, record.arrays(),
                               flip=np.full(3, v >= 5), offsets=np.tile(starts[v % 5], (3, 1)))
    np.testing.assert_allclose(one, views[:, v], rtol=1e-5, atol=1e-4)


# Another valid value for every field of the record.
CHANGED = {
    'resize': 'warp', 'size': 48, 'interpolation': 'bicubic', 'antialias': False, 'crop': 28,
    'channels': 'BGR', 'unit_scale': True, 'mean': (10.0, 20.0, 30.0), 'std': (2.0, 3.0, 4.0),
    'flip': False, 'lighting_std': 0.3, 'eigval': (100.0, 400.0, 900.0),
    'eigvec': tuple(tuple(row[::-1]) for row in preprocess.IMAGENET_EIGVEC),
    'lighting_rescale': True}


def inputs(record, photo: bytes):
  """What the net gets from a file: the evaluation input and eight training inputs."""
  canvas = record.load(photo)
  evaluation = preprocess.normalize(preprocess.center_crop(canvas, record.crop)[None], record,
                                    record.arrays())
  augment = input_pipeline.Augment(record)
  training = []
  for seed in range(8):
    crop, flip, light, offset = augment(canvas, np.random.default_rng(seed))
    training.append(preprocess.normalize(crop[None], record, record.arrays(),
                                         lighting=light[None], flip=flip[None],
                                         offsets=offset[None], train=True))
  return evaluation, np.concatenate(training)


def test_every_field_of_the_record_changes_the_input():
  assert set(CHANGED) == {f.name for f in dataclasses.fields(preprocess.Preprocessing)}
  photo = helpers.jpeg(helpers.photos()['chelsea'])  # 451x300: resize rules differ.
  base = preprocess.Preprocessing(size=40, crop=32)
  before = inputs(base, photo)
  for field, value in CHANGED.items():
    after = inputs(dataclasses.replace(base, **{field: value}), photo)
    same = all(a.shape == b.shape and np.allclose(a, b) for a, b in zip(before, after))
    assert not same, f'{field} changes nothing'


def test_the_record_round_trips_through_json_with_its_mean_image():
  for record in small_records().values():
    again = preprocess.Preprocessing.from_json(record.to_json())
    assert again == record
    np.testing.assert_array_equal(np.asarray(again.mean), np.asarray(record.mean))
  with pytest.raises(ValueError, match=r"data.preprocessing: crop 300 does not fit"):
    preprocess.Preprocessing(crop=300)


# ---- The owners' pixels ----------------------------------------------------------------------

# Four photos (a batch the 4 devices split): 451x300, 640x427 (torchvision's CenterCrop rounds
# a .5 offset), coffee turned to portrait, and a square one.
def owner_photos():
  p = helpers.photos()
  return [helpers.jpeg(p['chelsea']), helpers.jpeg(p['rocket']),
          helpers.jpeg(np.ascontiguousarray(np.rot90(p['coffee']))), helpers.jpeg(p['astronaut'])]


def torchvision_transforms(photo: bytes) -> torch.Tensor:
  """Resize(256), CenterCrop(224), ToTensor(), Normalize(ImageNet) as torchvision's transforms
  compute them on a PIL image (torchvision.transforms.functional, PIL backend)."""
  image = Image.open(io.BytesIO(photo)).convert('RGB')
  w, h = image.size
  short, long = min(w, h), max(w, h)
  new_short, new_long = 256, int(256 * long / short)
  image = image.resize((new_short, new_long) if w <= h else (new_long, new_short),
                       Image.BILINEAR)  # PIL's filters antialias: torchvision's PIL path.
  w, h = image.size
  top, left = int(round((h - 224) / 2.0)), int(round((w - 224) / 2.0))
  image = image.crop((left, top, left + 224, top + 224))
  x = torch.from_numpy(np.array(image)).permute(2, 0, 1).contiguous().float().div(255)
  mean = torch.tensor([0.485, 0.456, 0.406])[:, None, None]
  std = torch.tensor([0.229, 0.224, 0.225])[:, None, None]
  return (x - mean) / std


def same_inputs(a, b):
  """The records turn files into the same evaluation inputs (training fields aside)."""
  training = ('flip', 'lighting_std', 'eigval', 'eigvec', 'lighting_rescale')
  return a == dataclasses.replace(b, **{f: getattr(a, f) for f in training})


def assert_same_logits(got, want):
  assert np.abs(got - want).max() <= 1e-4 * np.abs(want).max()
  for g, w in zip(got, want):
    np.testing.assert_array_equal(np.argsort(-g)[:5], np.argsort(-w)[:5])


def test_torchvision_weights_see_torchvisions_pixels(tmp_path):
  """owt's weights in torchvision's file layout, loaded with the owt recipe: our pipeline and
  net give the logits a torchvision net gives on torchvision's transforms of the photo."""
  config = helpers.load_config('paper.py:owt')
  net = alexnet_jax.create_model(config.model, seed=5)
  path = tmp_path / 'alexnet.pth'
  weights.export_state_dict(net, path)
  trained = inference.load(str(path), config=config)  # No record beside: the recipe's.
  record = trained.preprocessing
  assert same_inputs(record, preprocess.torchvision())
  assert record.summary().startswith('torchvision: ')
  reference = torch_reference.TorchvisionAlexNet().eval()
  reference.load_state_dict(torch.load(path), strict=True)  # torchvision's keys exactly.

  photos = owner_photos()
  want_inputs = torch.stack([torchvision_transforms(p) for p in photos])
  crops = np.stack([preprocess.center_crop(record.load(p), 224) for p in photos])
  ours = preprocess.normalize(crops, record, record.arrays())
  np.testing.assert_allclose(ours, want_inputs.permute(0, 2, 3, 1).numpy(), atol=1e-5)
  with torch.no_grad():
    want = reference(want_inputs).numpy()
  assert_same_logits(np.asarray(trained.net(ours)), want)
  np.testing.assert_allclose(trained.probabilities(1)(crops),
                             torch.softmax(torch.from_numpy(want), -1).numpy(), atol=1e-6)
  # predict names ImageNet's classes, as torchvision users know them, not label numbers.
  assert trained.classes[281] == 'n02123045' and trained.class_names()[281] == 'tabby'
  (tmp_path / 'photo.jpg').write_bytes(photos[0])
  line, = predict.predict(trained, [str(tmp_path / 'photo.jpg')], top=5)
  best = np.argsort(-want[0])[:5]
  assert line.startswith(f'{tmp_path}/photo.jpg: ' + ', '.join(
      f'{inference.imagenet_names()[k]} ' for k in best[:1]))
  assert [n.rsplit(' ', 1)[0] for n in line.split(': ', 1)[1].split(', ')] == [
      inference.imagenet_names()[k] for k in best]
  # A file torchvision's module wrote loads back to the same parameters.
  want_params = weights.state_dict(net)
  torch.save(reference.state_dict(), tmp_path / 'torchvision.pth')
  again = weights.state_dict(weights.import_state_dict(net, tmp_path / 'torchvision.pth'))
  for key, value in want_params.items():
    np.testing.assert_array_equal(again[key], value, err_msg=key)


def caffe_stored_image(photo: bytes) -> np.ndarray:
  """What Caffe's `convert_imageset --resize_height=256 --resize_width=256` stores: OpenCV's
  bilinear resize (half-pixel centres, no antialiasing), rounded to uint8, here with torch."""
  x = torch.from_numpy(np.array(Image.open(io.BytesIO(photo)).convert('RGB'), np.float32))
  x = F.interpolate(x.permute(2, 0, 1)[None], size=(256, 256), mode='bilinear',
                    align_corners=False, antialias=False)
  return x[0].permute(1, 2, 0).round().clamp(0, 255).to(torch.uint8).numpy()


def pycaffe_transformer(image_rgb01: np.ndarray, mean_bgr_chw: np.ndarray) -> np.ndarray:
  """caffe.io.Transformer.preprocess with transpose (2, 0, 1), channel swap (2, 1, 0), raw
  scale 255 and the mean, on an image as caffe.io.load_image gives it (RGB floats in [0, 1])."""
  x = image_rgb01.astype(np.float32).transpose(2, 0, 1)
  x = x[(2, 1, 0), :, :]
  x *= 255.0
  return x - mean_bgr_chw


def test_caffe_weights_see_caffes_pixels(tmp_path):
  """The caffe recipe's weights in Caffe's blob layout (BGR conv1 input), with bvlc_alexnet's
  kind of mean image saved beside them: our pipeline gives the logits of Caffe's."""
  config = helpers.load_config('paper.py:caffe')
  net = alexnet_jax.create_model(config.model, seed=6)
  yy, xx = np.mgrid[:256, :256]
  mean_bgr = np.stack([104 + 10 * np.sin(yy / 40), 117 + xx / 50, 123 - yy / 60], -1)
  path = tmp_path / 'bvlc_alexnet.npz'
  weights.export_state_dict(net, path, preprocessing=preprocess.caffe(mean_bgr))
  trained = inference.load(str(path), config=config)
  record = trained.preprocessing
  assert record.kind == 'caffe' and record.crop == 227 and not record.antialias

  photos = owner_photos()
  crops = [caffe_stored_image(p)[14:241, 14:241] for p in photos]  # The data layer's crop.
  mean_chw = mean_bgr.transpose(2, 0, 1)[:, 14:241, 14:241].astype(np.float32)
  want_inputs = np.stack([pycaffe_transformer(c / 255.0, mean_chw) for c in crops])
  ours_u8 = np.stack([preprocess.center_crop(record.load(p), 227) for p in photos])
  # One pixel may round the other way (float sums in another order): inputs equal within 1.
  assert np.abs(ours_u8.astype(int) - np.stack(crops)).max() <= 1
  ours = preprocess.normalize(ours_u8, record, record.arrays())
  spec = alexnet_jax.ModelSpec.from_config(config.model)
  want = torch_reference.reference_logits(spec, weights.state_dict(net),
                                          want_inputs.transpose(0, 2, 3, 1))
  assert_same_logits(np.asarray(trained.net(ours)), want)
  # Without the record beside it, the recipe's: Caffe's per-channel mean.
  (tmp_path / 'bvlc_alexnet.preprocessing.json').unlink()
  assert inference.load(str(path), config=config).preprocessing.mean == \
      preprocess.CAFFE_MEAN_BGR
