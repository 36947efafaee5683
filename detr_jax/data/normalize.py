"""The one image normalization every path uses (train, eval, predict)."""
import jax.numpy as jnp

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


def normalize(images_u8, pixel_mask):
    """uint8 [B, H, W, 3] -> float32 ImageNet-normalized, padding exactly 0
    (the original pads normalized tensors with zeros)."""
    x = images_u8.astype(jnp.float32) / 255.0
    x = (x - jnp.asarray(IMAGENET_MEAN)) / jnp.asarray(IMAGENET_STD)
    return jnp.where(pixel_mask[..., None], x, 0.0)
