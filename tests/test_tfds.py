"""TFDS coco/2017 and coco/2017_panoptic through the pipeline.

Two ways in: the real TFDS builders prepare ArrayRecord files from a tiny
COCO "download" written here (the production path: random access, images
not decoded while indexing, TFDS's label names checked against the COCO
table), and `tfds.testing.mock_data` feeds the builders' features with
random, inconsistent examples that must be rejected or counted.
"""
import functools
import json
import zipfile
from unittest import mock

import numpy as np
import pytest
import tensorflow_datasets as tfds
from PIL import Image
from tensorflow_datasets.testing import mocking

import tfds_fake
from test_data import small_data_cfg
from detr_jax import evaluate
from detr_jax.coco_categories import COCO_CATEGORIES
from detr_jax.data.coco_format import DataError
from detr_jax.data.pipeline import InputPipeline, eval_batches
from detr_jax.data.tfds_source import load_tfds

THINGS = [{'id': i, 'name': n, 'supercategory': 'x'} for i, n, t in COCO_CATEGORIES if t]
ALL = [{'id': i, 'name': n, 'supercategory': 'x', 'isthing': int(t)}
       for i, n, t in COCO_CATEGORIES]
# (file, h, w, [(category id, crowd, (x, y, w, h))]) per split
SPLITS = {
    'train2017': [('a.jpg', 64, 96, [(18, 0, (10, 8, 30, 20)), (1, 0, (50, 30, 40, 30))]),
                  ('b.jpg', 80, 64, [(1, 0, (4, 4, 20, 40)), (3, 1, (30, 40, 30, 30))]),
                  ('c.jpg', 72, 72, [])] + [
                  (f'x{i}.jpg', 64 + 4 * i, 80, [(44, 0, (2 * i, 3 * i, 20, 12))]) for i in range(7)],
    'val2017': [('d.jpg', 64, 80, [(90, 0, (20, 10, 40, 40))]),
                ('e.jpg', 96, 64, [(18, 0, (8, 30, 30, 50))])],
}
COLOR = (250, 20, 20)


def _write_download(root, panoptic):
    """The folders TFDS's COCO builder gets from its download manager."""
    paths = {}
    ann_dir = root / 'annotations_dl'
    (ann_dir / 'annotations').mkdir(parents=True)
    for split, items in SPLITS.items():
        img_dir = root / f'{split}_images'
        (img_dir / split).mkdir(parents=True)
        images, anns, pan = [], [], []
        pan_dir = root / f'panoptic_{split}'
        pan_dir.mkdir()
        for k, (name, h, w, objs) in enumerate(items):
            image_id = 100 * (1 + list(SPLITS).index(split)) + k
            arr = np.zeros((h, w, 3), np.uint8)
            ids = np.zeros((h, w), np.int32)
            segs = []
            for j, (cat, crowd, (x, y, bw, bh)) in enumerate(objs):
                arr[y:y + bh, x:x + bw] = COLOR
                ids[y:y + bh, x:x + bw] = 1000 + j
                anns.append({'id': len(anns) + 1 + 1000 * image_id, 'image_id': image_id,
                             'category_id': cat, 'iscrowd': crowd, 'bbox': [x, y, bw, bh],
                             'area': bw * bh, 'segmentation': []})
                segs.append({'id': 1000 + j, 'category_id': cat, 'iscrowd': crowd,
                             'bbox': [x, y, bw, bh], 'area': bw * bh})
            Image.fromarray(arr).save(img_dir / split / name, quality=95)
            rgb = np.stack([ids % 256, ids // 256, np.zeros_like(ids)], -1).astype(np.uint8)
            Image.fromarray(rgb).save(pan_dir / name.replace('.jpg', '.png'))
            images.append({'id': image_id, 'file_name': name, 'height': h, 'width': w})
            pan.append({'image_id': image_id, 'file_name': name.replace('.jpg', '.png'),
                        'segments_info': segs})
        with open(ann_dir / 'annotations' / f'instances_{split}.json', 'w') as f:
            json.dump({'images': images, 'annotations': anns, 'categories': THINGS}, f)
        with open(ann_dir / 'annotations' / f'panoptic_{split}.json', 'w') as f:
            json.dump({'images': images, 'annotations': pan, 'categories': ALL}, f)
        with zipfile.ZipFile(ann_dir / 'annotations' / f'panoptic_{split}.zip', 'w') as z:
            for p in pan_dir.iterdir():
                z.write(p, f'panoptic_{split}/{p.name}')
        paths[f'{"train" if split == "train2017" else "validation"}_images'] = str(img_dir)
    (root / 'test_images' / 'test2017').mkdir(parents=True)
    Image.fromarray(np.zeros((32, 32, 3), np.uint8)).save(root / 'test_images' / 'test2017' / 't.jpg')
    with open(ann_dir / 'annotations' / 'image_info_test2017.json', 'w') as f:
        json.dump({'images': [{'id': 1, 'file_name': 't.jpg', 'height': 32, 'width': 32}],
                   'categories': THINGS}, f)
    paths.update(train_annotations=str(ann_dir), validation_annotations=str(ann_dir),
                 test_images=str(root / 'test_images'), test_annotations=str(ann_dir))
    return paths


def _prepare(root, names, file_format):
    paths = _write_download(root / 'download', panoptic=True)
    return tfds_fake.prepare(paths, root / 'data', names, file_format)


@pytest.fixture(scope='module')
def prepared(tmp_path_factory):
    """coco/2017 and coco/2017_panoptic prepared as ArrayRecord by TFDS."""
    root = tmp_path_factory.mktemp('tfds')
    return (_prepare(root, ('coco/2017', 'coco/2017_panoptic'), 'array_record'),
            str(root / 'cache'))


def _cfg(**kw):
    return small_data_cfg(**dict(dict(max_boxes=4, eval_size=64, eval_max_size=128,
                                      eval_buckets=((128, 128),), eval_batch_size=2,
                                      batch_size=2, buckets=((128, 128),), scales=(64,),
                                      max_size=128), **kw))


def test_tfds_coco_labels_boxes_and_pixels(prepared):
    data_dir, cache = prepared
    src = load_tfds('coco/2017', 'train', data_dir, cache_dir=cache)
    assert len(src) == 10 and src.num_classes == 91  # the original's layout: index = COCO id
    assert src.label_map[18]['name'] == 'dog' and src.label_map[90]['name'] == 'toothbrush'
    by_id = {int(i): k for k, i in enumerate(src.image_ids)}
    a, b, c = by_id[100], by_id[101], by_id[102]
    assert src.sizes[a].tolist() == [64, 96]  # read from the JPEG header
    assert src.labels[a].tolist() == [18, 1]
    np.testing.assert_allclose(src.boxes[a], [[10, 8, 40, 28], [50, 30, 90, 60]], atol=1e-3)
    assert src.labels[b].tolist() == [1]  # the crowd object is not a target ...
    gt = json.load(open(src.ground_truth))
    crowd = [x for x in gt['annotations'] if x['iscrowd']]
    assert len(crowd) == 1 and crowd[0]['category_id'] == 3  # ... but is evaluated
    assert len(src.labels[c]) == 0  # an image without objects is kept
    # pixels come from TFDS (this host's examples only), boxes stay on the object
    for batch in eval_batches(src, _cfg()):
        for k in range(2):
            if batch['image_id'][k] < 0:
                continue
            h, w = batch['size'][k]
            img = batch['images'][k].astype(int)
            for j in np.flatnonzero(batch['valid'][k]):
                cx, cy, bw, bh = batch['boxes'][k, j] * [w, h, w, h]
                inside = img[int(cy), int(cx)]
                assert inside[0] > 200 and inside[1] < 60, inside
    # the index is cached: a second load reads no annotation
    with mock.patch('detr_jax.data.tfds_source.build_index', side_effect=AssertionError):
        again = load_tfds('coco/2017', 'train', data_dir, cache_dir=cache)
    assert again.image_ids.tolist() == src.image_ids.tolist()


def test_tfds_ground_truth_scores_ap_one(prepared):
    data_dir, cache = prepared
    src = load_tfds('coco/2017', 'val', data_dir, cache_dir=cache)
    gt = json.load(open(src.ground_truth))
    res = [{'image_id': a['image_id'], 'category_id': a['category_id'], 'bbox': a['bbox'],
            'score': 1.0} for a in gt['annotations']]
    ids = [im['id'] for im in gt['images']]
    assert evaluate.coco_ap(src.ground_truth, res, ids)['AP'] == pytest.approx(1.0, abs=1e-9)
    official = load_tfds('coco/2017', 'val', data_dir, cache_dir=cache, ann_file='official.json')
    assert official.ground_truth == 'official.json'  # evaluation against the official json


def test_tfds_panoptic_masks(prepared):
    data_dir, cache = prepared
    src = load_tfds('coco/2017_panoptic', 'train', data_dir, cache_dir=cache)
    assert src.num_classes == 201 and src.label_map[200]['isthing'] is False
    seen = 0
    for batch in eval_batches(src, _cfg(), with_masks=True):
        for k in range(2):
            for j in np.flatnonzero(batch['valid'][k]):
                m = batch['masks'][k, j]
                red = batch['images'][k][..., 0] > 128
                assert m.sum() > 0 and (m & red).sum() / m.sum() > 0.95
                seen += 1
    assert seen == 3 + 7  # a, a, b (b's crowd segment dropped), one per x*.jpg


def test_tfds_random_access_needs_array_record(tmp_path):
    data_dir = _prepare(tmp_path, ('coco/2017',), 'tfrecord')
    with pytest.raises(DataError, match='(?s)TFDS coco/2017 split train in .*data cannot be '
                                        'read with random access.*tfds convert_format'):
        load_tfds('coco/2017', 'train', data_dir, cache_dir=str(tmp_path / 'cache'))


def test_mock_data_inconsistent_examples_rejected_or_counted(tmp_path):
    with tfds.testing.mock_data(num_examples=5):
        with pytest.raises(DataError, match=r'TFDS coco/2017 train example 0 \(image id \d+\): '
                                            'objects of unequal lengths'):
            load_tfds('coco/2017', 'train', tfds_decode=True, cache_dir=str(tmp_path / 'a'))
        src = load_tfds('coco/2017', 'train', tfds_decode=True, cache_dir=str(tmp_path / 'b'),
                        on_bad_input='skip')
    assert len(src) == 0 and src.skipped == {'objects of unequal lengths': 5}


@pytest.mark.parametrize('name', ['coco/2017', 'coco/2017_panoptic'])
def test_mock_data_features_through_the_pipeline(tmp_path, name):
    """Mock examples with equal-length objects: random boxes are mostly
    inverted (rejected per object), the rest train and evaluate."""
    init = functools.partialmethod(mocking.RandomFakeGenerator.__init__,
                                   constant_dynamic_shape=True)
    cfg = _cfg(max_boxes=10, on_bad_input='skip', scales=(32,), buckets=((64, 64),),
               eval_buckets=((64, 64),), crop_resize=(32,), crop_min=8, crop_max=10,
               max_size=64, eval_size=32, eval_max_size=64)
    with tfds.testing.mock_data(num_examples=6), \
            mock.patch.object(mocking.RandomFakeGenerator, '__init__', init):
        with pytest.raises(DataError, match='object .* inverted box'):
            load_tfds(name, 'val', tfds_decode=True, cache_dir=str(tmp_path / 'e'))
        src = load_tfds(name, 'val', tfds_decode=True, cache_dir=str(tmp_path / 's'),
                        on_bad_input='skip')
        assert len(src) == 6 and sum(src.skipped.values()) > 0
        n_targets = sum(len(x) for x in src.labels)
        assert n_targets > 0
        ids = set(src.label_map)
        assert all(int(x) in ids for lab in src.labels for x in lab)
        batches = list(eval_batches(src, cfg, with_masks='panoptic' in name))
        assert sum(int(b['valid'].sum()) for b in batches) == n_targets
        assert sorted(int(i) for b in batches for i in b['image_id'] if i >= 0) == \
            sorted(src.image_ids.tolist())
        train = next(iter(InputPipeline(src, cfg, with_masks='panoptic' in name)))
        assert train['images'].shape == (2, 64, 64, 3)


def test_train_and_evaluate_on_tfds(tmp_path, prepared):
    """The main job on dataset=tfds: trains, evaluates with COCO ids."""
    import tiny_config
    from detr_jax import train
    from detr_jax.data.datasets import build_source
    c = tiny_config.get_config()
    c.model.num_classes = 91
    c.data.update(dataset='tfds', tfds_name='coco/2017', tfds_data_dir=prepared[0],
                  cache_dir=str(tmp_path / 'cache'), buckets=((128, 128),),
                  eval_buckets=((128, 128),), scales=(64,), max_size=128, crop_resize=(64,),
                  crop_min=32, crop_max=48, eval_size=64, eval_max_size=128)
    c.train.update(max_steps=2, eval_every=-1, checkpoint_every=2)
    c.data.panoptic = True
    with pytest.raises(DataError, match="tfds_name='coco/2017' does not match"):
        build_source(c.data, 'train')
    c.data.panoptic = False
    result = train.train_and_evaluate(c, str(tmp_path / 'w'))
    assert 'AP' in result
    dets = json.load(open(tmp_path / 'w' / 'eval' / 'results_2.json'))
    thing_ids = {i for i, _, t in COCO_CATEGORIES if t}
    assert dets and {d['category_id'] for d in dets} <= thing_ids
    assert {d['image_id'] for d in dets} == {200, 201}


def test_tfds_panoptic_ground_truth_for_pq(prepared):
    """coco/2017_panoptic carries what PQ needs: COCO's panoptic json (from
    the index) and each example's segment PNG; the ground truth scores PQ 1
    against itself, its crowd segment ignored."""
    import pathlib
    from detr_jax.pq import PQStat, image_stat, summarize
    data_dir, cache = prepared
    src = load_tfds('coco/2017_panoptic', 'train', data_dir, cache_dir=cache)
    gt = src.panoptic_ground_truth
    assert len(gt['categories']) == 133 and sum(c['isthing'] for c in gt['categories']) == 80
    download = pathlib.Path(data_dir).parent / 'download' / 'annotations_dl' / 'annotations'
    want = {a['image_id']: a for a in
            json.loads((download / 'panoptic_train2017.json').read_text())['annotations']}
    anns = {a['image_id']: a for a in gt['annotations']}
    cats = {c['id']: c for c in gt['categories']}
    stat = PQStat()
    for i, image_id in enumerate(int(x) for x in src.image_ids):
        segs = anns[image_id]['segments_info']
        key = lambda s: (s['id'], s['category_id'], s['iscrowd'], s['area'])  # noqa: E731
        assert [key(s) for s in segs] == [key(s) for s in want[image_id]['segments_info']]
        ids = src.panoptic_ids(i)
        assert ids.shape == tuple(src.sizes[i])
        assert set(np.unique(ids).tolist()) - {0} == {s['id'] for s in segs}
        stat += image_stat(ids, segs, ids, segs, cats, image_id)
    pq = summarize(stat, cats)
    assert pq['All'] == {'pq': 1.0, 'sq': 1.0, 'rq': 1.0, 'n': 3}  # person, dog, bottle (car: crowd only)
    # box AP of a panoptic split is over the things
    box_gt = json.load(open(src.ground_truth))
    assert len(box_gt['categories']) == 80
