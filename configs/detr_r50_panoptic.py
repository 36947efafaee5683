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
Hardware: stage (a) as detr_r50 (the paper: 16 V100); stage (b) the
original's 8 GPUs x 2 images: batch 16, 1 image per chip on 16 chips.
Plan of stage (b) (`detr-jax plan --config=configs/detr_r50_panoptic.py
--topology=...`, 12-04: the train step at 1248x1344, 1 image per chip, bf16,
the detector frozen; lower bounds from the compiler's counts at the chips'
peak rates):
  v5e:4x4 (16 chips): 5.82 GiB of HBM per chip of 16; step >= 104 ms
    (HBM-bound: 85 GB accessed per image, the mask head's maps at 1/4
    resolution for every query), one COCO epoch >= 12.8 min, 25 epochs
    >= 5h20m. At 4 images per chip the compiler asks 17 GiB of temporaries.
  v4:2x2x2 (16 TensorCores): 6.04 GiB per core of 16; step >= 135 ms,
    epoch >= 16.7 min, 25 epochs >= 6h56m.
Wall time on a TPU: not measured (no accelerator here).
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
    # the original's stage (b): 8 GPUs x 2 images (its README's command). It
    # is also what fits: the mask head's maps at 1/4 resolution for every
    # query need 17 GiB of temporaries at 4 images a v5e chip (plan, 12-04)
    c.data.batch_size = 16
    c.train.epochs = 25
    c.optim.lr_drop_epochs = 15
    c.train.eval_every = 5000
    return c
