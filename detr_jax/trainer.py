"""The trainer boundary: from a config and a mesh, the model, the optimizer,
the sharded train state and the jitted train and eval steps.

Everything that trains or evaluates a model (the training loop,
`--mode=eval`, `detr-jax plan`, the tests, `benchmarks/`) builds them here,
with `build_trainer`; nobody else jits the train step's programs. The train
step is three programs (`TrainStep`: forward, match, update), so that the
two large ones can be loaded from JAX's persistent compilation cache.

Batches the steps take (global jax.Arrays sharded on 'data'; the keys the
input pipeline declares in `data.pipeline.TRAIN_STEP_KEYS` and
`EVAL_STEP_KEYS`): `images` uint8 [B, H, W, 3], `pixel_mask` bool [B, H, W]
(True on real pixels); for training `labels` [B, M] int32, `boxes` [B, M, 4]
(cx, cy, w, h normalized by the unpadded size), `valid` [B, M] bool and,
panoptic, `masks` [B, M, H, W]; for evaluation `orig_size` [B, 2] (h, w)
and `size` [B, 2] (h, w unpadded).
The training loop adds `stop_requested` bool [B] (each host's rows say
whether it got SIGTERM); the step returns their any() as a metric.
"""
import dataclasses
import functools
from typing import Callable, Tuple

import flax
import flax.linen as nn
import jax
import jax.numpy as jnp
import ml_collections
import optax
from jax.flatten_util import ravel_pytree
from jax.sharding import Mesh, NamedSharding, PartitionSpec as P

from detr_jax.data.normalize import normalize
from detr_jax.losses import class_head_of, matching_costs, set_criterion
from detr_jax.matching import match
from detr_jax.models import build_model, full_model_config
from detr_jax.optim import build_optimizer, param_labels
from detr_jax.postprocess import detections, panoptic_on_device
from detr_jax.sharding import BATCH_AXIS, replicated


@flax.struct.dataclass
class TrainState:
    step: jax.Array
    params: dict
    batch_stats: dict
    opt_state: optax.OptState
    # an exponential moving average of `params` (config.train.ema_decay > 0),
    # what evaluation and checkpoint readers use; {} when off
    ema_params: dict = flax.struct.field(default_factory=dict)

    def eval_variables(self):
        """The variables evaluation uses: the EMA weights when training keeps
        them, with the (frozen or running) batch statistics."""
        return {'params': self.ema_params or self.params, 'batch_stats': self.batch_stats}


def gradient_all_reduce(config, mesh):
    """'per_parameter' or 'one_array' (`config.train.gradient_all_reduce`;
    'auto': 'one_array' when the mesh's devices are CPUs of several
    processes). XLA sums a replicated parameter's gradient where the
    backward pass makes it and combines those all-reduces into one of many
    operands: one operation over a TPU's interconnect, but XLA:CPU's
    collectives send the operands one by one, a network round trip each
    (173 arrays: 14-20x the time of the same floats as one, benchmarks/README.md).
    'one_array' runs each device's forward and backward pass apart
    (`jax.shard_map`) and sums the raveled gradients in one all-reduce; on a
    TPU it costs more memory and bytes than the compiler's (same README)."""
    kind = config.train.get('gradient_all_reduce', 'auto')
    if kind != 'auto':
        return kind
    devices = list(mesh.devices.flat)
    several = len({d.process_index for d in devices}) > 1
    return 'one_array' if several and all(d.platform == 'cpu' for d in devices) else 'per_parameter'


def forward_step(state, batch, rng, *, model, config, mesh, norm_trainable, per_device):
    """The train step's first program: the model's outputs, their `pullback`
    to the parameters (`jax.vjp`: its residuals are the activations the
    backward pass needs), the updated batch statistics ({} unless
    `norm_trainable`: `model.norm == 'bn'`) and the matching costs [L, B, Q,
    M] (`losses.matching_costs`), split on 'data' over the batch axis.

    `per_device` ('one_array' gradients, `gradient_all_reduce`): each device
    runs the model on its own rows (`jax.shard_map`; what the model does for
    that, `models.device_rows`: dropout masks and denoising noise cut from
    the whole batch's, batch norm's statistics summed over the devices: the
    values of the unsplit step), so that its pullback is per device (the
    residuals carry a leading device axis) for `update_step`'s one
    all-reduce (`_reduce_grads`)."""
    rng = jax.random.fold_in(rng, state.step)
    dn = bool(config.model.get('dn_groups', 0))
    rngs = {'dropout': rng, 'noise': jax.random.fold_in(rng, 1)} if dn else {'dropout': rng}

    def forward(params, batch_stats, rows, rngs):
        mask = rows['pixel_mask']
        images = normalize(rows['images'], mask)
        kw = {'targets': _targets(rows)} if dn else {}  # denoising queries: noised targets

        def apply(params):
            variables = {'params': params, 'batch_stats': batch_stats}
            if norm_trainable:
                return model.apply(variables, images, mask, train=True, rngs=rngs,
                                   mutable=['batch_stats'], **kw)
            return model.apply(variables, images, mask, train=True, rngs=rngs, **kw), {}

        # what passes to `update` is only what a fused step would keep: the
        # outputs of matmuls and convolutions; the elementwise rest (casts,
        # masks, normalizations) is recomputed in the backward pass, as XLA
        # fuses it there (saving every residual held ~5.6 GiB per image on R50)
        apply = jax.checkpoint(apply, policy=jax.checkpoint_policies.dots_saveable)
        return jax.vjp(apply, params, has_aux=True)

    rows = dict(_targets(batch), images=batch['images'], pixel_mask=batch['pixel_mask'])
    if per_device:
        def on_device(*args):
            out, pullback, upd = forward(*args)
            return out, jax.tree_util.tree_map(lambda r: r[None], pullback), upd
        out, pullback, upd = jax.shard_map(
            on_device, mesh=mesh, in_specs=(P(), P(), P(BATCH_AXIS), P()),
            out_specs=(P(BATCH_AXIS), P(BATCH_AXIS), P()), check_vma=False)(
                state.params, state.batch_stats, rows, rngs)
    else:
        out, pullback, upd = forward(state.params, state.batch_stats, rows, rngs)
    cost = matching_costs(out, _targets(batch), config.matcher, class_head_of(config))
    cost = jax.lax.with_sharding_constraint(cost, NamedSharding(mesh, P(None, BATCH_AXIS)))
    return out, pullback, upd, cost


def _reduce_grads(pullback, out_grads, trainable, mesh):
    """'one_array' gradients (`gradient_all_reduce`) of the trainable
    parameters (`trainable`: a bool per parameter; the frozen ones' are
    zeros, not computed): each device's `pullback` (`forward_step`) of its
    rows' `out_grads`, summed over the devices as one raveled array."""
    def on_device(pullback, out_grads):
        (grads,) = jax.tree_util.tree_map(lambda r: r[0], pullback)(out_grads)
        leaves, tree = jax.tree_util.tree_flatten(grads)
        flat, unravel = ravel_pytree([g for g, t in zip(leaves, trainable) if t])
        summed = iter(unravel(jax.lax.psum(flat, BATCH_AXIS)))
        return tree.unflatten([next(summed) if t else jnp.zeros_like(g)
                               for g, t in zip(leaves, trainable)])
    return jax.shard_map(on_device, mesh=mesh, in_specs=(P(BATCH_AXIS), P(BATCH_AXIS)),
                         out_specs=P(), check_vma=False)(pullback, out_grads)


def update_step(state, batch, out, pullback, upd, idx, *, config, tx, norm_trainable, mesh,
                per_device, trainable):
    """The train step's last program: the set loss of `out` under the
    assignment `idx` [L, B, M], its gradient through `pullback` (with
    `per_device`, `forward_step`'s per-device pullback: `_reduce_grads` of
    the `trainable` parameters, a bool each), the optimizer and EMA updates
    -> (state, metrics)."""
    def loss_fn(outputs):
        return set_criterion(outputs, _targets(batch), config, idx=idx)

    (loss, metrics), out_grads = jax.value_and_grad(loss_fn, has_aux=True)(out)
    if per_device:
        grads = _reduce_grads(pullback, out_grads, trainable, mesh)
    else:
        (grads,) = pullback(out_grads)
    updates, opt_state = tx.update(grads, state.opt_state, state.params)
    params = optax.apply_updates(state.params, updates)
    batch_stats = upd.get('batch_stats', state.batch_stats) if norm_trainable else state.batch_stats
    metrics['grad_norm'] = optax.global_norm(grads)
    if 'stop_requested' in batch:  # a host got SIGTERM: now every host knows
        metrics['stop_requested'] = jnp.any(batch['stop_requested'])
    ema_params = state.ema_params
    if config.train.ema_decay > 0:
        ema_params = ema_update(ema_params, params, state.step + 1, config.train.ema_decay)
    return state.replace(step=state.step + 1, params=params, batch_stats=batch_stats,
                         opt_state=opt_state, ema_params=ema_params), metrics


def _targets(batch):
    return {k: batch[k] for k in ('labels', 'boxes', 'valid', 'masks') if k in batch}


@dataclasses.dataclass(frozen=True)
class TrainStep:
    """One optimizer step, `step(state, batch, rng) -> (state, metrics)`, as
    three jitted programs run back to back (dispatched asynchronously: the
    host does not wait for any of them):

    - `forward(state, batch, rng) -> (out, pullback, upd, cost)`
      (`forward_step`);
    - `match(cost, valid) -> idx` [L, B, M], the Hungarian assignment
      (`matching.match`, each device's rows solved where they live);
    - `update(state, batch, out, pullback, upd, idx) -> (state, metrics)`
      (`update_step`), which donates the state.

    Why three: the scipy solver is a host callback, and JAX never writes a
    program with a host callback to its persistent compilation cache. Kept
    apart, the two large programs load from the cache on every restart and
    only `match` (a callback and nothing else: milliseconds) compiles
    again. The values are those of one fused `jax.value_and_grad` step up
    to float rounding (the set loss's gradient reaches the parameters
    through the same `jax.vjp`)."""
    forward: Callable
    match: Callable
    update: Callable

    def __call__(self, state, batch, rng):
        out, pullback, upd, cost = self.forward(state, batch, rng)
        idx = self.match(cost, batch['valid'])
        return self.update(state, batch, out, pullback, upd, idx)

    def compile(self, state, batch, rng):
        """Compiles the three programs for these arguments (arrays or
        `jax.ShapeDtypeStruct`s with shardings) -> {'forward', 'match',
        'update'}: `jax.stages.Compiled` each. What the run will call, so
        a persistent compilation cache then holds the two cacheable ones."""
        forward = self.forward.lower(state, batch, rng).compile()
        out, pullback, upd, cost = jax.tree_util.tree_map(
            lambda x, s: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=s),
            jax.eval_shape(self.forward, state, batch, rng), forward.output_shardings)
        match = self.match.lower(cost, batch['valid']).compile()
        idx = jax.ShapeDtypeStruct(cost.shape[:2] + cost.shape[3:], jnp.int32,
                                   sharding=match.output_shardings)
        update = self.update.lower(state, batch, out, pullback, upd, idx).compile()
        return {'forward': forward, 'match': match, 'update': update}


def ema_update(ema, params, step, decay):
    """One EMA step after update `step` (1-based). The decay ramps up as
    min(decay, (1 + step) / (10 + step)), so early weights fade quickly."""
    d = jnp.minimum(decay, (1.0 + step) / (10.0 + step))
    return jax.tree_util.tree_map(lambda e, p: e + (1.0 - d) * (p - e), ema, params)


def eval_step(variables, batch, *, model, panoptic_threshold=0.85, detections_kind='best_class',
              class_head='softmax'):
    """Detections (`postprocess.detections` of `detections_kind` for the
    model's `class_head`: scores, labels [B, Q], boxes [B, Q, 4] xyxy in
    pixels of `orig_size`) of one eval batch; for a panoptic model also the
    device part of the panoptic post-processing
    (`postprocess.panoptic_on_device` at `panoptic_threshold`, over the
    unpadded `size` [B, 2]: `keep`, `labels`... as `pan_keep`,
    `pan_labels`, `pan_winners`) and `pred_masks` (what the host part reads
    for images that lose a small segment)."""
    mask = batch['pixel_mask']
    out = model.apply(variables, normalize(batch['images'], mask), mask, train=False)
    dets = detections(out, batch['orig_size'], detections_kind, class_head)
    if 'pred_masks' in out:
        parts = panoptic_on_device(out, batch['size'], panoptic_threshold)
        dets.update({f'pan_{k}': v for k, v in parts.items()}, pred_masks=out['pred_masks'])
    return dets


@dataclasses.dataclass(frozen=True)
class Trainer:
    """What `build_trainer` makes. `train_step(state, batch, rng) -> (state,
    metrics)` (a `TrainStep`) donates its state and keeps it replicated; `eval_step(variables,
    batch) -> detections`; `lr_schedules` = (lr, backbone lr) as functions of
    the optimizer update count."""
    config: ml_collections.ConfigDict
    mesh: Mesh
    model: nn.Module
    tx: optax.GradientTransformation
    lr_schedules: Tuple[Callable, Callable]
    state_shardings: TrainState
    train_step: TrainStep
    eval_step: Callable
    # the state's shapes, dtypes and shardings (what checkpoints restore into)
    abstract_state: TrainState
    _init: Callable
    # 'per_parameter' | 'one_array' (`gradient_all_reduce`)
    gradient_all_reduce: str = 'per_parameter'

    def init_state(self, rng):
        """A fresh state (random init from `rng`), created already replicated
        over the mesh."""
        return jax.jit(self._init, out_shardings=self.state_shardings)(rng)


def build_trainer(config, mesh, steps_per_epoch, total_steps=None):
    """The model (`config.model`), AdamW (`config.optim`, its schedules over
    `steps_per_epoch` and `total_steps` train steps), the state's shardings
    and both jitted steps for `mesh`."""
    freeze_detr = bool(config.train.get('freeze_detr', False))
    model = build_model(config.model, freeze_detr=freeze_detr)
    tx, schedules = build_optimizer(config.optim, config.model, steps_per_epoch, total_steps,
                                    freeze_detr=freeze_detr)
    h, w = config.data.buckets[0]
    ema = config.train.ema_decay > 0

    def init(rng):
        variables = model.init(rng, jnp.zeros((1, h, w, 3), jnp.float32), jnp.ones((1, h, w), bool))
        params = variables['params']
        return TrainState(step=jnp.zeros((), jnp.int32), params=params,
                          batch_stats=variables.get('batch_stats', {}),
                          opt_state=tx.init(params), ema_params=params if ema else {})

    abstract = jax.eval_shape(init, jax.random.PRNGKey(0))
    shardings = jax.tree_util.tree_map(lambda _: replicated(mesh), abstract)
    norm_trainable = config.model.norm == 'bn'
    reduction = gradient_all_reduce(config, mesh)
    per_device = reduction == 'one_array'
    trainable = tuple(label != 'frozen' for label in jax.tree_util.tree_leaves(param_labels(
        abstract.params, config.model, config.optim.lr_backbone, freeze_detr)))
    step = TrainStep(
        forward=jax.jit(functools.partial(forward_step, model=model, config=config, mesh=mesh,
                                          norm_trainable=norm_trainable, per_device=per_device)),
        match=jax.jit(functools.partial(match, solver=config.matcher.solver, mesh=mesh)),
        update=jax.jit(functools.partial(update_step, config=config, tx=tx,
                                         norm_trainable=norm_trainable, mesh=mesh,
                                         per_device=per_device, trainable=trainable),
                       donate_argnums=(0,), out_shardings=(shardings, replicated(mesh))))
    return Trainer(config=config, mesh=mesh, model=model, tx=tx, lr_schedules=schedules,
                   state_shardings=shardings, train_step=step,
                   eval_step=jax.jit(functools.partial(
                       eval_step, model=model,
                       panoptic_threshold=config.train.get('panoptic_threshold', 0.85),
                       detections_kind=full_model_config(config.model).detections,
                       class_head=class_head_of(config))),
                   abstract_state=jax.tree_util.tree_map(
                       lambda x, s: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=s),
                       abstract, shardings),
                   _init=init, gradient_all_reduce=reduction)
