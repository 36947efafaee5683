"""Fine-tune DETR R50 on your own COCO-format folder.

Command (your instances jsons and image folders; category ids may be any
integers: classes get contiguous indices in id order and predictions are
written back with your ids):
  detr-jax convert detr-r50-e632da11.pth --out converted/r50
  python -m detr_jax.main --config=configs/finetune_coco_format.py --workdir=workdir/ft \
      --config.train.init_from=converted/r50 \
      --config.data.train_ann=DATA/annotations/train.json --config.data.train_images=DATA/train \
      --config.data.val_ann=DATA/annotations/val.json --config.data.val_images=DATA/val
`model.num_classes` is taken from the training json's categories (give it
only to check it); without `init_from` the model starts from scratch.
Hardware: one GPU or TPU chip for a few thousand images.
Plan (`detr-jax plan --per_chip=1`, 12-03, the train step at 1248x1344,
float32 as configured; bounds per 118,287 images, scale them by your set's
size): v5e:4x4: 2.29 GiB of HBM per chip of 16, 39.6 GB accessed per image
(float32: --config.model.dtype=bfloat16 on a TPU), one epoch >= 6.0 min;
v4:2x2x2: 2.26 GiB per core, one epoch >= 7.5 min. Expected: depends
on your data; the class head starts fresh (the converted checkpoint has
COCO's 91 classes), everything else from the converted checkpoint.
"""
import os
import sys

from ml_collections import config_dict

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import detr_r50  # noqa: E402


def get_config():
    c = detr_r50.get_config()
    # None: from the training data's categories (an int given on the command line is checked)
    c.model.num_classes = config_dict.placeholder(int)
    c.data.dataset = 'coco_folder'
    c.data.class_index = 'contiguous'  # your ids, in order, recorded in the label map
    c.data.batch_size = 8
    c.train.reinit_class_head = True
    c.model.dtype = 'float32'  # one GPU or chip; on a TPU: --config.model.dtype=bfloat16
    c.train.epochs = 50
    c.optim.lr_drop_epochs = 40
    c.train.eval_every = 1000
    return c
