"""Fine-tune a converted DETR on your own COCO-format folder.

Command:
  detr-jax convert detr-r50-e632da11.pth --out converted/r50
  python -m detr_jax.main --config=configs/finetune_coco_format.py --workdir=workdir/ft \
      --config.train.init_from=converted/r50 \
      --config.data.train_ann=DATA/annotations/train.json --config.data.train_images=DATA/train \
      --config.data.val_ann=DATA/annotations/val.json --config.data.val_images=DATA/val \
      --config.model.num_classes=NUM_YOUR_CLASSES
Hardware: one GPU or TPU core for a few thousand images. Expected: depends on
your data; the class head starts fresh (reported in the log), everything else
from the converted checkpoint.
"""
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import detr_r50  # noqa: E402


def get_config():
    c = detr_r50.get_config()
    c.data.dataset = 'coco_folder'
    c.data.batch_size = 8
    c.train.reinit_class_head = True
    c.train.epochs = 50
    c.optim.lr_drop_epochs = 40
    c.train.eval_every = 1000
    return c
