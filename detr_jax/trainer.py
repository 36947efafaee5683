"""The trainer boundary: from a config and a mesh, the model, the optimizer,
the sharded train state and the jitted train and eval steps.

Everything that trains or evaluates a model (the training loop,
`--mode=eval`, the tests, `benchmarks/`) builds them here, with
`build_trainer`; nobody else jits `train_step`.

Batches the steps take (global jax.Arrays sharded on 'data'; the keys the
input pipeline declares in `data.pipeline.TRAIN_STEP_KEYS` and
`EVAL_STEP_KEYS`): `images` uint8 [B, H, W, 3], `pixel_mask` bool [B, H, W]
(True on real pixels); for training `labels` [B, M] int32, `boxes` [B, M, 4]
(cx, cy, w, h normalized by the unpadded size), `valid` [B, M] bool and,
panoptic, `masks` [B, M, H, W]; for evaluation `orig_size` [B, 2] (h, w).
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
from jax.sharding import Mesh

from detr_jax.data.normalize import normalize
from detr_jax.losses import set_criterion
from detr_jax.models import build_model
from detr_jax.optim import build_optimizer
from detr_jax.postprocess import detections
from detr_jax.sharding import replicated


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


def train_step(state, batch, rng, *, model, config, tx, mesh, norm_trainable):
    """One optimizer step -> (state, metrics). Pure; `build_trainer` jits it.

    `norm_trainable`: the backbone's normalization keeps running statistics
    (`model.norm == 'bn'`), which the step updates."""
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
        return loss, (metrics, upd)

    (loss, (metrics, upd)), grads = jax.value_and_grad(loss_fn, has_aux=True)(state.params)
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


def ema_update(ema, params, step, decay):
    """One EMA step after update `step` (1-based). The decay ramps up as
    min(decay, (1 + step) / (10 + step)), so early weights fade quickly."""
    d = jnp.minimum(decay, (1.0 + step) / (10.0 + step))
    return jax.tree_util.tree_map(lambda e, p: e + (1.0 - d) * (p - e), ema, params)


def eval_step(variables, batch, *, model):
    """Detections (`postprocess.detections`: scores, labels [B, Q], boxes
    [B, Q, 4] xyxy in pixels of `orig_size`) of one eval batch."""
    mask = batch['pixel_mask']
    out = model.apply(variables, normalize(batch['images'], mask), mask, train=False)
    return detections(out, batch['orig_size'])


@dataclasses.dataclass(frozen=True)
class Trainer:
    """What `build_trainer` makes. `train_step(state, batch, rng) -> (state,
    metrics)` donates its state and keeps it replicated; `eval_step(variables,
    batch) -> detections`; `lr_schedules` = (lr, backbone lr) as functions of
    the optimizer update count."""
    config: ml_collections.ConfigDict
    mesh: Mesh
    model: nn.Module
    tx: optax.GradientTransformation
    lr_schedules: Tuple[Callable, Callable]
    state_shardings: TrainState
    train_step: Callable
    eval_step: Callable
    # the state's shapes, dtypes and shardings (what checkpoints restore into)
    abstract_state: TrainState
    _init: Callable

    def init_state(self, rng):
        """A fresh state (random init from `rng`), created already replicated
        over the mesh."""
        return jax.jit(self._init, out_shardings=self.state_shardings)(rng)


def build_trainer(config, mesh, steps_per_epoch, total_steps=None):
    """The model (`config.model`), AdamW (`config.optim`, its schedules over
    `steps_per_epoch` and `total_steps` train steps), the state's shardings
    and both jitted steps for `mesh`."""
    model = build_model(config.model)
    tx, schedules = build_optimizer(config.optim, config.model, steps_per_epoch, total_steps)
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
    step = jax.jit(functools.partial(train_step, model=model, config=config, tx=tx, mesh=mesh,
                                     norm_trainable=config.model.norm == 'bn'),
                   donate_argnums=(0,), out_shardings=(shardings, replicated(mesh)))
    return Trainer(config=config, mesh=mesh, model=model, tx=tx, lr_schedules=schedules,
                   state_shardings=shardings, train_step=step,
                   eval_step=jax.jit(functools.partial(eval_step, model=model)),
                   abstract_state=jax.tree_util.tree_map(
                       lambda x, s: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=s),
                       abstract, shardings),
                   _init=init)
