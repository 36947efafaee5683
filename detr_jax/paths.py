"""Paths a run writes and reads back: local folders and buckets alike.

Every path of a workdir (checkpoints and their metadata, `eval/*.json`,
prediction pictures, TensorBoard) and of a converted checkpoint is an
`etils.epath.Path`, the type orbax uses. `gs://bucket/run` stays a bucket
path: epath reaches it through TensorFlow's file systems (or through fsspec
and gcsfs with `EPATH_USE_TF=false`), orbax writes the arrays through
tensorstore. A local path is made absolute (orbax requires it).

Pointing at a GCS emulator (what the tests do): `EPATH_USE_TF=false`,
`STORAGE_EMULATOR_HOST=http://HOST:PORT` (gcsfs) and
`TENSORSTORE_GCS_HTTP_URL=http://HOST:PORT` (orbax's arrays). TensorFlow's
own GCS file system, which TensorBoard's writer uses, has no endpoint
setting: with an emulator, TensorBoard goes to `--config.train.tensorboard_dir`.
"""
import io
import json
import os

from etils import epath

_URI = ('gs://', 's3://', 'az://', 'hf://', 'memory://', 'ram://')


def as_path(path) -> epath.Path:
    """`path` (str or path) as an epath.Path; local paths made absolute,
    `~` expanded; bucket paths unchanged."""
    s = os.fspath(path)
    if s.startswith(_URI):
        return epath.Path(s)
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


def tensorboard_dir(config, workdir) -> str:
    """Where TensorBoard's event files go: `config.train.tensorboard_dir`,
    or the workdir when it is empty."""
    return str(as_path(config.train.get('tensorboard_dir') or workdir))
