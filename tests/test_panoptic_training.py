"""Panoptic training in the original's two stages on the synthetic set's
things and stuff: (a) the detector on boxes, (b) the mask head alone on the
frozen detector, evaluated with PQ; detection checkpoints (ours and a
converted official one) start stage (b)."""
import json
import os

import jax
import numpy as np
import pytest
from flax import traverse_util

from detr_jax import checkpoints
from detr_jax.config_defaults import validate_config
from detr_jax.models.boosters import TRAINING_ONLY, strip_training_only
from detr_jax.train import train_and_evaluate
from detr_jax.trainer import build_trainer
from detr_jax.sharding import make_mesh
from tiny_config import get_config


def _config(stage, cache_dir, init_from=''):
    c = get_config()
    c.model.num_classes = 8  # 6 things + 2 stuff
    c.data.panoptic = True
    c.data.cache_dir = str(cache_dir)
    c.train.max_steps, c.train.eval_every = 4, -1
    # stage (a) with Group DETR's training-only queries, as configs/demo_panoptic.py
    # inherits them from the demo: stage (b)'s frozen detector leaves them out
    c.model.num_groups = 2
    if stage == 'masks':
        c.model.num_groups = 1
        c.model.masks = True
        c.train.freeze_detr = True
        c.train.init_from = str(init_from)
        c.train.panoptic_threshold = 0.0  # an untrained detector: keep every real query
    return c


def _flat(tree):
    return {k: np.asarray(v) for k, v in traverse_util.flatten_dict(tree).items()}


@pytest.fixture(scope='module')
def two_stages(tmp_path_factory):
    root = tmp_path_factory.mktemp('panoptic')
    detector = train_and_evaluate(_config('detector', root / 'data'), str(root / 'a'))
    masks = train_and_evaluate(_config('masks', root / 'data', root / 'a'), str(root / 'b'))
    return root, detector, masks


def test_stage_b_trains_the_mask_head_alone(two_stages):
    root, _, masks = two_stages
    _, before, _ = checkpoints.load_workdir(str(root / 'a'))
    _, after, step = checkpoints.load_workdir(str(root / 'b'))
    assert step == 4
    assert TRAINING_ONLY in before['params']  # stage (a) trained with groups
    start = _flat(strip_training_only(before['params']))
    end = _flat(after['params']['detr'])
    assert start.keys() == end.keys()
    for k in start:  # every detector parameter bitwise as stage (a) left it
        np.testing.assert_array_equal(start[k], end[k], err_msg=str(k))
    # the mask head moved (it starts fresh: compare with a fresh init)
    heads = {k: v for k, v in _flat(after['params']).items() if k[0] != 'detr'}
    assert {k[0] for k in heads} == {'bbox_attention', 'mask_head'}
    c = _config('masks', root / 'data', root / 'a')
    trainer = build_trainer(c, make_mesh(), steps_per_epoch=6)
    fresh = _flat(trainer.init_state(jax.random.split(jax.random.PRNGKey(c.seed))[0]).params)
    assert any(not np.array_equal(fresh[k], v) for k, v in heads.items())
    assert masks['train/loss_mask'] > 0 and masks['train/loss_dice'] > 0


def test_stage_b_keeps_no_optimizer_state_for_the_detector(tmp_path):
    c = _config('masks', tmp_path, '')
    trainer = build_trainer(c, make_mesh(), steps_per_epoch=6)
    state = trainer.init_state(jax.random.PRNGKey(0))
    # AdamW's moments exist for the mask head's parameters only
    moments = [leaf for leaf in jax.tree_util.tree_leaves(state.opt_state) if leaf.ndim > 0]
    head = [v for k, v in traverse_util.flatten_dict(state.params).items() if k[0] != 'detr']
    assert sorted(m.size for m in moments) == sorted(2 * [v.size for v in head])


def test_stage_b_reports_pq_and_writes_cocos_panoptic_format(two_stages):
    root, detector, masks = two_stages
    assert 'PQ' not in detector and 'AP' in detector  # stage (a): a detector, box AP
    for k in ('PQ', 'SQ', 'RQ', 'PQ_th', 'PQ_st', 'AP'):
        assert k in masks and (masks[k] is None or 0.0 <= masks[k] <= 1.0), k
    ev = root / 'b' / 'eval'
    pred = json.loads((ev / 'panoptic_4.json').read_text())
    assert len(pred['annotations']) == 16  # every validation image
    for a in pred['annotations']:
        assert (ev / 'panoptic_4' / a['file_name']).exists()
    pq = json.loads((ev / 'pq_4.json').read_text())
    assert set(pq) == {'All', 'Things', 'Stuff', 'per_class'} and len(pq['per_class']) == 8
    assert pq['All']['pq'] == pytest.approx(masks['PQ'])
    # the predictions in COCO's format evaluate to the same PQ through
    # panopticapi's entry point, against the synthetic set's ground truth
    from detr_jax.data.datasets import synthetic_root
    from detr_jax.evaluate import pq_compute
    gt = os.path.join(synthetic_root(_config('masks', root / 'data').data), 'n16', 'val')
    got = pq_compute(os.path.join(gt, 'panoptic_val.json'), str(ev / 'panoptic_4.json'),
                     pred_folder=str(ev / 'panoptic_4'))
    assert got['All']['pq'] == pytest.approx(masks['PQ'], abs=1e-12)
    assert os.path.exists(masks['picture'])


def test_an_official_detection_checkpoint_starts_stage_b(legacy_checkpoint, tmp_path):
    """The official detection layout (no mask head, torch's legacy format)
    loads into the panoptic model's detector; the mask head stays fresh."""
    from detr_jax.convert import load_checkpoint
    model_cfg, official = load_checkpoint(str(legacy_checkpoint))
    c = _config('masks', tmp_path, str(legacy_checkpoint))
    c.model.update({k: v for k, v in model_cfg.items() if k != 'label_map'})
    c.model.masks = True
    c.data.buckets = c.data.eval_buckets = ((64, 64),)
    validate_config(c)
    trainer = build_trainer(c, make_mesh(), steps_per_epoch=6)
    state = trainer.init_state(jax.random.PRNGKey(0))
    loaded = checkpoints.init_from_pretrained(state, str(legacy_checkpoint))
    ours, theirs = _flat(loaded.params['detr']), _flat(official['params'])
    assert ours.keys() == theirs.keys()
    for k in ours:
        np.testing.assert_array_equal(ours[k], theirs[k].astype(ours[k].dtype), err_msg=str(k))
    fresh = _flat(state.params)
    for k, v in _flat(loaded.params).items():
        if k[0] != 'detr':
            np.testing.assert_array_equal(v, fresh[k])


def test_an_official_panoptic_checkpoint_starts_stage_b(tmp_path):
    """The official panoptic layout (detector and mask head) loads whole:
    every parameter of the model, the mask head's included, is the file's."""
    from conftest import OFFICIAL
    from detr_jax.convert import load_checkpoint
    path = str(OFFICIAL / 'checkpoint.pth')
    model_cfg, official = load_checkpoint(path)
    c = _config('masks', tmp_path, path)
    c.model.update({k: v for k, v in model_cfg.items() if k != 'label_map'})
    c.data.buckets = c.data.eval_buckets = ((64, 64),)
    validate_config(c)
    trainer = build_trainer(c, make_mesh(), steps_per_epoch=6)
    state = trainer.init_state(jax.random.PRNGKey(0))
    loaded = checkpoints.init_from_pretrained(state, path)
    ours, theirs = _flat(loaded.params), _flat(official['params'])
    assert ours.keys() == theirs.keys() and any(k[0] == 'mask_head' for k in ours)
    for k in ours:
        np.testing.assert_array_equal(ours[k], theirs[k].astype(ours[k].dtype), err_msg=str(k))


def test_freeze_detr_needs_a_mask_head():
    c = get_config()
    c.train.freeze_detr = True
    with pytest.raises(ValueError, match='config.train.freeze_detr=True.*config.model.masks'):
        validate_config(c)


def test_predict_draws_and_writes_a_panoptic_checkpoints_segments(two_stages, tmp_path, capsys):
    from PIL import Image
    from detr_jax import predict
    from detr_jax.panoptic_format import read_ids
    root = two_stages[0]
    images = sorted((root / 'data').glob('*/n16/val/images/*.png'))[:2]
    assert predict.cli([str(p) for p in images] + [
        '--checkpoint', str(root / 'b'), '--out', str(tmp_path / 'out'),
        '--panoptic_threshold', '0.0']) == 0
    listing = json.loads((tmp_path / 'out' / 'panoptic.json').read_text())
    assert [a['file_name'] for a in listing['annotations']] == [p.name for p in images]
    for p, a in zip(images, listing['annotations']):
        ids = read_ids(tmp_path / 'out' / 'panoptic' / a['file_name'])
        with Image.open(p) as im:
            assert ids.shape == (im.height, im.width)
        assert a['segments_info'], 'threshold 0 keeps every query that is not no-object'
        for s in a['segments_info']:
            assert s['area'] == int((ids == s['id']).sum()) > 4
        pic = np.asarray(Image.open(tmp_path / 'out' / f'{p.stem}_pred.png'))
        assert pic.shape[1] > 2 * ids.shape[1]  # boxes and the overlay side by side
    assert 'segments:' in capsys.readouterr().out


def test_mode_eval_of_a_panoptic_workdir_reports_the_same_pq(two_stages):
    from detr_jax.evaluate import evaluate_checkpoint
    root, _, masks = two_stages
    again = evaluate_checkpoint(str(root / 'b'))
    for k in ('PQ', 'PQ_th', 'PQ_st', 'SQ', 'RQ', 'AP'):
        assert again[k] == masks[k], k


def test_segments_of_classes_the_data_lacks_are_scored_as_void(two_stages):
    """A head wider than the data (a COCO-layout checkpoint on other data)
    may predict a class index the data has no category for: its segment is
    void in the score, and evaluation goes on."""
    from detr_jax.data.datasets import build_source
    from detr_jax.data.pipeline import eval_batches
    from detr_jax.evaluate import PanopticEval
    root = two_stages[0]
    cfg = _config('masks', root / 'data').data
    source = build_source(cfg, 'val').head(8)
    batch = next(iter(eval_batches(source, cfg)))
    b, (h, w) = len(batch['image_id']), batch['images'].shape[1:3]
    q = 3
    keep = np.zeros((b, q), bool)
    keep[:, :2] = True
    labels = np.zeros((b, q), np.int32)
    labels[:, 0], labels[:, 1] = 40, 6  # 40: no such class; 6: sky (stuff)
    winners = np.zeros((b, h, w), np.int32)
    winners[:, h // 2:] = 1
    out = {'pan_keep': keep, 'pan_labels': labels, 'pan_winners': winners,
           'pred_masks': np.zeros((b, q, h // 4, w // 4), np.float32)}
    ev = PanopticEval(source)
    segments = ev.add(batch, out, make_mesh())
    for seg in segments:
        cats = [s['category_id'] for s in seg['segments_info']]
        assert cats == [source.label_map[6]['id']]  # the unknown class's segment is gone
        assert (seg['ids'] == 0).any() and set(np.unique(seg['ids'])) <= {0, 2}
    assert ev.summary()['All']['n'] >= 1  # scored, not crashed
