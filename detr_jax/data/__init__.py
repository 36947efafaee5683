"""Input pipelines: datasets (built-in synthetic set, COCO-format folders,
TFDS COCO), the original's augmentation, shape buckets, resumable order."""
