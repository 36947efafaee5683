"""Runs `gcp-storage-emulator` (PyPI) on 127.0.0.1 for the bucket tests:
python tests/gcs_emulator.py DATA_DIR PORT BUCKET

One fidelity fix on top of the emulator as published: real GCS answers an
object's download with its generation in the `x-goog-generation` header, and
tensorstore (orbax's array writer) reads it to make its writes conditional;
the emulator leaves it out (tensorstore then fails with "Malformed
StorageGeneration"). The header is added here from the emulator's own
object record; nothing else is changed.
"""
import sys

from gcp_storage_emulator import server
from gcp_storage_emulator.handlers import objects

_download = objects.download


def download_with_generation(request, response, storage, *args, **kwargs):
    _download(request, response, storage, *args, **kwargs)
    try:
        obj = storage.get_file_obj(request.params['bucket_name'], request.params['object_id'])
    except Exception:  # not found: the emulator's own 404 stands
        return
    response['x-goog-generation'] = str(obj['generation'])
    response['x-goog-metageneration'] = str(obj.get('metageneration', '1'))


def main(data_dir, port, bucket):
    objects.download = download_with_generation  # `objects.get` (?alt=media) calls it
    for _, handlers in server.HANDLERS:
        for method, fn in list(handlers.items()):
            if fn is _download:
                handlers[method] = download_with_generation
    srv = server.create_server('127.0.0.1', int(port), in_memory=False, default_bucket=bucket,
                               data_dir=data_dir)
    srv.run()


if __name__ == '__main__':
    main(*sys.argv[1:])
