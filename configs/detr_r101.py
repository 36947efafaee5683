"""DETR R101.

Command: as configs/detr_r50.py with --config=configs/detr_r101.py.
Plan (`detr-jax plan`, 12-03, the train step at 1248x1344, 4 images per chip,
bf16; lower bounds at the chips' peak rates; the paper gives no wall time):
  v5e:4x4 (16 chips): 9.24 GiB of HBM per chip of 16; 33.6 GB accessed per
    image; step >= 164 ms, one COCO epoch >= 5.1 min, 300 epochs >= 25.3 h.
  v4:2x2x2 (16 TensorCores): 10.10 GiB per core of 16; step >= 216 ms, epoch
    >= 6.7 min, 300 epochs >= 33.3 h.
Expected: 43.5 box AP at 500 epochs (original README).
"""
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import detr_r50  # noqa: E402


def get_config():
    c = detr_r50.get_config()
    c.model.backbone = 'resnet101'
    return c
