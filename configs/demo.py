"""Demo: the built-in synthetic faces at 32x32, trained on 2 CPU cores in minutes.

  python -m preprocessing --source synthetic --num-images 2000 --image-size 32 \
      --output demo_data
  python -m keypatch_jax.main --config configs/demo.py --workdir demo_work \
      --config.data_dir=demo_data
  python -m keypatch_jax.sample --workdir demo_work --data demo_data --output demo_work/samples.png

The network is the paper's at reduced width (conv_dim 16, embed 64, z 32) and
resolution, so the demo learns to place the parts visibly in a few minutes;
the losses, schedule and update order are the paper's.
"""

from configs import default


def get_config():
  """Demo config."""
  config = default.get_config()
  config.image_size = 32
  config.model.conv_dim = 16
  config.model.embed_dim = 64
  config.model.z_dim = 32
  config.batch_size = 32
  config.num_epochs = 8
  config.shuffle_buffer = 512
  config.log_every_steps = 20
  config.image_every_steps = 200
  config.checkpoint_every_steps = 200
  config.eval_batches = 4
  config.ema_decay = 0.99
  return config
