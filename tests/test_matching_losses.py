"""Box ops, Hungarian matching (both solvers) and the set criterion."""
import jax
import jax.numpy as jnp
import numpy as np
import pytest
import scipy.optimize
from jax.sharding import Mesh, NamedSharding, PartitionSpec as P

from detr_jax import box_ops
from detr_jax.losses import match_all_layers, set_criterion
from detr_jax.matching import match, matching_cost

CFG = {'matcher': dict(cost_class=1.0, cost_bbox=5.0, cost_giou=2.0, solver='scipy'),
       'loss': dict(ce=1.0, bbox=5.0, giou=2.0, mask=1.0, dice=1.0, eos_coef=0.1)}


def _cfg(solver):
    return {'matcher': dict(CFG['matcher'], solver=solver), 'loss': CFG['loss']}


def _fixture_batch(ref, max_boxes=5):
    n = len(ref['tgt_labels'])
    t = dict(labels=np.zeros((2, max_boxes), np.int32), boxes=np.zeros((2, max_boxes, 4), np.float32),
             valid=np.zeros((2, max_boxes), bool), masks=np.zeros((2, max_boxes, 160, 160), np.float32))
    t['labels'][0, :n], t['boxes'][0, :n], t['valid'][0, :n] = ref['tgt_labels'], ref['tgt_boxes'], True
    t['masks'][0, :n, :128, :160] = ref['tgt_masks']  # padded to the batch's 160x160
    outs = {'pred_logits': ref['pred_logits'], 'pred_boxes': ref['pred_boxes'],
            'pred_masks': ref['pred_masks'],
            'aux_outputs': [{'pred_logits': ref['aux_logits'][0], 'pred_boxes': ref['aux_boxes'][0]}]}
    return outs, t


@pytest.mark.parametrize('solver', ['scipy', 'optax'])
def test_fixture_loss_parity(reference, solver):
    outs, t = _fixture_batch(reference)
    _, metrics = jax.jit(lambda o, t: set_criterion(o, t, _cfg(solver)))(outs, t)
    names = [k[len('loss/'):] for k in reference if k.startswith('loss/')]
    assert len(names) == 11
    for name in names:
        np.testing.assert_allclose(float(metrics[name]), float(reference['loss/' + name]),
                                   rtol=1e-5, err_msg=name)
    weights = {'loss_ce': 1, 'loss_bbox': 5, 'loss_giou': 2, 'loss_mask': 1, 'loss_dice': 1,
               'loss_ce_0': 1, 'loss_bbox_0': 5, 'loss_giou_0': 2}
    expected_total = sum(w * float(reference['loss/' + k]) for k, w in weights.items())
    np.testing.assert_allclose(float(metrics['loss']), expected_total, rtol=1e-5)


def test_mask_loss_in_chunks_equals_all_slots_at_once(reference, monkeypatch):
    """The mask terms and their gradients are the same whether the target
    slots are upsampled all at once or a few at a time (padded slots too)."""
    from detr_jax import losses
    outs, t = _fixture_batch(reference, max_boxes=7)

    def terms(pred_masks):
        _, m = set_criterion(dict(outs, pred_masks=pred_masks), t, _cfg('scipy'))
        return m['loss_mask'] + m['loss_dice'], (m['loss_mask'], m['loss_dice'])
    got = {}
    for chunk in (8, 3):  # 7 slots at once; 3 chunks of 3 (2 padded slots)
        monkeypatch.setattr(losses, 'MASK_LOSS_CHUNK', chunk)
        got[chunk] = jax.jit(jax.grad(terms, has_aux=True))(jnp.asarray(outs['pred_masks']))
    np.testing.assert_allclose(np.asarray(got[3][1]), np.asarray(got[8][1]), rtol=1e-6)
    np.testing.assert_allclose(np.asarray(got[3][0]), np.asarray(got[8][0]), rtol=1e-5,
                               atol=1e-12)
    np.testing.assert_allclose(float(got[8][1][0]), float(reference['loss/loss_mask']),
                               rtol=1e-5)


@pytest.mark.parametrize('solver', ['scipy', 'optax'])
def test_fixture_matching_by_total_cost(reference, solver):
    outs, t = _fixture_batch(reference)
    idx = np.asarray(match_all_layers(outs, t, _cfg(solver)['matcher']))[-1, 0]
    cost = np.asarray(matching_cost(outs['pred_logits'][0], outs['pred_boxes'][0], t['labels'][0],
                                    t['boxes'][0], t['valid'][0], CFG['matcher']))
    ours = sum(cost[idx[j], j] for j in range(3))
    theirs = sum(cost[p, q] for p, q in zip(reference['match_pred_idx_img0'],
                                            reference['match_tgt_idx_img0']))
    assert abs(ours - theirs) < 0.1 * float(reference['match_margin'])


def _random_problems(n, q=8, m=8, seed=0):
    rng = np.random.default_rng(seed)
    cost = rng.normal(size=(n, q, m)).astype(np.float32)
    ties = rng.random(n) < 0.3  # integer costs: many equal-cost optima
    cost[ties] = rng.integers(0, 3, size=(ties.sum(), q, m)).astype(np.float32)
    n_valid = rng.integers(0, m + 1, size=n)  # square (m valid), rectangular and empty
    valid = np.zeros((n, m), bool)
    for i, k in enumerate(n_valid):
        valid[i, rng.permutation(m)[:k]] = True  # padding anywhere, not only at the end
    return np.where(valid[:, None, :], cost, 0.0).astype(np.float32), valid


def _total(cost, idx, valid):
    return sum(cost[idx[j], j] for j in np.flatnonzero(valid))


def test_solvers_agree_with_scipy_on_1000_problems():
    cost, valid = _random_problems(1200)
    got = {s: np.asarray(jax.jit(lambda c, v, s=s: match(c[None], v, s))(cost, valid))[0]
           for s in ('scipy', 'optax')}
    for i in range(len(cost)):
        cols = np.flatnonzero(valid[i])
        r, c = scipy.optimize.linear_sum_assignment(cost[i][:, cols])
        best = cost[i][:, cols][r, c].sum()
        for s, idx in got.items():
            assert len(set(idx[i][cols])) == len(cols), (s, i)  # one-to-one
            assert abs(_total(cost[i], idx[i], valid[i]) - best) < 1e-4, (s, i)
    # batched equals per-image
    for i in range(0, 40, 7):
        one = np.asarray(match(cost[i][None, None], valid[i][None], 'scipy'))[0, 0]
        np.testing.assert_array_equal(one[valid[i]], got['scipy'][i][valid[i]])


def _random_batch(b=8, q=10, m=4, c=6, seed=0):
    rng = np.random.default_rng(seed)
    outs = {'pred_logits': rng.normal(size=(b, q, c + 1)).astype(np.float32),
            'pred_boxes': rng.uniform(0.2, 0.6, size=(b, q, 4)).astype(np.float32),
            'aux_outputs': [{'pred_logits': rng.normal(size=(b, q, c + 1)).astype(np.float32),
                             'pred_boxes': rng.uniform(0.2, 0.6, size=(b, q, 4)).astype(np.float32)}]}
    n = rng.integers(0, m + 1, size=b)
    valid = np.arange(m)[None] < n[:, None]
    t = {'labels': rng.integers(0, c, size=(b, m)).astype(np.int32),
         'boxes': rng.uniform(0.2, 0.6, size=(b, m, 4)).astype(np.float32), 'valid': valid}
    return outs, t


def _loss_and_grad(outs, t, cfg, mesh=None):
    def f(o):
        return set_criterion(o, t, cfg, mesh=mesh)
    return jax.value_and_grad(f, has_aux=True)(outs)


@pytest.mark.parametrize('solver', ['scipy', 'optax'])
def test_sharded_equals_single_device(solver):
    outs, t = _random_batch()
    (l1, m1), g1 = jax.jit(lambda o, t: _loss_and_grad(o, t, _cfg(solver)))(outs, t)
    mesh = Mesh(np.array(jax.devices()[:4]), ('data',))
    shard = lambda x: jax.device_put(x, NamedSharding(mesh, P('data')))  # noqa: E731
    so, st = jax.tree_util.tree_map(shard, outs), jax.tree_util.tree_map(shard, t)
    fn = jax.jit(lambda o, t: _loss_and_grad(o, t, _cfg(solver), mesh))
    (l4, m4), g4 = fn(so, st)
    np.testing.assert_allclose(l4, l1, rtol=1e-6)
    for k in m1:
        np.testing.assert_allclose(m4[k], m1[k], rtol=1e-6, atol=1e-7, err_msg=k)
    for a, b in zip(jax.tree_util.tree_leaves(g4), jax.tree_util.tree_leaves(g1)):
        np.testing.assert_allclose(a, b, rtol=1e-6, atol=1e-7)


def _hlo(mesh_for_match):
    outs, t = _random_batch()
    mesh = Mesh(np.array(jax.devices()[:4]), ('data',))
    shard = lambda x: jax.device_put(x, NamedSharding(mesh, P('data')))  # noqa: E731
    so, st = jax.tree_util.tree_map(shard, outs), jax.tree_util.tree_map(shard, t)
    fn = jax.jit(lambda o, t: _loss_and_grad(o, t, CFG, mesh_for_match))
    return fn.lower(so, st).compile().as_text()


def test_scipy_callback_runs_per_shard_without_gather():
    """The compiled scipy path has no all-gather; the naive callback (no
    shard_map) gathers the cost matrix, so this check can see one."""
    assert 'all-gather' not in _hlo(Mesh(np.array(jax.devices()[:4]), ('data',)))
    assert 'all-gather' in _hlo(None)


@pytest.mark.parametrize('case', ['degenerate_preds', 'no_targets', 'one_target', 'full'])
@pytest.mark.parametrize('solver', ['scipy', 'optax'])
def test_finite_loss_and_grads(case, solver):
    outs, t = _random_batch(b=4, q=6, m=6)
    if case == 'degenerate_preds':
        outs['pred_boxes'][..., 2:] = 0.0  # zero width and height everywhere
        outs['aux_outputs'][0]['pred_boxes'][...] = 0.5
        t['boxes'][..., 2] = 0.0
    elif case == 'no_targets':
        t['valid'][:] = False
    elif case == 'one_target':
        t['valid'][:] = False
        t['valid'][0, 0] = True
    else:
        t['valid'][:] = True  # M = max_boxes = num_queries
    (loss, metrics), grads = jax.jit(lambda o, t: _loss_and_grad(o, t, _cfg(solver)))(outs, t)
    assert np.isfinite(loss)
    assert all(np.isfinite(v) for v in metrics.values())
    assert all(np.isfinite(g).all() for g in jax.tree_util.tree_leaves(grads))
    if case == 'no_targets':
        assert float(metrics['loss_bbox']) == 0.0 and float(metrics['class_error']) == 100.0


def test_box_ops_round_trip_and_giou():
    rng = np.random.default_rng(0)
    b = rng.uniform(0.1, 0.9, size=(20, 4)).astype(np.float32)
    np.testing.assert_allclose(box_ops.box_xyxy_to_cxcywh(box_ops.box_cxcywh_to_xyxy(b)), b,
                               atol=1e-6)
    a = np.array([[0, 0, 2, 2]], np.float32)
    c = np.array([[1, 1, 3, 3], [4, 4, 5, 5], [0, 0, 2, 2]], np.float32)
    np.testing.assert_allclose(box_ops.box_iou(a, c)[0], [1 / 7, 0, 1], atol=1e-6)
    np.testing.assert_allclose(box_ops.generalized_box_iou(a, c)[0],
                               [1 / 7 - 2 / 9, -(25 - 5) / 25, 1], atol=1e-6)
    # degenerate: identical points, finite value and gradient
    p = jnp.zeros((1, 4))
    g = jax.grad(lambda x: box_ops.generalized_box_iou(x, x).sum())(p)
    assert np.isfinite(g).all()
