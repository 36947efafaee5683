"""`train_and_evaluate(config, workdir)`: the main job.

One `jax.sharding.Mesh` with a 'data' axis over every device of every host;
the state is replicated, batches are sharded on 'data' and built with
`jax.make_array_from_process_local_data`; `train_step` is a pure
module-level function jitted once (XLA compiles it once per bucket shape).
Orbax checkpoints hold the state and the data position; a run resumes from
the latest one by itself; SIGTERM writes one before exiting; a non-finite
loss stops the run naming the step and the terms, and writes nothing.
"""
import collections
import functools
import json
import logging
import os
import signal
import time

import flax
import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import optax
import orbax.checkpoint as ocp
from clu import metric_writers, periodic_actions
from jax.sharding import Mesh, NamedSharding, PartitionSpec as P

from detr_jax import evaluate
from detr_jax.data.datasets import build_source
from detr_jax.data.normalize import normalize
from detr_jax.data.pipeline import InputPipeline
from detr_jax.losses import set_criterion, weight_dict
from detr_jax.models import build_model, validate_image_size
from detr_jax.optim import applied_lr, build_optimizer


@flax.struct.dataclass
class TrainState:
    step: jax.Array
    params: dict
    batch_stats: dict
    opt_state: optax.OptState
    # an exponential moving average of `params` (config.train.ema_decay > 0),
    # what evaluation and checkpoint readers use; {} when off
    ema_params: dict = flax.struct.field(default_factory=dict)


def make_mesh():
    return Mesh(np.array(jax.devices()), ('data',))


def validate_config(config):
    """Cross-section checks that name the offending key."""
    d, m = config.data, config.model
    if d.max_boxes > m.num_queries:
        raise ValueError(f'config.data.max_boxes={d.max_boxes} exceeds config.model.num_queries='
                         f'{m.num_queries}: every target needs its own query')
    for name in ('buckets', 'eval_buckets'):
        for hw in d[name]:
            validate_image_size(m, *hw, where=f'config.data.{name} entry')
    n = jax.device_count()
    for name in ('batch_size', 'eval_batch_size'):
        if d[name] % n:
            raise ValueError(f'config.data.{name}={d[name]} must be divisible by the {n} devices')
    if config.matcher.solver not in ('scipy', 'optax'):
        raise ValueError(f"config.matcher.solver={config.matcher.solver!r}: 'scipy' or 'optax'")
    if d.on_bad_input not in ('error', 'skip'):
        raise ValueError(f"config.data.on_bad_input={d.on_bad_input!r}: 'error' or 'skip'")


def train_step(state, batch, rng, *, model, config, tx, mesh, norm_trainable):
    """One optimizer step -> (state, metrics). Pure; jitted by the caller."""
    rng = jax.random.fold_in(rng, state.step)
    mask = batch['pixel_mask']
    images = normalize(batch['images'], mask)
    targets = {k: batch[k] for k in ('labels', 'boxes', 'valid', 'masks') if k in batch}

    def loss_fn(params):
        variables = {'params': params, 'batch_stats': state.batch_stats}
        if norm_trainable:
            out, upd = model.apply(variables, images, mask, train=True, rngs={'dropout': rng},
                                   mutable=['batch_stats'])
        else:
            out, upd = model.apply(variables, images, mask, train=True,
                                   rngs={'dropout': rng}), {}
        loss, metrics = set_criterion(out, targets, config, mesh=mesh)
        nan_at = config.train.get('inject_nan_at_step', 0)
        if nan_at:  # fault injection, for testing the non-finite guard
            loss = loss * jnp.where(state.step + 1 == nan_at, jnp.nan, 1.0)
            metrics['loss'] = loss
        return loss, (metrics, upd)

    (loss, (metrics, upd)), grads = jax.value_and_grad(loss_fn, has_aux=True)(state.params)
    updates, opt_state = tx.update(grads, state.opt_state, state.params)
    params = optax.apply_updates(state.params, updates)
    batch_stats = upd.get('batch_stats', state.batch_stats) if norm_trainable else state.batch_stats
    metrics['grad_norm'] = optax.global_norm(grads)
    ema_params = state.ema_params
    if config.train.get('ema_decay', 0.0) > 0:
        ema_params = ema_update(ema_params, params, state.step + 1, config.train.ema_decay)
    return state.replace(step=state.step + 1, params=params, batch_stats=batch_stats,
                         opt_state=opt_state, ema_params=ema_params), metrics


def ema_update(ema, params, step, decay):
    """One EMA step after update `step` (1-based). The decay ramps up as
    min(decay, (1 + step) / (10 + step)), so early weights fade quickly."""
    d = jnp.minimum(decay, (1.0 + step) / (10.0 + step))
    return jax.tree_util.tree_map(lambda e, p: e + (1.0 - d) * (p - e), ema, params)


def eval_params(state):
    """The weights evaluation uses: the EMA when training keeps one."""
    return state.ema_params if state.ema_params else state.params


# where each batch entry keeps the image height and width
_HW_AXIS = {'images': 1, 'pixel_mask': 1, 'masks': 2}


def batch_like(gbatch, hw):
    """Abstract values of a global batch like `gbatch` in shape bucket `hw`."""
    out = {}
    for k, v in gbatch.items():
        shape = list(v.shape)
        if k in _HW_AXIS:
            a = _HW_AXIS[k]
            shape[a:a + 2] = hw
        out[k] = jax.ShapeDtypeStruct(tuple(shape), v.dtype, sharding=v.sharding)
    return out


def precompile(step_fn, state, gbatch, rng, buckets, threads=None):
    """Compiles the train step for every bucket shape at once, in parallel
    threads (XLA compiles a program on one core), into JAX's persistent
    compilation cache; the loop's first call per shape then loads it from
    there. (Calling the compiled executables directly instead would cost ~15%
    per step on CPU: their Python call path, with the state's ~600 arrays.)
    Returns the shapes compiled; none if the persistent cache is off."""
    from concurrent.futures import ThreadPoolExecutor
    if not jax.config.jax_compilation_cache_dir:
        logging.info('no persistent compilation cache: shapes compile on first use')
        return []
    buckets = list(dict.fromkeys(tuple(int(x) for x in b) for b in buckets))
    threads = threads or min(len(buckets), os.cpu_count() or 1)

    def one(hw):
        step_fn.lower(state, batch_like(gbatch, hw), rng).compile()
        return hw

    t = time.time()
    with ThreadPoolExecutor(max(1, threads)) as pool:
        done = list(pool.map(one, buckets))
    logging.info('compiled the train step for %d shapes in %.0fs (%d threads)', len(done),
                 time.time() - t, threads)
    return done


def _dummy_inputs(config):
    h, w = config.data.buckets[0]
    return jnp.zeros((1, h, w, 3), jnp.float32), jnp.ones((1, h, w), bool)


def init_state(model, config, tx_fn, mesh, rng):
    """The state, created already replicated over the mesh."""
    replicated = NamedSharding(mesh, P())

    def init(rng):
        variables = model.init(rng, *_dummy_inputs(config))
        params = variables['params']
        tx = tx_fn(params)
        ema = params if config.train.get('ema_decay', 0.0) > 0 else {}
        return TrainState(step=jnp.zeros((), jnp.int32), params=params,
                          batch_stats=variables.get('batch_stats', {}),
                          opt_state=tx.init(params), ema_params=ema)

    abstract = jax.eval_shape(init, rng)
    shardings = jax.tree_util.tree_map(lambda _: replicated, abstract)
    return jax.jit(init, out_shardings=shardings)(rng), shardings


def _load_pretrained(state, config, model):
    """Starts from a converted/official checkpoint; optionally a fresh class
    head for a new class count (reported in the log)."""
    from detr_jax.convert import load_checkpoint
    _, variables = load_checkpoint(config.train.init_from)
    params = flax.core.unfreeze(variables['params'])
    ours = flax.core.unfreeze(state.params)
    head = ('detr', 'class_embed') if 'detr' in ours else ('class_embed',)

    def get(tree, path):
        for p in path:
            tree = tree[p]
        return tree
    theirs_head = get(params, head)['dense']['kernel'].shape
    ours_head = get(ours, head)['dense']['kernel'].shape
    if theirs_head != ours_head:
        if not config.train.reinit_class_head:
            raise ValueError(f'{config.train.init_from}: class head {theirs_head} != model '
                             f'{ours_head}; set config.train.reinit_class_head=True to start a '
                             'new head for this dataset')
        parent = get(params, head[:-1])
        parent[head[-1]] = get(ours, head)
        logging.info('re-initialized the class head: %s -> %s', theirs_head, ours_head)
    new_params = jax.tree_util.tree_map(lambda a, b: jnp.asarray(b, a.dtype), state.params, params)
    new_stats = jax.tree_util.tree_map(lambda a, b: jnp.asarray(b, a.dtype), state.batch_stats,
                                       variables.get('batch_stats', {}))
    ema = jax.tree_util.tree_map(jnp.copy, new_params) if state.ema_params else {}
    return state.replace(params=new_params, batch_stats=new_stats, ema_params=ema)


class _Preemption:
    """SIGTERM (a preempted spot/preemptible TPU VM) -> checkpoint, then exit."""

    def __init__(self):
        self.requested = False
        self._old = signal.signal(signal.SIGTERM, self._handle)

    def _handle(self, signum, frame):
        logging.warning('SIGTERM received: writing a checkpoint before exiting')
        self.requested = True

    def restore(self):
        signal.signal(signal.SIGTERM, self._old)


class NonFiniteLoss(FloatingPointError):
    pass


class _Metrics:
    """Step metrics fetched from the device a few steps late (the host keeps
    dispatching while they compute), each checked for a non-finite loss,
    and averaged for the log."""

    def __init__(self, lag, checkpointed):
        self.lag, self.checkpointed = lag, checkpointed
        self.inflight = collections.deque()
        self.sums, self.n = {}, 0

    def add(self, step, metrics):
        self.inflight.append((step, metrics))
        self.drain(self.lag)

    def drain(self, keep=0):
        while len(self.inflight) > keep:
            step, m = self.inflight.popleft()
            m = jax.device_get(m)
            if not np.isfinite(m['loss']):
                bad = {k: float(v) for k, v in m.items()}
                raise NonFiniteLoss(f'non-finite loss at step {step}: {bad}; the last good '
                                    f'checkpoint (step {self.checkpointed()}) is kept')
            for k, v in m.items():
                self.sums[k] = self.sums.get(k, 0.0) + float(v)
            self.n += 1

    def mean(self):
        self.drain()
        out = {k: v / max(self.n, 1) for k, v in self.sums.items()}
        n, self.sums, self.n = self.n, {}, 0
        return out, n


def _checkpoint_manager(workdir, config):
    options = ocp.CheckpointManagerOptions(max_to_keep=config.train.keep_checkpoints,
                                           enable_async_checkpointing=True, create=True)
    return ocp.CheckpointManager(os.path.join(os.path.abspath(workdir), 'checkpoints'),
                                 options=options, item_names=('state', 'meta'))


def _save(mngr, step, state, position, config, label_map):
    meta = {'position': position, 'config': json.loads(config.to_json_best_effort()),
            'label_map': {str(k): v for k, v in label_map.items()}}
    mngr.save(step, args=ocp.args.Composite(state=ocp.args.StandardSave(state),
                                            meta=ocp.args.JsonSave(meta)))


def restore_latest(mngr, abstract_state):
    """(step, state, meta) of the latest checkpoint, or Nones. A checkpoint
    written with `train.ema_decay` off resumes with it on (the EMA starts from
    the restored weights), and the other way round (the EMA is dropped)."""
    step = mngr.latest_step()
    if step is None:
        return None, None, None

    def restore(abstract):
        r = mngr.restore(step, args=ocp.args.Composite(
            state=ocp.args.StandardRestore(abstract), meta=ocp.args.JsonRestore()))
        return r['state'], r['meta']
    try:
        state, meta = restore(abstract_state)
    except ValueError as e:
        if 'ema_params' not in str(e):
            raise
        if abstract_state.ema_params:  # the checkpoint has no EMA
            state, meta = restore(abstract_state.replace(ema_params={}))
            state = state.replace(ema_params=jax.tree_util.tree_map(jnp.copy, state.params))
            logging.warning('checkpoint %d has no EMA of the weights: train.ema_decay '
                            'starts one from its weights', step)
        else:  # the checkpoint has one, the config does not
            state, meta = restore(abstract_state.replace(ema_params=abstract_state.params))
            state = state.replace(ema_params={})
            logging.warning('checkpoint %d has an EMA of the weights; train.ema_decay is 0, '
                            'so it is dropped', step)
    return step, state, meta


def _enable_compilation_cache():
    """JAX's persistent compilation cache (bucket shapes compile once per
    machine, not once per run), unless the user configured one."""
    if not os.environ.get('JAX_COMPILATION_CACHE_DIR'):
        path = os.path.join(os.path.expanduser('~'), '.cache', 'detr_jax', 'jit')
        jax.config.update('jax_compilation_cache_dir', path)
        jax.config.update('jax_persistent_cache_min_compile_time_secs', 1.0)


def train_and_evaluate(config: ml_collections.ConfigDict, workdir: str):
    """Trains (resuming from `workdir` if it has checkpoints) and evaluates.

    Returns the final evaluation metrics (COCO AP) or {} if evaluation is off.
    """
    os.makedirs(workdir, exist_ok=True)
    validate_config(config)
    _enable_compilation_cache()
    mesh = make_mesh()
    writer = metric_writers.create_default_writer(
        workdir, just_logging=jax.process_index() > 0, asynchronous=True)
    source = build_source(config.data, 'train')
    if source.num_classes > config.model.num_classes:
        raise ValueError(f'config.model.num_classes={config.model.num_classes} is smaller than '
                         f'the {source.num_classes} classes of {source.name}')
    with_masks = bool(config.model.masks)
    pipeline = InputPipeline(source, config.data, jax.process_index(), jax.process_count(),
                             with_masks=with_masks)
    steps_per_epoch = len(pipeline.plan(0))
    total_steps = (config.train.max_steps if config.train.max_steps > 0
                   else config.train.epochs * steps_per_epoch)
    model = build_model(config.model)
    tx_holder = {}

    def tx_fn(params):
        tx, labels, scheds = build_optimizer(params, config.optim, config.model, steps_per_epoch,
                                             total_steps)
        tx_holder.update(tx=tx, labels=labels, scheds=scheds)
        return tx

    rng = jax.random.PRNGKey(config.seed)
    init_rng, step_rng = jax.random.split(rng)
    state, shardings = init_state(model, config, tx_fn, mesh, init_rng)
    mngr = _checkpoint_manager(workdir, config)
    step, restored, meta = restore_latest(mngr, jax.tree_util.tree_map(
        lambda x, s: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=s), state, shardings))
    if step is not None:
        state = restored
        pipeline.restore(meta['position'])
        logging.info('resumed from step %d at data position %s', step, meta['position'])
    elif config.train.init_from:
        state = _load_pretrained(state, config, model)
    tx = tx_holder['tx']
    step_fn = jax.jit(functools.partial(
        train_step, model=model, config=config, tx=tx, mesh=mesh,
        norm_trainable=config.model.norm == 'bn'), donate_argnums=(0,),
        # fixed: the state keeps the sharding it was created with
        out_shardings=(shardings, NamedSharding(mesh, P())))
    weights = weight_dict(config.loss, config.model.dec_layers - 1 if config.model.aux_loss else 0,
                          with_masks)
    report = periodic_actions.ReportProgress(num_train_steps=total_steps, writer=writer,
                                             every_secs=30)
    hooks = [report]
    if config.train.profile and jax.process_index() == 0:
        hooks.append(periodic_actions.Profile(num_profile_steps=5, logdir=workdir))
    preempt = _Preemption()
    lr_sched, lr_bb_sched = tx_holder['scheds']
    first = int(state.step)
    logging.info('training %s: %d steps (%d per epoch), %d devices', source.name, total_steps,
                 steps_per_epoch, jax.device_count())
    t0 = time.time()
    last_metrics = {}
    # metrics are read 2 steps late: the host prepares the next steps meanwhile
    window = _Metrics(lag=2, checkpointed=mngr.latest_step)
    it = iter(pipeline)
    try:
        for cur in range(first, total_steps):
            batch = next(it)
            position = dict(pipeline.position)
            gbatch = evaluate.to_global({k: v for k, v in batch.items()
                                         if k not in ('image_id', 'orig_size')}, mesh)
            if cur == first and config.train.get('precompile', True):
                epoch = pipeline.position['epoch']
                precompile(step_fn, state, gbatch, step_rng, [b for b, _ in pipeline.plan(epoch)])
            with jax.profiler.StepTraceAnnotation('train', step_num=cur):
                state, metrics = step_fn(state, gbatch, step_rng)
            done = cur + 1
            window.add(done, metrics)
            for h in hooks:
                h(done)
            if done % config.train.log_every == 0 or done == total_steps:
                means, n_sum = window.mean()
                dt = time.time() - t0
                scalars = {f'train/{k}': v for k, v in means.items()}
                scalars.update({f'train/{k}_weighted': scalars[f'train/{k}'] * w
                                for k, w in weights.items() if f'train/{k}' in scalars})
                accum = config.optim.grad_accum_steps
                scalars.update({'train/lr': applied_lr(lr_sched, done, accum),
                                'train/lr_backbone': applied_lr(lr_bb_sched, done, accum),
                                'train/steps_per_sec': n_sum / dt,
                                'train/images_per_sec': n_sum * config.data.batch_size / dt})
                writer.write_scalars(done, scalars)
                last_metrics = scalars
                t0 = time.time()
            if done % config.train.checkpoint_every == 0 or done == total_steps or preempt.requested:
                window.drain()  # nothing non-finite goes into a checkpoint
                _save(mngr, done, state, position, config, source.label_map)
            if preempt.requested:
                mngr.wait_until_finished()
                logging.warning('checkpoint at step %d written; exiting on SIGTERM', done)
                return {'preempted_at': done}
            if config.train.eval_every > 0 and done % config.train.eval_every == 0 \
                    and done != total_steps:
                run_eval(model, state, config, mesh, writer, workdir, done)
    finally:
        mngr.wait_until_finished()
        preempt.restore()
    result = {}
    if config.train.eval_every != 0:
        result = run_eval(model, state, config, mesh, writer, workdir, int(state.step))
    writer.flush()
    result.update(last_metrics)
    return result


def run_eval(model, state, config, mesh, writer, workdir, step):
    """COCO AP on the validation split, pictures of predictions."""
    from detr_jax import draw
    source = build_source(config.data, 'val')
    variables = {'params': eval_params(state), 'batch_stats': state.batch_stats}
    t = time.time()
    results, ids, samples = evaluate.predict(model, variables, source, config.data, mesh,
                                             max_images=config.train.eval_max_images)
    metrics = evaluate.coco_ap(source.ann_file, results, ids,
                               out_json=os.path.join(workdir, 'eval', f'results_{step}.json'))
    writer.write_scalars(step, {f'eval/{k}': v for k, v in metrics.items()})
    logging.info('eval at step %d (%d images, %.0fs):\n%s', step, len(ids), time.time() - t,
                 evaluate.format_table(metrics))
    pic = draw.draw_eval_samples(samples, source.label_map, max_images=config.train.num_vis_images)
    if pic is not None and jax.process_index() == 0:
        from PIL import Image
        path = os.path.join(workdir, 'eval', f'predictions_{step}.png')
        Image.fromarray(pic).save(path)
        writer.write_images(step, {'eval/predictions': pic[None]})
        metrics['picture'] = path
    return metrics


def evaluate_checkpoint(config, workdir):
    """--mode=eval: COCO AP of the latest checkpoint in `workdir`, or of
    `config.train.init_from` (a converted or official checkpoint)."""
    from detr_jax import checkpoints
    from detr_jax.convert import load_checkpoint
    validate_config(config)
    mesh = make_mesh()
    model = build_model(config.model)
    if checkpoints.is_workdir(workdir):
        _, variables, step = checkpoints.load_workdir(workdir)
    elif config.train.init_from:
        _, variables = load_checkpoint(config.train.init_from)
        step = 0
    else:
        raise FileNotFoundError(f'{workdir}: no checkpoints to evaluate and no '
                                'config.train.init_from')
    writer = metric_writers.create_default_writer(workdir, just_logging=jax.process_index() > 0)
    state = TrainState(step=jnp.asarray(step), params=variables['params'],
                       batch_stats=variables.get('batch_stats', {}), opt_state=None)
    metrics = run_eval(model, state, config, mesh, writer, workdir, step)
    writer.flush()
    print(evaluate.format_table(metrics))
    return metrics
