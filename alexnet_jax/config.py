"""The one config schema: every field of every section, once, with what it means.

`base_config()` is the paper's recipe as its text describes it (docs/paper.md, cited as sN).
Every other recipe (alexnet_jax/recipes.py) is a set of changes to these fields, and every
config file (configs/*.py) starts here, so a field exists, has one default and one meaning
everywhere. The model's schema (`model.ModelSpec`) is derived from `model_fields()`.

This module imports nothing of the project: configs, recipes and the model all import it.
"""
from __future__ import annotations

import json

import ml_collections

LAYERS = ('conv1', 'conv2', 'conv3', 'conv4', 'conv5', 'fc6', 'fc7', 'fc8')


def model_fields() -> ml_collections.ConfigDict:
  """The `model` section: the paper's net (s1)."""
  c = ml_collections.ConfigDict()
  c.num_classes = 1000  # ILSVRC-2012's classes: fc8's width (0 with data.fit: the data's).
  c.image_size = 224  # Side of the crops the net reads (s1, s2.1: 227 without padding).
  c.towers = 2  # Two towers, one per GPU in the paper (s1); 1: a single-tower net.
  c.conv_filters = (96, 256, 384, 384, 256)  # conv1..conv5 filters, all towers together (s1).
  c.fc_units = (4096, 4096)  # fc6, fc7 units, all towers together (s1).
  c.width = 1.0  # Multiplies every conv and fc width; < 1 scales the net down for small data.
  c.conv1_kernel = 11  # conv1 is 11x11 (s1).
  c.conv1_stride = 4  # ... at stride 4 (s1).
  c.conv1_padding = 0  # Symmetric zero padding of conv1 (torchvision: 2).
  # cuda-convnet's conv1 computes ceil((n - 11) / 4) + 1 columns, reading zeros past the right
  # and bottom edges: 224 -> 55 with 3 pixels of padding, 227 -> 55 with none (s1, s2.1).
  c.conv1_ceil_mode = True
  c.conv_padding = (2, 1, 1, 1)  # Zero padding of conv2..conv5 (s1; run 147: 1, 1, 1, 0).
  c.pool_window = 3  # Overlapping max pooling, z = 3 (s1; run 147: 2).
  c.pool_stride = 2  # ... at stride s = 2 (s1).
  # Pooling outputs ceil((n - z) / s) + 1, the last window clipped at the edge, as
  # cuda-convnet (s5.1); False rounds down. The same for 3x3/2 pools on the paper's sides.
  c.pool_ceil_mode = False
  c.adaptive_pool = 0  # torchvision's adaptive average pool to this side before fc6; 0: none.
  c.activation = 'relu'  # 'relu' or 'tanh' (the paper's figure 1).
  c.lrn = True  # Local response normalization after conv1 and conv2 (s1).
  c.lrn_size = 5  # n: channels in the window (s1).
  c.lrn_alpha = 1e-4  # alpha (s1).
  c.lrn_beta = 0.75  # beta (s1).
  c.lrn_k = 2.0  # k (s1; Caffe: 1).
  c.lrn_alpha_over_n = True  # alpha / n, as the code computes it and alpha was tuned (s1, s2.2).
  c.lrn_across_towers = False  # LRN over each tower's channels (s1); True: all (Caffe).
  c.lrn1_before_relu = False  # s2.3: the code normalizes conv1 before its ReLU.
  c.extra_norm2 = False  # s2.4: the code's 5x5 within-map normalization after LRN2.
  c.dropout_rate = 0.5  # Dropout on fc6 and fc7 (s1).
  c.dropout_inverted = False  # s2.8: False scales the outputs by 1 - rate at test time.
  c.dropout_before_fc = False  # Dropout on fc6's and fc7's inputs (torchvision), not outputs.
  # conv3, fc6, fc7 read both towers (s1); False: no cross-tower links before fc8 (run 150
  # also widens conv2, fc6 and fc7 to keep the size: the no_cross_tower recipe, s5.1).
  c.cross_tower = True
  c.skip_conv4 = False  # No conv4: conv3 feeds conv5 (s5: a middle layer removed).
  c.fc8_per_tower = True  # fc8 split over the towers; s2.7: one fc8 reading both.
  # Weight init: 'gaussian', N(0, weight_std^2) (s1); 'he', std sqrt(2 / fan_in) for conv1..fc7
  # and weight_std for fc8 (small nets that must train in minutes); 'pytorch', torch.nn's
  # default U(+-1/sqrt(fan_in)) for weights and biases (torchvision).
  c.init = 'gaussian'
  c.weight_std = (0.01,) * 8  # Gaussian init std, conv1..fc8 (s1; s2.5: 0.03 for conv3-5).
  c.bias_init = (0., 1., 0., 1., 1., 1., 1., 0.)  # Bias init, conv1..fc8 (s1).
  c.compute_dtype = 'float32'  # Activations' dtype; parameters are always float32.
  c.weights_layout = 'caffe'  # State-dict keys: 'caffe' (conv1..fc8) or 'torchvision' (s6).
  return c


def data_fields() -> ml_collections.ConfigDict:
  """The `data` section: ImageNet as the paper prepares and augments it (s4)."""
  c = ml_collections.ConfigDict()
  c.source = 'prepared'  # 'digits', 'prepared' (alexnet_jax.prepare), 'folder' or 'tfds'.
  c.path = ''  # The prepared directory, the image folder's root, or tfds's data_dir.
  c.tfds_name = 'imagenet2012'  # With source='tfds'.
  c.train_split = 'train'  # The split trained on.
  c.eval_split = 'validation'  # The split evaluated on (ILSVRC-2012 validation, s5).
  c.image_size = 256  # Side of the stored images: shorter side 256, centre crop (s4).
  c.flip = True  # Random horizontal reflections (s4).
  c.lighting_std = 0.1  # PCA lighting, alpha ~ N(0, 0.1); 0 turns it off (s4).
  # s4: the code divides training crops that carry lighting noise by 1 + lighting_std (1.1);
  # evaluation crops are never divided.
  c.lighting_rescale = False
  # From this epoch on (0-based, as the schedule counts), no PCA lighting and no division;
  # 0: lighting throughout. Run 145's log turns the colour noise off at epoch 67.
  c.lighting_end_epoch = 0
  # How pixels become inputs (alexnet_jax/preprocess.py): 'data', this config's own (the two
  # fields below, the training set's statistics); 'torchvision' or 'caffe', the preprocessing
  # their published weights expect (s6).
  c.preprocessing = 'data'
  c.mean = 'image'  # Subtract the per-pixel mean image ('image', the code) or per channel ('rgb').
  c.divide = 1.0  # Divide every mean-subtracted input by this (1: the paper's 0-255 scale).
  # Take the class count and names, the image size and a batch no larger than the training
  # set from the data, instead of model.num_classes, the image sizes and batch_size.
  c.fit = False
  c.normalize_on_host = False  # Mean and lighting in the input workers, not in the step.
  c.workers = 0  # grain worker processes (0: in the main process).
  c.prefetch = 2  # Batches buffered per worker, and reader threads.
  # Bad examples (unreadable, damaged or oversized) are skipped, named and counted; above this
  # fraction of the examples seen (and at least datasets.MIN_BAD_TO_STOP of them) the run stops.
  c.max_bad_fraction = 0.001
  c.max_image_pixels = 100_000_000  # More declared in a file's header: a bad example.
  return c


def optim_fields() -> ml_collections.ConfigDict:
  """The `optim` section: the paper's momentum SGD and its schedule (s3)."""
  c = ml_collections.ConfigDict()
  c.base_lr = 0.01  # eps at the start (s3).
  c.momentum = 0.9  # (s3)
  c.weight_decay = 5e-4  # (s3)
  c.bias_lr_multiplier = 1.0  # s2.6: the code trains biases at 2x the rate.
  c.bias_weight_decay = True  # s2.6: the code does not decay biases.
  # Biases follow the schedule's drops (s3); False: they keep bias_lr_multiplier * base_lr
  # throughout, as run 145's layer files have them (only the weights' eps was ever lowered).
  c.bias_lr_follows_schedule = True
  # (('layer', epoch, m), ...): from `epoch` on, that layer's weights train at m times the
  # schedule's rate, the latest entry counting (run 145's log: conv1 at 0.1x from epoch 67).
  c.layer_lr_multipliers = ()
  # (('layer', epoch), ...): from `epoch` on, that layer (weights and biases) is not updated at
  # all, its momentum kept, as cuda-convnet skips a layer whose eps is 0 (run 145: conv1, 72).
  c.freeze = ()
  c.schedule = 'plateau'  # 'plateau': eps / 10 when validation error stops improving (s3); 'manual'.
  c.plateau_patience = 2  # Evaluations without improvement before a drop.
  c.plateau_threshold = 1e-3  # An improvement (absolute top-1 error) smaller than this does not count.
  c.plateau_factor = 0.1  # Divide eps by 10 (s3).
  c.max_drops = 3  # Three drops in all: 0.01 -> 1e-5 (s3).
  c.manual_drop_epochs = (25, 51, 79)  # 'manual': run 145's drops (s3).
  # Transfer learning: the rate of every layer outside `new_layers`, times eps. 0 trains the
  # new layers alone (the others frozen, decay included); 0.1 fine-tunes everything.
  c.pretrained_lr_multiplier = 1.0
  c.new_layers = ('fc8',)  # The layers that start fresh (transfer.source).
  return c


def eval_fields() -> ml_collections.ConfigDict:
  """The `eval` section: validation during training and the final report (s4, s5)."""
  c = ml_collections.ConfigDict()
  c.every_epochs = 1  # Validation (1 view) after every this many epochs; the plateau rule reads it.
  c.ten_views = True  # The final report adds the paper's 10-view error (s4) to the 1-view one.
  return c


def checkpoint_fields() -> ml_collections.ConfigDict:
  """The `checkpoint` section."""
  c = ml_collections.ConfigDict()
  c.keep = 3  # The last checkpoints kept (the best by validation error is kept besides).
  c.every_epochs = 1  # A checkpoint after every this many epochs (and at the end).
  return c


def distributed_fields() -> ml_collections.ConfigDict:
  """The `distributed` section: runs over several processes (alexnet_jax/distributed.py)."""
  c = ml_collections.ConfigDict()
  c.initialize = 'auto'  # 'auto' (from the fields below or the environment), 'on' or 'off'.
  c.coordinator_address = ''  # host:port of process 0; '': from the environment.
  c.num_processes = 0  # 0: from the environment.
  c.process_id = -1  # -1: from the environment.
  return c


def transfer_fields() -> ml_collections.ConfigDict:
  """The `transfer` section: starting from a trained model (configs/transfer.py)."""
  c = ml_collections.ConfigDict()
  # A work directory, checkpoints/STEP or a .npz/.pth state dict: every layer but
  # optim.new_layers is copied from it; those start fresh, sized for model.num_classes.
  c.source = ''
  c.source_num_classes = 1000  # For a state-dict file: the classes it was trained on.
  return c


def base_config() -> ml_collections.ConfigDict:
  """Every field, set as the paper's text has it."""
  c = ml_collections.ConfigDict()
  # The recipe the config was built from (alexnet_jax/recipes.py): chosen as the config
  # file's argument (configs/paper.py:cuda_convnet), never set on its own.
  c.recipe = 'paper'
  c.seed = 0  # Parameter init, data order, augmentation and dropout keys.
  c.batch_size = 128  # The global batch (s3).
  c.num_epochs = 90  # About 90 epochs (s3).
  c.steps_per_epoch = 0  # 0: training examples // batch_size.
  c.max_nonfinite_steps = 10  # Stop after more non-finite losses than this in a row.
  c.log_every_steps = 1  # Training metrics to metrics.jsonl and TensorBoard.
  c.progress = True  # The terminal progress bar.
  c.reevaluate = False  # Re-running a finished run evaluates it again (else: one line, exit 0).
  # 'A:B': a jax.profiler trace of steps A to B (1-based, inclusive) in WORKDIR/tensorboard.
  c.profile_steps = ''
  c.model = model_fields()
  c.data = data_fields()
  c.optim = optim_fields()
  c.eval = eval_fields()
  c.checkpoint = checkpoint_fields()
  c.distributed = distributed_fields()
  c.transfer = transfer_fields()
  return c


def from_saved(text: str) -> ml_collections.ConfigDict:
  """The config a checkpoint saved (JSON), in today's schema: fields it lacks take
  `base_config()`'s values, and the fields of configs saved before recipes existed are
  translated (model.variant -> recipe, fc_units n -> (n, n), pytorch_init -> init,
  checkpoint_keep -> checkpoint.keep). A field the schema does not know is a one-line error."""
  saved = json.loads(text)
  model = saved.get('model', {})
  if 'variant' in model:  # Before recipes.
    saved.setdefault('recipe', model['variant'])
    if model.pop('variant') == 'owt':
      model['weights_layout'] = 'torchvision'
  if isinstance(model.get('fc_units'), int):
    model['fc_units'] = (model['fc_units'],) * 2
  if 'pytorch_init' in model:
    model['init'] = 'pytorch' if model.pop('pytorch_init') else 'gaussian'
  for old, new in (('checkpoint_keep', 'keep'), ('checkpoint_every_epochs', 'every_epochs')):
    if old in saved:
      saved.setdefault('checkpoint', {})[new] = saved.pop(old)
  config = base_config()

  def overlay(target, values, prefix=''):
    for key, value in values.items():
      if key not in target:
        raise ValueError(f'checkpoint: its config has {prefix}{key}, which this version of '
                         'alexnet_jax does not know')
      if isinstance(value, dict):
        overlay(target[key], value, f'{prefix}{key}.')
      else:
        target[key] = tuple(value) if isinstance(value, list) else value

  overlay(config, saved)
  return config
