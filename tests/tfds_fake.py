"""Prepares TFDS's real COCO builders from local folders laid out as its
download manager would return them (no network): tests and benchmarks get
genuine ArrayRecord (or TFRecord) data for coco/2017 and coco/2017_panoptic."""
import zipfile
from unittest import mock

import tensorflow_datasets as tfds


def _extract(self, path):
    out = str(path) + '_extracted'
    with zipfile.ZipFile(path) as z:
        z.extractall(out)
    return out


def prepare(paths, data_dir, names=('coco/2017',), file_format='array_record'):
    """paths: the download manager's keys ('train_images', 'train_annotations',
    'validation_images', ..., 'test_annotations') -> local folders."""
    with mock.patch.object(tfds.download.DownloadManager, 'download_and_extract',
                           lambda self, urls: {k: paths[k] for k in urls}), \
            mock.patch.object(tfds.download.DownloadManager, 'extract', _extract):
        for name in names:
            tfds.builder(name, data_dir=str(data_dir), file_format=file_format
                         ).download_and_prepare(download_dir=str(data_dir) + '_dl')
    return str(data_dir)
