"""alexnet_jax: the paper's two-tower AlexNet in JAX/Flax NNX, faithfully and fast."""
import importlib

# Loaded on first use, so that `python -m alexnet_jax.<command>` can set up its process
# (main.py re-executes itself with huge pages) before JAX is imported.
_EXPORTS = {'AlexNet': 'model', 'ModelSpec': 'model', 'create_model': 'model',
            'RECIPES': 'recipes', 'model_config': 'recipes'}
__all__ = sorted(_EXPORTS)


def __getattr__(name: str):
  if name in _EXPORTS:
    return getattr(importlib.import_module(f'alexnet_jax.{_EXPORTS[name]}'), name)
  raise AttributeError(f'module alexnet_jax has no attribute {name!r}')
