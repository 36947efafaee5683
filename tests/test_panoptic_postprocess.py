"""Panoptic and segmentation post-processing against the original's
PostProcessPanoptic output (the fixture) and PyTorch's interpolation, and
PQ against panopticapi's own result on real COCO ground truth."""
import json

import numpy as np
import pytest

from conftest import PANOPTICAPI
from detr_jax import postprocess
from detr_jax.evaluate import pq_compute
from detr_jax.panoptic_format import read_ids, write_ids
from detr_jax.pq import image_stat, summarize

IS_THING = np.arange(250) <= 90  # the fixture's map: class ids up to 90 are things


# --- post-processing ------------------------------------------------------------

def test_panoptic_equals_the_originals_postprocess(reference):
    out = {'pred_logits': reference['pred_logits'], 'pred_masks': reference['pred_masks']}
    results = postprocess.panoptic(out, reference['image_sizes'], reference['post_orig_sizes'],
                                   IS_THING, threshold=float(reference['pan_threshold']))
    for i, res in enumerate(results):
        ref_ids, ref_segments = reference[f'pan_ids_img{i}'], reference[f'pan_segments_img{i}']
        ids = res['ids']
        assert ids.shape == ref_ids.shape == tuple(reference['post_orig_sizes'][i])
        # the same map up to renumbering: a one-to-one map between the ids
        pairs = np.unique(np.stack([ref_ids.ravel(), ids.ravel()], 1), axis=0)
        assert len(pairs) == len(np.unique(ref_ids)) == len(np.unique(ids))
        ours_of = dict(pairs.tolist())
        segments = {s['id']: s for s in res['segments_info']}
        assert len(segments) == len(ref_segments) > 10
        for ref_id, isthing, category, area in ref_segments.tolist():
            s = segments[ours_of[ref_id]]
            assert (s['isthing'], s['category_id'], s['area']) == (bool(isthing), category, area)
            assert s['label'] == category  # no label map: the class index
        assert ids.dtype == np.int32 and ids.min() >= 1  # every pixel has a segment


def _outputs(labels, masks, num_classes=4):
    """Outputs of a batch of one image: query q has class `labels[q]` (-1
    = no object) at probability ~1, and mask logits `masks[q]`."""
    q = len(labels)
    logits = np.full((1, q, num_classes + 1), -20.0, np.float32)
    for k, c in enumerate(labels):
        logits[0, k, c if c >= 0 else num_classes] = 20.0
    return {'pred_logits': logits, 'pred_masks': np.asarray(masks, np.float32)[None]}


def _blob(h, w, y0, y1, x0, x1, inside=5.0, outside=-5.0):
    m = np.full((h, w), outside, np.float32)
    m[y0:y1, x0:x1] = inside
    return m


def test_panoptic_hand_built_cases():
    is_thing = np.array([True, True, False, False])
    h = w = 8  # masks at stride 4 of a 32x32 image
    size = np.array([[32, 32]])
    # overlapping things: the larger logit wins the overlap; query order numbers segments
    a, b = _blob(h, w, 0, 6, 0, 6, inside=3.0), _blob(h, w, 2, 8, 2, 8, inside=4.0)
    res = postprocess.panoptic(_outputs([0, 1], [a, b]), size, size, is_thing, 0.5)[0]
    ids, segs = res['ids'], res['segments_info']
    assert [(s['id'], s['category_id'], s['isthing']) for s in segs] == [(1, 0, True), (2, 1, True)]
    assert ids[12, 12] == 2 and ids[4, 4] == 1  # the overlap went to the larger logit
    assert [s['area'] for s in segs] == [int((ids == 1).sum()), int((ids == 2).sum())]
    assert sum(s['area'] for s in segs) == 32 * 32

    # two stuff queries of one class merge into the first one's segment
    top, bottom = _blob(h, w, 0, 4, 0, 8), _blob(h, w, 4, 8, 0, 8)
    res = postprocess.panoptic(_outputs([2, 2], [top, bottom]), size, size, is_thing, 0.5)[0]
    assert [(s['id'], s['category_id'], s['area']) for s in res['segments_info']] == [(1, 2, 1024)]
    assert (res['ids'] == 1).all()
    # two things of one class stay two segments
    res = postprocess.panoptic(_outputs([0, 0], [top, bottom]), size, size, is_thing, 0.5)[0]
    assert [s['area'] for s in res['segments_info']] == [512, 512]

    # a segment of at most 4 pixels is dropped and its pixels go to the others
    tiny = np.full((h, w), -50.0, np.float32)
    tiny[0, 0] = 50.0  # one mask cell: 4x4 = 16 pixels at 32x32, 1 pixel at 8x8
    res = postprocess.panoptic(_outputs([0, 3], [tiny, np.zeros((h, w))]), size, size,
                               is_thing, 0.5)
    areas = [s['area'] for s in res[0]['segments_info']]
    assert len(areas) == 2 and 4 < areas[0] < 20 and sum(areas) == 32 * 32
    res = postprocess.panoptic(_outputs([0, 3], [tiny, np.zeros((h, w))]), size,
                               np.array([[8, 8]]), is_thing, 0.5)[0]
    assert [(s['id'], s['category_id'], s['area']) for s in res['segments_info']] == [(1, 3, 64)]
    assert (res['ids'] == 1).all()

    # every query no-object, or under the threshold: an all-void image
    res = postprocess.panoptic(_outputs([-1, -1], [a, b]), size, np.array([[20, 30]]),
                               is_thing, 0.5)[0]
    assert res['segments_info'] == [] and res['ids'].shape == (20, 30) and (res['ids'] == 0).all()


def test_panoptic_category_ids_from_the_label_map():
    label_map = {0: {'id': 17}, 1: {'id': 3}, 2: {'id': 92}, 3: {'id': 200}}
    masks = [_blob(8, 8, 0, 4, 0, 8), _blob(8, 8, 4, 8, 0, 8)]
    res = postprocess.panoptic(_outputs([1, 2], masks), np.array([[32, 32]]),
                               np.array([[32, 32]]), np.array([True, True, False, False]), 0.5,
                               label_map=label_map)[0]
    assert [(s['label'], s['category_id'], s['isthing']) for s in res['segments_info']] == \
        [(1, 3, True), (2, 92, False)]


@pytest.mark.parametrize('size', [(40, 36), (13, 70), (5, 6)])
def test_resize_masks_is_pytorchs_bilinear(size):
    import torch
    rng = np.random.default_rng(0)
    masks = rng.normal(size=(2, 3, 10, 9)).astype(np.float32)
    got = np.asarray(postprocess.resize_masks(masks, np.array([size, size]), (80, 72)))
    want = torch.nn.functional.interpolate(torch.from_numpy(masks), size=size, mode='bilinear',
                                           align_corners=False).numpy()
    np.testing.assert_allclose(got[:, :, :size[0], :size[1]], want, atol=2e-6)
    assert (got[:, :, size[0]:] == 0).all() and (got[:, :, :, size[1]:] == 0).all()


def test_segmentation_is_the_originals_postprocess_segm():
    """The original's PostProcessSegm, run with PyTorch: upsample to the
    batch's largest size, sigmoid > 0.5, crop, nearest to the original size."""
    import torch
    F = torch.nn.functional
    rng = np.random.default_rng(1)
    pred = rng.normal(size=(2, 4, 12, 10)).astype(np.float32)  # a 48x40 padded batch
    sizes, orig = np.array([[48, 36], [40, 40]]), np.array([[97, 70], [33, 41]])
    masks = np.asarray(postprocess.segmentation_masks(pred, sizes))
    assert masks.shape == (2, 4, 48, 40) and masks.dtype == bool
    up = F.interpolate(torch.from_numpy(pred), size=(48, 40), mode='bilinear',
                       align_corners=False).sigmoid() > 0.5
    for i in range(2):
        (h, w), (oh, ow) = sizes[i], orig[i]
        want = F.interpolate(up[i, :, :h, :w].unsqueeze(1).float(), size=(int(oh), int(ow)),
                             mode='nearest').byte()[:, 0].numpy().astype(bool)
        got = postprocess.masks_at_size(masks[i], sizes[i], orig[i])
        assert got.shape == (4, oh, ow)
        np.testing.assert_array_equal(got, want)


# --- PQ ----------------------------------------------------------------------------

def test_pq_equals_panopticapi():
    got = pq_compute(str(PANOPTICAPI / 'gt.json'), str(PANOPTICAPI / 'pred.json'))
    want = json.loads((PANOPTICAPI / 'expected.json').read_text())
    for name in ('All', 'Things', 'Stuff'):
        assert got[name]['n'] == want[name]['n']
        for k in ('pq', 'sq', 'rq'):
            assert abs(got[name][k] - want[name][k]) <= 1e-9, (name, k)
    assert {str(c) for c in got['per_class']} == set(want['per_class'])
    for c, figures in want['per_class'].items():
        for k, v in figures.items():
            assert abs(got['per_class'][int(c)][k] - v) <= 1e-9, (c, k)
    assert got['All']['n'] == 10 and 0 < got['All']['pq'] < 1  # a non-trivial case


def test_pq_compute_folders_given_and_errors(tmp_path):
    # the same with explicit folders, the prediction's PNGs copied elsewhere
    pred = json.loads((PANOPTICAPI / 'pred.json').read_text())
    for a in pred['annotations']:
        write_ids(tmp_path / 'p' / a['file_name'], read_ids(PANOPTICAPI / 'pred' / a['file_name']))
    (tmp_path / 'p.json').write_text(json.dumps(pred))
    got = pq_compute(str(PANOPTICAPI / 'gt.json'), str(tmp_path / 'p.json'),
                     gt_folder=str(PANOPTICAPI / 'gt'), pred_folder=str(tmp_path / 'p'))
    want = json.loads((PANOPTICAPI / 'expected.json').read_text())
    assert abs(got['All']['pq'] - want['All']['pq']) <= 1e-9
    # a segment in the json but not in the PNG, named with its image
    pred['annotations'][0]['segments_info'].append({'id': 999, 'category_id': 1})
    (tmp_path / 'bad.json').write_text(json.dumps(pred))
    with pytest.raises(KeyError, match=r"image with ID 142238.*\[999\]"):
        pq_compute(str(PANOPTICAPI / 'gt.json'), str(tmp_path / 'bad.json'),
                   pred_folder=str(tmp_path / 'p'))
    # an image without a prediction
    pred['annotations'] = pred['annotations'][1:]
    (tmp_path / 'few.json').write_text(json.dumps(pred))
    with pytest.raises(KeyError, match='no prediction for the image with id: 142238'):
        pq_compute(str(PANOPTICAPI / 'gt.json'), str(tmp_path / 'few.json'),
                   pred_folder=str(tmp_path / 'p'))


CATS = {1: {'id': 1, 'isthing': 1}, 2: {'id': 2, 'isthing': 1}, 3: {'id': 3, 'isthing': 0}}


def _seg(i, cat, area=None, crowd=0):
    return {'id': i, 'category_id': cat, 'iscrowd': crowd, 'area': area}


def test_pq_hand_built_cases():
    gt = np.zeros((10, 10), np.int64)
    gt[:, :5] = 1          # thing 1: 50 pixels
    gt[:, 5:] = 2          # stuff 3: 50 pixels
    gt_segs = [_seg(1, 1, 50), _seg(2, 3, 50)]
    # a perfect prediction (other ids): PQ = SQ = RQ = 1
    pred = np.where(gt == 1, 7, 9)
    s = summarize(image_stat(gt, gt_segs, pred, [_seg(7, 1), _seg(9, 3)], CATS), CATS)
    assert s['All'] == {'pq': 1.0, 'sq': 1.0, 'rq': 1.0, 'n': 2}
    assert s['Things']['n'] == 1 and s['Stuff']['n'] == 1

    # void pixels leave the union: the prediction's 60 pixels are 40 on thing 1
    # and 12 on void; the union takes thing 1's json area (50), not its 40 pixels
    gt_void = gt.copy()
    gt_void[:2, :] = 0     # rows 0-1 void
    pred = np.zeros((10, 10), np.int64)
    pred[:, :6] = 7
    stat = image_stat(gt_void, gt_segs, pred, [_seg(7, 1)], CATS)
    assert stat.tp[1] == 1 and stat.iou[1] == pytest.approx(40 / (60 + 50 - 40 - 12))
    assert stat.fn[3] == 1 and stat.fp[1] == 0

    # a wrong class never matches: one FN and one FP
    stat = image_stat(gt, gt_segs, np.where(gt == 1, 7, 0), [_seg(7, 2)], CATS)
    assert (stat.tp[1], stat.fn[1], stat.fp[2]) == (0, 1, 1)

    # a crowd region absorbs an unmatched prediction of its class (over half on it)
    gt_crowd = np.zeros((10, 10), np.int64)
    gt_crowd[:, :6] = 5
    gt_crowd[:, 6:] = 6
    crowd_segs = [_seg(5, 1, 60, crowd=1), _seg(6, 3, 40)]
    pred = np.zeros((10, 10), np.int64)
    pred[:, 2:8] = 7       # 60 pixels, 40 on the crowd, 20 on stuff 3
    stat = image_stat(gt_crowd, crowd_segs, pred, [_seg(7, 1)], CATS)
    assert (stat.tp[1], stat.fp[1], stat.fn[1]) == (0, 0, 0)  # neither FP nor FN
    stat = image_stat(gt_crowd, crowd_segs, pred, [_seg(7, 2)], CATS)
    assert stat.fp[2] == 1  # another class: the crowd does not absorb it
    pred[:, 2:] = 7        # 80 pixels, 40 on the crowd: not over half
    stat = image_stat(gt_crowd, crowd_segs, pred, [_seg(7, 1)], CATS)
    assert stat.fp[1] == 1

    # an image with no ground-truth segments: every prediction off void is an FP
    empty = np.zeros((10, 10), np.int64)
    stat = image_stat(empty, [], pred, [_seg(7, 1)], CATS)
    assert stat.fp[1] == 0  # all of it on void: ignored
    # (pixels of an id the json does not list count as neither void nor a segment)
    stat = image_stat(np.full((10, 10), 4), [], pred, [_seg(7, 1)], CATS)
    assert stat.fp[1] == 1
    # an all-void prediction: every ground-truth segment is an FN, PQ 0
    s = summarize(image_stat(gt, gt_segs, np.zeros((10, 10)), [], CATS), CATS)
    assert s['All'] == {'pq': 0.0, 'sq': 0.0, 'rq': 0.0, 'n': 2}
    # nothing at all: no category counted
    s = summarize(image_stat(empty, [], empty, [], CATS), CATS)
    assert s['All']['n'] == 0 and s['All']['pq'] == 0.0
