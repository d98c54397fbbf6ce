"""alexnet_jax: the paper's two-tower AlexNet in JAX/Flax NNX, faithfully and fast."""
from alexnet_jax.model import AlexNet, ModelSpec, create_model
from alexnet_jax.recipes import RECIPES, model_config

__all__ = ['AlexNet', 'ModelSpec', 'RECIPES', 'create_model', 'model_config']
