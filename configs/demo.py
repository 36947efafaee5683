"""The demo: a small DETR trained from scratch on the built-in synthetic
set, with the original's decoder and Group DETR's query groups for training.

Command (a fresh machine, CPU only):
  python -m detr_jax.main --config=configs/demo.py --workdir=workdir/demo
Hardware: 2 CPU cores. Wall time: 13.8 minutes on 2026-12-04 (evening,
17-19 steps/s), 15.3 minutes the same afternoon (16 steps/s), data
generation and compilation included.
Expected: AP 50.0 / AP50 86.2 / AP75 53.0 at step 12500, AP 49.2 at step
12000 (README, the demo table; benchmarks/boosters.py's `detr+group+lr7e-4`).

Training uses 4 groups of 12 queries (Group DETR: self-attention within a
group, one-to-one matching per group); evaluation, export and the
checkpoint's inference model are the original's architecture with one
group. Without the groups (`--config.model.num_groups=1
--config.optim.lr=3e-4 --config.optim.lr_backbone=3e-4`, 14000 steps): AP
39.9 in 14.8 minutes (README, "Training boosters on the demo").

`--config=configs/demo.py:conditional` is the demo until 12-04: Conditional
DETR's decoder, no groups, lr 5e-4, 20000 steps: AP 55.3 / AP50 85.6 at
step 20000 in 32 minutes (12-03; 28.3 minutes on 12-04).

No pretrained weights exist here, so the backbone trains from scratch with
GroupNorm (as the original's users found necessary) and every stage trains.
What was tried on the way is in docs/experiments.md.
"""
from detr_jax.config_defaults import base_config


def get_config(decoder='detr'):
    """decoder: 'detr' (the default) or 'conditional' (the demo until 12-04)."""
    if decoder not in ('detr', 'conditional'):
        raise ValueError(f"configs/demo.py:{decoder}: the decoder is 'detr' (the default) or "
                         "'conditional'")
    c = base_config()
    m = c.model
    m.backbone = 'resnet_small16'
    m.norm = 'gn'
    m.train_stages = ('stem', 'layer1', 'layer2', 'layer3', 'layer4')
    m.dilation = True  # stride 16: an 8x8 map for 128 px images
    # (stride 8, m.dilation_layer3, learns 1.5-2x as fast per step but a step
    # costs 2x as much on 2 cores: no gain in minutes; README, the demo)
    # small enough for ~27 steps/s on 2 cores: DETR needs many updates to
    # leave its "every query predicts the mean box" plateau (~1500 here)
    m.hidden_dim, m.nheads, m.dim_feedforward = 64, 4, 128
    # 3 decoder layers: +3.3 AP at 21000 steps over 2 (45.0 -> 48.3) for ~6%
    # more per step; a wider transformer (d=128) or 2 encoder layers did not
    # learn faster per step (docs/experiments.md)
    m.enc_layers, m.dec_layers = 1, 3
    # 4 groups of queries for training (one at evaluation): +6 to +8 AP per
    # step before the lr drop for ~1% of the steps/s, and they take a higher
    # lr (README, "Training boosters on the demo")
    m.num_groups = 4
    m.num_queries, m.num_classes = 12, 6
    m.dropout = 0.0
    d = c.data
    d.dataset = 'synthetic'
    d.num_train, d.num_val = 2000, 200
    # the original's recipe scaled from 800 px to 128 px: few shapes, few compilations
    d.scales, d.max_size = (96, 112, 128), 192
    d.crop_resize, d.crop_min, d.crop_max = (96, 112, 128), 64, 112
    d.eval_size, d.eval_max_size = 128, 192
    # (128, 160) and (160, 128) take the images that padded to 192: 23% less
    # compute per image than 3 buckets, two more compilations
    d.buckets = ((128, 128), (128, 160), (160, 128), (128, 192), (192, 128))
    d.eval_buckets = d.buckets
    d.cache_images = True  # 2000 small images decoded once: ~100 MB
    d.max_boxes = 12
    d.batch_size, d.eval_batch_size = 8, 8
    o = c.optim
    # one group: 3e-4 left the "mean box" plateau in ~1500 steps, 1e-3 took
    # ~4000, 5e-4 ~2500; with 4 groups 7e-4 is ahead of 5e-4 from step 8000
    # (38.1 against 37.8) and after the drop (49.2 against 47.7 at 12000)
    o.lr, o.lr_backbone, o.weight_decay, o.clip_norm = 7e-4, 7e-4, 1e-4, 0.1
    o.warmup_steps = 200
    # x0.1 at step 11205 (249 steps per epoch) as the original drops (a
    # cosine decay instead: AP 29.5 at 16000 steps against the drop's 36.6;
    # a linear cooldown from step ~15900: the same as the drop at 21000)
    o.lr_drop_epochs = 45
    t = c.train
    t.epochs = 1000
    t.max_steps = 12500  # ~13 minutes of steps at ~16 steps/s (2 cores)
    # evaluated with an EMA of the weights: far ahead before the lr drop
    # (AP 40.3 against 33.3 at step 14000), the same at the end
    t.ema_decay = 0.999
    t.log_every = 100
    # each save costs the loop ~2 s of CPU (5% of the steps/s at every 1000)
    t.checkpoint_every = 2000
    t.eval_every = 2000  # 1-2 s each (10 s the first: compilation)
    if decoder == 'conditional':
        # a reference point per query and [content | spatial] cross-attention:
        # far ahead of DETR's decoder at every step (AP 54.5 against 48.0 at
        # step 20000, one core) for 9% more per step (docs/experiments.md);
        # it leaves the "mean box" plateau at once and learns fastest at 5e-4
        m.conditional, m.num_groups = True, 1
        o.lr, o.lr_backbone = 5e-4, 5e-4
        o.lr_drop_epochs = 72  # x0.1 at step 17928
        t.max_steps, t.eval_every = 20000, 4000
    return c
