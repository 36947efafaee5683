"""The full default config (every file in configs/ starts from
`base_config()`) and the checks a config must pass.

Sub-dicts mirror constructor arguments: `model` -> `build_model`,
`matcher` and `loss` -> `set_criterion`, `data` -> the input pipeline,
`optim` -> the optimizer, `train` -> the loop.
"""
import logging

import jax
import ml_collections

from detr_jax.models import default_model_config, validate_image_size


def base_config():
    c = ml_collections.ConfigDict()
    c.model = default_model_config()
    c.matcher = ml_collections.ConfigDict(dict(cost_class=1.0, cost_bbox=5.0, cost_giou=2.0,
                                               solver='scipy'))
    c.loss = ml_collections.ConfigDict(dict(ce=1.0, bbox=5.0, giou=2.0, mask=1.0, dice=1.0,
                                            eos_coef=0.1))
    c.data = ml_collections.ConfigDict(dict(
        dataset='synthetic',       # 'synthetic' | 'coco_folder' | 'tfds'
        panoptic=False,
        # synthetic set
        num_train=2000, num_val=200, synthetic_seed=0, min_image=96, max_image=160,
        max_objects=8, cache_dir='',  # '' -> ~/.cache/detr_jax/synthetic
        # COCO-format folder
        train_ann='', train_images='', val_ann='', val_images='',
        train_panoptic_png='', val_panoptic_png='',
        # class indices: 'contiguous' (in category id order) or 'category_id'
        # (index = id: the original's COCO layout, what converted checkpoints use)
        class_index='contiguous',
        # TFDS (ArrayRecord; labels mapped to COCO ids; val_ann, if set, is the
        # official json used for evaluation instead of one built from TFDS)
        tfds_name='coco/2017', tfds_data_dir='',
        # keep decoded training images in memory (small datasets: the demo)
        cache_images=False,
        on_bad_input='error',       # 'error' | 'skip' (skipped and counted)
        # the original's augmentation (COCO sizes)
        scales=tuple(range(480, 801, 32)), max_size=1333, crop_resize=(400, 500, 600),
        crop_min=384, crop_max=600, eval_size=800, eval_max_size=1333,
        # Fitted with data.transforms.fit_buckets on the COCO recipe's sizes
        # (train: 24 shapes, 1.11x padded/real pixels; eval: 6 shapes, 1.03x;
        # one 1333x1333 canvas: 3.3x / 2.0x). See benchmarks/.
        buckets=((512, 640), (544, 736), (576, 768), (608, 832), (640, 576), (640, 864),
                 (672, 704), (672, 928), (704, 960), (736, 544), (736, 800), (736, 992),
                 (736, 1056), (768, 640), (768, 1344), (800, 1024), (800, 1120), (800, 1216),
                 (864, 640), (864, 800), (960, 704), (1024, 768), (1152, 800), (1248, 1344),
                 (1344, 800)),
        eval_buckets=((768, 1344), (800, 1088), (800, 1216), (1088, 800), (1216, 800),
                      (1216, 1344), (1344, 800)),
        max_boxes=100, truncate_boxes=False,
        batch_size=64, eval_batch_size=16, seed=0, prefetch=2,
    ))
    c.optim = ml_collections.ConfigDict(dict(
        lr=1e-4, lr_backbone=1e-5, weight_decay=1e-4, clip_norm=0.1,
        lr_drop_epochs=200, lr_drop_factor=0.1,
        # 'step' (the original's drop), 'cosine' (down to lr * lr_drop_factor at
        # the last step) or 'cooldown' (constant, then linear from lr_drop_epochs)
        schedule='step',
        warmup_steps=0,  # optimizer updates (= train steps / grad_accum_steps)
        # one update per this many train steps (batch_size each): the
        # original's batch of 64 on fewer devices
        grad_accum_steps=1,
    ))
    c.train = ml_collections.ConfigDict(dict(
        epochs=300, max_steps=-1, log_every=50, checkpoint_every=1000, keep_checkpoints=3,
        eval_every=-1,   # steps; -1: at the end of training only
        # > 0: keep an exponential moving average of the weights (decay per
        # step, e.g. 0.999) and evaluate / export it; the original has none
        ema_decay=0.0,
        # compile the train step for all of an epoch's bucket shapes before
        # the first step, in parallel threads (else: each on first use)
        precompile=True,
        num_vis_images=4, profile=False, init_from='', reinit_class_head=False,
        # panoptic, the original's second stage (--frozen_weights): the
        # detector (init_from: a detection or panoptic checkpoint or workdir)
        # stays as it is, only the mask head trains
        freeze_detr=False,
        eval_max_images=-1,
        # panoptic models: the score a query needs to make a segment (the
        # original's PostProcessPanoptic threshold)
        panoptic_threshold=0.85,
        # TensorBoard's event files: '' = the workdir (a bucket works too)
        tensorboard_dir='',
        # how the gradients are summed over the devices
        # (`trainer.gradient_all_reduce`): 'per_parameter' (XLA's own, an
        # all-reduce the compiler combines), 'one_array' (each device's
        # backward pass apart, its gradients raveled into one array: what
        # the CPU collectives need between processes) or 'auto' (one_array
        # on CPU devices of several processes, else per_parameter)
        gradient_all_reduce='auto',
    ))
    c.seed = 0
    return c


# (key, test, what it must be): values no run can use
_VALUE_CHECKS = (
    ('optim.lr', lambda v: v > 0, 'positive'),
    ('optim.lr_backbone', lambda v: v >= 0, '>= 0 (0 freezes the backbone)'),
    ('optim.weight_decay', lambda v: v >= 0, '>= 0'),
    ('optim.clip_norm', lambda v: v >= 0, '>= 0 (0: no clipping)'),
    ('optim.lr_drop_factor', lambda v: v > 0, 'positive'),
    ('optim.warmup_steps', lambda v: v >= 0, '>= 0'),
    ('optim.grad_accum_steps', lambda v: v >= 1, '>= 1'),
    ('data.batch_size', lambda v: v >= 1, '>= 1'),
    ('data.eval_batch_size', lambda v: v >= 1, '>= 1'),
    ('data.max_boxes', lambda v: v >= 1, '>= 1'),
    ('train.log_every', lambda v: v >= 1, '>= 1'),
    ('train.checkpoint_every', lambda v: v >= 1, '>= 1'),
    ('train.keep_checkpoints', lambda v: v >= 1, '>= 1'),
    ('train.ema_decay', lambda v: 0 <= v < 1, 'in [0, 1) (0: no EMA)'),
    ('train.eval_every', lambda v: v >= -1, '>= -1 (-1: at the end, 0: never)'),
    ('train.gradient_all_reduce', lambda v: v in ('auto', 'per_parameter', 'one_array'),
     "'auto', 'per_parameter' or 'one_array'"),
)


def validate_config(config, num_devices=None):
    """Checks that name the offending key: values no run can use, and
    sections that must agree. Batches must divide over `num_devices`
    (default: every device of this run)."""
    for key, ok, must in _VALUE_CHECKS:
        section, name = key.split('.')
        value = config[section][name]
        if not ok(value):
            raise ValueError(f'config.{key}={value!r} must be {must}')
    if config.train.max_steps <= 0 and config.train.epochs <= 0:
        raise ValueError(f'config.train.epochs={config.train.epochs} must be positive when '
                         f'config.train.max_steps={config.train.max_steps} is not')
    d, m = config.data, config.model
    if d.max_boxes > m.num_queries:
        raise ValueError(f'config.data.max_boxes={d.max_boxes} exceeds config.model.num_queries='
                         f'{m.num_queries}: every target needs its own query')
    for name in ('buckets', 'eval_buckets'):
        for hw in d[name]:
            validate_image_size(m, *hw, where=f'config.data.{name} entry')
    _check_buckets_hold_every_size(d)
    n = num_devices or jax.device_count()
    for name in ('batch_size', 'eval_batch_size'):
        if d[name] % n:
            raise ValueError(f'config.data.{name}={d[name]} must be divisible by the {n} devices')
    if config.train.freeze_detr and not m.masks:
        raise ValueError('config.train.freeze_detr=True trains a mask head: it needs '
                         'config.model.masks=True')
    if config.matcher.solver not in ('scipy', 'optax'):
        raise ValueError(f"config.matcher.solver={config.matcher.solver!r}: 'scipy' or 'optax'")
    if d.on_bad_input not in ('error', 'skip'):
        raise ValueError(f"config.data.on_bad_input={d.on_bad_input!r}: 'error' or 'skip'")


def _check_buckets_hold_every_size(d):
    """Warns when some image could fit no bucket. The resize keeps the short
    side <= the scale and the long side <= the max size, so a bucket at
    least (scale, max) and one at least (max, scale) hold every image,
    landscape or portrait (rounded up to 32). Data without such images needs
    neither, so this is a warning; the pipeline's epoch plan names any image
    that fits no bucket before the first step."""
    up = lambda v: -(-int(v) // 32) * 32  # noqa: E731
    for name, short, long in (('buckets', max(d.scales), d.max_size),
                              ('eval_buckets', d.eval_size, d.eval_max_size)):
        for kind, need in (('landscape', (up(short), up(long))),
                           ('portrait', (up(long), up(short)))):
            if not any(b[0] >= need[0] and b[1] >= need[1] for b in d[name]):
                logging.warning(
                    'config.data.%s: no bucket holds a %s image resized to the largest size the '
                    'recipe makes (%dx%d: short side %d, max size %d); such an image stops the '
                    'run. Add (%d, %d) or a larger bucket if your data has them.',
                    name, kind, need[0], need[1], short, long, need[0], need[1])


def with_classes_of(config, source):
    """`config` with `model.num_classes` from the training data when it is
    None (the fine-tune config), else checked against the data: contiguous
    class indices need exactly one output per category, category-id indices
    (`data.class_index='category_id'`) one more than the largest id."""
    need = source.num_classes
    given = config.model.num_classes
    if given is None:
        config = config.copy_and_resolve_references()
        with config.unlocked():
            config.model.num_classes = need
        logging.info('config.model.num_classes=%d, from the %s categories of %s', need,
                     len(source.label_map), source.name)
        return config
    # TFDS labels are COCO category ids whatever data.class_index says
    contiguous = config.data.class_index == 'contiguous' and config.data.dataset != 'tfds'
    if given < need or (contiguous and given != need):
        raise ValueError(
            f'config.model.num_classes={given} does not fit {source.name}: its '
            f'{len(source.label_map)} categories need num_classes={need} '
            + ('(one class index per category, in id order)' if contiguous else
               '(class index = category id, data.class_index=category_id)')
            + '; set it to that or leave it unset (None) to take it from the data')
    return config
