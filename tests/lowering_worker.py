"""Lowers the project's programs for TPU and CUDA on this CPU, on 8 fake devices.

tests/test_backends.py runs it in a process of its own (the suite's have 4 devices):
`python tests/lowering_worker.py CASE...`, each CASE `recipe:dtype:kernels` (kernels `auto`,
what a model on these CPU devices gets, or `portable`). For each it builds, through the public
API, the train step, the 10-view evaluation step and the inference program (1 view) on a
(data 4 x tower 2) mesh (data 8 for a one-tower net), at 1/8 width, lowers each for `tpu`
and `cuda` (and `cpu`, for comparison), and prints one JSON object: per case, program and
platform, the project's custom calls found and every collective with its replica groups; for
the paper's train step, the platforms it exports for at once (jax.export).
"""
import json
import os
import re
import sys

os.environ['XLA_FLAGS'] = (os.environ.get('XLA_FLAGS', '') +
                           ' --xla_force_host_platform_device_count=8')
os.environ['JAX_PLATFORMS'] = 'cpu'
sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

# pylint: disable=g-import-not-at-top,wrong-import-position
import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

import alexnet_jax
from alexnet_jax import evaluation
from alexnet_jax import ops
from alexnet_jax import preprocess
from alexnet_jax import recipes
from alexnet_jax import sharding
from alexnet_jax import train

PLATFORMS = ('tpu', 'cuda')
_COLLECTIVE = re.compile(r'"?stablehlo\.(all_gather|all_reduce|reduce_scatter|all_to_all|'
                         r'collective_permute|collective_broadcast)"?\b.*?replica_groups = '
                         r'dense<(\[\[[\d, \[\]]*\]\])>')


def collectives(text: str) -> list[tuple[str, list[list[int]]]]:
  return [(m.group(1), json.loads(m.group(2))) for m in _COLLECTIVE.finditer(text)]


def custom_calls(text: str) -> list[str]:
  return sorted(set(re.findall(r'alexnet_jax_\w+', text)))


def programs(recipe: str, dtype: str, kernels: str):
  """{program name: (jitted function, its arguments)} of one net on the 8-device mesh."""
  config = recipes.config(recipe)
  config.model.width = 0.125
  config.model.compute_dtype = dtype
  mesh = sharding.make_mesh(config.model.towers)
  net = alexnet_jax.create_model(config.model, mesh=mesh,
                                 kernels=ops.PORTABLE if kernels == 'portable' else None)
  graphdef, state, tx = train.init_state(net, config.optim)
  crop, size, batch = config.model.image_size, config.data.image_size, 8
  record = preprocess.Preprocessing(size=size, crop=crop)
  arrays = evaluation.replicated(record.arrays(), mesh)
  rows = sharding.named(mesh, sharding.BATCH)
  spec = lambda shape, dtype: jax.ShapeDtypeStruct(shape, dtype, sharding=rows)
  train_batch = {'image': spec((batch, crop, crop, 3), jnp.uint8),
                 'label': spec((batch,), jnp.int32), 'flip': spec((batch,), jnp.bool_),
                 'lighting': spec((batch, 3), jnp.float32), 'offset': spec((batch, 2), jnp.int32),
                 'index': spec((batch,), jnp.int32),
                 'bad': spec((batch,), jnp.int32)}
  eval_batch = {'image': spec((batch, size, size, 3), jnp.uint8),
                'label': spec((batch,), jnp.int32), 'mask': spec((batch,), jnp.bool_),
                'bad': spec((batch,), jnp.bool_)}
  totals = {k: jax.ShapeDtypeStruct((), jnp.float32,
                                    sharding=sharding.named(mesh, sharding.REPLICATED))
            for k in evaluation.TOTALS}
  step = train.make_train_step(graphdef, tx, seed=0, num_classes=config.model.num_classes,
                               preprocessing=record)
  ten_views = evaluation.make_eval_step(graphdef, num_classes=config.model.num_classes,
                                        preprocessing=record, views=10)
  infer = evaluation.probabilities_fn(net, record, 1)
  return net.kernels.name, {
      'train step': (step, (state, train_batch, arrays)),
      '10-view evaluation': (ten_views, (totals, state.params, eval_batch, arrays)),
      'inference': (infer.func, (*infer.args, spec((batch, crop, crop, 3), jnp.uint8)))}


def main(cases):
  out = {}
  for case in cases:
    recipe, dtype, kernels = case.split(':')
    name, progs = programs(recipe, dtype, kernels)
    result = out[case] = {'kernels': name}
    for program, (fn, args) in progs.items():
      traced = fn.trace(*args)
      for platform in PLATFORMS + ('cpu',):  # The CPU's: what the kernels put there.
        text = traced.lower(lowering_platforms=(platform,)).as_text()
        result[f'{program} {platform}'] = {'custom_calls': custom_calls(text),
                                           'collectives': collectives(text)}
    if recipe == 'paper':
      step, args = progs['train step']
      exported = jax.export.export(step, platforms=PLATFORMS)(*args)
      result['exports'] = list(exported.platforms)
  print(json.dumps(out))


if __name__ == '__main__':
  main(sys.argv[1:])
