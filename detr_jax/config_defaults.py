"""The full default config; every file in configs/ starts from `base_config()`.

Sub-dicts mirror constructor arguments: `model` -> `build_model`,
`matcher` and `loss` -> `set_criterion`, `data` -> the input pipeline,
`optim` -> the optimizer, `train` -> the loop.
"""
import ml_collections

from detr_jax.models import default_model_config


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
        # TFDS
        tfds_name='coco/2017', tfds_data_dir='',
        on_bad_input='error',       # 'error' | 'skip' (skipped and counted)
        # the original's augmentation (COCO sizes)
        scales=tuple(range(480, 801, 32)), max_size=1333, crop_resize=(400, 500, 600),
        crop_min=384, crop_max=600, eval_size=800, eval_max_size=1333,
        buckets=((800, 1088), (1088, 800), (800, 1344), (1344, 800), (1088, 1088),
                 (608, 1344), (1344, 608), (1344, 1344)),
        eval_buckets=((800, 1088), (1088, 800), (800, 1344), (1344, 800), (1344, 1344)),
        max_boxes=100, truncate_boxes=False,
        batch_size=64, eval_batch_size=16, seed=0, prefetch=2,
    ))
    c.optim = ml_collections.ConfigDict(dict(
        lr=1e-4, lr_backbone=1e-5, weight_decay=1e-4, clip_norm=0.1,
        lr_drop_epochs=200, lr_drop_factor=0.1, warmup_steps=0,
        grad_accum_steps=1,
    ))
    c.train = ml_collections.ConfigDict(dict(
        epochs=300, max_steps=-1, log_every=50, checkpoint_every=1000, keep_checkpoints=3,
        eval_every=-1,   # steps; -1: at the end of training only
        num_vis_images=4, profile=False, init_from='', reinit_class_head=False,
        eval_max_images=-1,
        inject_nan_at_step=0,  # fault injection: a NaN loss at this step (tests)
    ))
    c.seed = 0
    return c
