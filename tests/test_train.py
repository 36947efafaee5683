"""Training loop: overfitting, sharding, resume after SIGKILL, SIGTERM,
non-finite loss, frozen parameters, backbone lr, config errors."""
import os
import signal
import subprocess
import sys
import time

import jax
import numpy as np
import optax
import pytest

import tiny_config
from detr_jax import checkpoints, train
from detr_jax import trainer as trainer_lib
from detr_jax.config_defaults import validate_config
from detr_jax.data import pipeline
from detr_jax.data.datasets import build_source
from detr_jax.data.pipeline import TRAIN_STEP_KEYS, InputPipeline, split_batch
from detr_jax.models import build_model
from detr_jax.optim import applied_lr, build_optimizer
from detr_jax.sharding import make_mesh, to_global
from detr_jax.trainer import build_trainer

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
CONFIG = os.path.join(ROOT, 'tests', 'tiny_config.py')


@pytest.fixture(scope='module')
def cache_dir(tmp_path_factory):
    return str(tmp_path_factory.mktemp('synthetic'))


def _config(cache_dir, **train_kw):
    c = tiny_config.get_config()
    c.data.cache_dir = cache_dir
    c.train.update(train_kw)
    return c


def _setup(c, devices):
    """(fresh state, run(state, numpy batch) -> (state, metrics), trainer);
    `run` donates the state it is given."""
    trainer = build_trainer(c, make_mesh(devices), steps_per_epoch=10)
    state = trainer.init_state(jax.random.PRNGKey(0))

    def run(state, batch):
        g = to_global(split_batch(batch, TRAIN_STEP_KEYS)[0], trainer.mesh)
        return trainer.train_step(state, g, jax.random.PRNGKey(1))
    return state, run, trainer


def _batches(c, n):
    it = iter(InputPipeline(build_source(c.data, 'train'), c.data))
    return [next(it) for _ in range(n)]


def test_overfit_fixed_batch(cache_dir):
    c = _config(cache_dir)
    (batch,) = _batches(c, 1)
    state, run, _ = _setup(c, jax.devices())
    losses = []
    for _ in range(80):
        state, m = run(state, batch)
        losses.append(float(m['loss']))
    assert losses[-1] < 0.5 * losses[0], (losses[0], losses[-1])


@pytest.mark.parametrize('reduction', ['per_parameter', 'one_array'])
def test_one_vs_four_devices(cache_dir, reduction):
    """One device against four, which sum their gradients either way
    (`trainer.gradient_all_reduce`): 'one_array' runs each device's rows
    apart, with dropout drawn per example, so the masks are still those of
    the one-device run."""
    c = _config(cache_dir)
    batches = _batches(c, 3)
    results = []
    for devices in (jax.devices()[:1], jax.devices()[:4]):
        c.train.gradient_all_reduce = reduction if len(devices) > 1 else 'per_parameter'
        state, run, _ = _setup(c, devices)
        for b in batches:
            state, m = run(state, b)
        results.append((float(m['loss']), jax.device_get(state.params)))
    assert abs(results[0][0] - results[1][0]) <= 1e-5 * abs(results[0][0])
    for a, b in zip(jax.tree_util.tree_leaves(results[0][1]), jax.tree_util.tree_leaves(results[1][1])):
        np.testing.assert_allclose(a, b, atol=1e-5, rtol=1e-5)


def test_trainable_batch_norm_takes_the_whole_batchs_statistics(cache_dir):
    """With 'one_array' gradients the train step runs the model on each
    device's rows (`shard_map`); trainable batch norm must still see the
    whole global batch: its running
    statistics after a step equal those of the plain model applied to the
    whole batch at once, and the parameters (the gradient through the
    statistics) are the same on 1 and on 4 devices."""
    from detr_jax.data.normalize import normalize
    c = _config(cache_dir, gradient_all_reduce='one_array')
    c.model.norm = 'bn'
    (batch,) = _batches(c, 1)
    rows = split_batch(batch, TRAIN_STEP_KEYS)[0]
    model = build_model(c.model)
    params = []
    for devices in (jax.devices()[:1], jax.devices()[:4]):
        state, run, _ = _setup(c, devices)
        variables = jax.device_get(state.eval_variables())
        _, upd = model.apply(variables, normalize(rows['images'], rows['pixel_mask']),
                             rows['pixel_mask'], train=True, mutable=['batch_stats'],
                             rngs={'dropout': jax.random.PRNGKey(3)})
        state, metrics = run(state, batch)
        stats = jax.device_get(state.batch_stats)
        for a, b in zip(jax.tree_util.tree_leaves(upd['batch_stats']),
                        jax.tree_util.tree_leaves(stats)):
            np.testing.assert_allclose(b, a, rtol=1e-5, atol=1e-6)
        moved = jax.tree_util.tree_leaves(variables['batch_stats'])
        assert not all(np.allclose(x, y) for x, y in zip(moved, jax.tree_util.tree_leaves(stats)))
        params.append((float(metrics['grad_norm']), jax.device_get(state.params)))
    np.testing.assert_allclose(params[0][0], params[1][0], rtol=1e-5)
    for a, b in zip(*(jax.tree_util.tree_leaves(p) for _, p in params)):
        np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-5)


def test_frozen_parameters_and_backbone_lr(cache_dir):
    c = _config(cache_dir)
    c.model.dropout = 0.0
    batches = _batches(c, 2)
    state, run, holder = _setup(c, jax.devices())
    before = jax.device_get(state)
    state, _ = run(state, batches[0])
    after1 = jax.device_get(state)
    state, _ = run(state, batches[1])
    after = jax.device_get(state)
    bb0, bb1 = before.params['backbone'], after.params['backbone']
    for stage in ('conv1', 'layer1_0'):  # the stem and layer1 are frozen
        for a, b in zip(jax.tree_util.tree_leaves(bb0[stage]), jax.tree_util.tree_leaves(bb1[stage])):
            np.testing.assert_array_equal(a, b)
    for a, b in zip(jax.tree_util.tree_leaves(before.batch_stats), jax.tree_util.tree_leaves(after.batch_stats)):
        np.testing.assert_array_equal(a, b)  # frozen BN statistics
    assert not np.array_equal(bb0['layer2_0']['conv1']['conv']['kernel'],
                              bb1['layer2_0']['conv1']['conv']['kernel'])
    # Adam's first step moves every weight by ~lr (|m/sqrt(v)| = 1): the
    # backbone's step is lr_backbone = lr / 10.
    d_bb = np.abs(after1.params['backbone']['layer3_0']['conv1']['conv']['kernel']
                  - before.params['backbone']['layer3_0']['conv1']['conv']['kernel'])
    d_tr = np.abs(after1.params['transformer']['encoder_layers_0']['ffn']['linear1']['kernel']
                  - before.params['transformer']['encoder_layers_0']['ffn']['linear1']['kernel'])
    ratio = np.median(d_bb) / np.median(d_tr)
    assert 0.09 < ratio < 0.11, ratio


def _train_cmd(workdir, cache_dir, *extra):
    return [sys.executable, '-m', 'detr_jax.main', f'--config={CONFIG}', f'--workdir={workdir}',
            '--mode=train', f'--config.data.cache_dir={cache_dir}', *extra]


def _env():
    env = dict(os.environ)
    env['XLA_FLAGS'] = ''  # one CPU device in the subprocess
    env['PYTHONPATH'] = ROOT + os.pathsep + env.get('PYTHONPATH', '')
    return env


def _params(workdir, step=None):
    _, variables, s = checkpoints.load_workdir(workdir, step)
    return s, variables['params']


def test_resume_after_sigkill_is_exact(tmp_path, cache_dir):
    n = ['--config.train.max_steps=8', '--config.train.checkpoint_every=2']
    full = tmp_path / 'full'
    subprocess.run(_train_cmd(full, cache_dir, *n), env=_env(), check=True, capture_output=True)
    killed = tmp_path / 'killed'
    proc = subprocess.Popen(_train_cmd(killed, cache_dir, *n), env=_env(),
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.time() + 300
    ck = killed / 'checkpoints'
    while time.time() < deadline and proc.poll() is None:
        steps = [int(d) for d in os.listdir(ck) if d.isdigit()] if ck.exists() else []
        if any(s >= 4 for s in steps):  # killed after its 2nd checkpoint
            proc.send_signal(signal.SIGKILL)
            break
        time.sleep(0.05)
    proc.wait()
    assert proc.returncode == -signal.SIGKILL, 'the run ended before it could be killed'
    subprocess.run(_train_cmd(killed, cache_dir, *n), env=_env(), check=True, capture_output=True)
    s1, p1 = _params(full)
    s2, p2 = _params(killed)
    assert s1 == s2 == 8
    for a, b in zip(jax.tree_util.tree_leaves(p1), jax.tree_util.tree_leaves(p2)):
        np.testing.assert_array_equal(a, b)  # bitwise: data, dropout rng and XLA CPU are deterministic


def test_sigterm_writes_checkpoint(tmp_path, cache_dir):
    wd = tmp_path / 'wd'
    proc = subprocess.Popen(_train_cmd(wd, cache_dir, '--config.train.max_steps=100000',
                                       '--config.train.checkpoint_every=100000',
                                       '--config.train.log_every=1'),
                            env=_env(), stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    seen = ''
    while 'steps/s' not in seen:  # a progress line: it is training
        line = proc.stdout.readline()
        assert line, 'training ended early'
        seen += line
    proc.send_signal(signal.SIGTERM)
    out, err = proc.communicate(timeout=120)
    assert proc.returncode == 0, err[-2000:]
    assert 'SIGTERM: checkpoint at step' in out
    step, _ = _params(wd)
    assert 0 < step < 100000


def test_non_finite_loss_stops_and_keeps_last_good_checkpoint(tmp_path, cache_dir, monkeypatch):
    # the fault comes with the data: the 5th batch's boxes are NaN (the
    # on-device solver matches them; the loss of step 5 is NaN)
    real_batches = pipeline.InputPipeline._batches

    def poisoned(self):
        for i, batch in enumerate(real_batches(self)):
            yield dict(batch, boxes=np.full_like(batch['boxes'], np.nan)) if i == 4 else batch
    monkeypatch.setattr(pipeline.InputPipeline, '_batches', poisoned)
    wd = tmp_path / 'nan'
    c = _config(cache_dir, max_steps=10, checkpoint_every=2)
    c.matcher.solver = 'optax'
    with pytest.raises(train.NonFiniteLoss, match='non-finite loss at step 5') as e:
        train.train_and_evaluate(c, str(wd))
    assert 'loss_bbox' in str(e.value)
    step, params = _params(wd)
    assert step == 4
    assert all(np.isfinite(x).all() for x in jax.tree_util.tree_leaves(params))


@pytest.mark.parametrize('override,message', [
    ('--config.model.hiden_dim=3', 'hiden_dim'),
    ('--config.model.nheads=7', 'nheads'),
    ('--config.data.max_boxes=50', 'max_boxes'),
])
def test_config_errors_name_the_key(tmp_path, cache_dir, override, message):
    r = subprocess.run(_train_cmd(tmp_path / 'x', cache_dir, override), env=_env(),
                       capture_output=True, text=True, timeout=300)
    assert r.returncode != 0
    assert message in r.stderr


def test_finetune_from_converted_reinitializes_only_the_class_head(tmp_path, cache_dir, caplog):
    import logging
    import jax.numpy as jnp
    from detr_jax.checkpoints import save_converted
    c = _config(cache_dir)
    src_cfg = c.model.copy_and_resolve_references()
    src_cfg.num_classes = 20  # the converted model had another class count
    src_model = build_model(src_cfg)
    h, w = c.data.buckets[0]
    src_vars = src_model.init(jax.random.PRNGKey(7), jnp.zeros((1, h, w, 3)), jnp.ones((1, h, w), bool))
    save_converted(tmp_path / 'conv', src_cfg, src_vars)
    c.train.init_from = str(tmp_path / 'conv')
    state, _, _ = _setup(c, jax.devices()[:1])
    with pytest.raises(ValueError, match='reinit_class_head=True'):
        checkpoints.init_from_pretrained(state, c.train.init_from)
    with caplog.at_level(logging.INFO):
        new = checkpoints.init_from_pretrained(state, c.train.init_from, reinit_class_head=True)
    assert 're-initialized the class head' in caplog.text
    got, want = jax.device_get(new.params), jax.device_get(src_vars['params'])
    for k in got:
        if k == 'class_embed':
            np.testing.assert_array_equal(got[k]['dense']['kernel'],
                                          jax.device_get(state.params)[k]['dense']['kernel'])
            assert got[k]['dense']['kernel'].shape[-1] == c.model.num_classes + 1
        else:
            for a, b in zip(jax.tree_util.tree_leaves(got[k]), jax.tree_util.tree_leaves(want[k])):
                np.testing.assert_array_equal(a, b)


def test_gradient_accumulation(cache_dir):
    c = _config(cache_dir)
    c.optim.grad_accum_steps = 2
    batches = _batches(c, 2)
    state, run, _ = _setup(c, jax.devices()[:1])
    p0 = jax.device_get(state.params)
    state, _ = run(state, batches[0])
    p1 = jax.device_get(state.params)
    state, _ = run(state, batches[1])
    p2 = jax.device_get(state.params)
    leaf = lambda p: p['transformer']['decoder_norm']['scale']  # noqa: E731
    np.testing.assert_array_equal(leaf(p0), leaf(p1))  # the first micro-batch only accumulates
    assert not np.array_equal(leaf(p1), leaf(p2))  # the second applies the update


@pytest.mark.parametrize('accum', [1, 2])
def test_lr_drop_comes_after_lr_drop_epochs_with_accumulation(accum):
    # constant gradients: each AdamW update (no weight decay) moves a
    # parameter by exactly the lr it applied, so the deltas show the schedule
    c = tiny_config.get_config()
    o = c.optim
    o.lr, o.lr_backbone, o.weight_decay, o.clip_norm = 1e-2, 0.0, 0.0, 0.0
    o.warmup_steps, o.lr_drop_epochs, o.lr_drop_factor = 0, 1, 0.1
    o.grad_accum_steps = accum
    steps_per_epoch = 4
    params = {'head': {'w': np.zeros(3, np.float32)}}
    tx, (lr_sched, _) = build_optimizer(o, c.model, steps_per_epoch)
    opt_state, p, applied = tx.init(params), params, []
    for step in range(2 * steps_per_epoch):
        upd, opt_state = tx.update({'head': {'w': np.ones(3, np.float32)}}, opt_state, p)
        new = optax.apply_updates(p, upd)
        applied.append(float(p['head']['w'][0] - new['head']['w'][0]))
        p = new
    applied = np.array(applied)
    updates = applied[applied != 0]
    assert len(updates) == 2 * steps_per_epoch // accum
    # the first epoch's updates at lr, the second's at lr * 0.1
    np.testing.assert_allclose(updates, [1e-2] * (len(updates) // 2)
                               + [1e-3] * (len(updates) // 2), rtol=1e-4)
    # what the train loop logs at the end of each train step is what the step applied
    logged = [applied_lr(lr_sched, s + 1, accum) for s in range(2 * steps_per_epoch)
              if (s + 1) % accum == 0]
    np.testing.assert_allclose(logged, updates, rtol=1e-4)


def _applied_lrs(tx, params, steps):
    """The non-zero steps AdamW (no weight decay) takes on `params['head']['w']`
    under a constant gradient: each equals the lr it applied."""
    opt_state, p, applied = tx.init(params), params, []
    for _ in range(steps):
        upd, opt_state = tx.update({'head': {'w': np.ones(3, np.float32)}}, opt_state, p)
        new = optax.apply_updates(p, upd)
        applied.append(float(p['head']['w'][0] - new['head']['w'][0]))
        p = new
    applied = np.array(applied)
    return applied[applied != 0]


def test_cosine_schedule():
    """`optim.schedule='cosine'`: warmup, then half a cosine from lr down to
    lr * lr_drop_factor at the run's last step, counted in updates (so with
    gradient accumulation too); the updates AdamW applies follow it."""
    c = tiny_config.get_config()
    o = c.optim
    o.lr, o.lr_backbone, o.weight_decay, o.clip_norm = 1e-2, 0.0, 0.0, 0.0
    o.schedule, o.warmup_steps, o.lr_drop_factor = 'cosine', 2, 0.1
    params = {'head': {'w': np.zeros(3, np.float32)}}
    for accum, total in ((1, 12), (2, 24)):
        o.grad_accum_steps = accum
        tx, (lr_sched, _) = build_optimizer(o, c.model, 4, total_steps=total)
        decay = total // accum - 2
        expected = [1e-2 * i / 2 for i in range(2)] + [
            1e-2 * (0.1 + 0.9 * 0.5 * (1 + np.cos(np.pi * i / decay))) for i in range(decay)]
        np.testing.assert_allclose([float(lr_sched(u)) for u in range(total // accum)], expected,
                                   rtol=1e-5)
        assert abs(float(lr_sched(total // accum)) - 1e-3) < 1e-9
        np.testing.assert_allclose(_applied_lrs(tx, params, total), expected[1:], rtol=1e-4)
    with pytest.raises(ValueError, match='total steps'):
        build_optimizer(o, c.model, 4)
    o.schedule = 'linear'
    with pytest.raises(ValueError, match="config.optim.schedule='linear'"):
        build_optimizer(o, c.model, 4, total_steps=10)


def test_ema_weights_follow_the_formula_and_are_what_checkpoints_export(tmp_path, cache_dir):
    """train.ema_decay: after update t the EMA moves by (1 - d_t) towards the
    new weights, d_t = min(decay, (1 + t) / (10 + t)); evaluation and
    `checkpoints.load_workdir` use it; with it off nothing is kept."""
    c = _config(cache_dir, ema_decay=0.9)
    c.model.dropout = 0.0
    batches = _batches(c, 3)
    state, run, _ = _setup(c, jax.devices()[:1])
    trajectory = [jax.device_get(state.params)]
    for b in batches:
        state, _ = run(state, b)
        trajectory.append(jax.device_get(state.params))
    leaves = [jax.tree_util.tree_leaves(p) for p in trajectory]
    expected = [np.array(x, np.float64) for x in leaves[0]]
    for t in (1, 2, 3):
        d = min(0.9, (1 + t) / (10 + t))
        expected = [d * e + (1 - d) * np.array(p, np.float64) for e, p in zip(expected, leaves[t])]
    got = jax.tree_util.tree_leaves(jax.device_get(state.ema_params))
    assert len(got) == len(expected)
    moved = 0
    for g, e, p in zip(got, expected, leaves[3]):
        np.testing.assert_allclose(g, e, rtol=1e-5, atol=1e-7)
        moved += not np.allclose(g, p)
    assert moved > len(got) // 2  # the EMA lags the trained weights
    assert state.eval_variables()['params'] is state.ema_params

    off, _, _ = _setup(_config(cache_dir), jax.devices()[:1])
    assert off.ema_params == {} and off.eval_variables()['params'] is off.params

    # the loop checkpoints it; readers get the EMA unless they ask otherwise
    c = _config(cache_dir, ema_decay=0.9, max_steps=2, checkpoint_every=2)
    train.train_and_evaluate(c, str(tmp_path))
    _, ema_vars, step = checkpoints.load_workdir(str(tmp_path))
    _, raw_vars, _ = checkpoints.load_workdir(str(tmp_path), ema=False)
    assert step == 2
    ema_l, raw_l = (jax.tree_util.tree_leaves(v['params']) for v in (ema_vars, raw_vars))
    assert any(not np.allclose(a, b) for a, b in zip(ema_l, raw_l))


def test_resume_switching_the_ema_on_and_off(tmp_path, cache_dir, monkeypatch):
    """A checkpoint written without the EMA resumes with `ema_decay` > 0 (the
    EMA starts from the restored weights), and one with it resumes with
    `ema_decay` 0 (dropped). A resumed run restores into the state's shapes
    and initializes nothing."""
    on = tmp_path / 'on'
    def no_init(self, rng):
        raise AssertionError('a resumed run initialized a fresh state')

    train.train_and_evaluate(_config(cache_dir, max_steps=2, checkpoint_every=2), str(on))
    with monkeypatch.context() as m:
        m.setattr(trainer_lib.Trainer, 'init_state', no_init)
        train.train_and_evaluate(
            _config(cache_dir, max_steps=3, checkpoint_every=2, ema_decay=0.9), str(on))
    _, raw2, _ = checkpoints.load_workdir(str(on), step=2, ema=False)
    _, raw3, step = checkpoints.load_workdir(str(on), ema=False)
    _, ema3, _ = checkpoints.load_workdir(str(on))
    assert step == 3
    d = min(0.9, (1 + 3) / (10 + 3))  # the first EMA update is update 3
    leaves = [jax.tree_util.tree_leaves(v['params']) for v in (raw2, raw3, ema3)]
    for p2, p3, e3 in zip(*leaves):
        np.testing.assert_allclose(e3, d * np.asarray(p2) + (1 - d) * np.asarray(p3),
                                   rtol=1e-5, atol=1e-7)
    assert any(not np.allclose(a, b) for a, b in zip(leaves[1], leaves[2]))

    off = tmp_path / 'off'
    train.train_and_evaluate(_config(cache_dir, max_steps=2, checkpoint_every=2, ema_decay=0.9),
                             str(off))
    with monkeypatch.context() as m:
        m.setattr(trainer_lib.Trainer, 'init_state', no_init)
        train.train_and_evaluate(_config(cache_dir, max_steps=3, checkpoint_every=2), str(off))
    _, a, step = checkpoints.load_workdir(str(off))
    _, b, _ = checkpoints.load_workdir(str(off), ema=False)
    assert step == 3
    for x, y in zip(jax.tree_util.tree_leaves(a), jax.tree_util.tree_leaves(b)):
        np.testing.assert_array_equal(x, y)  # no EMA kept: the weights themselves


@pytest.mark.parametrize('kind', ['step', 'cooldown'])
def test_step_and_cooldown_schedules_count_the_drop_from_the_start(kind):
    """With warmup, the drop still comes after `lr_drop_epochs` epochs of
    updates; 'cooldown' then goes down in a straight line to lr *
    lr_drop_factor at the run's last step. AdamW applies what the schedule says."""
    c = tiny_config.get_config()
    o = c.optim
    o.lr, o.lr_backbone, o.weight_decay, o.clip_norm = 1e-2, 0.0, 0.0, 0.0
    o.schedule, o.warmup_steps, o.lr_drop_epochs, o.lr_drop_factor = kind, 2, 2, 0.1
    params = {'head': {'w': np.zeros(3, np.float32)}}
    warm_and_flat = [0.0, 5e-3] + [1e-2] * 6  # updates 0..7; the drop at update 8
    tail = {'step': [1e-3] * 4, 'cooldown': [1e-2, 7.75e-3, 5.5e-3, 3.25e-3]}[kind]
    expected = warm_and_flat + tail
    for accum in (1, 2):
        o.grad_accum_steps = accum
        total = 12 * accum
        tx, (lr_sched, _) = build_optimizer(o, c.model, 4 * accum, total_steps=total)
        np.testing.assert_allclose([float(lr_sched(u)) for u in range(12)], expected, rtol=1e-5)
        np.testing.assert_allclose(_applied_lrs(tx, params, total), expected[1:], rtol=1e-4)
    if kind == 'cooldown':
        o.lr_drop_epochs = 3  # the drop at update 12 = the end: nothing to cool down
        with pytest.raises(ValueError, match='config.optim.lr_drop_epochs=3'):
            build_optimizer(o, c.model, 4, total_steps=12)


def test_precompiled_steps_train_exactly_like_lazily_compiled_ones(tmp_path, cache_dir, capsys):
    """train.precompile: every bucket of the epoch compiled up front (in
    threads) and used; the result equals compiling each shape on first use."""
    import re
    finals = []
    for pre in (True, False):
        c = _config(cache_dir, max_steps=6, precompile=pre)
        c.model.dropout = 0.0
        c.data.buckets = ((64, 96), (96, 64), (96, 96))
        workdir = tmp_path / str(pre)
        train.train_and_evaluate(c, str(workdir))
        finals.append(jax.tree_util.tree_leaves(_params(str(workdir))[1]))
        out = capsys.readouterr().out
        if pre:  # '3 shapes in 41 s (2 threads): ...'; then no step compiles
            shapes = re.findall(r'^(\d+) shapes in ', out, re.M)
            assert shapes and int(shapes[0]) >= 2, out
            assert not re.search(r'^train step for .* compiled \(jit\((forward|update)_step',
                                 out, re.M), out
    for a, b in zip(*finals):
        np.testing.assert_allclose(a, b, rtol=1e-6, atol=1e-7)


@pytest.mark.parametrize('key,value,message', [
    ('optim.lr', -1e-4, r'config\.optim\.lr=-0\.0001 must be positive'),
    ('optim.lr', 0.0, r'config\.optim\.lr=0\.0 must be positive'),
    ('data.batch_size', 0, r'config\.data\.batch_size=0 must be >= 1'),
    ('train.ema_decay', 1.0, r'config\.train\.ema_decay=1\.0 must be in \[0, 1\)'),
    ('optim.grad_accum_steps', 0, r'config\.optim\.grad_accum_steps=0 must be >= 1'),
])
def test_impossible_values_are_errors_naming_the_key(key, value, message):
    c = tiny_config.get_config()
    section, name = key.split('.')
    c[section][name] = value
    with pytest.raises(ValueError, match=message):
        validate_config(c)
    validate_config(tiny_config.get_config())  # the unchanged config passes
