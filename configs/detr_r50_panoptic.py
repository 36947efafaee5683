"""DETR R50 panoptic, the paper's recipe on COCO 2017 panoptic, in the
original's two stages (250 classes, COCO category ids as class indices, like
the official checkpoints).

Commands (TPU VM, every worker: see launch/run.sh):
  # (a) the detector on boxes of things and stuff (300 epochs):
  python -m detr_jax.main --config=configs/detr_r50_panoptic.py:detector \
      --workdir=gs://BUCKET/detr_r50_panoptic_detector \
      --config.data.train_ann=.../panoptic_train2017.json \
      --config.data.train_images=.../train2017 \
      --config.data.train_panoptic_png=.../panoptic_train2017 (and val_*)
  # (b) the mask head alone, the detector frozen (25 epochs, lr x0.1 at 15):
  python -m detr_jax.main --config=configs/detr_r50_panoptic.py \
      --workdir=gs://BUCKET/detr_r50_panoptic \
      --config.train.init_from=gs://BUCKET/detr_r50_panoptic_detector (data as above)
  (init_from also takes a converted or official detection or panoptic
  checkpoint, e.g. detr-r50-e632da11.pth: the original fine-tunes the mask
  head of the COCO detector.)
Hardware: as detr_r50 (the paper: 16 V100).
Wall time on a TPU: not measured (no accelerator here); no plan yet.
Expected: PQ 43.4 (things 48.2, stuff 36.3), box AP 38.8 (the original's
README, detr-r50-panoptic-00ce5173.pth).
"""
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import detr_r50  # noqa: E402


def get_config(stage='masks'):
    """stage: 'detector' (a) or 'masks' (b)."""
    if stage not in ('detector', 'masks'):
        raise ValueError(f"configs/detr_r50_panoptic.py:{stage}: the stage is 'detector' or "
                         "'masks'")
    c = detr_r50.get_config()
    c.model.num_classes = 250  # the official panoptic checkpoints' head
    c.data.panoptic = True     # coco_folder (panoptic json + PNGs) or tfds coco/2017_panoptic
    c.data.tfds_name = 'coco/2017_panoptic'
    if stage == 'detector':
        return c
    c.model.masks = True
    c.train.freeze_detr = True
    c.train.epochs = 25
    c.optim.lr_drop_epochs = 15
    c.train.eval_every = 5000
    return c
