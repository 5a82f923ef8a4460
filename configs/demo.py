"""Demo: the built-in synthetic faces at 32x32, trained on 2 CPU cores in minutes.

  python -m preprocessing --source synthetic --num-images 2000 --image-size 32 \
      --output demo_data
  python -m keypatch_jax.main --config configs/demo.py --workdir demo_work \
      --config.data_dir=demo_data
  python -m keypatch_jax.sample --workdir demo_work --data demo_data --output demo_work/samples.png

The network is the paper's at reduced width (conv_dim 16, embed 64, z 32) and
resolution, so the demo learns to place the parts visibly in a few minutes.
The losses and update order are the paper's; λ stays at the paper's starting
value 1e-2 for the whole short run (`--config.loss.lambda_end=-4` restores the
paper's decay to 1e-4; docs/demo_quality.md has the measurements).
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
  # A run of 8 short epochs would decay λ 100x before the appearance loss is learned.
  config.loss.lambda_end = config.loss.lambda_start
  return config
