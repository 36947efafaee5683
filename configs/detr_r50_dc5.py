"""DETR-DC5 R50: the last stage dilated (stride 16).

Command: as configs/detr_r50.py with --config=configs/detr_r50_dc5.py.
Hardware: as detr_r50 (the original used 8 V100 with 1 image each for DC5;
the paper gives no wall time).
Plan (`detr-jax plan`, 12-03, the train step at 1248x1344, bf16, remat):
  v4:2x2x2 (16 TensorCores, 4 images per core): 15.03 GiB of HBM per core of
    16, the limit; 139 GB accessed per image (the encoder's 6552 tokens);
    step >= 928 ms, one COCO epoch >= 28.6 min, 300 epochs >= 143 h.
  v5e:4x4: does not fit, neither 4 nor 2 images per chip (the compiler asks
    for 85.7 GB of temporaries at 2); untried at 1 per chip. Plan yours with
    --per_chip=1 or a smaller image size before booking a v5e slice.
Expected: 43.3 box AP at 500 epochs (original README). 4x the encoder tokens:
rematerialization of encoder/decoder layers is on for 16 GB cores.
"""
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import detr_r50  # noqa: E402


def get_config():
    c = detr_r50.get_config()
    c.model.dilation = True
    c.model.remat = True
    return c
