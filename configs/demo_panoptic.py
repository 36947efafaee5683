"""The panoptic demo: the detection demo's model (configs/demo.py) with the
original's mask head, on the synthetic set's things (6 shapes) and stuff
(sky, ground), trained in the original's two stages.

Commands (a fresh machine, CPU only):
  # (a) the detector on boxes of things and stuff; it starts from the
  #     detection demo's workdir (workdir/demo) when there is one, with a new
  #     class head, else from scratch:
  python -m detr_jax.main --config=configs/demo_panoptic.py:detector \
      --workdir=workdir/demo_panoptic_detector
  # (b) the mask head alone on the frozen detector of (a):
  python -m detr_jax.main --config=configs/demo_panoptic.py \
      --workdir=workdir/demo_panoptic
Hardware: 2 CPU cores. Wall time (12-04, compilation included): stage (a)
from the detection demo's step 12500, 6000 steps: 8.0 minutes; stage (b),
2000 steps: 4.6 minutes.
Expected: stage (a) box AP 51.6; stage (b) PQ 58.3 (things 49.9, stuff
83.8), 58.2 at step 1000 (README; docs/experiments.md). On the conditional
demo's detector (the demo until 12-04): box AP 54.4, PQ 53.9.
"""
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import demo  # noqa: E402

DETECTION_DEMO = os.path.join('workdir', 'demo')
DETECTOR = os.path.join('workdir', 'demo_panoptic_detector')


def get_config(stage='masks'):
    """stage: 'detector' (a) or 'masks' (b)."""
    if stage not in ('detector', 'masks'):
        raise ValueError(f"configs/demo_panoptic.py:{stage}: the stage is 'detector' or 'masks'")
    c = demo.get_config()
    c.data.panoptic = True
    c.model.num_classes = 8  # 6 things + 2 stuff
    # the demo's 12 queries (its weights start stage (a)): up to 8 things and
    # 2 stuff segments per image
    c.train.panoptic_threshold = 0.85
    if stage == 'detector':
        if os.path.isdir(os.path.join(DETECTION_DEMO, 'checkpoints')):
            # the detection demo's weights: things are known, stuff is new
            c.train.init_from = DETECTION_DEMO
            c.train.reinit_class_head = True
            c.train.max_steps = 6000
            c.optim.lr_drop_epochs = 18  # x0.1 at step ~4500 (249 steps per epoch)
            c.train.eval_every = 2000
        return c
    c.model.masks = True
    c.model.num_groups = 1  # the detector is frozen: its training-only groups are left out
    c.train.freeze_detr = True
    c.train.init_from = DETECTOR
    # 2000 steps at lr 1e-3: PQ 53.9, the same as at 3000 (5e-4: 50.8 at 2000,
    # 55.3 at 4000; docs/experiments.md)
    c.train.max_steps = 2000
    c.optim.lr = 1e-3
    c.optim.warmup_steps = 0
    c.optim.lr_drop_epochs = 10 ** 6  # no drop within max_steps
    c.train.eval_every = 1000
    return c
