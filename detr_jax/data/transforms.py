"""The original DETR augmentation as *parameters* sampled on the host.

Every random choice of an example is drawn from a stateless generator keyed
by (seed, epoch, index), before any image is decoded. So the final size of
every example -- and with it the shape bucket of every batch -- is known up
front, all hosts agree on it, and the place to resume from is two integers.
Boxes are transformed here in numpy; pixels and masks follow the same
parameters in tf.data (`pipeline.py`).

Train (as `make_coco_transforms('train')`): horizontal flip p=0.5; then with
p=0.5 a resize of the short side to one of `scales` (long side <=
`max_size`), else a resize to one of `crop_resize` + a random crop of
`crop_min`..`crop_max` + the same random resize. Eval: short side
`eval_size`, long side <= `eval_max_size`.
"""
import dataclasses
from typing import Tuple

import numpy as np


@dataclasses.dataclass(frozen=True)
class Params:
    flip: bool
    resize1: Tuple[int, int]                 # (h, w) after the first resize
    crop: Tuple[int, int, int, int]          # (y, x, h, w) in resize1 coords
    size: Tuple[int, int]                    # final (h, w)


def get_size_with_aspect_ratio(h, w, size, max_size=None):
    """The original's `get_size_with_aspect_ratio` -> (oh, ow)."""
    if max_size is not None:
        mn, mx = float(min(h, w)), float(max(h, w))
        if mx / mn * size > max_size:
            size = int(round(max_size * mn / mx))
    if (w <= h and w == size) or (h <= w and h == size):
        return h, w
    if w < h:
        return int(size * h / w), size
    return size, int(size * w / h)


def sample_train_params(rng, h0, w0, cfg):
    flip = bool(rng.random() < 0.5)
    if rng.random() < 0.5:
        s = int(rng.choice(cfg.scales))
        size = get_size_with_aspect_ratio(h0, w0, s, cfg.max_size)
        return Params(flip, size, (0, 0) + size, size)
    r = int(rng.choice(cfg.crop_resize))
    h1, w1 = get_size_with_aspect_ratio(h0, w0, r, None)
    cw = int(rng.integers(min(cfg.crop_min, w1), min(w1, cfg.crop_max) + 1))
    ch = int(rng.integers(min(cfg.crop_min, h1), min(h1, cfg.crop_max) + 1))
    cy, cx = int(rng.integers(0, h1 - ch + 1)), int(rng.integers(0, w1 - cw + 1))
    s = int(rng.choice(cfg.scales))
    return Params(flip, (h1, w1), (cy, cx, ch, cw),
                  get_size_with_aspect_ratio(ch, cw, s, cfg.max_size))


def eval_resize_params(h0, w0, cfg):
    size = get_size_with_aspect_ratio(h0, w0, cfg.eval_size, cfg.eval_max_size)
    return Params(False, size, (0, 0) + size, size)


def transform_boxes(boxes, p: Params, h0, w0):
    """xyxy pixel boxes of the stored image -> (cxcywh normalized by the
    final size, keep mask). Boxes are clipped to the crop; those left with
    no area are dropped (keep=False), as the original's RandomSizeCrop."""
    b = np.asarray(boxes, np.float32).reshape(-1, 4).copy()
    if p.flip:
        b[:, [0, 2]] = w0 - b[:, [2, 0]]
    h1, w1 = p.resize1
    b *= np.array([w1 / w0, h1 / h0, w1 / w0, h1 / h0], np.float32)
    cy, cx, ch, cw = p.crop
    b -= np.array([cx, cy, cx, cy], np.float32)
    b[:, 0::2] = b[:, 0::2].clip(0, cw)
    b[:, 1::2] = b[:, 1::2].clip(0, ch)
    keep = (b[:, 2] > b[:, 0]) & (b[:, 3] > b[:, 1])
    h2, w2 = p.size
    b *= np.array([w2 / cw, h2 / ch, w2 / cw, h2 / ch], np.float32)
    cxcywh = np.stack([(b[:, 0] + b[:, 2]) / 2 / w2, (b[:, 1] + b[:, 3]) / 2 / h2,
                       (b[:, 2] - b[:, 0]) / w2, (b[:, 3] - b[:, 1]) / h2], -1)
    return cxcywh.astype(np.float32), keep


def choose_bucket(h, w, buckets, where=''):
    """The smallest configured (H, W) bucket holding an h x w image."""
    fits = [b for b in buckets if b[0] >= h and b[1] >= w]
    if not fits:
        raise ValueError(f'{where}an image resized to {h}x{w} fits none of the shape buckets '
                         f'{list(buckets)}; add a larger bucket or lower max_size')
    return min(fits, key=lambda b: (b[0] * b[1], b))


def padding_overhead(sizes_hw, buckets):
    """Bucket pixels over real pixels, summed over images (1.0 = no padding)."""
    real = sum(h * w for h, w in sizes_hw)
    padded = sum(np.prod(choose_bucket(h, w, buckets)) for h, w in sizes_hw)
    return padded / real




def fit_buckets(sizes_hw, k, step=32):
    """Greedily picks `k` bucket shapes (multiples of `step`) for a sample of
    final image sizes, minimizing the total padded area; the first bucket
    covers every size. Run it on your data's sizes (e.g. sampled with
    `sample_train_params`) to trade compilations for padding."""
    sizes = np.asarray(sizes_hw, np.int64).reshape(-1, 2)
    up = -(-sizes // step) * step
    cands = np.unique(up, axis=0)
    top = up.max(0)
    chosen = [tuple(int(v) for v in top)]
    best = np.full(len(sizes), top[0] * top[1], np.int64)  # each image's padded area
    fits = (cands[:, None, 0] >= sizes[None, :, 0]) & (cands[:, None, 1] >= sizes[None, :, 1])
    area = (cands[:, 0] * cands[:, 1])[:, None]
    while len(chosen) < k:
        gain = np.where(fits, np.maximum(best[None] - area, 0), 0).sum(1)
        i = int(gain.argmax())
        if gain[i] <= 0:
            break
        chosen.append(tuple(int(v) for v in cands[i]))
        best = np.where(fits[i], np.minimum(best, area[i, 0]), best)
    return sorted(chosen)
