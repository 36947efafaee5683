"""COCO's panoptic format: a segment-id map stored as an RGB PNG, id =
R + 256 G + 256^2 B (0 = void), with a json whose `annotations` list per
image `{'image_id', 'file_name', 'segments_info': [{'id', 'category_id',
'iscrowd', 'area', 'bbox', ...}]}`. Reading and writing go through
`paths.as_path` (local folders and buckets alike)."""
import io

import numpy as np
from PIL import Image

from detr_jax.paths import as_path, write_png


def id2rgb(ids):
    """Segment ids [H, W] (< 256^3) -> uint8 [H, W, 3]."""
    ids = np.asarray(ids, np.int64)
    return np.stack([ids % 256, ids // 256 % 256, ids // 65536 % 256], -1).astype(np.uint8)


def rgb2id(rgb):
    """uint8 [H, W, 3] -> segment ids [H, W] int64."""
    rgb = np.asarray(rgb, np.int64)
    return rgb[..., 0] + 256 * rgb[..., 1] + 65536 * rgb[..., 2]


def read_ids(path):
    """The segment-id map [H, W] int64 of a panoptic PNG at `path`."""
    return decode_ids(as_path(path).read_bytes(), what=path)


def decode_ids(data, what='a panoptic image'):
    """Segment ids [H, W] int64 of an encoded panoptic PNG (bytes) or of
    an already decoded RGB array (TFDS's)."""
    if not isinstance(data, (bytes, np.bytes_)):
        return rgb2id(np.asarray(data))
    with Image.open(io.BytesIO(data)) as im:
        if im.mode != 'RGB':
            raise ValueError(f'{what}: a panoptic PNG is RGB (id = R + 256 G + 256^2 B), '
                             f'this one is {im.mode}')
        return rgb2id(np.asarray(im))


def write_ids(path, ids):
    """Writes the segment-id map `ids` [H, W] as a panoptic PNG at `path`
    (parent folders created)."""
    write_png(path, id2rgb(ids))


def resize_ids(ids, hw):
    """A segment-id map resized to `hw` (h, w) with PIL's nearest rule, as
    the original resizes its panoptic PNG (through the RGB image)."""
    img = Image.fromarray(id2rgb(ids)).resize((int(hw[1]), int(hw[0])), resample=Image.NEAREST)
    return rgb2id(np.asarray(img))
