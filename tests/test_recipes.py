"""The named recipes: each net is its layer file's (per-layer kernels, feature sides and
parameter counts written out from the .cfg definitions in docs/paper.md s5.1), each recipe
changes only fields of the one schema, and run 145's 1.1 division applies to training only."""
import re

import jax
import numpy as np
import pytest
from flax import nnx

import alexnet_jax
from alexnet_jax import config as config_lib
from alexnet_jax import input_pipeline
from alexnet_jax import model
from alexnet_jax import preprocess
from alexnet_jax import recipes
from alexnet_jax import sharding
import helpers
from helpers import data_config

RUN_145 = {  # layer: (stacks, kernel per tower)
    'conv1': (2, (11, 11, 3, 48)), 'conv2': (2, (5, 5, 48, 128)),
    'conv3': (2, (3, 3, 256, 192)), 'conv4': (2, (3, 3, 192, 192)),
    'conv5': (2, (3, 3, 192, 128)), 'fc6': (2, (9216, 2048)), 'fc7': (2, (4096, 2048)),
    'fc8': (1, (4096, 1000))}
SIDES_145 = (55, 27, 27, 13, 13, 13, 13, 6)  # conv1 pool1 conv2 pool2 conv3 conv4 conv5 pool5
LAYER_FILES = {
    'cuda_convnet': ('layers-145.cfg', RUN_145, SIDES_145, 60_965_224),
    'no_lrn': ('layers-148.cfg', RUN_145, SIDES_145, 60_965_224),
    'no_overlap': ('layers-147.cfg', RUN_145, (55, 28, 26, 13, 13, 13, 11, 6), 60_965_224),
    'one_tower': ('layers-145-half.cfg', {
        'conv1': (1, (11, 11, 3, 48)), 'conv2': (1, (5, 5, 48, 128)),
        'conv3': (1, (3, 3, 128, 192)), 'conv4': (1, (3, 3, 192, 192)),
        'conv5': (1, (3, 3, 192, 256)), 'fc6': (1, (9216, 4096)), 'fc7': (1, (4096, 4096)),
        'fc8': (1, (4096, 1000))}, SIDES_145, 59_798_312),
    'no_cross_tower': ('layers-150.cfg', {
        **RUN_145, 'conv2': (2, (5, 5, 48, 160)), 'conv3': (2, (3, 3, 160, 192)),
        'fc6': (2, (4608, 4096)), 'fc7': (2, (4096, 2048))}, SIDES_145, 60_714_408),
}
SIDE_NAMES = ('conv1', 'pool1', 'conv2', 'pool2', 'conv3', 'conv4', 'conv5', 'pool5')


@pytest.mark.parametrize('name', sorted(LAYER_FILES))
def test_the_ablation_nets_are_their_layer_files(name):
  layer_file, kernels, sides, params = LAYER_FILES[name]
  recipe = recipes.get(name)
  assert layer_file in recipe.source and recipe.params == params
  spec = alexnet_jax.ModelSpec.from_config(recipes.model_config(name))
  assert {l: (spec.stacks(l), spec.kernel_shape(l)) for l in spec.layers} == kernels
  sizes = spec.feature_sizes()
  assert tuple(sizes[n] for n in SIDE_NAMES) == sides
  assert spec.param_count() == params
  # All of them in cuda-convnet's style (s5.1), as run 145.
  assert spec.lrn1_before_relu and spec.weight_std[2:5] == (0.03,) * 3
  assert spec.extra_norm2 == (name != 'no_lrn') and spec.lrn == (name != 'no_lrn')


@pytest.mark.parametrize('name', sorted(recipes.RECIPES))
def test_every_recipe_builds_with_its_parameter_count(name):
  recipe = recipes.get(name)
  config = recipes.config(name)
  assert config.recipe == name and recipe.summary and recipe.source
  spec = alexnet_jax.ModelSpec.from_config(config.model)
  mesh = sharding.make_mesh(spec.towers)
  net = nnx.eval_shape(lambda: model.AlexNet(spec, mesh=mesh, key=jax.random.key(0)))
  built = sum(p.size for p in jax.tree.leaves(nnx.state(net, nnx.Param)))
  assert built == spec.param_count() == recipe.params
  if recipe.published:
    assert recipe.published.versus in recipes.RECIPES


def test_a_recipe_changes_only_fields_of_the_schema():
  base = config_lib.base_config()
  for recipe in recipes.RECIPES.values():
    for name in recipe.changes:
      *sections, field = name.split('.')
      target = base
      for section in sections:
        target = target[section]
      assert field in target, (recipe.name, name)
  bad = recipes.Recipe('bad', '', '', 0, {'model.lrn_sizee': 3})
  with pytest.raises(KeyError, match="no field 'model.lrn_sizee'"):
    bad.apply(config_lib.base_config())


def test_an_unknown_recipe_names_the_closest():
  with pytest.raises(ValueError, match="unknown recipe 'cuda_convent' \\(did you mean "
                                       "'cuda_convnet'\\?\\)") as e:
    recipes.get('cuda_convent')
  assert '\n' not in str(e.value)


def test_the_list_names_every_recipe_with_its_source_and_size():
  table = recipes.table()
  for r in recipes.RECIPES.values():
    assert f'| {r.name} | {r.summary} | {r.source} | {r.params:,} |' in table
  # Each published figure with its source and data: one tower's is an ILSVRC-2010 figure.
  one_tower = next(line for line in table.splitlines() if line.startswith('| one_tower |'))
  assert one_tower.endswith("| +1.70 / +1.20: the paper's text; run 145-half's log against "
                            "run 145-2010's (ILSVRC-2010 test) |")


def test_cuda_convnet_divides_training_crops_by_1_1_and_evaluation_crops_not():
  """s4: the code divides crops that carry colour noise by 1 + 0.1, training only."""
  c = recipes.config('cuda_convnet')
  assert c.data.lighting_rescale and c.data.divide == 1.0 and c.data.lighting_std == 0.1
  record = input_pipeline.create(data_config(lighting_rescale=True)).preprocessing
  assert record.train_divide() == pytest.approx(1.1) and record.std == (1.0,)
  assert input_pipeline.create(data_config(lighting_rescale=True,
                                           lighting_std=0.0)).preprocessing.train_divide() == 1
  # Training inputs are the evaluation ones (the same crop) divided by 1.1, in the step (jax)
  # and in the workers (numpy) alike.
  raw = next(iter(input_pipeline.create(data_config()).train))
  host = next(iter(input_pipeline.create(data_config(lighting_rescale=True,
                                                     normalize_on_host=True)).train))
  args = dict(lighting=raw['lighting'], flip=raw['flip'])
  evaluation_input = preprocess.normalize(raw['image'], record, record.arrays(), **args)
  np.testing.assert_allclose(host['image'], evaluation_input / 1.1, rtol=1e-6)
  step_input = preprocess.normalize(jax.numpy.asarray(raw['image']), record, record.arrays(),
                                    **{k: jax.numpy.asarray(v) for k, v in args.items()},
                                    train=True)
  np.testing.assert_allclose(np.asarray(step_input), host['image'], rtol=1e-6)
  # Evaluation batches stay uint8, normalized in the evaluation step, without the 1.1.
  assert next(iter(input_pipeline.create(data_config()).eval))['image'].dtype == np.uint8


def test_the_readmes_recipe_table_is_the_recipe_list():
  """Every recipe in README.md's table, with its parameter count as a number, and no other:
  the counts the README promises (60,965,224 for the paper's, Caffe's and run 145's nets,
  61,100,840 for torchvision's) are what the recipes build (test above)."""
  readme = (helpers.REPO / 'README.md').read_text()
  table = readme.split('\n| recipe | what it is |', 1)[1].split('\n\n', 1)[0]
  rows = re.findall(r'^\| `(\w+)` \| .*? \| ([\d,]+) \|', table, re.MULTILINE)
  assert {name: int(n.replace(',', '')) for name, n in rows} == {
      r.name: r.params for r in recipes.RECIPES.values()}
  assert recipes.get('caffe').params == recipes.get('cuda_convnet').params == 60_965_224
  assert recipes.get('owt').params == 61_100_840
