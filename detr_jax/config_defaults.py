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
                 (864, 640), (864, 800), (960, 704), (1024, 768), (1152, 800), (1248, 1344)),
        eval_buckets=((768, 1344), (800, 1088), (800, 1216), (1088, 800), (1216, 800),
                      (1216, 1344)),
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
        eval_max_images=-1,
    ))
    c.seed = 0
    return c
