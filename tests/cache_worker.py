"""One train step of a small net, compiled with the persistent cache in WORKDIR, as the main
job sets it: `python tests/cache_worker.py WORKDIR` prints JSON counts of JAX's compilation
cache events (hits, misses) and the number of entries in WORKDIR/compilation_cache."""
import collections
import json
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

# pylint: disable=g-import-not-at-top,wrong-import-position
import jax
import jax.numpy as jnp
import numpy as np

import alexnet_jax
from alexnet_jax import evaluation
from alexnet_jax import main
from alexnet_jax import preprocess
from alexnet_jax import recipes
from alexnet_jax import train

events = collections.Counter()
jax.monitoring.register_event_listener(lambda name, **_: events.update([name]))


def one_step(workdir: str) -> None:
  main.cache_compilations(workdir)
  config = recipes.config('small')
  config.model.width = 0.125
  net = alexnet_jax.create_model(config.model)
  graphdef, state, tx = train.init_state(net, config.optim)
  crop = config.model.image_size
  record = preprocess.Preprocessing(size=crop, crop=crop)
  step = train.make_train_step(graphdef, tx, seed=0, num_classes=config.model.num_classes,
                               preprocessing=record)
  batch = {'image': np.zeros((8, crop, crop, 3), np.uint8), 'label': np.zeros(8, np.int32),
           'flip': np.zeros(8, bool), 'lighting': np.zeros((8, 3), np.float32)}
  _, metrics = step(state, batch, evaluation.replicated(record.arrays(), net.mesh))
  jax.block_until_ready(metrics)


if __name__ == '__main__':
  one_step(sys.argv[1])
  cache = os.path.join(sys.argv[1], 'compilation_cache')
  print(json.dumps({'hits': events['/jax/compilation_cache/cache_hits'],
                    'misses': events['/jax/compilation_cache/cache_misses'],
                    'entries': len(os.listdir(cache)) if os.path.isdir(cache) else 0}))
