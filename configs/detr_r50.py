"""DETR R50, the paper's recipe on COCO 2017 (detection).

Command (TPU VM, every worker: see launch/run.sh):
  python -m detr_jax.main --config=configs/detr_r50.py --workdir=gs://BUCKET/detr_r50 \
      --config.data.dataset=coco_folder --config.data.train_ann=...
      (or --config.data.dataset=tfds --config.data.tfds_data_dir=gs://...)
Hardware: the paper trained 300 epochs on 16 V100 in 3 days (4 images per
GPU); a 16-chip slice with 4 images per chip is the equivalent.
Plan (`detr-jax plan --config=configs/detr_r50.py --topology=...`, 12-03: the
train step at the largest bucket, 1248x1344, 4 images per chip, bf16; lower
bounds from the compiler's counts at the chips' peak rates):
  v5e:4x4 (16 chips), the train step as three programs (12-03, session
    13): 5.83 GiB of HBM per chip of 16; step >= 113 ms (HBM-bound), one
    COCO epoch >= 3.5 min, 300 epochs >= 17.4 h. (As one fused program,
    before: 4.79 GiB, 14 images fit, >= 102 ms, 15.7 h.)
  v4:2x2x2 (16 TensorCores), the fused step: 5.92 GiB per core of 16; step
    >= 140 ms, epoch >= 4.3 min, 300 epochs >= 21.6 h.
  12-05, the 1x1 convolutions as matmuls (benchmarks/README.md), v5e:2x2
    at 800x1088, 4 per chip: 3.03 GiB per chip, 11.7 GB accessed per
    image, step >= 56.9 ms (3.11 GiB, 14.0 GB, 68.6 ms with them as
    convolutions, the same day); the figures above predate it.
Wall time on a TPU: not measured (no accelerator here).
Expected: 42.0 box AP at 500 epochs, ~40.6 at 300
(the original's README and paper).

AdamW lr 1e-4, backbone 1e-5, weight decay 1e-4 on every trainable
parameter, clip 0.1, batch 64, 300 epochs with lr x0.1 at 200, 100 queries,
6+6 layers, d=256, FFN 2048, dropout 0.1, aux loss, frozen BN, frozen stem
and layer1.
"""
from detr_jax.config_defaults import base_config


def get_config():
    c = base_config()
    c.model.backbone = 'resnet50'
    c.model.num_classes = 91  # COCO ids as class indices, as the original
    # bf16 activations, fp32 weights and optimizer: a TPU multiplies float32
    # in bf16 passes anyway (default precision), and bf16 halves the bytes
    # the step moves (`detr-jax plan`: benchmarks/README.md)
    c.model.dtype = 'bfloat16'
    c.data.dataset = 'coco_folder'  # or 'tfds' (coco/2017, ArrayRecord; data.tfds_data_dir)
    c.data.class_index = 'category_id'  # the original's class layout
    c.data.batch_size = 64
    c.optim.lr, c.optim.lr_backbone = 1e-4, 1e-5
    c.optim.lr_drop_epochs = 200
    c.train.epochs = 300
    c.train.eval_every = 20000
    c.train.checkpoint_every = 2000
    return c
