"""DETR R101.

Command: as configs/detr_r50.py with --config=configs/detr_r101.py.
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
