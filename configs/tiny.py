"""Tiny config for tests and smoke runs: 16x16 images, narrow networks, a few steps.

  python -m preprocessing --source synthetic --num-images 96 --image-size 16 \
      --test-count 16 --output tiny_data
  python -m keypatch_jax.main --config configs/tiny.py --workdir tiny_work \
      --config.data_dir=tiny_data
  python -m keypatch_jax.sample --workdir tiny_work --data tiny_data --output tiny.png
"""

from configs import default


def get_config():
  """Tiny config (fast to compile and run on CPU)."""
  config = default.get_config()
  config.image_size = 16
  config.model.conv_dim = 8
  config.model.embed_dim = 16
  config.model.z_dim = 8
  config.batch_size = 8
  config.num_epochs = 2
  config.num_train_steps = 4
  config.shuffle_buffer = 64
  config.prefetch = 1
  config.log_every_steps = 2
  config.image_every_steps = 4
  config.checkpoint_every_steps = 2
  config.eval_batches = 1
  config.ema_decay = 0.9
  return config
