"""Post-processing, COCO evaluation, multi-host eval data, drawings."""
import dataclasses
import json

import jax.numpy as jnp
import numpy as np
import pytest

from test_data import small_data_cfg
from detr_jax import draw, evaluate
from detr_jax.data import synthetic
from detr_jax.data.coco_format import load_instances
from detr_jax.data.pipeline import eval_batches
from detr_jax.postprocess import detections, select


def test_postprocess_parity(reference):
    out = {'pred_logits': jnp.asarray(reference['pred_logits']),
           'pred_boxes': jnp.asarray(reference['pred_boxes'])}
    d = detections(out, jnp.asarray(reference['post_orig_sizes']))
    np.testing.assert_allclose(d['scores'], reference['post_scores'], atol=1e-4, rtol=0)
    np.testing.assert_array_equal(d['labels'], reference['post_labels'])
    np.testing.assert_allclose(d['boxes'], reference['post_boxes_xyxy'], atol=1e-4, rtol=1e-6)
    sel = select(d, threshold=0.5, top_k=3)
    assert all(len(s['scores']) <= 3 and (s['scores'] > 0.5).all() for s in sel)
    assert all((np.diff(s['scores']) <= 0).all() for s in sel)


def test_top_pairs_detections():
    # query 0: classes 0 and 1 both likely; query 1: mostly no-object
    probs = np.array([[[0.5, 0.4, 0.05, 0.05], [0.1, 0.15, 0.05, 0.7]]], np.float32)
    out = {'pred_logits': jnp.log(jnp.asarray(probs)),
           'pred_boxes': jnp.asarray([[[0.5, 0.5, 0.2, 0.4], [0.25, 0.25, 0.1, 0.1]]])}
    size = jnp.asarray([[100, 200]])
    best = detections(out, size)
    np.testing.assert_array_equal(best['labels'], [[0, 1]])
    np.testing.assert_array_equal(best['queries'], [[0, 1]])
    np.testing.assert_allclose(best['scores'], [[0.5, 0.15]], rtol=1e-6)
    top = detections(out, size, 'top_pairs')
    # the two best (query, class) pairs are both query 0's
    np.testing.assert_array_equal(top['queries'], [[0, 0]])
    np.testing.assert_array_equal(top['labels'], [[0, 1]])
    np.testing.assert_allclose(top['scores'], [[0.5, 0.4]], rtol=1e-6)
    np.testing.assert_allclose(top['boxes'], [[[80, 30, 120, 70]] * 2], rtol=1e-6)
    (sel,) = select(top, threshold=0.3)
    np.testing.assert_array_equal(sel['queries'], [0, 0])
    with pytest.raises(ValueError, match='top_pairs'):
        detections(out, size, 'top')


@pytest.fixture(scope='module')
def val_set(tmp_path_factory):
    root = tmp_path_factory.mktemp('syn')
    p = synthetic.write_coco(str(root), 'val', 21, seed=2)
    return p, load_instances(p['instances'], p['images'])


def _gt_dets(batch, source):
    """Detections equal to the batch's ground truth (in original pixels)."""
    b, m = batch['labels'].shape
    scores = np.where(batch['valid'], 1.0, 0.0).astype(np.float32)
    oh, ow = batch['orig_size'][:, 0:1], batch['orig_size'][:, 1:2]
    cx, cy, w, h = np.moveaxis(batch['boxes'], -1, 0)
    boxes = np.stack([(cx - w / 2) * ow, (cy - h / 2) * oh, (cx + w / 2) * ow, (cy + h / 2) * oh], -1)
    labels = np.where(batch['valid'], batch['labels'], 10 ** 6)  # padding: no such class
    return {'scores': scores, 'labels': labels, 'boxes': boxes}


def _results(source, cfg, process_index=0, process_count=1, shift=0.0):
    res, ids = [], []
    for batch in eval_batches(source, cfg, process_index, process_count):
        d = _gt_dets(batch, source)
        d['boxes'] = d['boxes'] + shift
        res += evaluate.results_from_detections(d, batch['image_id'], source.label_map)
        ids += [int(i) for i in batch['image_id'] if i >= 0]
    return res, ids


def test_known_answers(val_set, tmp_path):
    paths, source = val_set
    cfg = small_data_cfg(eval_size=128, eval_max_size=192, max_boxes=10,
                         eval_buckets=((128, 128), (128, 192), (192, 128)), eval_batch_size=4)
    res, ids = _results(source, cfg)
    assert sorted(ids) == sorted(source.image_ids.tolist())  # every image once (21 = 5x4 + 1)
    ap = evaluate.coco_ap(paths['instances'], res, ids, out_json=str(tmp_path / 'r.json'))
    assert ap['AP'] == pytest.approx(1.0, abs=1e-6)
    assert json.load(open(tmp_path / 'r.json')) == res
    assert evaluate.coco_ap(paths['instances'], [], ids)['AP'] == 0.0
    shifted, _ = _results(source, cfg, shift=3.0)
    ours = evaluate.coco_ap(paths['instances'], shifted, ids)
    from pycocotools.coco import COCO
    from pycocotools.cocoeval import COCOeval
    gt = COCO(paths['instances'])
    ev = COCOeval(gt, gt.loadRes(shifted), 'bbox')
    ev.evaluate()
    ev.accumulate()
    ev.summarize()
    assert 0.0 < ours['AP'] < 1.0
    assert ours['AP'] == pytest.approx(ev.stats[0]) and ours['AP75'] == pytest.approx(ev.stats[2])


def test_two_hosts_equal_one(val_set):
    _, source = val_set
    cfg = small_data_cfg(eval_size=128, eval_max_size=192, max_boxes=10,
                         eval_buckets=((128, 128), (128, 192), (192, 128)), eval_batch_size=4)
    one = list(eval_batches(source, cfg))
    two = [list(eval_batches(source, cfg, i, 2)) for i in range(2)]
    assert len(one) == len(two[0]) == len(two[1])
    for a, b0, b1 in zip(one, *two):
        for k in a:  # host 0 + host 1 = the global batch, same bucket on both
            np.testing.assert_array_equal(a[k], np.concatenate([b0[k], b1[k]]), err_msg=k)
    r1, _ = _results(source, cfg)
    r2 = _results(source, cfg, 0, 2)[0] + _results(source, cfg, 1, 2)[0]
    key = lambda r: (r['image_id'], r['category_id'], tuple(r['bbox']))  # noqa: E731
    assert sorted(r1, key=key) == sorted(r2, key=key)


def test_max_images_cuts_every_per_image_field(val_set):
    """`train.eval_max_images` evaluates the first n images: Source.head cuts
    every per-image field (a field left whole would pair images with another
    image's boxes or reader entry)."""
    _, plain = val_set
    source = dataclasses.replace(plain, reader_index=np.arange(len(plain)) + 100,
                                 segment_ids=[np.arange(len(b)) for b in plain.boxes],
                                 panoptic_pngs=[f'{i}.png' for i in range(len(plain))])
    head = source.head(5)
    per_image = [f.name for f in dataclasses.fields(source)
                 if hasattr(getattr(source, f.name), '__len__')
                 and not isinstance(getattr(source, f.name), (str, dict))
                 and len(getattr(source, f.name)) == len(source)]
    assert len(per_image) == 8, per_image
    for k in per_image:
        assert len(getattr(head, k)) == 5, k
        for a, b in zip(getattr(head, k), getattr(source, k)[:5]):
            np.testing.assert_array_equal(a, b, err_msg=k)
    assert head.label_map == source.label_map and len(source) == 21
    cfg = small_data_cfg(eval_size=128, eval_max_size=192, max_boxes=10,
                         eval_buckets=((128, 128), (128, 192), (192, 128)), eval_batch_size=4)
    ids = [int(i) for b in eval_batches(plain.head(5), cfg) for i in b['image_id'] if i >= 0]
    assert sorted(ids) == sorted(plain.image_ids[:5].tolist())


def test_drawing_has_boxes_where_predictions_are():
    img = np.zeros((80, 120, 3), np.uint8)
    pic = draw.draw_boxes(img, np.array([[20, 30, 70, 60]]), np.array([2]), np.array([0.9]),
                          {2: {'name': 'triangle'}})
    color = np.array(draw.PALETTE[2])
    on = lambda y, x: (pic[y, x] == color).all()  # noqa: E731
    assert on(45, 20) and on(45, 70) and on(30, 45) and on(60, 45)  # the four edges
    assert not pic[40:55, 25:65].any()  # inside stays as it was
    assert (pic[:30].reshape(-1, 3) == color).all(-1).sum() > 20  # the label above the box


def test_group_norm_model_scores_the_same_in_any_eval_buckets(val_set):
    """The GroupNorm backbone (the demo's) leaves padding out of its
    statistics: the same weights give the same detections (within 1e-5) and
    the same AP whether images are padded to tight buckets or one large one."""
    import jax
    import tiny_config
    from detr_jax.sharding import make_mesh
    from detr_jax.trainer import build_trainer
    _, source = val_set
    c = tiny_config.get_config()
    c.model.norm = 'gn'
    trainer = build_trainer(c, make_mesh(jax.devices()[:1]), steps_per_epoch=1)
    variables = trainer.init_state(jax.random.PRNGKey(4)).eval_variables()
    runs = []
    for buckets in (((128, 128), (128, 192), (192, 128)), ((192, 192),)):
        cfg = small_data_cfg(eval_size=128, eval_max_size=192, max_boxes=10, eval_buckets=buckets,
                             eval_batch_size=8)
        results, ids, _ = evaluate.predict(trainer.eval_step, variables, source, cfg,
                                           trainer.mesh)
        key = lambda r: (r['image_id'], r['category_id'], round(r['bbox'][0]))  # noqa: E731
        runs.append((sorted(results, key=key), evaluate.coco_ap(source.ground_truth, results,
                                                                ids)))
    (a, ap_a), (b, ap_b) = runs
    assert len(a) == len(b) == 21 * c.model.num_queries
    for x, y in zip(a, b):
        assert (x['image_id'], x['category_id']) == (y['image_id'], y['category_id'])
        np.testing.assert_allclose(x['bbox'] + [x['score']], y['bbox'] + [y['score']],
                                   atol=1e-4 * 192, rtol=1e-5)
    assert ap_a == ap_b


def test_undefined_coco_figures_are_none_and_shown_as_na():
    """APl with no large object is undefined (pycocotools' -1): None, and
    'n/a' on the console and in tables, not 0.0."""
    from detr_jax import console
    gt = {'images': [{'id': 1, 'height': 100, 'width': 100}],
          'annotations': [{'id': 1, 'image_id': 1, 'category_id': 3, 'bbox': [10, 10, 20, 20],
                           'area': 400, 'iscrowd': 0}],
          'categories': [{'id': 3, 'name': 'c'}]}
    hit = [{'image_id': 1, 'category_id': 3, 'bbox': [10, 10, 20, 20], 'score': 0.9}]
    m = evaluate.coco_ap(gt, hit)
    assert m['AP'] == pytest.approx(1.0) and m['APs'] == pytest.approx(1.0)
    assert m['APm'] is None and m['APl'] is None
    assert console.format_metrics(m, ('AP', 'APl')) == 'AP 100.0 | APl n/a'
    assert '| 100.0 | 100.0 | 100.0 | 100.0 | n/a | n/a |' in evaluate.format_table(m)
    none = evaluate.coco_ap(gt, [])  # no detections: defined figures are 0
    assert none['AP'] == 0.0 and none['APl'] is None
