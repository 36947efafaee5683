"""Decoding and resizing images: the one way training, evaluation and
inference read and scale pixels.

`read_image` turns any image PIL can open (grayscale, palette, CMYK, 16-bit,
RGBA, EXIF-rotated) or an array into RGB uint8 [H, W, 3]; `resize` is the
pipeline's resize (TensorFlow's, antialiased bilinear for pixels, nearest
for masks); `eval_pixels` is the whole evaluation recipe of one image.
"""
import io

import numpy as np
import tensorflow as tf
from PIL import Image, ImageOps

from detr_jax.paths import as_path, is_uri


def _scale_16bit(arr):
    """16-bit (or 32-bit integer) intensities -> uint8, full range to 0..255."""
    arr = np.asarray(arr, np.float32)
    return (arr / max(float(arr.max()), 1.0) * 255).astype(np.uint8)


def to_rgb(im: Image.Image, exif=True) -> np.ndarray:
    """A PIL image -> RGB uint8 [H, W, 3], EXIF orientation applied unless
    `exif=False`."""
    if exif:
        im = ImageOps.exif_transpose(im)
    if im.mode in ('I;16', 'I;16B', 'I;16L', 'I'):
        im = Image.fromarray(_scale_16bit(im))
    return np.asarray(im.convert('RGB'), np.uint8)


def read_image(x, exif=True) -> np.ndarray:
    """RGB uint8 [H, W, 3] from a file path (local or a URI:
    `paths.as_path`), encoded bytes, a PIL image or an array ([H, W],
    [H, W, 1], [H, W, 3] or [H, W, 4]; uint8, or uint16 scaled as 16-bit
    files are). `exif=False` keeps the stored orientation (TFDS: its boxes
    are relative to the stored pixels, and TFDS's own decoder ignores EXIF).
    Raises OSError / ValueError / SyntaxError (PIL's) for what cannot be
    read."""
    if isinstance(x, Image.Image):
        return to_rgb(x, exif)
    if isinstance(x, np.ndarray):
        if x.ndim not in (2, 3) or (x.ndim == 3 and x.shape[-1] not in (1, 3, 4)):
            raise ValueError(f'an image array must be [H, W], [H, W, 1|3|4]; got {x.shape}')
        if x.dtype not in (np.uint8, np.uint16):
            raise ValueError(f'an image array must be uint8 or uint16; got {x.dtype}')
        x = x if x.ndim == 3 else x[..., None]
        x = _scale_16bit(x) if x.dtype == np.uint16 else x
        x = x[..., :3] if x.shape[-1] == 4 else x
        return np.ascontiguousarray(np.broadcast_to(x, x.shape[:2] + (3,)), np.uint8)
    if isinstance(x, str) and is_uri(x):
        x = as_path(x).read_bytes()
    with Image.open(io.BytesIO(x) if isinstance(x, bytes) else x) as im:
        return to_rgb(im, exif)


def resize(x, size, method='bilinear'):
    """TensorFlow's resize of [H, W, C] to `size` (h, w) in float32,
    antialiased when bilinear (PIL's filter when shrinking, as torchvision's
    resize of PIL images in the original). Works eagerly and in tf.data."""
    return tf.image.resize(tf.cast(x, tf.float32), size, method=method,
                           antialias=method == 'bilinear')


def to_uint8(x):
    return tf.cast(tf.clip_by_value(tf.round(x), 0, 255), tf.uint8)


def eval_pixels(image, size):
    """The evaluation recipe's pixels: uint8 [H, W, 3] resized to `size`
    (h, w; `transforms.eval_resize_params`) -> uint8 [h, w, 3], equal to
    the eval pipeline's."""
    if tuple(image.shape[:2]) == tuple(size):
        return np.asarray(image, np.uint8)
    return to_uint8(resize(image, size)).numpy()
