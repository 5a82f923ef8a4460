"""KeyPatchGAN in JAX/Flax: holistic image generation from unordered key patches.

Lee et al., "Unsupervised Holistic Image Generation from Key Local Patches",
ECCV 2018. See README.md and the module docstrings.
"""

__version__ = "0.1.0"
