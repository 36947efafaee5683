"""Training-only boosters (models/boosters.py): Group DETR's query groups and
DN-DETR's denoising queries. The inference model stays DETR's."""
import json

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest

import tiny_config
from detr_jax import inference, train
from detr_jax.models import build_model
from detr_jax.models.boosters import TrainingQueries, strip_training_only
from detr_jax.losses import set_criterion
from tests.conftest import tiny_model_config
from tests.test_train import _batches, _setup

BOOSTED = dict(num_groups=3, dn_groups=2)
TARGETS = {'labels': jnp.array([[1, 2, 0], [3, 0, 0]]),
           'boxes': jnp.array([[[.5, .5, .2, .2], [.3, .3, .1, .2], [0, 0, 0, 0]],
                               [[.4, .6, .3, .3], [0] * 4, [0] * 4]]),
           'valid': jnp.array([[1, 1, 0], [1, 0, 0]], bool)}


def _inputs():
    x = jax.random.normal(jax.random.PRNGKey(0), (2, 64, 96, 3))
    pm = jnp.ones((2, 64, 96), bool).at[1, :, 64:].set(False)
    return x, pm


@pytest.fixture(scope='module')
def cache_dir(tmp_path_factory):
    return str(tmp_path_factory.mktemp('synthetic'))


@pytest.mark.parametrize('conditional', [False, True])
def test_eval_outputs_are_the_plain_models_bitwise(conditional):
    boosted = build_model(tiny_model_config(conditional=conditional, **BOOSTED))
    plain = build_model(tiny_model_config(conditional=conditional))
    x, pm = _inputs()
    v = boosted.init(jax.random.PRNGKey(1), x, pm)
    assert set(v['params']['training_queries']) == {'group_query_embed', 'dn_label_embed',
                                                    'dn_box_embed'}
    stripped = {'params': strip_training_only(v['params']), 'batch_stats': v['batch_stats']}
    # the same tree as a plain model's: a plain model's checkpoint template
    assert (jax.tree_util.tree_structure(stripped)
            == jax.tree_util.tree_structure(plain.init(jax.random.PRNGKey(1), x, pm)))
    a, b = boosted.apply(v, x, pm), plain.apply(stripped, x, pm)
    for k in ('pred_logits', 'pred_boxes'):
        np.testing.assert_array_equal(a[k], b[k])
    for la, lb in zip(a['aux_outputs'], b['aux_outputs']):
        np.testing.assert_array_equal(la['pred_boxes'], lb['pred_boxes'])
    assert 'group_outputs' not in a and 'dn_outputs' not in a


def _with_query_deltas(model, variables, x, pm, dt, dp):
    """The training outputs with `dt`, `dp` [B, Qt, D] added to every
    training query's content and position (`TrainingQueries`' output)."""
    def add(next_fun, args, kwargs, context):
        out = next_fun(*args, **kwargs)
        if isinstance(context.module, TrainingQueries) and context.method_name == '__call__':
            out = dict(out, tgt=out['tgt'] + dt, query_pos=out['query_pos'] + dp)
        return out
    with nn.intercept_methods(add):
        return model.apply(variables, x, pm, train=True, targets=TARGETS,
                           rngs={'dropout': jax.random.PRNGKey(2),
                                 'noise': jax.random.PRNGKey(3)})


@pytest.mark.parametrize('conditional', [False, True])
def test_no_information_flows_between_query_groups(conditional):
    """The gradient of each group's outputs with respect to the decoder
    inputs of every other query is exactly zero: none from the denoising
    queries to the matching ones, none between groups (Group DETR's or
    the denoising ones), none from a padded target's dummy query."""
    q, g, k = 6, BOOSTED['num_groups'], BOOSTED['dn_groups']
    model = build_model(tiny_model_config(conditional=conditional, dropout=0.0, **BOOSTED))
    x, pm = _inputs()
    v = model.init(jax.random.PRNGKey(1), x, pm)
    m = TARGETS['valid'].shape[1]
    qt = g * q + k * m
    zeros = jnp.zeros((2, qt, 128))
    valid_dn = jnp.tile(TARGETS['valid'], (1, k))

    def group_sum(out, which):
        if which == 'dn':  # the real targets' denoising queries only
            d = out['dn_outputs']
            real = valid_dn[:, None, :, None]  # [B, 1 (layers), K*M, 1]
            return (jnp.where(real, d['pred_logits'], 0).sum()
                    + jnp.where(real, d['pred_boxes'], 0).sum())
        o = out if which == 0 else out['group_outputs'][which - 1]
        return sum(lay['pred_logits'].sum() + lay['pred_boxes'].sum()
                   for lay in o['aux_outputs'] + [o])

    blocks = [np.arange(i * q, (i + 1) * q) for i in range(g)]
    for which in list(range(g)) + ['dn']:
        grads = jax.grad(lambda dt, dp: group_sum(_with_query_deltas(model, v, x, pm, dt, dp),
                                                  which), argnums=(0, 1))(zeros, zeros)
        # [B, Qt]: which queries' inputs this group's outputs depend on
        reach = np.asarray(sum(jnp.abs(gr).sum(-1) for gr in grads)) > 0
        own = np.zeros((2, qt), bool)
        if which == 'dn':
            own[:, g * q:] = valid_dn
        else:
            own[:, blocks[which]] = True
        np.testing.assert_array_equal(reach, own, err_msg=f'group {which}')
    # each denoising group sees only itself: perturbing group 1 leaves group 0 bitwise
    base = _with_query_deltas(model, v, x, pm, zeros, zeros)['dn_outputs']['pred_boxes']
    bump = zeros.at[:, g * q + m:].add(1.0)
    moved = _with_query_deltas(model, v, x, pm, bump, bump)['dn_outputs']['pred_boxes']
    np.testing.assert_array_equal(base[:, :, :m], moved[:, :, :m])
    assert not np.array_equal(base[:, :, m:], moved[:, :, m:])


def test_loss_terms_per_group_and_denoising():
    model = build_model(tiny_model_config(**BOOSTED))
    x, pm = _inputs()
    v = model.init(jax.random.PRNGKey(1), x, pm)
    out = model.apply(v, x, pm, train=True, targets=TARGETS,
                      rngs={'dropout': jax.random.PRNGKey(2), 'noise': jax.random.PRNGKey(3)})
    config = tiny_config.get_config()
    total, metrics = set_criterion(out, TARGETS, config)
    # group 0's terms keep the original's names; groups 1, 2 and the
    # denoising queries add theirs, every layer (1 aux + final)
    for name in ('loss_ce', 'loss_bbox_0', 'loss_giou_g1', 'loss_ce_0_g2', 'loss_dn_ce',
                 'loss_dn_bbox_0', 'loss_dn_giou'):
        assert name in metrics, name
    # the total is group 0's loss (what a plain model's criterion gives on
    # group 0's outputs) plus the other groups' and the denoising terms
    plain = {k: out[k] for k in ('pred_logits', 'pred_boxes', 'aux_outputs')}
    plain_total, plain_metrics = set_criterion(plain, TARGETS, config)
    l = config.loss
    extra = sum(w * metrics[f'{t}{s}{g}'] for g in ('_g1', '_g2') for s in ('', '_0')
                for t, w in (('loss_ce', l.ce), ('loss_bbox', l.bbox), ('loss_giou', l.giou)))
    extra += sum(w * metrics[f'loss_dn_{t}{s}'] for s in ('', '_0')
                 for t, w in (('ce', l.ce), ('bbox', l.bbox), ('giou', l.giou)))
    np.testing.assert_allclose(float(total), float(plain_total + extra), rtol=1e-6)
    np.testing.assert_allclose(float(metrics['loss_ce']), float(plain_metrics['loss_ce']))
    # the denoising terms by hand: the final layer's boxes against the
    # targets, L1 summed over real targets / (3 targets x 2 groups)
    d = np.asarray(out['dn_outputs']['pred_boxes'][:, -1]).reshape(2, 2, 3, 4)
    valid = np.asarray(TARGETS['valid'])
    l1 = np.abs(d - np.asarray(TARGETS['boxes'])[:, None]).sum(-1)
    np.testing.assert_allclose(float(metrics['loss_dn_bbox']),
                               (l1 * valid[:, None]).sum() / (3 * 2), rtol=1e-5)


def _boosted_config(cache_dir, **model):
    c = tiny_config.get_config()
    c.data.cache_dir = cache_dir
    c.model.update(model)
    return c


def test_denoising_loss_falls_and_is_the_same_for_both_solvers_and_device_counts(cache_dir):
    c = _boosted_config(cache_dir, dn_groups=2, dropout=0.0)
    (batch,) = _batches(c, 1)
    results = {}
    for solver, n, steps in (('scipy', 1, 8), ('optax', 1, 2), ('scipy', 4, 2)):
        c.matcher.solver = solver
        state, run, _ = _setup(c, jax.devices()[:n])
        history = []
        for _ in range(steps):
            state, m = run(state, batch)
            history.append((float(m['loss']), float(m['loss_dn_bbox']) + float(m['loss_dn_giou'])))
        results[(solver, n)] = history
    ref = results[('scipy', 1)]
    assert ref[-1][1] < 0.9 * ref[0][1], ref  # new noise every step: 1.99 -> 1.70 here
    for key in (('optax', 1), ('scipy', 4)):
        np.testing.assert_allclose(results[key], ref[:2], rtol=1e-5, err_msg=str(key))


@pytest.mark.parametrize('conditional,remat,accum', [(False, True, 2), (True, False, 1)])
def test_groups_train_with_either_decoder_remat_and_accumulation(cache_dir, conditional, remat,
                                                                  accum):
    c = _boosted_config(cache_dir, conditional=conditional, remat=remat, dropout=0.0, **BOOSTED)
    c.optim.grad_accum_steps = accum
    batches = _batches(c, 2)
    state, run, trainer = _setup(c, jax.devices()[:2])
    for b in batches:
        state, m = run(state, b)
    for name in ('loss_ce_g2', 'loss_giou_0_g1', 'loss_dn_ce', 'loss_dn_bbox_0'):
        assert np.isfinite(float(m[name])), name
    tq = jax.device_get(state.params['training_queries'])
    assert np.abs(tq['group_query_embed']).sum() > 0
    if remat:  # remat changes what is stored, not the values
        c.model.remat = False
        state2, run2, _ = _setup(c, jax.devices()[:2])
        for b in batches:
            state2, m2 = run2(state2, b)
        np.testing.assert_allclose(float(m2['loss']), float(m['loss']), rtol=1e-5)


def test_a_boosted_workdir_predicts_as_a_plain_model(tmp_path, cache_dir):
    c = _boosted_config(cache_dir, detections='top_pairs', **BOOSTED)
    c.train.max_steps, c.train.eval_every, c.train.eval_max_images = 2, -1, 8
    workdir = tmp_path / 'run'
    train.train_and_evaluate(c, str(workdir))
    # the evaluation says how it read detections off the heads
    assert json.loads((workdir / 'eval' / 'metrics_2.json').read_text())['detections'] == 'top_pairs'
    predictor = inference.Predictor.load(str(workdir))
    assert predictor.model_config.detections == 'top_pairs'
    (result,) = predictor([np.zeros((64, 80, 3), np.uint8)], threshold=0.0)
    assert len(result['scores']) == 12 and np.all(np.diff(result['scores']) <= 0)
    plain = build_model(tiny_config.get_config().model)
    variables = {'params': strip_training_only(predictor.variables['params']),
                 'batch_stats': predictor.variables['batch_stats']}
    x, pm = _inputs()
    a = predictor.model.apply(predictor.variables, x, pm)
    b = plain.apply(variables, x, pm)
    np.testing.assert_array_equal(a['pred_logits'], b['pred_logits'])
    np.testing.assert_array_equal(a['pred_boxes'], b['pred_boxes'])


def test_an_official_checkpoint_fine_tunes_with_the_boosters(legacy_checkpoint, tmp_path):
    """The original's detection checkpoint starts a boosted model: every
    parameter of the file is loaded, the training-only queries start fresh,
    and a boosted checkpoint starts a plain model (they are dropped)."""
    from detr_jax import checkpoints
    from detr_jax.config_defaults import validate_config
    from detr_jax.convert import load_checkpoint
    from detr_jax.sharding import make_mesh
    from detr_jax.trainer import build_trainer
    from tests.test_panoptic_training import _flat
    model_cfg, official = load_checkpoint(str(legacy_checkpoint))
    c = _boosted_config(str(tmp_path / 'synthetic'))
    c.model.update({k: v for k, v in model_cfg.items() if k != 'label_map'})
    c.model.update(BOOSTED)
    c.data.buckets = c.data.eval_buckets = ((64, 64),)
    c.data.max_boxes = 8
    validate_config(c)
    state = build_trainer(c, make_mesh(), steps_per_epoch=6).init_state(jax.random.PRNGKey(0))
    loaded = checkpoints.init_from_pretrained(state, str(legacy_checkpoint))
    ours, theirs = _flat(loaded.params), _flat(official['params'])
    assert ours.keys() - theirs.keys() == {k for k in ours if k[0] == 'training_queries'}
    for k in theirs:
        np.testing.assert_array_equal(ours[k], theirs[k].astype(ours[k].dtype), err_msg=str(k))
    fresh = _flat(state.params)
    for k in ours.keys() - theirs.keys():
        np.testing.assert_array_equal(ours[k], fresh[k])
    # and back: the boosted weights into a plain model's state
    checkpoints.save_converted(tmp_path / 'boosted', c.model,
                               {'params': loaded.params, 'batch_stats': loaded.batch_stats})
    c.model.update(num_groups=1, dn_groups=0)
    plain = build_trainer(c, make_mesh(), steps_per_epoch=6).init_state(jax.random.PRNGKey(0))
    again = checkpoints.init_from_pretrained(plain, str(tmp_path / 'boosted'))
    assert _flat(again.params).keys() == theirs.keys()
