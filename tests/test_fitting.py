"""Fitting a config to your own images (data.fit): classes, the evaluation split, the batch
and one rule for the image size, the same for a folder and for the directory prepare writes
from it."""
import shutil

import pytest

from alexnet_jax import datasets
from alexnet_jax import fitting
from alexnet_jax import prepare
from alexnet_jax import sharding
import helpers
import item_folder


def own_images(path, recipe='small', **overrides):
  return helpers.set_fields(helpers.load_config(f'folder.py:{recipe}',
                                                f'data.path={path}'), overrides)


@pytest.fixture(scope='module')
def mesh():
  return sharding.make_mesh(2)


def test_fit_takes_classes_sizes_split_and_batch_from_a_folder(tmp_path, mesh, photo_folder):
  """Small images keep their side (the crop keeps the recipe's ratio 32/36, enlarged to what
  the net reads if need be); large ones are read by the paper's rule; classes, the
  evaluation split and the batch come from the data."""
  item_folder.build(str(tmp_path / 'items'), train=20, test=10)
  fitted = fitting.fit(own_images(tmp_path / 'items'), mesh)
  assert fitted.model.num_classes == 10 and fitted.data.eval_split == 'test'
  assert (fitted.data.image_size, fitted.model.image_size) == (28, 25)
  assert fitted.batch_size == 20 and fitted.model.conv1_stride == 1  # 32 capped at 20.
  large = fitting.fit(own_images(photo_folder), mesh)
  assert large.model.num_classes == 3 and large.data.eval_split == 'validation'
  assert (large.data.image_size, large.model.image_size) == (256, 224)
  assert (large.model.conv1_kernel, large.model.conv1_stride) == (11, 4)  # The paper's.
  assert large.batch_size == 18
  # A full-size recipe keeps its geometry exactly (torchvision's padding 2, Caffe's 227).
  for recipe in ('paper', 'owt', 'caffe'):
    fitted = fitting.fit(own_images(photo_folder, recipe), mesh)
    plain = own_images(photo_folder, recipe)
    assert fitted.model.num_classes == 3 and fitted.data.image_size == plain.data.image_size
    assert {k: v for k, v in fitted.model.items() if k != 'num_classes'} == \
        {k: v for k, v in plain.model.items() if k != 'num_classes'}, recipe


def test_a_folder_and_its_prepared_forms_give_the_same_net(tmp_path, mesh):
  """64-pixel photos keep their size (64, crops of 57), from the folder, from what prepare
  stores by default (64, their own side) and from a directory prepared at 256 (read at 64):
  one net, one geometry, the same canvases."""
  folder = helpers.make_folder(tmp_path / 'photos', side=64, train=2, val=1)
  fitted = fitting.fit(own_images(folder), mesh)
  assert (fitted.data.image_size, fitted.model.image_size) == (64, 57)
  for size, stored in ((0, 64), (256, 256)):
    out = tmp_path / f'prepared{size}'
    meta = prepare.prepare('folder', str(folder), str(out), size=size, workers=1,
                           progress=False, fmt='raw')
    assert (meta['image_size'], meta['source_image_side']) == (stored, 64)
    from_prepared = fitting.fit(own_images(out), mesh)
    assert from_prepared.model.to_dict() == fitted.model.to_dict()
    assert from_prepared.data.to_dict() == fitted.data.to_dict() | {'path': str(out)}
    assert from_prepared.batch_size == fitted.batch_size
    source, _ = datasets.open_source(from_prepared.data, 'train')
    assert source[0][0].shape == (64, 64, 3)


def test_a_class_count_that_contradicts_the_data_is_refused(photo_folder, mesh):
  assert own_images(photo_folder).model.num_classes == 0  # The data's, once fitted.
  with pytest.raises(datasets.DataError, match=r"^model.num_classes: 5, but '.*' has 3 "
                     r"classes \(cat, coffee, space\); leave it out to take the data's$"):
    fitting.fit(own_images(photo_folder, **{'model.num_classes': 5}), mesh)
  assert fitting.fit(own_images(photo_folder, **{'model.num_classes': 3}),
                     mesh).model.num_classes == 3


def test_fit_keeps_the_evaluation_split_the_config_names(tmp_path, mesh):
  """A folder with val/ and test/: the named split is evaluated (`val` as the folder names
  it, too), the default one where none was named; a named split the folder lacks is one
  line, not a silent substitute."""
  root = helpers.make_folder(tmp_path / 'photos', side=40, train=2, val=1)
  shutil.copytree(root / 'val', root / 'test')
  fit = lambda **fields: fitting.fit(own_images(root, **fields), mesh)
  assert fit().data.eval_split == 'validation'
  assert fit(**{'data.eval_split': 'test'}).data.eval_split == 'test'
  assert fit(**{'data.eval_split': 'val'}).data.eval_split == 'validation'
  shutil.rmtree(root / 'val')
  assert fit().data.eval_split == 'test'  # The default split is missing: the data's own.
  with pytest.raises(datasets.DataError, match=r"^data.eval_split: '.*' has no split "
                     r"'validation2'; it has test, train$"):
    fit(**{'data.eval_split': 'validation2'})


@pytest.mark.parametrize('damage,message', [
    ('one_class', 'has one class \\(cat\\); a classifier needs two or more'),
    ('empty_class', "class folder '.*/train/coffee' holds no images"),
    ('no_eval_split', 'has no evaluation split: add validation/, val/ or test/ beside train/'),
])
def test_a_folder_that_cannot_be_learned_is_one_line(tmp_path, mesh, damage, message):
  root = helpers.make_folder(tmp_path / 'photos', side=40, train=2, val=1)
  if damage == 'one_class':
    for split in ('train', 'val'):
      for c in ('coffee', 'space'):
        shutil.rmtree(root / split / c)
  elif damage == 'empty_class':
    for f in (root / 'train' / 'coffee').iterdir():
      f.unlink()
  else:
    shutil.rmtree(root / 'val')
  with pytest.raises(datasets.DataError, match=message) as e:
    fitting.fit(own_images(root), mesh)
  assert '\n' not in str(e.value) and str(e.value).startswith('data.path: ')
