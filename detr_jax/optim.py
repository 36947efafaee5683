"""The optimizer: AdamW on every trainable parameter (weight decay
included), backbone at its own learning rate, frozen stages untouched,
global-norm clipping over the trainable gradients, a step lr drop (the
original's) or a cosine decay."""
import jax
import optax
from flax import traverse_util


def _stage(name):
    if name.startswith('layer'):
        return name.split('_')[0]
    return 'stem'  # conv1, bn1


def param_labels(params, model_cfg, lr_backbone, freeze_detr=False):
    """'frozen' | 'backbone' | 'default' for every parameter. With
    `freeze_detr` (a panoptic model's second stage) every parameter of the
    detector (under `detr`) is frozen: only the mask head trains."""
    flat = traverse_util.flatten_dict(params)
    train_stages = set(model_cfg.train_stages) if lr_backbone > 0 else set()
    labels = {}
    for path in flat:
        if freeze_detr and path[0] == 'detr':
            labels[path] = 'frozen'
        elif 'backbone' in path:
            stage = _stage(path[path.index('backbone') + 1])
            labels[path] = 'backbone' if stage in train_stages else 'frozen'
        else:
            labels[path] = 'default'
    return traverse_util.unflatten_dict(labels)


def lr_schedules(cfg, steps_per_epoch, total_steps=None):
    """(lr, backbone lr) as functions of the optimizer update count. With
    gradient accumulation an update takes `grad_accum_steps` train steps, so
    the drop comes after `lr_drop_epochs` epochs whatever the accumulation;
    `warmup_steps` counts updates.

    `schedule='step'`: x`lr_drop_factor` after `lr_drop_epochs` epochs (the
    original). `schedule='cosine'`: from the lr after warmup down to
    lr x `lr_drop_factor` at the last of `total_steps` train steps.
    `schedule='cooldown'`: constant until `lr_drop_epochs` epochs, then a
    straight line down to lr x `lr_drop_factor` at the last train step.
    """
    accum = max(1, cfg.grad_accum_steps)
    updates_per_epoch = steps_per_epoch / accum
    drop = int(cfg.lr_drop_epochs * updates_per_epoch)
    kind = cfg.schedule
    if kind not in ('step', 'cosine', 'cooldown'):
        raise ValueError(f"config.optim.schedule={kind!r}: 'step', 'cosine' or 'cooldown'")
    if kind in ('cosine', 'cooldown') and not total_steps:
        raise ValueError(f"config.optim.schedule='{kind}' needs the run's total steps")
    if kind == 'cooldown' and not 0 < drop < total_steps // accum:
        raise ValueError(f'config.optim.lr_drop_epochs={cfg.lr_drop_epochs} must end before the '
                         f"last step ({total_steps}) for schedule='cooldown'")

    def make(base):
        if kind == 'cosine':
            decay = max(1, total_steps // accum - cfg.warmup_steps)
            sched = optax.cosine_decay_schedule(base, decay, alpha=cfg.lr_drop_factor)
        elif kind == 'cooldown':
            # counted from the start: the warmup below is joined in front
            start = max(0, drop - cfg.warmup_steps)
            end = max(start + 1, total_steps // accum - cfg.warmup_steps)
            sched = optax.join_schedules(
                [optax.constant_schedule(base),
                 optax.linear_schedule(base, base * cfg.lr_drop_factor, end - start)], [start])
        elif drop > 0:
            # the drop counts from the first update, warmup included
            sched = optax.piecewise_constant_schedule(
                base, {max(drop - cfg.warmup_steps, 0): cfg.lr_drop_factor})
        else:
            sched = optax.constant_schedule(base)
        if cfg.warmup_steps > 0:
            warm = optax.linear_schedule(0.0, base, cfg.warmup_steps)
            sched = optax.join_schedules([warm, sched], [cfg.warmup_steps])
        return sched

    return make(cfg.lr), make(cfg.lr_backbone)


def applied_lr(schedule, steps_done, grad_accum_steps=1):
    """The lr of the last update applied after `steps_done` train steps (what
    the train loop logs)."""
    return float(schedule(max(steps_done // max(1, grad_accum_steps) - 1, 0)))


def build_optimizer(optim_cfg, model_cfg, steps_per_epoch, total_steps=None, freeze_detr=False):
    """Returns (optax transformation, (lr schedule, backbone lr schedule)).

    Built before the parameters exist: which parameters are frozen, backbone
    or default is decided by `param_labels` when the transformation first
    sees them (optax takes the labels as a function of the parameters).
    `total_steps` (train steps) is needed by the cosine and cooldown
    schedules. `freeze_detr`: see `param_labels`."""
    def labels(params):
        return param_labels(params, model_cfg, optim_cfg.lr_backbone, freeze_detr)

    def frozen(params):
        return jax.tree_util.tree_map(lambda label: label == 'frozen', labels(params))

    lr, lr_bb = lr_schedules(optim_cfg, steps_per_epoch, total_steps)
    adamw = lambda s: optax.adamw(s, b1=0.9, b2=0.999, eps=1e-8,  # noqa: E731
                                  weight_decay=optim_cfg.weight_decay)
    tx = optax.chain(
        # frozen gradients must not count in the clipping norm
        optax.masked(optax.set_to_zero(), frozen),
        optax.clip_by_global_norm(optim_cfg.clip_norm) if optim_cfg.clip_norm > 0
        else optax.identity(),
        optax.multi_transform({'default': adamw(lr), 'backbone': adamw(lr_bb),
                               'frozen': optax.set_to_zero()}, labels),
    )
    if optim_cfg.grad_accum_steps > 1:
        tx = optax.MultiSteps(tx, every_k_schedule=optim_cfg.grad_accum_steps)
    return tx, (lr, lr_bb)
