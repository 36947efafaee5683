"""Batches for the jitted steps: static shapes, resumable deterministic order.

An epoch is *planned* on the host before anything is decoded: a permutation
of the examples from (seed, epoch), each example's augmentation from
(seed, epoch, index), hence its final size and shape bucket; batches are
filled within a bucket in permutation order (leftovers at the end of a
training epoch are dropped). The position is (epoch, batch); restoring it
replans the epoch and skips to the batch. Every process plans the same
epoch and takes its own slice of every batch, so all hosts agree on each
step's shapes.

tf.data then decodes and transforms the pixels (and panoptic masks) of the
planned examples in parallel. A batch is a dict of numpy arrays:
`images` uint8 [B, H, W, 3]; `pixel_mask` bool [B, H, W] (True on real
pixels); `size`, `orig_size` [B, 2] (h, w); `image_id` [B] (-1 for the
filler of a last partial eval batch); `labels` [B, M] int32, `boxes`
[B, M, 4] (cx, cy, w, h normalized by `size`), `valid` [B, M] bool; with
masks, `masks` [B, M, H, W] bool. `split_batch` separates what a jitted
step takes (`TRAIN_STEP_KEYS`, `EVAL_STEP_KEYS`) from what stays on the host.
"""
import atexit
import collections
import dataclasses
import functools
import logging
import weakref
from typing import Dict, List, Tuple

import numpy as np
import tensorflow as tf

from detr_jax.data.coco_format import DataError, Source
from detr_jax.data.images import read_image, resize, to_uint8
from detr_jax.data.transforms import (Params, choose_bucket, eval_resize_params,
                                      sample_train_params, transform_boxes)
from detr_jax.panoptic_format import rgb2id

# What the jitted train / eval steps take from a batch; the rest (image ids,
# sizes, and for drawings the whole batch) stays on the host.
TRAIN_STEP_KEYS = ('images', 'pixel_mask', 'labels', 'boxes', 'valid', 'masks')
EVAL_STEP_KEYS = ('images', 'pixel_mask', 'orig_size', 'size')


def split_batch(batch, step_keys):
    """A numpy batch -> (the entries a step takes, the other entries)."""
    device = {k: v for k, v in batch.items() if k in step_keys}
    host = {k: v for k, v in batch.items() if k not in step_keys}
    return device, host


def _keep_tensorflow_off_accelerators():
    """tf.data runs on the host: TensorFlow must not claim GPU memory that
    JAX uses (called when a pipeline is built, not at import)."""
    tf.config.set_visible_devices([], 'GPU')


@dataclasses.dataclass
class Planned:
    index: int          # example index in the Source, -1 for a filler
    params: Params
    boxes: np.ndarray   # [n, 4] cxcywh normalized
    labels: np.ndarray  # [n]
    segments: np.ndarray  # [n] panoptic segment ids (or empty)


def _plan_example(source, i, params, cfg, counts):
    h0, w0 = (int(v) for v in source.sizes[i])
    boxes, keep = transform_boxes(source.boxes[i], params, h0, w0)
    labels = source.labels[i][keep]
    segs = source.segment_ids[i][keep] if source.segment_ids is not None else np.zeros((0,), np.int64)
    boxes = boxes[keep]
    if len(labels) > cfg.max_boxes:
        if not cfg.truncate_boxes:
            raise DataError(f'{source.image_paths[i]} (image id {source.image_ids[i]}): '
                            f'{len(labels)} objects exceed max_boxes={cfg.max_boxes}; raise '
                            'data.max_boxes or set data.truncate_boxes=True')
        counts['truncated_boxes'] += len(labels) - cfg.max_boxes
        boxes, labels, segs = boxes[:cfg.max_boxes], labels[:cfg.max_boxes], segs[:cfg.max_boxes]
    return Planned(i, params, boxes, labels, segs)


def plan_train_epoch(source: Source, cfg, epoch: int) -> List[Tuple[Tuple[int, int], list]]:
    """[(bucket, [Planned] * batch_size)] for one training epoch."""
    order = np.random.default_rng([cfg.seed, epoch]).permutation(len(source))
    pending, batches = collections.defaultdict(list), []
    counts = collections.Counter()
    for i in order:
        h0, w0 = (int(v) for v in source.sizes[i])
        p = sample_train_params(np.random.default_rng([cfg.seed, epoch, int(i), 1]), h0, w0, cfg)
        bucket = choose_bucket(*p.size, cfg.buckets, f'{source.image_paths[i]}: ')
        pending[bucket].append(_plan_example(source, int(i), p, cfg, counts))
        if len(pending[bucket]) == cfg.batch_size:
            batches.append((bucket, pending.pop(bucket)))
    if counts:
        logging.info('epoch %d: %s', epoch, dict(counts))
    return batches


def plan_eval(source: Source, cfg, batch_size=None):
    """Every image once, in dataset order within each bucket; a last partial
    batch of a bucket is filled with fillers (index -1, no valid targets)."""
    batch_size = batch_size or cfg.eval_batch_size
    groups = collections.defaultdict(list)
    counts = collections.Counter()
    for i in range(len(source)):
        h0, w0 = (int(v) for v in source.sizes[i])
        p = eval_resize_params(h0, w0, cfg)
        bucket = choose_bucket(*p.size, cfg.eval_buckets, f'{source.image_paths[i]}: ')
        groups[bucket].append(_plan_example(source, i, p, cfg, counts))
    batches = []
    for bucket in sorted(groups):
        items = groups[bucket]
        for s in range(0, len(items), batch_size):
            chunk = items[s:s + batch_size]
            filler = Planned(-1, Params(False, bucket, (0, 0) + tuple(bucket), tuple(bucket)),
                             np.zeros((0, 4), np.float32), np.zeros((0,), np.int32),
                             np.zeros((0,), np.int64))
            batches.append((bucket, chunk + [filler] * (batch_size - len(chunk))))
    return batches


def _decode(path, png, segs, h0, w0, skip_bad, index, reader=None, skipped=None, cache=None,
            errors=None, with_masks=True):
    """Host decode: any PIL image (grayscale, CMYK, 16-bit, EXIF-rotated) to
    RGB uint8, and panoptic masks [h, w, M] for the given segment ids
    (zeros unless `with_masks`: the panoptic image is then not decoded).
    Files are read from `path`/`png`, or with a `reader` (TFDS) from
    example `index`.

    An unreadable image is an error naming the file, or with `skip_bad` a
    black image whose targets the caller drops (shapes stay static), counted
    by reason in `skipped` (a Counter of the dataset being read). Inside
    tf.data the error is appended to the list `errors` (and a black image
    returned), for the consumer to raise as it is: an exception raised
    here would reach it only as TensorFlow's wrapper.

    With a `cache` (a dict; `data.cache_images`) each image is decoded once
    and then read from memory (with a reader's encoded panoptic PNG; the masks
    themselves depend on `segs` and are made each time)."""
    path, pan = path.decode(), None
    key = int(index) if reader is not None else path
    try:
        if cache is not None and key in cache:
            img, pan = cache[key]
        elif reader is not None:
            data, pan = reader(int(index))
            img = read_image(data, exif=False)
        else:
            img = read_image(path)
        if img.shape[:2] != (h0, w0):
            raise ValueError(f'decoded size {img.shape[0]}x{img.shape[1]} differs from the '
                             f'annotated {h0}x{w0}')
    except (OSError, ValueError, SyntaxError) as e:
        if not skip_bad:
            error = DataError(f'{path}: cannot use image: {e}')
            if errors is None:
                raise error from e
            errors.append(error)
        elif skipped is not None:
            skipped[f'{type(e).__name__}: {str(e)[:60]}'] += 1
        return (np.zeros((h0, w0, 3), np.uint8), np.zeros((h0, w0, len(segs)), np.uint8),
                np.bool_(False))
    if cache is not None:
        cache[key] = (img, pan)
    if with_masks and (png or pan is not None):  # else the masks are never read
        ids = rgb2id(read_image(pan if pan is not None else png.decode()))
        masks = (ids[..., None] == segs[None, None, :]).astype(np.uint8)
    else:
        masks = np.zeros(img.shape[:2] + (len(segs),), np.uint8)
    return img, masks, np.bool_(True)


def _tf_transform(e, with_masks, skip_bad, reader, skipped, cache, errors):
    img, masks, ok = tf.numpy_function(
        functools.partial(_decode, reader=reader, skipped=skipped, cache=cache, errors=errors,
                          with_masks=with_masks),
        [e['path'], e['png'], e['segs'], e['h0'], e['w0'], skip_bad, e['index']],
        [tf.uint8, tf.uint8, tf.bool])
    img = tf.reshape(img, tf.stack([e['h0'], e['w0'], 3]))
    masks = tf.reshape(masks, tf.stack([e['h0'], e['w0'], tf.shape(e['segs'])[0]]))

    def geometry(x, method):
        x = tf.cond(e['flip'], lambda: tf.reverse(x, [1]), lambda: x)
        dtype = x.dtype
        x = resize(x, e['resize1'], method)
        x = x[e['crop'][0]:e['crop'][0] + e['crop'][2], e['crop'][1]:e['crop'][1] + e['crop'][3]]
        x = tf.cond(tf.reduce_all(tf.shape(x)[:2] == e['size']), lambda: x,
                    lambda: resize(x, e['size'], method))
        x = tf.cast(to_uint8(x), dtype)
        pad = [[0, e['bucket'][0] - e['size'][0]], [0, e['bucket'][1] - e['size'][1]], [0, 0]]
        return tf.pad(x, pad)

    out = {'images': geometry(img, 'bilinear'),
           'pixel_mask': tf.pad(tf.ones(e['size'], tf.bool),
                                [[0, e['bucket'][0] - e['size'][0]], [0, e['bucket'][1] - e['size'][1]]])}
    if with_masks:
        m = geometry(masks, 'nearest')
        out['masks'] = tf.transpose(tf.cast(m, tf.bool), [2, 0, 1])
    for k in ('size', 'orig_size', 'image_id', 'labels', 'boxes'):
        out[k] = e[k]
    out['valid'] = tf.logical_and(e['valid'], ok)  # a skipped image has no targets
    return out


def _filler_transform(e, with_masks):
    h, w = e['bucket'][0], e['bucket'][1]
    out = {'images': tf.zeros(tf.stack([h, w, 3]), tf.uint8),
           'pixel_mask': tf.zeros(tf.stack([h, w]), tf.bool)}
    if with_masks:
        out['masks'] = tf.zeros(tf.stack([tf.shape(e['labels'])[0], h, w]), tf.bool)
    for k in ('size', 'orig_size', 'image_id', 'labels', 'boxes', 'valid'):
        out[k] = e[k]
    return out


def _elements(source, batches, cfg, lo, hi):
    m = cfg.max_boxes
    rows = collections.defaultdict(list)
    for bucket, items in batches:
        for it in items[lo:hi]:
            n = len(it.labels)
            rows['filler'].append(it.index < 0)
            rows['path'].append('' if it.index < 0 else source.image_paths[it.index])
            rows['index'].append(-1 if it.index < 0 or source.reader is None
                                 else int(source.reader_index[it.index]))
            png = None
            if it.index >= 0 and source.panoptic_pngs is not None:
                png = source.panoptic_pngs[it.index]
            rows['png'].append(png or '')
            segs = np.full((m,), -1, np.int64)
            segs[:n] = it.segments[:n] if len(it.segments) else -1
            rows['segs'].append(segs)
            hw = source.sizes[it.index] if it.index >= 0 else np.zeros(2, np.int32)
            rows['h0'].append(int(hw[0]))
            rows['w0'].append(int(hw[1]))
            rows['orig_size'].append(np.array(hw, np.int32))
            rows['flip'].append(it.params.flip)
            rows['resize1'].append(it.params.resize1)
            rows['crop'].append(it.params.crop)
            # a filler has no real pixels: size (0, 0)
            rows['size'].append(np.array(it.params.size if it.index >= 0 else (0, 0), np.int32))
            rows['bucket'].append(bucket)
            rows['image_id'].append(-1 if it.index < 0 else int(source.image_ids[it.index]))
            lab, box, val = np.zeros((m,), np.int32), np.zeros((m, 4), np.float32), np.zeros((m,), bool)
            lab[:n], box[:n], val[:n] = it.labels, it.boxes, True
            rows['labels'].append(lab)
            rows['boxes'].append(box)
            rows['valid'].append(val)
    out = {k: np.array(v) for k, v in rows.items()}
    for k in ('h0', 'w0', 'resize1', 'crop', 'size', 'bucket', 'orig_size'):
        out[k] = out[k].astype(np.int32)
    out['index'] = out['index'].astype(np.int64)
    return out


def make_tf_dataset(source, batches, cfg, local_batch, lo, hi, with_masks=False, skipped=None,
                    image_cache=None, errors=None):
    """tf.data over planned batches (this host's slice [lo, hi) of each).
    Images skipped as unreadable are counted in the Counter `skipped`;
    decoded images are kept in the dict `image_cache` if given; with
    `on_bad_input='error'` an unreadable image's DataError is appended to
    the list `errors` (`numpy_batches` raises it)."""
    if not batches:
        return None
    _keep_tensorflow_off_accelerators()
    el = _elements(source, batches, cfg, lo, hi)
    skip_bad = cfg.on_bad_input == 'skip'
    ds = tf.data.Dataset.from_tensor_slices(el)
    ds = ds.map(lambda e: tf.cond(e['filler'], lambda: _filler_transform(e, with_masks),
                                  lambda: _tf_transform(e, with_masks, skip_bad, source.reader,
                                                        skipped, image_cache, errors)),
                num_parallel_calls=tf.data.AUTOTUNE, deterministic=True)
    ds = ds.batch(local_batch).prefetch(cfg.prefetch)
    # Without tf.data's autotuning thread: a training run makes a new dataset
    # per epoch (and per evaluation), and destroying an iterator whose
    # autotuner is running blocked the main thread for 8-10 s at about half
    # of the epoch boundaries (py-spy: ~LogicalThreadWrapper in
    # ~RootDataset::Iterator), about a quarter of the demo's wall time. The
    # demo's pipeline alone: 1340 images/s without the tuner, 770-1310 with.
    options = tf.data.Options()
    options.autotune.enabled = False
    return ds.with_options(options)


class InputPipeline:
    """Endless training batches from a resumable position.

    `position` is {'epoch', 'batch'}: the next batch to produce. Planning an
    epoch is cheap (no decoding), so `restore` just replans.
    """

    def __init__(self, source: Source, cfg, process_index=0, process_count=1, with_masks=False):
        if cfg.batch_size % process_count:
            raise ValueError(f'data.batch_size={cfg.batch_size} must be divisible by the '
                             f'{process_count} processes')
        self.source, self.cfg, self.with_masks = source, cfg, with_masks
        self.local = cfg.batch_size // process_count
        self.lo, self.hi = process_index * self.local, (process_index + 1) * self.local
        self.position = {'epoch': 0, 'batch': 0}
        self.skipped_last_epoch = {}
        self._skipped = collections.Counter()
        self._plans: Dict[int, list] = {}
        # decoded images kept across epochs (data.cache_images: small sets
        # such as the demo's, where decoding took a third of the CPU time)
        self._images = {} if cfg.cache_images else None

    def plan(self, epoch):
        if epoch not in self._plans:
            self._plans = {epoch: plan_train_epoch(self.source, self.cfg, epoch)}
            if not self._plans[epoch]:
                raise DataError(f'{self.source.name}: an epoch has no full batch of '
                                f'{self.cfg.batch_size} in any bucket; lower data.batch_size '
                                'or use fewer buckets')
        return self._plans[epoch]

    def restore(self, position):
        self.position = {'epoch': int(position['epoch']), 'batch': int(position['batch'])}

    def __iter__(self):
        return _closed_at_exit(self._batches())

    def _batches(self):
        while True:
            epoch, start = self.position['epoch'], self.position['batch']
            batches = self.plan(epoch)
            self._skipped = collections.Counter()  # this epoch's, not an eval's
            errors = []
            ds = make_tf_dataset(self.source, batches[start:], self.cfg, self.local, self.lo,
                                 self.hi, self.with_masks, self._skipped, self._images, errors)
            for k, batch in enumerate(numpy_batches(ds, errors)):
                nxt = start + k + 1
                if nxt < len(batches):
                    self.position = {'epoch': epoch, 'batch': nxt}
                else:  # the epoch is decoded: report what it skipped
                    self._end_epoch(epoch)
                yield batch
            if ds is None:
                self._end_epoch(epoch)

    def _end_epoch(self, epoch):
        self.position = {'epoch': epoch + 1, 'batch': 0}
        self.skipped_last_epoch = dict(self._skipped)
        if self._skipped:
            logging.warning('epoch %d of %s: skipped unreadable images: %s', epoch,
                            self.source.name, self.skipped_last_epoch)


def eval_batches(source: Source, cfg, process_index=0, process_count=1, with_masks=False,
                 skipped=None):
    """Every image of `source` once (fillers complete the last batches).
    Unreadable images skipped (`on_bad_input=skip`) are counted in the
    Counter `skipped` if given and logged when the pass ends; they stay in
    the evaluation as black images."""
    bs = cfg.eval_batch_size
    if bs % process_count:
        raise ValueError(f'data.eval_batch_size={bs} must be divisible by {process_count} processes')
    local = bs // process_count
    batches = plan_eval(source, cfg, bs)
    skipped = collections.Counter() if skipped is None else skipped
    errors = []
    ds = make_tf_dataset(source, batches, cfg, local, process_index * local,
                         (process_index + 1) * local, with_masks, skipped, errors=errors)

    def batches_then_report():
        yield from numpy_batches(ds, errors)
        if skipped:
            logging.warning('evaluation of %s: unreadable images evaluated as black: %s',
                            source.name, dict(skipped))
    return _closed_at_exit(batches_then_report())


# Batch generators still open. A tf.data iterator destroyed while its
# numpy_function decoders are running waits for them, and during interpreter
# shutdown they can no longer take the GIL: a script that stopped reading a
# pipeline mid-epoch hung at exit, every time. atexit runs while they still can.
_OPEN = weakref.WeakSet()


def _closed_at_exit(gen):
    _OPEN.add(gen)
    return gen


@atexit.register
def _close_open_pipelines():
    for gen in list(_OPEN):
        gen.close()


def numpy_batches(ds, errors):
    """The numpy batches of a `make_tf_dataset` dataset; an unreadable image
    recorded in `errors` is raised as its DataError (naming the file) before
    the batch that holds it is handed out."""
    if ds is None:
        return
    for batch in ds.as_numpy_iterator():
        if errors:
            raise errors[0]
        yield batch
