"""Input pipeline I: synthetic set, transforms, buckets, resumable order."""
import json

import numpy as np
import pytest
from PIL import Image

from detr_jax.config_defaults import base_config
from detr_jax.data import synthetic
from detr_jax.data.coco_format import DataError, load_panoptic
from detr_jax.data.datasets import build_source
from detr_jax.data.pipeline import InputPipeline, eval_batches, make_tf_dataset, plan_train_epoch
from detr_jax.data.transforms import choose_bucket, get_size_with_aspect_ratio

COLORS = {0: (255, 0, 0), 1: (0, 255, 0)}
BUCKETS = ((64, 64), (64, 96), (96, 64), (96, 96), (96, 128), (128, 96), (128, 128), (128, 192),
           (192, 128), (192, 192))


def small_data_cfg(**kw):
    c = base_config().data
    c.update(dict(scales=(64, 80, 96, 112, 128), max_size=192, crop_resize=(80, 100), crop_min=40,
                  crop_max=90, eval_size=96, eval_max_size=192, buckets=BUCKETS,
                  eval_buckets=BUCKETS, batch_size=4, eval_batch_size=4, max_boxes=4, seed=3))
    c.update(kw)
    return c


@pytest.fixture(scope='module')
def rect_folder(tmp_path_factory):
    """Images with two solid rectangles (red = class 0, green = class 1) on a
    black background, as a COCO panoptic folder."""
    root = tmp_path_factory.mktemp('rects')
    (root / 'images').mkdir()
    (root / 'png').mkdir()
    rng = np.random.default_rng(0)
    images, anns = [], []
    for i in range(24):
        h, w = int(rng.integers(60, 140)), int(rng.integers(60, 140))
        img, ids, segs = np.zeros((h, w, 3), np.uint8), np.zeros((h, w), np.int32), []
        for k in (0, 1):
            for _ in range(50):  # disjoint rectangles, 4 px apart
                y0, x0 = int(rng.integers(0, h - 12)), int(rng.integers(0, w - 12))
                y1, x1 = int(rng.integers(y0 + 10, h + 1)), int(rng.integers(x0 + 10, w + 1))
                if not ids[max(y0 - 4, 0):y1 + 4, max(x0 - 4, 0):x1 + 4].any():
                    img[y0:y1, x0:x1] = COLORS[k]
                    ids[y0:y1, x0:x1] = k + 1
                    break
        for k in (0, 1):
            ys, xs = np.nonzero(ids == k + 1)
            if len(ys):
                segs.append({'id': k + 1, 'category_id': 10 + k, 'iscrowd': 0,
                             'bbox': [int(xs.min()), int(ys.min()), int(xs.max() - xs.min() + 1),
                                      int(ys.max() - ys.min() + 1)], 'area': len(ys)})
        name = f'{i}.png'
        Image.fromarray(img).save(root / 'images' / name)
        rgb = np.stack([ids, np.zeros_like(ids), np.zeros_like(ids)], -1).astype(np.uint8)
        Image.fromarray(rgb).save(root / 'png' / name)
        images.append({'id': 100 + i, 'file_name': name, 'height': h, 'width': w})
        anns.append({'image_id': 100 + i, 'file_name': name, 'segments_info': segs})
    cats = [{'id': 10, 'name': 'red', 'isthing': 1}, {'id': 11, 'name': 'green', 'isthing': 1}]
    with open(root / 'pan.json', 'w') as f:
        json.dump({'images': images, 'annotations': anns, 'categories': cats}, f)
    return load_panoptic(str(root / 'pan.json'), str(root / 'images'), str(root / 'png'))


def _check_batch(batch, buckets):
    assert tuple(batch['images'].shape[1:3]) in buckets
    for b in range(len(batch['images'])):
        h, w = batch['size'][b]
        pm = batch['pixel_mask'][b]
        assert pm[:h, :w].all() and pm.sum() == h * w  # True exactly on the real region
        assert (batch['images'][b][~pm] == 0).all()
        img = batch['images'][b].astype(int)
        for j in np.flatnonzero(batch['valid'][b]):
            lab = batch['labels'][b, j]
            strong = (img[..., lab] > 200) & (img[..., 1 - lab] < 40)  # the object's own colour
            cx, cy, bw, bh = batch['boxes'][b, j] * np.array([w, h, w, h])
            x0, y0, x1, y1 = cx - bw / 2, cy - bh / 2, cx + bw / 2, cy + bh / 2
            assert -1e-3 <= x0 and x1 <= w + 1e-3 and -1e-3 <= y0 and y1 <= h + 1e-3
            if min(bw, bh) < 3:
                continue  # a sliver left by a crop: its pixels are blurred away
            ys, xs = np.nonzero(strong)
            assert len(ys) > 0, (int(batch['image_id'][b]), int(lab), img.reshape(-1, 3).max(0), float(cy), float(bh), int(h), int(w))
            # the box encloses the object's pixels (1.5 px for resampling) ...
            assert xs.min() >= x0 - 1.5 and xs.max() + 1 <= x1 + 1.5
            assert ys.min() >= y0 - 1.5 and ys.max() + 1 <= y1 + 1.5
            # ... and tightly (antialiased downscaling blurs a few edge pixels)
            assert xs.min() <= x0 + 4 and xs.max() + 1 >= x1 - 4
            assert ys.min() <= y0 + 4 and ys.max() + 1 >= y1 - 4
            # the mask stays aligned with the pixels
            m = batch['masks'][b, j]
            half = (img[..., lab] >= 128) & (img[..., 1 - lab] < 128)
            if half.sum() >= 30:
                my, mx = np.nonzero(m)
                hy, hx = np.nonzero(half)
                ext = lambda y, x: np.array([x.min(), x.max(), y.min(), y.max()])  # noqa: E731
                assert np.abs(ext(my, mx) - ext(hy, hx)).max() <= 2.5  # nearest vs bilinear at 2x
                if min(hx.max() - hx.min(), hy.max() - hy.min()) >= 6:  # not a sliver
                    iou = (m & half).sum() / max((m | half).sum(), 1)
                    assert iou > 0.8, iou
        assert not batch['masks'][b][~batch['valid'][b]].any()


def test_transform_geometry(rect_folder):
    cfg = small_data_cfg()
    pipe = InputPipeline(rect_folder, cfg, with_masks=True)
    it = iter(pipe)
    seen_crop = seen_flip = 0
    for _ in range(18):  # three epochs of 6 batches
        plan = pipe.plan(pipe.position['epoch'])[pipe.position['batch']]
        seen_crop += sum(p.params.crop[2:] != p.params.resize1 for p in plan[1])
        seen_flip += sum(p.params.flip for p in plan[1])
        _check_batch(next(it), BUCKETS)
    assert seen_crop > 5 and seen_flip > 5  # every transform was exercised
    for batch in eval_batches(rect_folder, cfg, with_masks=True):
        _check_batch(batch, BUCKETS)


def test_resume_equals_uninterrupted(rect_folder):
    cfg = small_data_cfg()
    full = InputPipeline(rect_folder, cfg)
    it = iter(full)
    k, positions, ref = 7, [], []
    for _ in range(12):  # crosses epoch boundaries
        ref.append(next(it))
        positions.append(dict(full.position))
    assert positions[-1]['epoch'] >= 1
    resumed = InputPipeline(rect_folder, cfg)  # a new process: only the position survives
    resumed.restore(positions[k - 1])
    it2 = iter(resumed)
    for a in ref[k:]:
        b = next(it2)
        for key in a:
            np.testing.assert_array_equal(a[key], b[key], err_msg=key)


def test_same_seed_same_batches_other_seed_differs(rect_folder):
    a = plan_train_epoch(rect_folder, small_data_cfg(), 0)
    b = plan_train_epoch(rect_folder, small_data_cfg(), 0)
    c = plan_train_epoch(rect_folder, small_data_cfg(seed=4), 0)
    ids = lambda p: [[x.index for x in items] for _, items in p]  # noqa: E731
    assert ids(a) == ids(b) and ids(a) != ids(c)
    assert ids(a) != ids(plan_train_epoch(rect_folder, small_data_cfg(), 1))


def test_max_boxes_error_names_image_and_truncation(rect_folder):
    with pytest.raises(DataError, match=r'\.png \(image id \d+\): 2 objects exceed max_boxes=1'):
        plan_train_epoch(rect_folder, small_data_cfg(max_boxes=1), 0)
    plan = plan_train_epoch(rect_folder, small_data_cfg(max_boxes=1, truncate_boxes=True), 0)
    assert all(len(x.labels) <= 1 for _, items in plan for x in items)


def test_bucket_choice_and_sizes():
    assert get_size_with_aspect_ratio(480, 640, 800, 1333) == (800, 1066)
    assert get_size_with_aspect_ratio(480, 1600, 800, 1333) == (400, 1333)
    assert choose_bucket(90, 60, BUCKETS) == (96, 64)
    with pytest.raises(ValueError, match='fits none of the shape buckets'):
        choose_bucket(500, 60, BUCKETS)


def test_synthetic_export_scores_ap_one(tmp_path):
    from pycocotools.coco import COCO
    from pycocotools.cocoeval import COCOeval
    p = synthetic.write_coco(str(tmp_path), 'val', 30, seed=1)
    gt = COCO(p['instances'])
    dets = [{'image_id': a['image_id'], 'category_id': a['category_id'], 'bbox': a['bbox'],
             'score': 1.0} for a in gt.dataset['annotations']]
    assert len(dets) > 60
    ev = COCOeval(gt, gt.loadRes(dets), 'bbox')
    ev.evaluate()
    ev.accumulate()
    ev.summarize()
    assert ev.stats[0] == pytest.approx(1.0)
    pan = json.load(open(p['panoptic_json']))
    assert {c['isthing'] for c in pan['categories']} == {0, 1}
    assert any(s['category_id'] > 6 for a in pan['annotations'] for s in a['segments_info'])


def test_synthetic_export_with_helper_processes_is_identical(tmp_path, monkeypatch):
    """write_coco's helper processes change nothing in the output: the same
    json files and the same pixels as one process; a failing helper is an error."""
    import os
    import sys
    one = synthetic.write_coco(str(tmp_path / 'one'), 'val', 23, seed=3, workers=1)
    calls = []
    three = synthetic.write_coco(str(tmp_path / 'three'), 'val', 23, seed=3, workers=3,
                                 progress=lambda i, n: calls.append((i, n)))
    assert calls[-1] == (23, 23)  # the helpers' images are reported too
    for key in ('instances', 'panoptic_json'):
        assert json.load(open(one[key])) == json.load(open(three[key]))
    ann = json.load(open(one['instances']))['annotations']
    assert [a['id'] for a in ann] == list(range(1, len(ann) + 1))
    for sub in ('images', 'panoptic_val'):
        names = sorted(os.listdir(tmp_path / 'one' / 'val' / sub))
        assert len(names) == 23 and names == sorted(os.listdir(tmp_path / 'three' / 'val' / sub))
        for n in names:
            np.testing.assert_array_equal(np.array(Image.open(tmp_path / 'one' / 'val' / sub / n)),
                                          np.array(Image.open(tmp_path / 'three' / 'val' / sub / n)))
    monkeypatch.setattr(sys, 'executable', 'false')
    with pytest.raises(RuntimeError, match='helper process writing .*part1.json failed'):
        synthetic.write_coco(str(tmp_path / 'bad'), 'val', 10, workers=2)
    assert os.listdir(tmp_path / 'bad') == []  # no half-written folder either


def test_synthetic_is_deterministic_and_varied():
    a, oa, sa = synthetic.render(0, 'train', 5)
    b, ob, sb = synthetic.render(0, 'train', 5)
    np.testing.assert_array_equal(a, b)
    counts = [len(synthetic.render(0, 'train', i)[1]) for i in range(60)]
    assert 0 in counts and max(counts) >= 5
    classes = {c for i in range(60) for c, _ in synthetic.render(0, 'train', i)[1]}
    assert classes == set(range(1, 7))


def test_synthetic_source_through_pipeline(tmp_path):
    cfg = small_data_cfg(dataset='synthetic', num_train=40, num_val=8, cache_dir=str(tmp_path),
                         max_boxes=10)
    src = build_source(cfg, 'train')
    assert len(src) == 40 and src.num_classes == 6
    batch = next(iter(InputPipeline(src, cfg)))
    assert batch['images'].dtype == np.uint8 and batch['valid'].any()


def test_fit_buckets_cover_everything_and_pad_less_with_more_shapes():
    from detr_jax.data.transforms import fit_buckets, padding_overhead
    rng = np.random.default_rng(0)
    sizes = [(int(h), int(w)) for h, w in rng.integers(200, 700, size=(400, 2))]
    overheads = []
    for k in (1, 4, 12):
        b = fit_buckets(sizes, k)
        assert len(b) <= k and all(h % 32 == 0 and w % 32 == 0 for h, w in b)
        overheads.append(padding_overhead(sizes, b))  # raises if a size fits no bucket
    assert overheads[0] > overheads[1] > overheads[2] >= 1.0


def test_datasets_run_without_the_autotuner(tmp_path):
    """Each epoch (and each evaluation) gets a new tf.data pipeline; with
    tf.data's autotuner on, destroying the previous iterator blocked the
    train loop for 8-10 s at about half of the epoch boundaries."""
    cfg = small_data_cfg(dataset='synthetic', num_train=16, num_val=4, cache_dir=str(tmp_path),
                         max_boxes=10)
    src = build_source(cfg, 'train')
    batches = plan_train_epoch(src, cfg, 0)
    ds = make_tf_dataset(src, batches, cfg, cfg.batch_size, 0, cfg.batch_size)
    assert ds.options().autotune.enabled is False
    assert next(ds.as_numpy_iterator())['images'].shape[0] == cfg.batch_size


def test_cached_images_decode_once_same_batches(tmp_path, monkeypatch):
    """`data.cache_images`: each training image is decoded once over four
    epochs, and the batches are those of the uncached pipeline."""
    import detr_jax.data.pipeline as P
    opened = []
    real_open = P.read_image
    monkeypatch.setattr(P, 'read_image',
                        lambda x, exif=True: (opened.append(x), real_open(x, exif))[1])
    out, counts = {}, {}
    for cache in (False, True):
        cfg = small_data_cfg(dataset='synthetic', num_train=24, num_val=4,
                             cache_dir=str(tmp_path), max_boxes=10, cache_images=cache,
                             buckets=((128, 128), (192, 192)))
        pipe = InputPipeline(build_source(cfg, 'train'), cfg)
        it = iter(pipe)
        del opened[:]
        batches = []
        while pipe.position['epoch'] < 4:  # 4 epochs: 3 iterators destroyed
            batches.append(next(it))
        it.close()
        out[cache] = batches
        counts[cache] = dict(opened=len(opened), distinct=len(set(opened)),
                             cached=len(pipe._images) if cache else None)
    assert len(out[True]) == len(out[False]) > 0
    for a, b in zip(out[False], out[True]):
        for k in a:
            np.testing.assert_array_equal(a[k], b[k], err_msg=k)
    plain, cached = counts[False], counts[True]
    # without the cache every epoch decodes again; with it, each image once
    assert plain['opened'] > 3 * plain['distinct']
    assert cached['opened'] == cached['distinct'] == cached['cached'] == plain['distinct']


_EXIT_SCRIPT = r'''
import sys
sys.path.insert(0, sys.argv[2])
from test_data import small_data_cfg
from detr_jax.data.datasets import build_source
from detr_jax.data.pipeline import InputPipeline, eval_batches
cfg = small_data_cfg(dataset='synthetic', num_train=64, num_val=16, cache_dir=sys.argv[1],
                     max_boxes=10, buckets=((128, 128), (192, 192)), batch_size=2,
                     eval_batch_size=2, eval_buckets=((128, 128), (192, 192)))
train = iter(InputPipeline(build_source(cfg, 'train'), cfg))
next(train)
val = eval_batches(build_source(cfg, 'val'), cfg)
next(val)
print('read', flush=True)
'''


def test_exit_with_pipelines_open_mid_epoch(tmp_path):
    """A script that stops reading a training and an evaluation pipeline
    mid-epoch exits: it used to hang in the destruction of the tf.data
    iterators at interpreter shutdown (their decoders need the GIL)."""
    import os
    import subprocess
    import sys
    here = os.path.dirname(__file__)
    r = subprocess.run([sys.executable, '-c', _EXIT_SCRIPT, str(tmp_path), here],
                       capture_output=True, text=True, timeout=90)
    assert r.returncode == 0 and 'read' in r.stdout, r.stderr[-3000:]
