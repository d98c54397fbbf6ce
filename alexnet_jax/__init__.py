"""alexnet_jax: the paper's two-tower AlexNet in JAX/Flax NNX, faithfully and fast."""
from alexnet_jax.model import AlexNet, ModelSpec, create_model
from alexnet_jax.variants import VARIANTS, model_config

__all__ = ['AlexNet', 'ModelSpec', 'VARIANTS', 'create_model', 'model_config']
