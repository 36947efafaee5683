"""DETR-DC5 R50: the last stage dilated (stride 16).

Command: as configs/detr_r50.py with --config=configs/detr_r50_dc5.py.
Hardware: as detr_r50 (the original used 8 V100 with 1 image each for DC5).
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
