"""`train_and_evaluate(config, workdir)`: the training loop.

The model, optimizer, sharded state and jitted steps come from
`trainer.build_trainer`; batches from `data.pipeline.InputPipeline`, put on
the devices of every host with `sharding.to_global`. Orbax checkpoints
(`checkpoints`) hold the state and the data position; a run resumes from
the latest one by itself; SIGTERM writes one before exiting; a non-finite
loss stops the run naming the step and the terms, and writes nothing.
"""
import collections
import contextlib
import logging
import os
import time

import jax
import ml_collections
import numpy as np
from clu import periodic_actions

from detr_jax import checkpoints, compilations, console, evaluate
from detr_jax.config_defaults import validate_config, with_classes_of
from detr_jax.data.datasets import build_source
from detr_jax.data.pipeline import TRAIN_STEP_KEYS, InputPipeline, split_batch
from detr_jax.losses import weight_dict
from detr_jax.optim import applied_lr
from detr_jax.paths import as_path, is_uri, metric_writer
from detr_jax.preemption import Preemption
from detr_jax.sharding import make_mesh, to_global
from detr_jax.trainer import build_trainer


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
    """Compiles the train step (`trainer.TrainStep`) for every bucket shape at once, in parallel
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
        step_fn.compile(state, batch_like(gbatch, hw), rng)
        return hw

    console.say(f'compiling the train step for {len(buckets)} bucket shapes (kept in the '
                f'compilation cache: {jax.config.jax_compilation_cache_dir})')
    t = time.time()
    with ThreadPoolExecutor(max(1, threads)) as pool, compilations.record() as rec:
        done = list(pool.map(one, buckets))
    console.say(f'{len(done)} shapes in {time.time() - t:.0f} s ({threads} threads): '
                f'{rec.summary()}')
    return done


class NonFiniteLoss(FloatingPointError):
    pass


class CheckpointError(OSError):
    pass


def _check_saves(mngr):
    """A failed asynchronous save stops the run at the next log step (not a
    whole `checkpoint_every` later), naming the folder and the cause."""
    try:
        mngr.check_for_errors()
    except Exception as e:  # noqa: BLE001  (orbax re-raises the writer's error as is)
        raise CheckpointError(f'writing a checkpoint to {mngr.directory} failed: '
                              f'{type(e).__name__}: {e}') from e


class _Metrics:
    """Step metrics fetched from the device a few steps late (the host keeps
    dispatching while they compute), each checked for a non-finite loss,
    and averaged for the log."""

    def __init__(self, lag, checkpointed):
        self.lag, self.checkpointed = lag, checkpointed
        self.inflight = collections.deque()
        self.sums, self.n = {}, 0
        # a SIGTERM on any host, as the train step reduced it over all of them
        self.stop_requested = False

    def add(self, step, metrics):
        self.inflight.append((step, metrics))
        self.drain(self.lag)

    def drain(self, keep=0):
        while len(self.inflight) > keep:
            step, m = self.inflight.popleft()
            m = jax.device_get(m)
            self.stop_requested |= bool(m.pop('stop_requested', False))
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


def _compile_in_step(trainer, state, gbatch, rng, shape):
    """Several processes: each compiles (or loads) the step's programs,
    then all wait for the last before any runs it. The first collective
    opens the CPU collectives' connections, which give a late peer 30 s;
    one process loading a program from the cache while another compiles it
    (JAX's CPU cache keys differ per process) would miss that by minutes.
    The barrier is the coordination service's (no collective)."""
    from orbax.checkpoint import multihost
    trainer.train_step.compile(state, gbatch, rng)  # kept for the call that follows
    multihost.sync_global_processes(f'detr_jax: train step {shape[0]}x{shape[1]} compiled',
                                    timeout=COMPILE_BARRIER_TIMEOUT_S,
                                    processes=set(range(jax.process_count())))


# how long processes wait for the slowest one's compilation
COMPILE_BARRIER_TIMEOUT_S = 3600


def _enable_compilation_cache(workdir):
    """JAX's persistent compilation cache, unless the user configured one.
    With a workdir in a bucket: `<workdir>/jit_cache`, which every host of
    a slice and every restart reads (only process 0 writes the cache, so a
    cache on each VM's disk would serve process 0 alone); else
    ~/.cache/detr_jax/jit (bucket shapes compile once per machine)."""
    if not os.environ.get('JAX_COMPILATION_CACHE_DIR'):
        path = (str(workdir / 'jit_cache') if is_uri(workdir) else
                os.path.join(os.path.expanduser('~'), '.cache', 'detr_jax', 'jit'))
        jax.config.update('jax_compilation_cache_dir', path)
        jax.config.update('jax_persistent_cache_min_compile_time_secs', 1.0)


def train_and_evaluate(config: ml_collections.ConfigDict, workdir: str):
    """Trains (resuming from `workdir` if it has checkpoints) and evaluates.

    Returns the final evaluation metrics (COCO AP; `picture`: the path of
    its PNG) and the last logged train scalars, or {'preempted_at': step}.
    """
    t_start = time.time()
    workdir = as_path(workdir)
    workdir.mkdir(parents=True, exist_ok=True)
    validate_config(config)
    _enable_compilation_cache(workdir)
    mesh = make_mesh()
    source = build_source(config.data, 'train')
    config = with_classes_of(config, source)
    # the validation set in the training set's class indices (matched by category id)
    val_source = (build_source(config.data, 'val', label_map=source.label_map)
                  if config.train.eval_every != 0 else None)
    writer = metric_writer(config, workdir, asynchronous=True)
    pipeline = InputPipeline(source, config.data, jax.process_index(), jax.process_count(),
                             with_masks=bool(config.model.masks))
    steps_per_epoch = len(pipeline.plan(0))
    total_steps = (config.train.max_steps if config.train.max_steps > 0
                   else config.train.epochs * steps_per_epoch)
    trainer = build_trainer(config, mesh, steps_per_epoch, total_steps)
    logging.info('gradients summed over the devices: %s', trainer.gradient_all_reduce)
    init_rng, step_rng = jax.random.split(jax.random.PRNGKey(config.seed))
    mngr = checkpoints.manager(workdir, config)
    # a restart restores into the state's shapes: no initialization to run
    step, state, meta = checkpoints.restore_latest(mngr, trainer.abstract_state)
    if step is not None:
        pipeline.restore(meta['position'])
        console.say(f'resumed from step {step} of {workdir}')
    else:
        state = trainer.init_state(init_rng)
        if config.train.init_from:
            state = checkpoints.init_from_pretrained(state, config.train.init_from,
                                                     config.train.reinit_class_head)
            console.say(f'weights from {config.train.init_from}')
    weights = weight_dict(config.loss, config.model.dec_layers - 1 if config.model.aux_loss else 0,
                          bool(config.model.masks))
    report = periodic_actions.ReportProgress(num_train_steps=total_steps, writer=writer,
                                             every_secs=30)
    hooks = [report]
    if config.train.profile and jax.process_index() == 0:
        hooks.append(periodic_actions.Profile(num_profile_steps=5, logdir=str(workdir)))
    lr_sched, lr_bb_sched = trainer.lr_schedules
    first = int(state.step)
    console.say(f'training on {source.name} ({len(source)} images, {len(source.label_map)} '
                f'classes): steps {first}..{total_steps} ({steps_per_epoch} per epoch), '
                f'{jax.device_count()} devices, workdir {workdir}')
    progress = console.Progress(total_steps)
    t0 = time.time()
    last_metrics = {}
    # metrics are read 2 steps late: the host prepares the next steps meanwhile
    window = _Metrics(lag=2, checkpointed=mngr.latest_step)
    saved = first  # the step whose state a restart reproduces (restored, or the fresh start)

    def save(step, position):
        """Checkpoints the state at `step` (once: a step already saved is not
        written again)."""
        nonlocal saved
        if saved == step:
            return
        window.drain()  # nothing non-finite goes into a checkpoint
        checkpoints.save(mngr, step, state, position, config, source.label_map)
        saved = step

    executed_shapes = set()
    it = iter(pipeline)
    preempt = Preemption(before_exit=[mngr.wait_until_finished, writer.flush])
    try:
        preempt.clean(first)
        for cur in range(first, total_steps):
            position = dict(pipeline.position)  # that of `batch`
            batch = next(it)
            rows = split_batch(batch, TRAIN_STEP_KEYS)[0]
            rows['stop_requested'] = np.full(len(rows['images']), preempt.requested)
            gbatch = to_global(rows, mesh)
            if cur == first and config.train.precompile:
                epoch = pipeline.position['epoch']
                precompile(trainer.train_step, state, gbatch, step_rng,
                           [b for b, _ in pipeline.plan(epoch)])
            shape = tuple(gbatch['images'].shape[1:3])
            new_shape = shape not in executed_shapes
            if new_shape:
                # its first step compiles (minutes on a pod): checkpoint first, so
                # that a SIGTERM meanwhile loses nothing and exits at once
                save(cur, position)
                preempt.clean(cur)
                executed_shapes.add(shape)
            preempt.dirty()
            with jax.profiler.StepTraceAnnotation('train', step_num=cur), \
                    (compilations.record() if new_shape else contextlib.nullcontext()) as rec:
                if new_shape and jax.process_count() > 1:
                    _compile_in_step(trainer, state, gbatch, step_rng, shape)
                state, metrics = trainer.train_step(state, gbatch, step_rng)
            if new_shape:
                since = f'; step {cur} began {time.time() - t_start:.1f} s into the run' \
                    if cur == first else ''
                console.say(f'train step for {shape[0]}x{shape[1]} images: {rec.summary()}{since}')
            done = cur + 1
            window.add(done, metrics)
            for h in hooks:
                h(done)
            if done % config.train.log_every == 0 or done == total_steps:
                _check_saves(mngr)
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
                progress.line(done, means, n_sum / dt)
                last_metrics = scalars
                t0 = time.time()
            # every process sees the same request at the same step (`_Metrics`)
            stop = window.stop_requested
            if done % config.train.checkpoint_every == 0 or done == total_steps or stop:
                save(done, dict(pipeline.position))
            if stop:
                mngr.wait_until_finished()
                console.say(f'SIGTERM: checkpoint at step {done} written to {workdir}; exiting')
                return {'preempted_at': done}
            if config.train.eval_every > 0 and done % config.train.eval_every == 0 \
                    and done != total_steps:
                save(done, dict(pipeline.position))
                preempt.clean(done)
                evaluate.run_eval(trainer, state, val_source, workdir, done, writer)
        preempt.clean(saved)
        result = {}
        if val_source is not None:
            result = evaluate.run_eval(trainer, state, val_source, workdir, int(state.step),
                                       writer)
        writer.flush()
    finally:
        mngr.wait_until_finished()
        preempt.restore()
    console.summary(result, time.time() - t_start, workdir, int(state.step))
    result.update(last_metrics)
    return result
