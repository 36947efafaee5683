"""COCO-format folders: odd category ids, crowd, empty images, bad images and
annotations, in both bad-input modes."""
import collections
import json

import numpy as np
import pytest
from PIL import Image

from test_data import small_data_cfg
from detr_jax.data.coco_format import DataError, load_instances
from detr_jax.data.pipeline import InputPipeline, eval_batches


def _folder(tmp_path, bad_annotation=None):
    img_dir = tmp_path / 'images'
    img_dir.mkdir(exist_ok=True)
    rng = np.random.default_rng(0)
    images, anns = [], []
    specs = ['ok', 'ok', 'empty', 'crowd', 'corrupt', 'missing', 'cmyk', 'gray', 'ok']
    for i, kind in enumerate(specs):
        name = f'{i}.jpg'
        h, w = 64 + 8 * i, 80
        arr = rng.integers(0, 255, (h, w, 3)).astype(np.uint8)
        if kind == 'cmyk':
            Image.fromarray(arr).convert('CMYK').save(img_dir / name)
        elif kind == 'gray':
            Image.fromarray(arr[..., 0]).save(img_dir / name)
        elif kind == 'corrupt':
            Image.fromarray(arr).save(img_dir / name)
            data = (img_dir / name).read_bytes()
            (img_dir / name).write_bytes(data[:200])
        elif kind != 'missing':
            Image.fromarray(arr).save(img_dir / name)
        images.append({'id': 1000 + i, 'file_name': name, 'height': h, 'width': w})
        if kind != 'empty':
            anns.append({'id': 10 * i + 1, 'image_id': 1000 + i, 'category_id': [5, 9, 300][i % 3],
                         'bbox': [5, 6, 30, 20], 'area': 600, 'iscrowd': 0})
        if kind == 'crowd':
            anns.append({'id': 10 * i + 2, 'image_id': 1000 + i, 'category_id': 9,
                         'bbox': [0, 0, 60, 40], 'area': 2400, 'iscrowd': 1})
    if bad_annotation:
        anns.append(dict({'id': 999, 'image_id': 1000, 'category_id': 5, 'bbox': [1, 1, 5, 5],
                          'area': 25, 'iscrowd': 0}, **bad_annotation))
    cats = [{'id': c, 'name': f'cat{c}'} for c in (300, 5, 9)]
    path = tmp_path / 'ann.json'
    path.write_text(json.dumps({'images': images, 'annotations': anns, 'categories': cats}))
    return str(path), str(img_dir)


def test_label_map_crowd_and_empty(tmp_path):
    src = load_instances(*_folder(tmp_path))
    assert src.label_map == {0: {'id': 5, 'name': 'cat5', 'isthing': True},
                             1: {'id': 9, 'name': 'cat9', 'isthing': True},
                             2: {'id': 300, 'name': 'cat300', 'isthing': True}}
    assert len(src) == 9 and len(src.boxes[2]) == 0  # the empty image is kept
    assert len(src.labels[3]) == 1  # the crowd box is not a target
    assert src.labels[2 + 3].tolist() == [2]  # category 300 -> index 2


@pytest.mark.parametrize('bad,why', [
    ({'bbox': [1, 1, -5, 5]}, 'negative size'),
    ({'bbox': [500, 1, 5, 5]}, 'outside'),
    ({'category_id': 77}, 'unknown category id 77'),
    ({'bbox': [1, float('nan'), 5, 5]}, 'non-finite'),
    ({'id': 1}, 'duplicate annotation id 1'),
])
def test_bad_annotations(tmp_path, bad, why):
    ann, imgs = _folder(tmp_path, bad)
    with pytest.raises(DataError, match=f'ann.json: annotation id .*{why}'):
        load_instances(ann, imgs)
    src = load_instances(ann, imgs, on_bad_input='skip')
    assert sum(src.skipped.values()) == 1


def test_bad_images_error_names_file(tmp_path):
    ann, imgs = _folder(tmp_path)
    cfg = small_data_cfg(eval_size=64, eval_max_size=128, eval_batch_size=3,
                         eval_buckets=((128, 128),))
    with pytest.raises(DataError, match=r'images/(4|5)\.jpg: cannot use image'):
        list(eval_batches(load_instances(ann, imgs), cfg))


def test_bad_images_skipped_and_counted(tmp_path):
    ann, imgs = _folder(tmp_path)
    src = load_instances(ann, imgs)
    cfg = small_data_cfg(eval_size=64, eval_max_size=128, eval_batch_size=3,
                         eval_buckets=((128, 128),), on_bad_input='skip', batch_size=3,
                         buckets=((128, 128),), scales=(64,), max_size=128,
                         crop_resize=(64,), crop_min=40, crop_max=60)
    ev_skipped = collections.Counter()
    batches = list(eval_batches(src, cfg, skipped=ev_skipped))
    assert sum(ev_skipped.values()) == 2
    by_id = {int(i): (b, k) for b in batches for k, i in enumerate(b['image_id'])}
    for bad in (1004, 1005):  # corrupt and missing: no targets, black
        b, k = by_id[bad]
        assert not b['valid'][k].any() and not b['images'][k].any()
    for good in (1006, 1007):  # CMYK and grayscale decode to RGB
        b, k = by_id[good]
        assert b['valid'][k].any() and b['images'][k].any()
    pipe = InputPipeline(src, cfg)
    plan = pipe.plan(0)
    bad_index = {i for i, image_id in enumerate(src.image_ids) if image_id in (1004, 1005)}
    n_bad = sum(p.index in bad_index for _, items in plan for p in items)
    assert n_bad >= 1
    it = iter(pipe)
    next(it)
    # an evaluation in the middle of the epoch counts its own skips only
    list(eval_batches(src, cfg))
    for _ in range(len(plan) - 1):
        next(it)
    assert sum(pipe.skipped_last_epoch.values()) == n_bad


def test_exif_rotated_and_16_bit_images(tmp_path):
    """An EXIF-rotated JPEG is used as displayed (annotations refer to the
    displayed image), a 16-bit PNG is scaled to 8 bits; objects stay under
    their boxes."""
    img_dir = tmp_path / 'images'
    img_dir.mkdir()
    raw = np.zeros((64, 96, 3), np.uint8)  # stored 96 wide, 64 high
    raw[4:20, 8:40] = (250, 250, 250)
    exif = Image.Exif()
    exif[0x0112] = 6  # display rotated 90 degrees clockwise: 64 wide, 96 high
    Image.fromarray(raw).save(img_dir / 'rot.jpg', exif=exif, quality=95)
    shown = np.rot90(raw, k=-1)
    ys, xs = np.nonzero(shown[..., 0] > 128)
    rot_box = [int(xs.min()), int(ys.min()), int(xs.max() - xs.min() + 1),
               int(ys.max() - ys.min() + 1)]
    deep = np.full((64, 64), 1000, np.uint16)
    deep[30:50, 10:30] = 60000
    Image.fromarray(deep).save(img_dir / 'deep.png')
    assert Image.open(img_dir / 'deep.png').mode.startswith('I')
    images = [{'id': 1, 'file_name': 'rot.jpg', 'height': 96, 'width': 64},
              {'id': 2, 'file_name': 'deep.png', 'height': 64, 'width': 64}]
    anns = [{'id': 1, 'image_id': 1, 'category_id': 1, 'bbox': rot_box, 'area': 1, 'iscrowd': 0},
            {'id': 2, 'image_id': 2, 'category_id': 1, 'bbox': [10, 30, 20, 20], 'area': 1,
             'iscrowd': 0}]
    path = tmp_path / 'ann.json'
    path.write_text(json.dumps({'images': images, 'annotations': anns,
                                'categories': [{'id': 1, 'name': 'thing'}]}))
    cfg = small_data_cfg(eval_size=96, eval_max_size=96, eval_batch_size=2,
                         eval_buckets=((96, 96),))
    (batch,) = list(eval_batches(load_instances(str(path), str(img_dir)), cfg))
    for k in range(2):
        h, w = batch['size'][k]
        assert batch['valid'][k, 0]
        cx, cy, bw, bh = batch['boxes'][k, 0] * [w, h, w, h]
        img = batch['images'][k].astype(int)
        assert img[int(cy), int(cx)].min() > 200  # the bright object is under its box
        assert img[int(cy - bh / 2) - 3, int(cx)].max() < 60 or cy - bh / 2 < 3
