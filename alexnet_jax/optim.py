"""The paper's optimizer (s3) and its learning-rate schedules.

The update rule of the paper and of cuda-convnet's `weights.cu`, with the learning rate
eps inside the momentum buffer:

    v <- 0.9 v - 0.0005 eps w - eps grad
    w <- w + v

optax's `sgd(lr, momentum)` keeps eps outside (v <- 0.9 v + grad; w <- w - eps v), which
differs from this right after every learning-rate drop; so the chain here is weight decay,
then the learning rate, then the momentum trace.
"""
from __future__ import annotations

import dataclasses

import jax
import ml_collections
import optax


def _key_name(k) -> str | None:
  """A path entry's name: a dict key (`['fc6']`) or an attribute (nnx's `.value`)."""
  return getattr(k, 'key', getattr(k, 'name', None))


def _is_bias(params):
  """A pytree of bools: True at every bias leaf (`...['fc6']['bias']`, or nnx's
  `...['fc6']['bias'].value`)."""
  return jax.tree_util.tree_map_with_path(
      lambda path, _: any(_key_name(k) == 'bias' for k in path), params)


def _is_not_bias(params):
  return jax.tree.map(lambda b: not b, _is_bias(params))


def _in_layers(layers):
  """A mask function: True at the leaves under a top-level key in `layers`."""
  def mask(params):
    return jax.tree_util.tree_map_with_path(
        lambda path, _: _key_name(path[0]) in layers, params)
  return mask


def _not_in_layers(layers):
  return lambda params: jax.tree.map(lambda b: not b, _in_layers(layers)(params))


def paper_sgd(learning_rate: float, momentum: float = 0.9, weight_decay: float = 5e-4, *,
              bias_lr_multiplier: float = 1.0, bias_weight_decay: bool = True,
              pretrained_lr_multiplier: float = 1.0, new_layers: tuple[str, ...] = ()
              ) -> optax.GradientTransformation:
  """v <- momentum v - eps (weight_decay w + grad); w <- w + v. Biases optionally at
  `bias_lr_multiplier` times the rate and without decay (the code, s2.6); layers outside
  `new_layers` at `pretrained_lr_multiplier` times it (transfer learning)."""
  parts = [optax.add_decayed_weights(weight_decay,
                                     mask=None if bias_weight_decay else _is_not_bias)]
  if bias_lr_multiplier != 1.0:
    parts.append(optax.masked(optax.scale(bias_lr_multiplier), _is_bias))
  if pretrained_lr_multiplier != 1.0:
    parts.append(optax.masked(optax.scale(pretrained_lr_multiplier),
                              _not_in_layers(tuple(new_layers))))
  parts += [optax.scale_by_learning_rate(learning_rate), optax.trace(decay=momentum)]
  return optax.chain(*parts)


def create(optim: ml_collections.ConfigDict) -> optax.GradientTransformation:
  """The optimizer of a config, its learning rate settable in the state (`set_lr`)."""
  if optim.base_lr <= 0:
    raise ValueError(f'optim.base_lr: must be positive, got {optim.base_lr}')
  if not 0 <= optim.momentum < 1:
    raise ValueError(f'optim.momentum: must be in [0, 1), got {optim.momentum}')
  if optim.weight_decay < 0:
    raise ValueError(f'optim.weight_decay: must be >= 0, got {optim.weight_decay}')
  if optim.schedule not in ('plateau', 'manual'):
    raise ValueError(f"optim.schedule: must be 'plateau' or 'manual', got {optim.schedule!r}")
  if optim.pretrained_lr_multiplier < 0:
    raise ValueError('optim.pretrained_lr_multiplier: must be >= 0, got '
                     f'{optim.pretrained_lr_multiplier}')
  return optax.inject_hyperparams(paper_sgd, static_args=(
      'bias_lr_multiplier', 'bias_weight_decay', 'pretrained_lr_multiplier', 'new_layers'))(
          learning_rate=optim.base_lr, momentum=optim.momentum,
          weight_decay=optim.weight_decay, bias_lr_multiplier=optim.bias_lr_multiplier,
          bias_weight_decay=optim.bias_weight_decay,
          pretrained_lr_multiplier=optim.pretrained_lr_multiplier,
          new_layers=tuple(optim.new_layers))


def momentum_buffer(opt_state):
  """v of `create`'s state: its chain ends in the momentum trace, so v is also the update."""
  trace = opt_state.inner_state[-1]
  if not isinstance(trace, optax.TraceState):
    raise TypeError(f'optim.momentum_buffer: expected the state of optim.create, got {trace!r}')
  return trace.trace


def learning_rate(opt_state) -> jax.Array:
  return opt_state.hyperparams['learning_rate']


def set_lr(opt_state, lr: float):
  """The optimizer state with eps changed (the momentum buffer is kept, as in the code)."""
  hyper = dict(opt_state.hyperparams)
  old = hyper['learning_rate']
  hyper['learning_rate'] = jax.numpy.asarray(lr, old.dtype)
  if hasattr(old, 'sharding'):
    hyper['learning_rate'] = jax.device_put(hyper['learning_rate'], old.sharding)
  return opt_state._replace(hyperparams=hyper)


@dataclasses.dataclass
class Plateau:
  """Divides eps by 10 when validation error has not improved for `patience` evaluations.

  Its state is a small dict saved in every checkpoint.
  """
  base_lr: float
  patience: int = 2
  threshold: float = 1e-3
  factor: float = 0.1
  max_drops: int = 3
  best: float = float('inf')
  bad_evals: int = 0
  drops: int = 0

  @property
  def lr(self) -> float:
    return self.base_lr * self.factor**self.drops

  def update(self, val_error: float) -> bool:
    """Records one evaluation; returns True when eps drops."""
    if val_error < self.best - self.threshold:
      self.best, self.bad_evals = val_error, 0
      return False
    self.bad_evals += 1
    if self.bad_evals >= self.patience and self.drops < self.max_drops:
      self.drops += 1
      self.bad_evals = 0
      return True
    return False

  def state(self) -> dict:
    return {'best': self.best, 'bad_evals': self.bad_evals, 'drops': self.drops}

  def restore(self, state: dict) -> None:
    self.best, self.bad_evals, self.drops = (float(state['best']), int(state['bad_evals']),
                                             int(state['drops']))


def manual_lr(base_lr: float, epoch: int, drop_epochs, factor: float = 0.1) -> float:
  """Run 145's schedule: eps / 10 at each of `drop_epochs` (0.01 -> 1e-3 at 25, ...)."""
  return base_lr * factor**sum(epoch >= e for e in drop_epochs)
