"""`detr-jax export`: a checkpoint as files that run without detr_jax.

    detr-jax export --checkpoint C --out DIR [--format stablehlo,savedmodel]
                    [--buckets 800x1088,1088x800] [--input uint8|float]
                    [--postprocess] [--platforms cpu,cuda,tpu]

- `stablehlo`: one serialized `jax.export.Exported` per image bucket
  (`model_HxW.stablehlo`), lowered for every platform in `--platforms`, the
  batch dimension symbolic (`b`); the weights are constants inside. Load
  with `jax.export.deserialize(bytes).call(...)`; JAX alone runs it.
- `savedmodel`: one TensorFlow SavedModel (`savedmodel/`) with a serving
  signature per bucket (`serving_HxW`; `serving_default` = the first), the
  batch dimension `None`, the weights as TensorFlow variables. Made with
  `jax2tf.convert` (native serialization: the same StableHLO inside an
  XlaCallModule op), as JAX's jax2tf documentation recommends for
  SavedModels (github.com/jax-ml/jax, jax/experimental/jax2tf/README.md);
  for TF Serving (CPU, and TPU when `tpu` is among the platforms).
- `manifest.json`: per artifact its file, format, platforms, input and
  output names with shapes (symbolic dims by name), dtypes; the
  normalization, the evaluation resize, the model config and the label map.

Inputs: `--input=uint8` (default) images uint8 [b, H, W, 3] and pixel_mask
bool [b, H, W] (True on the real, top-left pixels), normalization inside;
`--input=float` exactly what `module.apply` takes (ImageNet-normalized
float32 images, padding 0, and the mask). Outputs: `module.apply`'s
`pred_logits` [b, Q, C+1] and `pred_boxes` [b, Q, 4] (cx, cy, w, h in [0, 1]
of the unpadded image), plus `pred_masks` [b, Q, H/4, W/4] (mask logits)
for panoptic models. `--postprocess` instead returns the detections
(`postprocess.detections` of the model config's `detections` kind: the
original's PostProcess by default): `scores`, `labels`, `queries` [b, Q],
`boxes` [b, Q, 4] xyxy in pixels of an extra input `orig_sizes` int32
[b, 2] (h, w); a panoptic model keeps
`pred_masks` then (merging segments is host work: `postprocess.panoptic`).
"""
import argparse
import sys

import jax
import jax.numpy as jnp
import numpy as np

from detr_jax.data.normalize import IMAGENET_MEAN, IMAGENET_STD, normalize
from detr_jax.inference import load
from detr_jax.models import build_model, full_model_config, validate_image_size
from detr_jax.models.boosters import strip_training_only
from detr_jax.paths import as_path, write_json
from detr_jax.postprocess import detections

FORMATS = ('stablehlo', 'savedmodel')
PLATFORMS = ('cpu', 'cuda', 'rocm', 'tpu')


def model_function(model, model_config, input_kind='uint8', postprocess=False):
    """(fn(variables, *inputs) -> dict of outputs, input names)."""
    model_config = full_model_config(model_config)
    masks = bool(model_config.masks)

    def fn(variables, images, pixel_mask, orig_sizes=None):
        x = normalize(images, pixel_mask) if input_kind == 'uint8' else images
        out = model.apply(variables, x, pixel_mask)
        res = {'pred_logits': out['pred_logits'], 'pred_boxes': out['pred_boxes']}
        if postprocess:
            res = dict(detections(out, orig_sizes, model_config.detections,
                                  model_config.class_head))
            res['labels'] = res['labels'].astype(jnp.int32)
        if masks:
            res['pred_masks'] = out['pred_masks']
        return res
    names = ['images', 'pixel_mask'] + (['orig_sizes'] if postprocess else [])
    return fn, names


def input_specs(bucket, input_kind, postprocess, batch):
    """ShapeDtypeStructs of the inputs for a bucket (H, W); `batch` an int
    or a symbolic dimension."""
    h, w = bucket
    specs = [jax.ShapeDtypeStruct((batch, h, w, 3),
                                  jnp.uint8 if input_kind == 'uint8' else jnp.float32),
             jax.ShapeDtypeStruct((batch, h, w), jnp.bool_)]
    if postprocess:
        specs.append(jax.ShapeDtypeStruct((batch, 2), jnp.int32))
    return specs


def _describe(names, avals):
    return [{'name': n, 'shape': [d if isinstance(d, int) else str(d) for d in a.shape],
             'dtype': str(np.dtype(a.dtype))} for n, a in zip(names, avals)]


def _output_names(tree):
    return [jax.tree_util.keystr(p, simple=True, separator='/')
            for p, _ in jax.tree_util.tree_flatten_with_path(tree)[0]]


def export_stablehlo(fn, variables, names, bucket, input_kind, postprocess, platforms, out):
    """Writes model_HxW.stablehlo -> its manifest entry."""
    b, = jax.export.symbolic_shape('b')
    exported = jax.export.export(jax.jit(lambda *xs: fn(variables, *xs)),
                                 platforms=platforms)(
        *input_specs(bucket, input_kind, postprocess, b))
    name = f'model_{bucket[0]}x{bucket[1]}.stablehlo'
    (out / name).write_bytes(exported.serialize())
    out_tree = jax.tree_util.tree_unflatten(exported.out_tree, exported.out_avals)
    return {'file': name, 'format': 'stablehlo', 'platforms': list(exported.platforms),
            'bucket': list(bucket), 'inputs': _describe(names, exported.in_avals),
            'outputs': _describe(_output_names(out_tree),
                                 jax.tree_util.tree_leaves(out_tree))}


def _bind(converted, weights):
    def serve(*inputs):
        return converted(weights, *inputs)
    return serve


def export_savedmodel(fn, variables, names, buckets, input_kind, postprocess, platforms, out):
    """Writes savedmodel/ with a serving signature per bucket -> manifest
    entries."""
    import tensorflow as tf
    from jax.experimental import jax2tf
    module = tf.Module()
    module.weights = tf.nest.map_structure(
        lambda a: tf.Variable(np.asarray(a), trainable=False),
        jax.tree_util.tree_map(np.asarray, variables))
    signatures, entries = {}, []
    for bucket in buckets:
        specs = input_specs(bucket, input_kind, postprocess, 1)
        poly = [None] + ['(b, ' + ', '.join(str(d) for d in s.shape[1:]) + ')' for s in specs]
        converted = jax2tf.convert(fn, polymorphic_shapes=poly, with_gradient=False,
                                   native_serialization_platforms=tuple(
                                       p for p in platforms if p in ('cpu', 'cuda', 'tpu')))
        tf_specs = [tf.TensorSpec((None,) + tuple(s.shape[1:]), tf.as_dtype(s.dtype), name=n)
                    for s, n in zip(specs, names)]
        serve = tf.function(_bind(converted, module.weights), autograph=False,
                            input_signature=tf_specs)
        key = f'serving_{bucket[0]}x{bucket[1]}'
        signatures[key] = serve
        setattr(module, key, serve)
        outs = jax.eval_shape(fn, variables, *specs)
        entries.append({'file': 'savedmodel', 'format': 'savedmodel', 'signature': key,
                        'platforms': [p for p in platforms if p in ('cpu', 'cuda', 'tpu')],
                        'bucket': list(bucket),
                        'inputs': [dict(d, shape=['b'] + d['shape'][1:])
                                   for d in _describe(names, specs)],
                        'outputs': [dict(d, shape=['b'] + d['shape'][1:]) for d in
                                    _describe(_output_names(outs), jax.tree_util.tree_leaves(outs))]})
    signatures['serving_default'] = signatures[entries[0]['signature']]
    tf.saved_model.save(module, str(out / 'savedmodel'), signatures=signatures)
    return entries


def export(checkpoint, out_dir, formats=FORMATS, buckets=None, input_kind='uint8',
           postprocess=False, platforms=('cpu', 'cuda', 'tpu')):
    """Exports `checkpoint` (anything `inference.load` takes) to `out_dir`;
    returns the manifest (also written as manifest.json)."""
    unknown = set(formats) - set(FORMATS)
    if unknown:
        raise ValueError(f'--format: unknown {sorted(unknown)}; choose from {FORMATS}')
    bad = set(platforms) - set(PLATFORMS)
    if bad:
        raise ValueError(f'--platforms: unknown {sorted(bad)}; choose from {PLATFORMS}')
    if input_kind not in ('uint8', 'float'):
        raise ValueError(f"--input={input_kind!r}: must be 'uint8' or 'float'")
    model_cfg, variables, label_map, data = load(checkpoint)
    buckets = [tuple(int(v) for v in b) for b in (buckets or data.eval_buckets)]
    for b in buckets:
        validate_image_size(model_cfg, *b, where=f'bucket {b[0]}x{b[1]}')
    # the training-only queries (models/boosters.py) have no part in inference
    variables = jax.tree_util.tree_map(jnp.asarray, dict(
        variables, params=strip_training_only(variables['params'])))
    model = build_model(model_cfg)
    fn, names = model_function(model, model_cfg, input_kind, postprocess)
    out = as_path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    artifacts = []
    if 'stablehlo' in formats:
        for bucket in buckets:
            artifacts.append(export_stablehlo(fn, variables, names, bucket, input_kind,
                                              postprocess, tuple(platforms), out))
            print(f'exported {artifacts[-1]["file"]} ({", ".join(platforms)})')
    if 'savedmodel' in formats:
        artifacts += export_savedmodel(fn, variables, names, buckets, input_kind, postprocess,
                                       platforms, out)
        print(f'exported savedmodel/ (signatures {", ".join(a["signature"] for a in artifacts if a["format"] == "savedmodel")})')
    manifest = {
        'checkpoint': str(checkpoint), 'artifacts': artifacts,
        'input': input_kind, 'postprocess': bool(postprocess),
        'normalization': {'images': 'uint8 / 255, minus mean, over std, 0 where pixel_mask '
                                    'is False' if input_kind == 'uint8' else 'done by the caller',
                          'mean': list(IMAGENET_MEAN), 'std': list(IMAGENET_STD)},
        'resize': {'short_side': int(data.eval_size), 'max_long_side': int(data.eval_max_size),
                   'then': 'pad bottom/right to the smallest bucket holding the image'},
        'model': {k: v for k, v in model_cfg.to_dict().items() if k != 'label_map'},
        'label_map': {str(k): v for k, v in label_map.items()},
    }
    write_json(out / 'manifest.json', manifest, indent=1)
    return manifest


def _buckets(text):
    try:
        return [tuple(int(v) for v in b.lower().split('x')) for b in text.split(',')]
    except ValueError:
        raise argparse.ArgumentTypeError(f'{text!r}: buckets are HxW[,HxW...], e.g. 800x1088')


def cli(argv):
    ap = argparse.ArgumentParser(prog='detr-jax export', description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument('--checkpoint', required=True)
    ap.add_argument('--out', required=True)
    ap.add_argument('--format', default=','.join(FORMATS),
                    help='stablehlo, savedmodel or both (comma-separated)')
    ap.add_argument('--buckets', type=_buckets, default=None,
                    help="HxW,... (default: the checkpoint's evaluation buckets)")
    ap.add_argument('--input', default='uint8', choices=('uint8', 'float'))
    ap.add_argument('--postprocess', action='store_true')
    ap.add_argument('--platforms', default='cpu,cuda,tpu')
    a = ap.parse_args(argv)
    try:
        export(a.checkpoint, a.out, tuple(a.format.split(',')), a.buckets, a.input,
               a.postprocess, tuple(a.platforms.split(',')))
    except ValueError as e:
        print(f'detr-jax export: {e}', file=sys.stderr)
        return 2
    return 0
