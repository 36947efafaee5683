"""Paths a run writes and reads back: local folders and buckets alike.

Every path of a workdir (checkpoints and their metadata, `eval/*.json`,
prediction pictures, TensorBoard) and of a converted checkpoint is an
`etils.epath.Path`, the type orbax uses; so are the data paths that may be
in a bucket (COCO-format json and images, `data.cache_dir`: the synthetic
set, the TFDS index). `gs://bucket/run` stays a bucket
path: epath reaches it through TensorFlow's file systems (or through fsspec
and gcsfs with `EPATH_USE_TF=false`), orbax writes the arrays through
tensorstore. A local path is made absolute (orbax requires it).

Pointing at a GCS emulator (what the tests do): `EPATH_USE_TF=false`,
`STORAGE_EMULATOR_HOST=http://HOST:PORT` (gcsfs) and
`TENSORSTORE_GCS_HTTP_URL=http://HOST:PORT` (orbax's arrays). TensorFlow's
own GCS file system, which TensorBoard's writer uses, has no endpoint
setting: with an emulator, TensorBoard goes to `--config.train.tensorboard_dir`
(`metric_writer`).
"""
import io
import json
import os

import jax
from etils import epath

def is_uri(path) -> bool:
    """`gs://bucket/x`, `memory://x`, `ram://x`: not a local path."""
    return '://' in os.fspath(path)


def as_path(path) -> epath.Path:
    """`path` (str or path) as an epath.Path; local paths made absolute,
    `~` expanded; URIs (`gs://bucket/run`, `memory://x`) unchanged."""
    s = os.fspath(path)
    if is_uri(s):
        try:
            return epath.Path(s)
        except KeyError:
            raise ValueError(f'{s}: no file system for {s.split("://")[0]}:// here (epath reads '
                             'local paths, gs://, s3://, az:// and memory://)') from None
    return epath.Path(os.path.abspath(os.path.expanduser(s)))


def write_json(path, obj, indent=None):
    """`obj` as JSON at `path` (parent folders created)."""
    path = as_path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(obj, indent=indent))


def read_json(path):
    path = as_path(path)
    try:
        return json.loads(path.read_text())
    except json.JSONDecodeError as e:
        raise ValueError(f'{path}: not valid JSON ({e})') from None


def write_png(path, image):
    """A uint8 [H, W, 3] array as a PNG at `path` (parent folders created)."""
    from PIL import Image
    path = as_path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    buf = io.BytesIO()
    Image.fromarray(image).save(buf, format='PNG')
    path.write_bytes(buf.getvalue())


def metric_writer(config, workdir, asynchronous=False):
    """The run's clu metric writer: the log, and on process 0 TensorBoard
    event files in `config.train.tensorboard_dir` (the workdir when empty).
    TensorFlow's file systems write those, so a URI is handed to them as it
    is (`ram://` too, which epath, and so clu's `create_default_writer`,
    cannot parse)."""
    from clu import metric_writers
    writers = [metric_writers.LoggingWriter()]
    if jax.process_index() == 0:
        logdir = os.fspath(config.train.get('tensorboard_dir') or workdir)
        writers.append(metric_writers.SummaryWriter(
            logdir if is_uri(logdir) else str(as_path(logdir))))
    if asynchronous:
        return metric_writers.AsyncMultiWriter(writers)
    return metric_writers.MultiWriter(writers)
