"""The bad-input battery: COCO-format folders with one defect each, read,
trained on for two steps and evaluated with the tiny config, in both
`on_bad_input` modes. Each defect ends in the expected outcome: a DataError
naming the file and the image or annotation, or a run that finishes with the
exact number of skipped entries; never another exception, never a
non-finite loss."""
import collections
import json
import os

import jax
import numpy as np
import pytest
from PIL import Image

import tiny_config
from detr_jax import evaluate
from detr_jax.data.coco_format import DataError
from detr_jax.data.datasets import build_source
from detr_jax.data.pipeline import (EVAL_STEP_KEYS, TRAIN_STEP_KEYS, InputPipeline,
                                    eval_batches, split_batch)
from detr_jax.sharding import make_mesh, to_global
from detr_jax.trainer import build_trainer

N_IMAGES = 12
CATEGORIES = [{'id': 300, 'name': 'triangle'}, {'id': 5, 'name': 'disc'},
              {'id': 9, 'name': 'square'}]


def _base(root):
    """12 small images, 1-2 objects each, categories 5, 9, 300 listed out of order."""
    rng = np.random.default_rng(0)
    images, anns = [], []
    (root / 'images').mkdir()
    for i in range(N_IMAGES):
        h, w = 64 + 8 * (i % 5), 96 - 8 * (i % 4)
        arr = rng.integers(0, 60, (h, w, 3)).astype(np.uint8)
        for k in range(1 + i % 2):
            x, y = 4 + 30 * k, 6 + 10 * k
            arr[y:y + 20, x:x + 24] = (200, 60 * k, 40)
            anns.append({'id': 10 * i + k, 'image_id': 1000 + i, 'bbox': [x, y, 24, 20],
                         'category_id': (5, 9, 300)[(i + k) % 3], 'area': 480, 'iscrowd': 0})
        name = f'{i}.png'
        Image.fromarray(arr).save(root / 'images' / name)
        images.append({'id': 1000 + i, 'file_name': name, 'height': h, 'width': w})
    return {'images': images, 'annotations': anns, 'categories': list(CATEGORIES)}


def _save(root, image_index, im):
    path = root / 'images' / f'{image_index}.png'
    im.save(path)
    return path


def _first_ann(d):
    return d['annotations'][0]


# kind -> (edit(data, root), error mode: ('error', text) or ('ok', 0),
#          skip mode: ('error', text) or ('ok', entries skipped at load, images skipped at decode))
def _set(d, **kw):
    _first_ann(d).update(kw)


def _drop(key):
    def edit(d, root):
        del _first_ann(d)[key]
    return edit


def _truncate(d, root):
    p = root / 'images' / '0.png'
    p.write_bytes(p.read_bytes()[:100])


def _zero_bytes(d, root):
    (root / 'images' / '0.png').write_bytes(b'')


def _missing(d, root):
    os.remove(root / 'images' / '0.png')


def _renamed(d, root):  # PNG bytes under a .jpg name
    os.rename(root / 'images' / '0.png', root / 'images' / '0.jpg')
    d['images'][0]['file_name'] = '0.jpg'


def _convert(mode):
    def edit(d, root):
        im = Image.open(root / 'images' / '1.png').convert('RGB')
        if mode == 'I;16':
            im = Image.fromarray(np.asarray(im.convert('L'), np.uint16) * 257)
        elif mode == 'CMYK':  # PNG has no CMYK: a JPEG
            os.remove(root / 'images' / '1.png')
            im.convert('CMYK').save(root / 'images' / '1.jpg')
            d['images'][1]['file_name'] = '1.jpg'
            return
        else:
            im = im.convert(mode)
        _save(root, 1, im)
    return edit


def _one_pixel(d, root):
    _save(root, 2, Image.new('RGB', (1, 1), (200, 10, 10)))
    d['images'][2].update(height=1, width=1)
    for a in d['annotations']:
        if a['image_id'] == 1002:
            a.update(bbox=[0, 0, 1, 1], area=1)


def _huge(d, root):
    arr = np.zeros((4000, 6000, 3), np.uint8)
    arr[1000:3000, 2000:4000] = (200, 0, 40)
    _save(root, 3, Image.fromarray(arr))
    d['images'][3].update(height=4000, width=6000)
    for a in d['annotations']:
        if a['image_id'] == 1003:
            a.update(bbox=[2000, 1000, 2000, 2000], area=4e6)


def _no_size(d, root):
    del d['images'][0]['height'], d['images'][0]['width']


def _no_size_no_file(d, root):
    _no_size(d, root)
    _missing(d, root)


def _category_zero(d, root):
    d['categories'].append({'id': 0, 'name': 'zero'})
    _first_ann(d)['category_id'] = 0


def _duplicate_image(d, root):
    d['images'].append(dict(d['images'][5]))


def _duplicate_ann(d, root):
    d['annotations'].append(dict(d['annotations'][3], bbox=[1, 1, 5, 5]))


def _subdir(d, root):
    (root / 'images' / 'sub').mkdir()
    os.rename(root / 'images' / '4.png', root / 'images' / 'sub' / '4.png')
    d['images'][4]['file_name'] = 'sub/4.png'


def _unicode(d, root):
    os.rename(root / 'images' / '4.png', root / 'images' / 'bild_ä_名.png')
    d['images'][4]['file_name'] = 'bild_ä_名.png'


def _wrong_size(d, root):
    d['images'][0]['height'] += 8


ANN0 = r'annotation id 0 \(image 1000\)'
IMG0 = r'images/0\.(png|jpg)'
CASES = {
    # (pycocotools would have crashed at evaluation on these)
    'no area': (_drop('area'), ('ok', 0), ('ok', 0, 0)),
    'no iscrowd': (_drop('iscrowd'), ('ok', 0), ('ok', 0, 0)),
    'bbox of 3 numbers': (lambda d, r: _set(d, bbox=[1, 2, 3]),
                          ('error', ANN0 + r': bbox \[1, 2, 3\] is not'), ('ok', 1, 0)),
    'image without size': (_no_size, ('ok', 0), ('ok', 0, 0)),
    'no size, unreadable file': (_no_size_no_file, ('error', r'image id 1000 \(0\.png\): no '
                                                             r'width/height'), ('ok', 2, 0)),
    'zero-width box': (lambda d, r: _set(d, bbox=[5, 5, 0, 10]), ('ok', 0), ('ok', 0, 0)),
    'box partly outside': (lambda d, r: _set(d, bbox=[60, 10, 100, 20]), ('ok', 0), ('ok', 0, 0)),
    # images
    'truncated image': (_truncate, ('error', IMG0 + ': cannot use image'), ('ok', 0, 1)),
    'zero-byte image': (_zero_bytes, ('error', IMG0 + ': cannot use image'), ('ok', 0, 1)),
    'missing image': (_missing, ('error', IMG0 + ': cannot use image'), ('ok', 0, 1)),
    'renamed image (PNG as .jpg)': (_renamed, ('ok', 0), ('ok', 0, 0)),
    'grayscale': (_convert('L'), ('ok', 0), ('ok', 0, 0)),
    'CMYK': (_convert('CMYK'), ('ok', 0), ('ok', 0, 0)),
    '16-bit': (_convert('I;16'), ('ok', 0), ('ok', 0, 0)),
    'palette': (_convert('P'), ('ok', 0), ('ok', 0, 0)),
    'RGBA': (_convert('RGBA'), ('ok', 0), ('ok', 0, 0)),
    '1x1 image': (_one_pixel, ('ok', 0), ('ok', 0, 0)),
    '6000x4000 image': (_huge, ('ok', 0), ('ok', 0, 0)),
    'decoded size differs': (_wrong_size, ('error', IMG0 + ': cannot use image: decoded size'),
                             ('ok', 0, 1)),
    'subdirectory file_name': (_subdir, ('ok', 0), ('ok', 0, 0)),
    'unicode file_name': (_unicode, ('ok', 0), ('ok', 0, 0)),
    # annotations
    'negative box': (lambda d, r: _set(d, bbox=[1, 1, -5, 5]),
                     ('error', ANN0 + '.*negative size'), ('ok', 1, 0)),
    'NaN box': (lambda d, r: _set(d, bbox=[1, float('nan'), 5, 5]),
                ('error', ANN0 + '.*non-finite'), ('ok', 1, 0)),
    'string box': (lambda d, r: _set(d, bbox=['1', '2', '3', '4']),
                   ('error', ANN0 + '.*non-numeric'), ('ok', 1, 0)),
    'unknown category': (lambda d, r: _set(d, category_id=77),
                         ('error', ANN0 + ': unknown category id 77'), ('ok', 1, 0)),
    'category id 0': (_category_zero, ('ok', 0), ('ok', 0, 0)),
    'duplicate image id': (_duplicate_image, ('error', r'image id 1005 .*duplicate image id'),
                           ('ok', 1, 0)),
    'duplicate annotation id': (_duplicate_ann, ('error', 'duplicate annotation id 20'),
                                ('ok', 1, 0)),
    'annotation of a missing image': (lambda d, r: _set(d, image_id=9999),
                                      ('error', 'annotation id 0 \\(image 9999\\): refers to an '
                                       'unknown image id'), ('ok', 1, 0)),
    'no categories': (lambda d, r: d.pop('categories'),
                      ('error', 'needs "images" and "categories"'),
                      ('error', 'needs "images" and "categories"')),
    'invalid JSON': (None, ('error', 'not valid JSON'), ('error', 'not valid JSON')),
    'empty annotation list': (lambda d, r: d.update(annotations=[]), ('ok', 0), ('ok', 0, 0)),
}


@pytest.fixture(scope='module')
def trainer():
    c = tiny_config.get_config()
    c.data.batch_size, c.data.eval_batch_size = 4, 4
    return build_trainer(c, make_mesh(jax.devices()[:1]), steps_per_epoch=3)


def _folder(tmp_path, kind):
    root = tmp_path / 'data'
    root.mkdir()
    data = _base(root)
    edit = CASES[kind][0]
    ann = root / 'ann.json'
    if edit is None:  # invalid JSON
        ann.write_text(json.dumps(data)[:-20])
    else:
        edit(data, root)
        ann.write_text(json.dumps(data))
    return str(ann), str(root / 'images')


def _run(trainer, ann, images, mode):
    """Load, two train steps, one evaluation -> (entries skipped at load,
    images skipped at decode in the evaluation pass, metrics)."""
    cfg = trainer.config.data.copy_and_resolve_references()
    cfg.update(dataset='coco_folder', train_ann=ann, train_images=images, val_ann=ann,
               val_images=images, on_bad_input=mode)
    source = build_source(cfg, 'train')
    state = trainer.init_state(jax.random.PRNGKey(0))
    it = iter(InputPipeline(source, cfg))
    for _ in range(2):
        batch = to_global(split_batch(next(it), TRAIN_STEP_KEYS)[0], trainer.mesh)
        state, metrics = trainer.train_step(state, batch, jax.random.PRNGKey(1))
        assert np.isfinite(float(metrics['loss']))
    it.close()
    val = build_source(cfg, 'val', label_map=source.label_map)
    assert val.skipped == source.skipped
    # what pycocotools gets is the cleaned ground truth: every annotation
    # usable, with the fields it reads, of a kept image, ids unique
    gt = val.ground_truth
    image_ids = {im['id'] for im in gt['images']}
    assert len(image_ids) == len(gt['images'])
    assert len({a['id'] for a in gt['annotations']}) == len(gt['annotations'])
    for a in gt['annotations']:
        assert a['image_id'] in image_ids and a['iscrowd'] in (0, 1) and a['area'] >= 0
        assert len(a['bbox']) == 4 and all(np.isfinite(v) for v in a['bbox']), a
    image_skips = collections.Counter()
    batches = eval_batches(val, cfg, skipped=image_skips)
    results, ids = [], []
    for batch in batches:
        device, host = split_batch(batch, EVAL_STEP_KEYS)
        dets = jax.device_get(trainer.eval_step(state.eval_variables(),
                                                to_global(device, trainer.mesh)))
        results += evaluate.results_from_detections(dets, host['image_id'], val.label_map)
        ids += [int(i) for i in host['image_id'] if i >= 0]
    assert {r['category_id'] for r in results} <= {0, 5, 9, 300}
    metrics = evaluate.coco_ap(val.ground_truth, results, ids)
    return sum(source.skipped.values()), sum(image_skips.values()), metrics, len(ids)


@pytest.mark.parametrize('mode', ['error', 'skip'])
@pytest.mark.parametrize('kind', list(CASES))
def test_defect(tmp_path, trainer, kind, mode):
    expected = CASES[kind][1] if mode == 'error' else CASES[kind][2]
    ann, images = _folder(tmp_path, kind)
    if expected[0] == 'error':
        with pytest.raises(DataError, match=expected[1]) as e:
            _run(trainer, ann, images, mode)
        assert 'ann.json' in str(e.value) or 'images/' in str(e.value), str(e.value)
        return
    entries, decode, metrics, n_images = _run(trainer, ann, images, mode)
    want_entries, want_decode = (expected[1], expected[2]) if mode == 'skip' else (0, 0)
    assert (entries, decode) == (want_entries, want_decode)
    assert n_images >= N_IMAGES - 1
    for k, v in metrics.items():  # defined figures are fractions; undefined ones None
        assert v is None or 0.0 <= v <= 1.0, (k, v)


def test_the_battery_has_at_least_25_kinds():
    assert len(CASES) >= 25
