"""The towers on a mesh: placement, the paper's four cross-tower links, mesh equivalence."""
import re

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx
from jax.experimental.compilation_cache import compilation_cache

import alexnet_jax
from alexnet_jax import sharding
from alexnet_jax import weights
import helpers
from helpers import small_config
import torch_reference

# One HLO instruction that is a collective: its kind, then (further on the line) its replica
# groups, explicit ({{0,1},{2,3}}) or as an iota ([2,2]<=[4], [2,2]<=[2,2]T(1,0)), and the
# op_name of its metadata, which carries the model's named scope (`conv3_input`, ...).
_KIND = re.compile(r'^\s*\S+ = .*? (all-gather|all-reduce|reduce-scatter|collective-permute|'
                   r'all-to-all|collective-broadcast)(?:-start)?\(')
_EXPLICIT = re.compile(r'replica_groups=\{((?:\{[\d,]*\},?)*)\}')
_IOTA = re.compile(r'replica_groups=\[([\d,]+)\]<=\[([\d,]+)\](?:T\(([\d,]+)\))?')
_SCOPE = re.compile(r'op_name="[^"]*?(\w+)_input/')


def _groups(line: str) -> frozenset:
  explicit = _EXPLICIT.search(line)
  if explicit:
    return frozenset(frozenset(map(int, g.split(','))) for g in
                     re.findall(r'\{([\d,]+)\}', explicit.group(1)))
  shape, dims, perm = _IOTA.search(line).groups()
  ids = np.arange(np.prod([int(d) for d in dims.split(',')])).reshape(
      [int(d) for d in dims.split(',')])
  if perm:
    ids = ids.transpose([int(p) for p in perm.split(',')])
  return frozenset(frozenset(row.tolist()) for row in ids.reshape(
      [int(d) for d in shape.split(',')]))


@pytest.fixture
def compiled_afresh():
  """The persistent compilation cache (conftest) keys programs without their metadata, so a
  program cached before a layer was renamed would show the old names: compile here."""
  enabled = jax.config.jax_enable_compilation_cache
  jax.config.update('jax_enable_compilation_cache', False)
  compilation_cache.reset_cache()
  yield
  jax.config.update('jax_enable_compilation_cache', enabled)
  compilation_cache.reset_cache()


def collectives(compiled_text: str, mesh) -> list[tuple[str, str, str]]:
  """(kind, mesh axis, reading layer) of every collective in a compiled HLO module: the axis
  is 'tower' or 'data' when its replica groups are that axis's device groups of `mesh`; the
  layer is the named scope `<layer>_input` it was traced under ('' if none)."""
  ids = np.vectorize(lambda d: d.id)(mesh.devices)  # (data, tower)
  axes = {frozenset(frozenset(g.tolist()) for g in ids): 'tower',
          frozenset(frozenset(g.tolist()) for g in ids.T): 'data'}
  found = []
  for line in compiled_text.splitlines():
    kind = _KIND.match(line)
    if kind:
      groups = _groups(line)
      scope = _SCOPE.search(line)
      found.append((kind.group(1), axes.get(groups, str(sorted(map(sorted, groups)))),
                    scope.group(1) if scope else ''))
  return found


def test_make_mesh_shapes():
  devices = jax.devices()
  assert dict(sharding.make_mesh(2).shape) == {'data': 2, 'tower': 2}
  assert dict(sharding.make_mesh(1).shape) == {'data': 4, 'tower': 1}
  assert dict(sharding.make_mesh(2, devices=devices[:1]).shape) == {'data': 1, 'tower': 1}
  assert dict(sharding.make_mesh(2, devices=devices[:2]).shape) == {'data': 1, 'tower': 2}
  assert dict(sharding.make_mesh(2, devices=devices[:3]).shape) == {'data': 3, 'tower': 1}
  assert all(t == jax.sharding.AxisType.Explicit for t in sharding.make_mesh(2).axis_types)
  with pytest.raises(ValueError, match='mesh: data=3'):
    sharding.make_mesh(2, data=3)


def test_tower_weights_live_only_on_their_towers_devices():
  mesh = sharding.make_mesh(2)
  m = alexnet_jax.create_model(small_config(), mesh=mesh)
  tower_of = {d: t for row in mesh.devices for t, d in enumerate(row)}
  for layer in ('conv1', 'conv2', 'conv3', 'fc6', 'fc8'):
    kernel = m.layer(layer).kernel[...]
    full = np.asarray(kernel)
    for shard in kernel.addressable_shards:
      t = tower_of[shard.device]
      assert shard.data.shape == (1, *full.shape[1:]), layer
      np.testing.assert_array_equal(np.asarray(shard.data)[0], full[t], err_msg=layer)
  # The code's single fc8 is replicated: each tower device holds all of it.
  single = alexnet_jax.create_model(small_config(fc8_per_tower=False), mesh=mesh)
  assert all(s.data.shape == single.fc8.kernel.shape
             for s in single.fc8.kernel[...].addressable_shards)


@pytest.fixture(scope='module')
def paper_on_2x2():
  mesh = sharding.make_mesh(2)
  return alexnet_jax.create_model('paper', mesh=mesh), mesh


def test_forward_has_exactly_the_papers_four_cross_tower_links(paper_on_2x2, compiled_afresh):
  m, mesh = paper_on_2x2
  graphdef, state = nnx.split(m)
  images = jax.ShapeDtypeStruct((4, 224, 224, 3), jnp.float32)
  for train in (False, True):
    fwd = lambda s, x, train=train: nnx.merge(graphdef, s)(
        x, train=train, dropout_key=jax.random.key(0))
    ops = collectives(jax.jit(fwd).lower(state, images).compile().as_text(), mesh)
    # One all-gather over the tower axis at each input of conv3, fc6, fc7 and fc8: nothing
    # else crosses towers, nothing at all crosses the data axis.
    assert sorted(ops) == [('all-gather', 'tower', layer)
                           for layer in ('conv3', 'fc6', 'fc7', 'fc8')], ops


def logit_gradients(graphdef):
  """(state, images) -> the parameters' gradients of a loss whose cotangent is the logits
  themselves: it lives where they live, so the only collectives left are the model's own."""
  def grads(s, x):
    logits = lambda s: nnx.merge(graphdef, s)(x, train=True, dropout_key=jax.random.key(0))
    return jax.grad(lambda s: 0.5 * jnp.sum(logits(s) ** 2))(s)
  return grads


def test_gradient_has_only_their_transposes_and_data_reductions(paper_on_2x2,
                                                                compiled_afresh):
  m, mesh = paper_on_2x2
  graphdef, state = nnx.split(m)
  images = jax.ShapeDtypeStruct((4, 224, 224, 3), jnp.float32)

  ops = collectives(jax.jit(logit_gradients(graphdef)).lower(state, images).compile().as_text(),
                    mesh)
  links = [(layer, 'tower') for layer in ('conv3', 'fc6', 'fc7', 'fc8')]
  # The forward gathers again, their transposes (reduce-scatters), and the data-parallel sum
  # of the parameter gradients (all-reduces over data, fused as XLA sees fit): nothing else.
  assert sorted((layer, axis) for kind, axis, layer in ops if kind == 'all-gather') == links
  assert sorted((layer, axis) for kind, axis, layer in ops if kind == 'reduce-scatter') == links
  reductions = [(axis, layer) for kind, axis, layer in ops if kind == 'all-reduce']
  assert reductions and set(reductions) == {('data', '')}, ops
  assert {kind for kind, _, _ in ops} == {'all-gather', 'reduce-scatter', 'all-reduce'}, ops


def test_single_fc8_needs_no_collective_in_its_gradient(compiled_afresh):
  mesh = sharding.make_mesh(2)
  m = alexnet_jax.create_model(small_config(fc8_per_tower=False), mesh=mesh)
  graphdef, state = nnx.split(m)
  images = jax.ShapeDtypeStruct((4, 63, 63, 3), jnp.float32)
  loss = lambda s, x: nnx.merge(graphdef, s)(x).sum()
  ops = collectives(jax.jit(jax.grad(loss)).lower(state, images).compile().as_text(), mesh)
  assert sorted(layer for kind, axis, layer in ops if (kind, axis) == ('all-gather', 'tower')) \
      == ['conv3', 'fc6', 'fc7', 'fc8']
  # conv3, fc6, fc7; fc8's input gradient is a local slice.
  assert sorted(layer for kind, axis, layer in ops if (kind, axis) == ('reduce-scatter',
                                                                       'tower')) == \
      ['conv3', 'fc6', 'fc7']


@pytest.mark.parametrize('variant', ['paper', 'owt'])
def test_one_device_runs_the_gradient_without_collectives(variant, compiled_afresh):
  """On one device every mesh axis has size 1: nothing to gather or sum. A collective left in
  the program would still copy its operands (for the parameters' gradients, 244 MB a step
  for the full net)."""
  mesh = sharding.single_device_mesh()
  m = alexnet_jax.create_model(small_config(variant), mesh=mesh)
  graphdef, state = nnx.split(m)
  images = jax.ShapeDtypeStruct((4, m.spec.image_size, m.spec.image_size, 3), jnp.float32)
  grads = jax.jit(logit_gradients(graphdef))
  assert collectives(grads.lower(state, images).compile().as_text(), mesh) == []


def relative_error(a, b):
  return np.abs(np.asarray(a, np.float64) - b).max() / np.abs(b).max()


@pytest.mark.parametrize('variant,meshes', [('paper', 3), ('cuda_convnet', 1), ('caffe', 1)])
def test_logits_agree_on_every_mesh_and_with_a_grouped_conv_reference(variant, meshes):
  config = alexnet_jax.model_config(variant)
  size = config.image_size
  images = np.asarray(jax.random.normal(jax.random.key(1), (4, size, size, 3)))
  devices = jax.devices()
  want = None
  for mesh in (sharding.make_mesh(2), sharding.make_mesh(2, devices=devices[:1]),
               sharding.make_mesh(2, devices=devices[:2]))[:meshes]:
    m = alexnet_jax.create_model(config, seed=5, mesh=mesh)
    if want is None:
      want = torch_reference.reference_logits(m.spec, weights.state_dict(m), images)
    got = m(images)
    assert relative_error(got, want) <= 1e-5, (variant, dict(mesh.shape))


@pytest.mark.parametrize('variant,overrides', [
    ('one_tower', {}), ('owt', {}), ('paper', dict(cross_tower=False)),
    ('paper', dict(activation='tanh', lrn=False, pool_window=2)),
    ('paper', dict(lrn_alpha_over_n=False, lrn_alpha=1e-2, dropout_inverted=True)),
    ('paper', dict(skip_conv4=True))])
def test_variants_match_the_reference(variant, overrides):
  config = small_config(variant, **overrides)
  images = np.asarray(jax.random.normal(jax.random.key(1), (4, 63, 63, 3)))
  m = alexnet_jax.create_model(config, seed=2, mesh=sharding.make_mesh(config.towers))
  want = torch_reference.reference_logits(m.spec, weights.state_dict(m), images)
  assert relative_error(m(images), want) <= 1e-5


def test_train_mode_is_the_same_on_every_mesh():
  """Dropout masks are drawn in the global view: a key means the same masks anywhere."""
  config = small_config()
  images = jax.random.normal(jax.random.key(1), (4, 63, 63, 3))
  outs = [np.asarray(alexnet_jax.create_model(config, mesh=sharding.make_mesh(2, devices=d))(
      images, train=True, dropout_key=jax.random.key(9)))
          for d in (jax.devices()[:1], jax.devices())]
  np.testing.assert_allclose(outs[0], outs[1], rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize('variant', ['paper', 'cuda_convnet', 'caffe'])
def test_gradients_are_the_same_on_every_mesh(variant):
  """The reduce-scatters (and the slice for a single fc8) transpose the gathers exactly."""
  config = small_config(variant)
  helpers.assert_gradients_close(helpers.mesh_gradients(config, jax.devices()[:1]),
                                 helpers.mesh_gradients(config, jax.devices()))


def test_one_process_reads_every_row_of_the_batch():
  assert sharding.process_batch_rows(sharding.make_mesh(2), 16) == (0, 16)
  assert sharding.process_batch_rows(sharding.make_mesh(1), 12) == (0, 12)
