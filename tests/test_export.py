"""`detr-jax export`: StableHLO and SavedModel artifacts, reloaded in a fresh
process (no detr_jax, no Flax), give the Flax outputs at two batch sizes, and
the manifest describes them."""
import json
import os
import subprocess
import sys

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import pytest

from detr_jax import checkpoints
from detr_jax.data.normalize import normalize
from detr_jax.export import cli
from detr_jax.models import build_model
from detr_jax.postprocess import detections
from tiny_config import get_config

RELOAD = r'''
import json, sys
import numpy as np
out, kind = sys.argv[1], sys.argv[2]
manifest = json.load(open(out + '/manifest.json'))
inputs = dict(np.load(out + '/inputs.npz'))
results = {}
for a in manifest['artifacts']:
    if a['format'] != kind:
        continue
    for n in (1, 3):
        args = [inputs[f'{a["bucket"][0]}x{a["bucket"][1]}/{i["name"]}_{n}'] for i in a['inputs']]
        if kind == 'stablehlo':
            from jax import export
            exp = export.deserialize(open(out + '/' + a['file'], 'rb').read())
            got = exp.call(*args)
            assert [str(v.dtype) for v in exp.in_avals] == [i['dtype'] for i in a['inputs']]
            assert [[str(d) for d in v.shape] for v in exp.in_avals] == [
                [str(d) for d in i['shape']] for i in a['inputs']]
        else:
            import tensorflow as tf
            sig = tf.saved_model.load(out + '/savedmodel').signatures[a['signature']]
            spec = sig.structured_input_signature[1]
            assert sorted(spec) == sorted(i['name'] for i in a['inputs'])
            got = {k: v.numpy() for k, v in sig(**{i['name']: tf.constant(x)
                                                 for i, x in zip(a['inputs'], args)}).items()}
        assert sorted(got) == sorted(o['name'] for o in a['outputs']), (sorted(got), a['outputs'])
        for o in a['outputs']:
            v = np.asarray(got[o['name']])
            assert str(v.dtype) == o['dtype'] and v.shape[0] == n and list(v.shape[1:]) == o['shape'][1:]
            results[f'{a["bucket"][0]}x{a["bucket"][1]}/{o["name"]}_{n}'] = v
assert 'detr_jax' not in sys.modules and 'flax' not in sys.modules
np.savez(out + f'/got_{kind}.npz', **results)
'''


@pytest.fixture(scope='module')
def converted(tmp_path_factory):
    c = get_config()
    model = build_model(c.model)
    variables = model.init(jax.random.PRNGKey(5), jnp.zeros((1, 64, 64, 3)),
                           jnp.ones((1, 64, 64), bool))
    cfg = ml_collections.ConfigDict(dict(c.model))
    cfg.label_map = {str(i): {'id': 3 + i, 'name': f'c{i}', 'isthing': True} for i in range(6)}
    path = tmp_path_factory.mktemp('export') / 'ckpt'
    checkpoints.save_converted(path, cfg, variables)
    return path, model, variables


def _inputs(bucket, n, postprocess, seed):
    rng = np.random.default_rng(seed)
    h, w = bucket
    images = rng.integers(0, 255, (n, h, w, 3), np.uint8)
    mask = np.zeros((n, h, w), bool)
    for i in range(n):  # a different real size per image
        mask[i, :h - 8 * i, :w - 16 * (i % 2)] = True
    images[~mask] = 0
    x = {'images': images, 'pixel_mask': mask}
    if postprocess:
        x['orig_sizes'] = np.array([[100 + 10 * i, 150] for i in range(n)], np.int32)
    return x


@pytest.mark.parametrize('postprocess', [False, True])
def test_exported_artifacts_reload_elsewhere_and_match_flax(converted, tmp_path, postprocess):
    path, model, variables = converted
    out = tmp_path / 'out'
    buckets = [(64, 96), (96, 64)]
    assert cli(['--checkpoint', str(path), '--out', str(out), '--buckets', '64x96,96x64',
                '--platforms', 'cpu,tpu'] + (['--postprocess'] if postprocess else [])) == 0
    manifest = json.loads((out / 'manifest.json').read_text())
    assert manifest['label_map']['2']['id'] == 5 and manifest['input'] == 'uint8'
    assert manifest['normalization']['mean'] == [0.485, 0.456, 0.406]
    by_format = {}
    for a in manifest['artifacts']:
        by_format.setdefault(a['format'], []).append(a)
        assert a['inputs'][0]['shape'] == ['b', a['bucket'][0], a['bucket'][1], 3]
        assert a['inputs'][0]['dtype'] == 'uint8' and a['inputs'][1]['dtype'] == 'bool'
        assert os.path.exists(out / a['file'])
    assert sorted(by_format) == ['savedmodel', 'stablehlo']
    assert [a['bucket'] for a in by_format['stablehlo']] == [list(b) for b in buckets]
    assert set(by_format['stablehlo'][0]['platforms']) == {'cpu', 'tpu'}
    expected, inputs = {}, {}
    for k, bucket in enumerate(buckets):
        for n in (1, 3):
            x = _inputs(bucket, n, postprocess, seed=10 * k + n)
            inputs.update({f'{bucket[0]}x{bucket[1]}/{name}_{n}': v for name, v in x.items()})
            o = model.apply(variables, normalize(jnp.asarray(x['images']),
                                                 jnp.asarray(x['pixel_mask'])),
                            jnp.asarray(x['pixel_mask']))
            if postprocess:
                o = detections(o, jnp.asarray(x['orig_sizes']))
            names = (('scores', 'labels', 'boxes', 'queries') if postprocess
                     else ('pred_logits', 'pred_boxes'))
            for name in names:
                expected[f'{bucket[0]}x{bucket[1]}/{name}_{n}'] = np.asarray(o[name])
    np.savez(out / 'inputs.npz', **inputs)
    for kind in ('stablehlo', 'savedmodel'):  # each in a fresh process
        env = dict(os.environ, JAX_PLATFORMS='cpu')
        subprocess.run([sys.executable, '-c', RELOAD, str(out), kind], check=True, env=env,
                       timeout=300)
        got = dict(np.load(out / f'got_{kind}.npz'))
        assert sorted(got) == sorted(expected)
        for key, want in expected.items():
            if '/boxes_' in key:  # pixels: compared as fractions of the image, as pred_boxes
                hw = inputs[key.replace('/boxes_', '/orig_sizes_')][:, None, ::-1]
                got[key], want = got[key] / np.tile(hw, 2), want / np.tile(hw, 2)
            np.testing.assert_allclose(got[key], want, atol=1e-5, err_msg=f'{kind} {key}')


def test_export_errors_name_the_value(converted, tmp_path, capsys):
    path = converted[0]
    assert cli(['--checkpoint', str(path), '--out', str(tmp_path), '--format', 'onnx']) == 2
    assert "unknown ['onnx']" in capsys.readouterr().err
    assert cli(['--checkpoint', str(path), '--out', str(tmp_path), '--buckets', '64x90']) == 2
    assert '64x90 must be a multiple of 32' in capsys.readouterr().err


def test_a_panoptic_model_exports_its_mask_logits(tmp_path):
    c = get_config()
    c.model.masks = True
    model = build_model(c.model)
    variables = model.init(jax.random.PRNGKey(6), jnp.zeros((1, 64, 64, 3)),
                           jnp.ones((1, 64, 64), bool))
    checkpoints.save_converted(tmp_path / 'ckpt', ml_collections.ConfigDict(dict(c.model)),
                               variables)
    assert cli(['--checkpoint', str(tmp_path / 'ckpt'), '--out', str(tmp_path / 'out'),
                '--buckets', '64x96', '--format', 'stablehlo', '--platforms', 'cpu']) == 0
    a, = json.loads((tmp_path / 'out' / 'manifest.json').read_text())['artifacts']
    masks = next(o for o in a['outputs'] if o['name'] == 'pred_masks')
    assert masks['shape'] == ['b', c.model.num_queries, 16, 24]
    exp = jax.export.deserialize((tmp_path / 'out' / a['file']).read_bytes())
    x = _inputs((64, 96), 2, False, seed=0)
    want = model.apply(variables, normalize(jnp.asarray(x['images']), jnp.asarray(x['pixel_mask'])),
                       jnp.asarray(x['pixel_mask']))['pred_masks']
    got = exp.call(x['images'], x['pixel_mask'])['pred_masks']
    np.testing.assert_allclose(np.asarray(got), np.asarray(want), atol=1e-5)


def test_float_input_is_what_module_apply_takes(converted, tmp_path):
    path, model, variables = converted
    assert cli(['--checkpoint', str(path), '--out', str(tmp_path), '--buckets', '64x64',
                '--format', 'stablehlo', '--platforms', 'cpu', '--input', 'float']) == 0
    manifest = json.loads((tmp_path / 'manifest.json').read_text())
    a, = manifest['artifacts']
    assert manifest['input'] == 'float' and a['inputs'][0]['dtype'] == 'float32'
    exp = jax.export.deserialize((tmp_path / a['file']).read_bytes())
    x = _inputs((64, 64), 2, False, seed=1)
    pixels = np.asarray(normalize(jnp.asarray(x['images']), jnp.asarray(x['pixel_mask'])))
    want = model.apply(variables, jnp.asarray(pixels), jnp.asarray(x['pixel_mask']))
    got = exp.call(pixels, x['pixel_mask'])
    for k in ('pred_logits', 'pred_boxes'):
        np.testing.assert_allclose(np.asarray(got[k]), np.asarray(want[k]), atol=1e-5)
