"""The paper's optimizer (s3) and its learning-rate schedules.

The update rule of the paper and of cuda-convnet's `weights.cu`, with the learning rate
eps inside the momentum buffer:

    v <- 0.9 v - 0.0005 eps w - eps grad
    w <- w + v

optax's `sgd(lr, momentum)` keeps eps outside (v <- 0.9 v + grad; w <- w - eps v), which
differs from this right after every learning-rate drop. cuda-convnet also sets eps per layer,
for weights and biases apart, and changed them during run 145 (docs/paper.md s3); so the state
here holds each parameter array's eps, and `rates_at` computes them all from the config and
the epoch.
"""
from __future__ import annotations

import dataclasses
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import ml_collections
import optax


class PaperSGDState(NamedTuple):
  """The optimizer's state: the momentum v of every parameter array, and the rate eps each
  one trains at now (a scalar per array, set on the host between steps: `with_rates`)."""
  momentum: Any
  rates: Any


def _key_name(k) -> str | None:
  """A path entry's name: a dict key (`['fc6']`) or an attribute (nnx's `.value`)."""
  return getattr(k, 'key', getattr(k, 'name', None))


def _layer_and_kind(path) -> tuple[str, bool]:
  """(layer, is_bias) of a parameter's path (`['fc6']['bias']`, or nnx's `...['bias'].value`)."""
  return _key_name(path[0]), any(_key_name(k) == 'bias' for k in path)


def paper_sgd(momentum: float = 0.9, weight_decay: float = 5e-4, *,
              bias_weight_decay: bool = True) -> optax.GradientTransformation:
  """The paper's update with a rate per parameter array, held in the state:

      v <- momentum v - eps (weight_decay w + grad);  update = v

  An array whose eps is 0 is not updated at all and keeps its v (cuda-convnet skips a
  weight whose rate is 0: a frozen layer stays bit for bit). Biases are decayed unless
  `bias_weight_decay` is False (the code, s2.6). The rates start at 0: set them with
  `with_rates(state, rates_at(...))` before the first step."""

  def init(params):
    zeros = jax.tree.map(jnp.zeros_like, params)
    return PaperSGDState(zeros, jax.tree.map(lambda _: jnp.zeros((), jnp.float32), params))

  def update(grads, state, params):
    def one(path, g, v, eps, w):
      decay = weight_decay if bias_weight_decay or not _layer_and_kind(path)[1] else 0.0
      new_v = momentum * v - eps * (decay * w + g) if decay else momentum * v - eps * g
      return jnp.where(eps > 0, new_v, v)

    new = jax.tree_util.tree_map_with_path(one, grads, state.momentum, state.rates, params)
    updates = jax.tree.map(lambda v, eps: jnp.where(eps > 0, v, jnp.zeros_like(v)), new,
                           state.rates)
    return updates, PaperSGDState(new, state.rates)

  return optax.GradientTransformation(init, update)


def check(optim: ml_collections.ConfigDict, layers: tuple[str, ...] = ()) -> None:
  """One line naming the first `optim` field that cannot work (`layers`: the net's)."""
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
  for field, width in (('layer_lr_multipliers', 3), ('freeze', 2)):
    for entry in optim[field]:
      if (len(entry) != width or not isinstance(entry[0], str) or
          not isinstance(entry[1], int) or entry[1] < 0 or (width == 3 and entry[2] < 0)):
        form = "('layer', epoch, multiplier >= 0)" if width == 3 else "('layer', epoch)"
        raise ValueError(f'optim.{field}: each entry is {form}, got {tuple(entry)!r}')
      if layers and entry[0] not in layers:
        raise ValueError(f'optim.{field}: no layer {entry[0]!r} in this net (its layers: '
                         f'{", ".join(layers)})')


def create(optim: ml_collections.ConfigDict) -> optax.GradientTransformation:
  """The optimizer of a config; its rates are set on the host (`rates_at`, `with_rates`)."""
  check(optim)
  return paper_sgd(optim.momentum, optim.weight_decay,
                   bias_weight_decay=optim.bias_weight_decay)


def rates_at(optim: ml_collections.ConfigDict, params, epoch: int, lr: float):
  """eps of every parameter array in `epoch`, the schedule's rate being `lr`: the one place
  that says how each layer trains when.

  Weights train at `lr`; biases at bias_lr_multiplier times it, or, without
  bias_lr_follows_schedule, times base_lr throughout (run 145's layer files only ever lower
  the weights' rate). Layers outside new_layers take pretrained_lr_multiplier (transfer
  learning); a layer's weights take the latest of its layer_lr_multipliers entries whose
  epoch has come; a layer in freeze from its epoch on trains at 0 (weights and biases).
  Plain floats: the step gets them as arrays (`with_rates`)."""
  def rate(path, _):
    layer, bias = _layer_and_kind(path)
    if any(layer == name and epoch >= start for name, start in optim.freeze):
      return 0.0
    if bias:
      eps = optim.bias_lr_multiplier * (lr if optim.bias_lr_follows_schedule else optim.base_lr)
    else:
      changes = sorted((start, m) for name, start, m in optim.layer_lr_multipliers
                       if name == layer and epoch >= start)
      eps = lr * (changes[-1][1] if changes else 1.0)
    if optim.pretrained_lr_multiplier != 1.0 and layer not in optim.new_layers:
      eps *= optim.pretrained_lr_multiplier
    return eps

  return jax.tree_util.tree_map_with_path(rate, params)


def with_rates(opt_state: PaperSGDState, rates) -> PaperSGDState:
  """The state with its rates replaced (the momentum kept, as the code keeps it across a
  change of eps), placed where the old ones were."""
  def put(eps, old):
    new = jnp.asarray(eps, jnp.float32)
    return jax.device_put(new, old.sharding) if hasattr(old, 'sharding') else new
  return opt_state._replace(rates=jax.tree.map(put, rates, opt_state.rates))


def momentum_buffer(opt_state: PaperSGDState):
  """v of every parameter array."""
  return opt_state.momentum


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
