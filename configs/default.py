"""Default KeyPatchGAN config: the paper's setup at 64x64 (docs/design.md §3-4).

configs/paper.py and configs/small.py start from this one and change only what differs;
its fields are the one place model and training defaults live (`models.build_models` has none).

  python -m preprocessing --source folder:/path/to/images --output DATA --image-size 64
  python -m keypatch_jax.main --config configs/default.py --workdir WORK \
      --config.data_dir=DATA
  python -m keypatch_jax.sample --workdir WORK --data DATA --output grid.png
"""

import ml_collections


def get_config() -> ml_collections.ConfigDict:
  """Returns the default config."""
  config = ml_collections.ConfigDict()

  # --- Data -----------------------------------------------------------------
  config.data_dir = ""  # Directory written by `python -m preprocessing` (local or gs://).
  config.image_size = 64  # Network resolution S; must match the dataset's image_size.
  config.num_patches = 3  # N key patches per image; must match the dataset's num_patches.
  config.flip = "per_example"  # Random left-right flip: "per_example", "per_batch" (official), "none".
  config.shuffle_buffer = 4096  # tf.data shuffle buffer (examples).
  config.prefetch = 2  # Batches prefetched onto the devices.

  # --- Model (docs/design.md §3) --------------------------------------------------
  config.model = ml_collections.ConfigDict()
  config.model.conv_dim = 64  # Width of the first conv level; doubles per level, capped at 512.
  config.model.embed_dim = 128  # Part embedding size E.
  config.model.z_dim = 128  # Noise size; z ~ U(-1, 1).
  # How the stride-2 layers are computed; same params and outputs (conv_forms.DOWNSAMPLE/UPSAMPLE).
  # "auto": native on TPU/GPU; on CPU, per layer, the form measured fastest there (docs/design.md §3.3).
  config.model.upsample = "auto"  # "transpose", "subpixel", "subpixel_matmul", "auto".
  config.model.downsample = "auto"  # "native", "polyphase", "im2col", "auto".
  config.model.dtype = "float32"  # Compute dtype ("bfloat16" on TPU/GPU); losses and BN stats stay float32.
  config.model.param_dtype = "float32"  # Parameter dtype.
  config.model.sync_batchnorm = True  # Average BatchNorm statistics over devices (pmean).
  config.model.use_mask_net = True  # False: ablation without the mask network (LA uses the true mask).

  # --- Loss (docs/design.md §4) -----------------------------------------------------
  config.loss = ml_collections.ConfigDict()
  config.loss.fakes = ("G", "GR", "RG", "SR", "RS")  # Fakes of eq. 4 (official last: G, SR, RS; naive GAN: G).
  config.loss.reduction = "mean"  # L1 reduction: "mean" of per-image sums, or "sum" (official).
  config.loss.lambda_start = -2.0  # log10 of λ at the first epoch (before `lambda_scale`).
  config.loss.lambda_end = -4.0  # log10 of λ at the last epoch.
  config.loss.lambda_scale = 64.0  # 64 with reduction "mean" matches the official sum over 64 images.
  # λ1 = spatial_weight·λ, λ2 = λ. 3: each pixel weighs the same in LS and LA (the official code's L1Loss()
  # mean over elements); 1: the paper's λ1 = λ2 on our summed terms (empty masks on the authors' CelebA boxes).
  config.loss.spatial_weight = 3.0
  config.loss.adversarial = True  # False: autoencoder ablation (no discriminator).

  # --- Optimisation ---------------------------------------------------------------
  config.learning_rate = 2e-4  # Adam, one per network.
  config.b1 = 0.5  # Adam β1.
  config.b2 = 0.999  # Adam β2.
  config.d_steps = 1  # D updates per step (paper 1, official last 2).
  config.g_steps = 2  # G updates per step (paper 2, official last 1).
  config.g_first = False  # Update G before D (ablation of the update order).
  config.ema_decay = 0.999  # EMA of the generator's params used for sampling (0 disables).
  config.batch_size = 64  # Global batch size, split over all devices.
  config.num_epochs = 25  # Epochs; λ follows a per-epoch log schedule over them.
  config.num_train_steps = -1  # > 0 overrides num_epochs * steps_per_epoch.
  config.parallel = "pmap"  # "pmap" or "shard_map" (same per-device step over a Mesh).

  # --- Bookkeeping -------------------------------------------------------------------
  config.seed = 0  # PRNG seed for init, noise and data order.
  config.log_every_steps = 50  # Scalars to console/TensorBoard.
  config.image_every_steps = 1000  # Image grids to TensorBoard (and the end of training).
  config.checkpoint_every_steps = 1000  # Async Orbax checkpoint.
  config.max_to_keep = 3  # Checkpoints kept.
  config.eval_batches = 2  # Test batches for the periodic evaluations and the final mask IoU.
  config.eval_every_steps = 1000  # Evaluate the EMA generator on the test split (TensorBoard eval/*); 0: never.
  config.eval_max_share = 0.1  # Skip a due evaluation while evaluations took more than this share of the run.
  config.inception_weights = ""  # pytorch-fid's pt_inception-2015-12-05-6726825d.pth: adds eval/kid (README).
  config.kid_subsets = 100  # KID: mean/std over this many subsets of min(1000, images) images.
  return config
