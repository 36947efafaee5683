"""Running a trained DETR on images: `Predictor`.

    from detr_jax import Predictor
    predictor = Predictor.load('workdir/demo')      # or a .pth, a HF folder,
    results = predictor(['a.jpg', 'b.png'])          # a converted folder, a
    results[0]['boxes'], results[0]['names']         # published name

Images of any size are resized with the checkpoint's own evaluation recipe
(`data.images.eval_pixels`: the eval pipeline's pixels), padded into the
smallest of its evaluation shape buckets and run `batch_size` at a time, so a
folder of mixed sizes compiles once per bucket, not once per image (an image
larger than every bucket gets its own shape, padded to a multiple of 32).

A result per image (numpy, detections best first, at most one per query):
  boxes [N, 4] xyxy pixels of the original image; scores [N]; labels [N]
  (class indices); category_ids [N] (the label map's ids); names [N];
  queries [N] (which decoder query made each); image_size (h, w);
  input_size (h, w) the resized image the model saw (unpadded).
  Panoptic models add masks bool [N, h, w] (the original's PostProcessSegm,
  sigmoid > 0.5) and panoptic {'ids' [h, w] (0 = void), 'segments_info'}
  (`postprocess.panoptic`).
  With `return_attention=True`: decoder_attention [N, fh, fw] (each
  detection's query, the last decoder layer's cross-attention averaged over
  heads) and encoder_attention [fh, fw, fh, fw] (the last encoder layer's
  self-attention at every cell, averaged over heads), over the feature cells
  that cover the image (fh x fw; padding cells dropped, each map sums to 1;
  a cell is feature_stride x feature_stride pixels of the resized image),
  as the original's Colab shows them; `draw.draw_attention` draws them.
"""
import logging
from typing import Iterable, Iterator

import jax
import jax.numpy as jnp
import numpy as np
from flax import traverse_util

from detr_jax import checkpoints
from detr_jax.config_defaults import base_config
from detr_jax.data.images import eval_pixels, read_image
from detr_jax.data.normalize import normalize
from detr_jax.data.transforms import choose_bucket, get_size_with_aspect_ratio
from detr_jax.evaluate import coco_result
from detr_jax.models import build_model, feature_stride, full_model_config
from detr_jax.postprocess import (detections, is_thing_per_class, masks_at_size,
                                  panoptic_on_device, panoptic_segments, segmentation_masks,
                                  select)


class ImageError(ValueError):
    """An input that is not a readable image (the message names it)."""


def load(path_or_name):
    """(model_config, variables, label_map {class index: {'id', 'name',
    'isthing'}}, data config with the eval recipe) from a training workdir
    (EMA weights when it kept them), a converted folder, an official .pth, a
    Hugging Face checkpoint or a published name (`convert.PUBLISHED`, from
    local files)."""
    if checkpoints.is_workdir(str(path_or_name)):
        config, variables, _ = checkpoints.load_workdir(str(path_or_name))
        model_cfg, data = config.model, config.data
    else:
        from detr_jax.convert import from_pretrained
        model_cfg, variables = from_pretrained(str(path_or_name))
        data = base_config().data  # the original's recipe: 800 / 1333
    label_map = {int(k): dict(v) for k, v in dict(model_cfg.get('label_map', {})).items()}
    return model_cfg, variables, label_map, data


def attention_maps(intermediates):
    """The last encoder layer's self-attention and the last decoder layer's
    cross-attention from `apply(..., mutable=['intermediates'])`, averaged
    over heads: {'encoder_attention' [B, S, S], 'decoder_attention' [B, Q,
    S], 'feature_mask' [B, h, w]} with S = h * w cells, row-major."""
    flat = traverse_util.flatten_dict(intermediates)

    def last(layer_prefix, module, name):
        found = sorted((int(k[-3][len(layer_prefix):]), v[0]) for k, v in flat.items()
                       if len(k) >= 3 and k[-3].startswith(layer_prefix)
                       and k[-2:] == (module, name))
        return found[-1][1] if found else None
    dec = last('decoder_layers_', 'multihead_attn', 'attention_weights')
    if dec is None:  # the conditional decoder sows its own cross-attention
        found = sorted((int(k[-2][len('decoder_layers_'):]), v[0]) for k, v in flat.items()
                       if k[-1] == 'cross_attention_weights')
        dec = found[-1][1]
    enc = last('encoder_layers_', 'self_attn', 'attention_weights')
    mask = next(v[0] for k, v in flat.items() if k[-1] == 'feature_mask')
    b, h, w = mask.shape
    if enc is None:  # no encoder layers: no encoder attention
        enc = jnp.zeros((b, 1, h * w, h * w))
    return {'encoder_attention': enc.astype(jnp.float32).mean(1),
            'decoder_attention': dec.astype(jnp.float32).mean(1), 'feature_mask': mask}


def coco_results(result, image_id):
    """One image's result -> COCO results json entries ({'image_id',
    'category_id' (the label map's id), 'bbox' [x, y, w, h] pixels,
    'score'}), for `evaluate.coco_ap` or any COCO tool."""
    return [coco_result(image_id, c, b, s)
            for b, c, s in zip(result['boxes'], result['category_ids'], result['scores'])]


class Predictor:
    """A model, its weights and its evaluation recipe, callable on images
    (see the module's docstring for what a result holds)."""

    def __init__(self, model_config, variables, label_map=None, data_config=None,
                 batch_size=None):
        self.model_config = full_model_config(model_config)
        # on one device: a workdir's weights come replicated over every
        # device, and jit would then run each image on all of them
        self.variables = jax.device_put(variables, jax.local_devices()[0])
        self.label_map = label_map or {}
        data = data_config or base_config().data
        self.eval_size, self.eval_max_size = int(data.eval_size), int(data.eval_max_size)
        self.buckets = tuple(tuple(int(v) for v in b) for b in data.eval_buckets)
        # a partial batch is filled with empty rows, computed all the same: on
        # a CPU, batching gains nothing (R50 at 800x1088: 1.37 s an image
        # alone, 1.33 in twos), so images go one by one there
        self.batch_size = int(batch_size or (1 if jax.default_backend() == 'cpu' else 8))
        self.model = build_model(self.model_config)
        self.panoptic = bool(self.model_config.masks)
        self.is_thing = is_thing_per_class(self.label_map, self.model_config.num_classes,
                                           unmapped=True)
        static = ('attention', 'panoptic_threshold')
        self._run = jax.jit(self._outputs, static_argnames=static)
        self._run_u8 = jax.jit(self._from_uint8, static_argnames=static)
        self._segm = jax.jit(lambda m, s, keep: segmentation_masks(m, s)[0, keep])
        self._big_shapes = set()

    @classmethod
    def load(cls, path_or_name, batch_size=None):
        """A Predictor for a workdir, converted folder, .pth, HF checkpoint
        or published name (`inference.load`)."""
        model_cfg, variables, label_map, data = load(path_or_name)
        return cls(model_cfg, variables, label_map, data, batch_size)

    # --- the model on a batch ---------------------------------------------------

    def _outputs(self, variables, pixels, pixel_mask, orig_sizes, sizes, attention,
                 panoptic_threshold):
        if attention:
            out, state = self.model.apply(variables, pixels, pixel_mask,
                                          mutable=['intermediates'])
        else:
            out = self.model.apply(variables, pixels, pixel_mask)
        res = dict(detections(out, orig_sizes, self.model_config.detections,
                              self.model_config.class_head))
        if self.panoptic:
            res['pan'] = panoptic_on_device(out, sizes, panoptic_threshold)
            res['pred_masks'] = out['pred_masks']
        if attention:
            res.update(attention_maps(state['intermediates']))
        return res

    def _from_uint8(self, variables, images, pixel_mask, orig_sizes, sizes, attention,
                    panoptic_threshold):
        return self._outputs(variables, normalize(images, pixel_mask), pixel_mask, orig_sizes,
                             sizes, attention, panoptic_threshold)

    def predict_normalized(self, pixels, pixel_mask, orig_sizes, threshold=0.7,
                           return_attention=False, panoptic_threshold=0.85):
        """Results for inputs exactly as `module.apply` takes them:
        normalized float32 `pixels` [B, H, W, 3] (padding 0), `pixel_mask`
        [B, H, W] True on real pixels (top-left), `orig_sizes` [B, 2] (h, w)
        to return boxes and masks at."""
        pixel_mask = np.asarray(pixel_mask, bool)
        sizes = np.stack([pixel_mask.any(2).sum(1), pixel_mask.any(1).sum(1)], -1)
        out = self._run(self.variables, jnp.asarray(pixels), jnp.asarray(pixel_mask),
                        jnp.asarray(orig_sizes), jnp.asarray(sizes, jnp.int32),
                        attention=bool(return_attention),
                        panoptic_threshold=float(panoptic_threshold))
        return self._results(out, range(len(pixel_mask)), np.asarray(orig_sizes), sizes,
                             threshold)

    def _results(self, out, rows, orig_sizes, sizes, threshold):
        """Per-image host results for batch rows `rows` of device outputs."""
        host = {k: np.asarray(v) for k, v in out.items()
                if k not in ('pan', 'pred_masks', 'encoder_attention')}
        segments = None
        if self.panoptic:
            pan = {k: np.asarray(v) for k, v in out['pan'].items()}
            segments = panoptic_segments(pan, out['pred_masks'], sizes, orig_sizes,
                                         self.is_thing, self.label_map)
        results = []
        kept = select({k: host[k][list(rows)] for k in ('scores', 'labels', 'boxes', 'queries')},
                      threshold)
        for i, r in zip(rows, kept):
            order, labels = r['queries'], r['labels']
            r.update({'category_ids': np.array([self.label_map.get(int(c), {}).get('id', int(c))
                                                for c in labels], np.int64),
                      'names': [self.label_map.get(int(c), {}).get('name', str(int(c)))
                                for c in labels],
                      'image_size': tuple(int(v) for v in orig_sizes[i]),
                      'input_size': tuple(int(v) for v in sizes[i])})
            if self.panoptic:
                masks = np.asarray(self._segm(out['pred_masks'][i:i + 1],
                                              jnp.asarray(sizes[i:i + 1], jnp.int32),
                                              jnp.asarray(order)))
                r['masks'] = masks_at_size(masks, sizes[i], orig_sizes[i])
                r['panoptic'] = segments[i]
            if 'feature_mask' in host:
                fm = host['feature_mask'][i]
                fh, fw = int(fm.any(1).sum()), int(fm.any(0).sum())
                h, w = fm.shape
                enc = np.asarray(out['encoder_attention'][i]).reshape(h, w, h, w)
                dec = host['decoder_attention'][i][order].reshape(-1, h, w)
                r['decoder_attention'] = dec[:, :fh, :fw]
                r['encoder_attention'] = enc[:fh, :fw, :fh, :fw]
                r['feature_stride'] = feature_stride(self.model_config)
            results.append(r)
        return results

    # --- images -----------------------------------------------------------------

    def _prepare(self, image):
        """uint8 [H0, W0, 3] -> (pixels at the eval size, bucket (H, W),
        original (h0, w0))."""
        h0, w0 = image.shape[:2]
        size = get_size_with_aspect_ratio(h0, w0, self.eval_size, self.eval_max_size)
        try:
            bucket = choose_bucket(*size, self.buckets)
        except ValueError:
            bucket = (-(-size[0] // 32) * 32, -(-size[1] // 32) * 32)
            if bucket not in self._big_shapes:
                self._big_shapes.add(bucket)
                logging.warning('an image resized to %dx%d fits none of the eval buckets %s; '
                                'it runs at its own shape %s (one more compilation)',
                                *size, list(self.buckets), bucket)
        return eval_pixels(image, size), bucket, (h0, w0)

    def _run_bucket(self, bucket, items, threshold, attention, panoptic_threshold):
        """items: [(pixels [h, w, 3], orig (h0, w0))] of one bucket, at most
        `batch_size` -> their results (the batch is filled with empty rows)."""
        n, (H, W) = self.batch_size, bucket
        images = np.zeros((n, H, W, 3), np.uint8)
        mask = np.zeros((n, H, W), bool)
        sizes = np.zeros((n, 2), np.int32)
        orig = np.ones((n, 2), np.int32)
        for j, (px, hw0) in enumerate(items):
            h, w = px.shape[:2]
            images[j, :h, :w], mask[j, :h, :w] = px, True
            sizes[j], orig[j] = (h, w), hw0
        out = self._run_u8(self.variables, jnp.asarray(images), jnp.asarray(mask),
                           jnp.asarray(orig), jnp.asarray(sizes), attention=attention,
                           panoptic_threshold=panoptic_threshold)
        return self._results(out, range(len(items)), orig, sizes, threshold)

    def predict_iter(self, images: Iterable, threshold=0.7, return_attention=False,
                     panoptic_threshold=0.85, errors='raise') -> Iterator[dict]:
        """Results in input order, reading a few batches of images at a time
        (a folder never sits in memory whole). An unreadable input raises
        `ImageError` naming it, or with `errors='skip'` gives
        {'error': message} in its place and the rest still run."""
        if errors not in ('raise', 'skip'):
            raise ValueError(f"errors={errors!r}: must be 'raise' or 'skip'")
        window = []
        for i, x in enumerate(images):
            window.append(self._read(i, x, errors))
            if len(window) == 8 * self.batch_size:
                yield from self._run_window(window, threshold, return_attention,
                                            panoptic_threshold)
                window = []
        yield from self._run_window(window, threshold, return_attention, panoptic_threshold)

    def __call__(self, images, threshold=0.7, return_attention=False, panoptic_threshold=0.85,
                 errors='raise'):
        """Results for one image (a path, PIL image or uint8/uint16 array)
        or a list of them; see the module's docstring."""
        single = not isinstance(images, (list, tuple))
        out = list(self.predict_iter([images] if single else images, threshold,
                                     return_attention, panoptic_threshold, errors))
        return out[0] if single else out

    def _read(self, i, x, errors):
        try:
            return self._prepare(read_image(str(x) if hasattr(x, '__fspath__') else x))
        except (OSError, ValueError, SyntaxError) as e:
            name = str(x) if isinstance(x, str) or hasattr(x, '__fspath__') else \
                f'image {i} ({type(x).__name__})'
            error = ImageError(f'{name}: cannot read image: {e}')
            if errors == 'raise':
                raise error from e
            return error

    def _run_window(self, window, threshold, attention, panoptic_threshold):
        results = [None] * len(window)
        groups = {}
        for i, item in enumerate(window):
            if isinstance(item, ImageError):
                results[i] = {'error': str(item)}
            else:
                groups.setdefault(item[1], []).append(i)
        for bucket, idx in sorted(groups.items()):
            for k in range(0, len(idx), self.batch_size):
                chunk = idx[k:k + self.batch_size]
                items = [(window[i][0], window[i][2]) for i in chunk]
                for i, r in zip(chunk, self._run_bucket(bucket, items, threshold, attention,
                                                        panoptic_threshold)):
                    results[i] = r
        return results
