"""Reads PyTorch `.pth`/`.bin` checkpoints into numpy without torch.

Both of torch's formats: the zip archive (torch >= 1.6) and the legacy
stream (magic number, protocol, sys info, the pickle, then raw storages).
The unpickler is restricted: it builds tensors, `OrderedDict`, and
`argparse.Namespace` (the original DETR's `args`), and refuses everything
else with an error naming the class, so a malicious file executes nothing.
"""
import argparse
import collections
import io
import pickle
import struct
import zipfile

import numpy as np

_LEGACY_MAGIC = 0x1950A86A20F9469CFC6C
_STORAGE_DTYPES = {
    'HalfStorage': np.float16, 'FloatStorage': np.float32, 'DoubleStorage': np.float64,
    'BFloat16Storage': 'bfloat16', 'LongStorage': np.int64, 'IntStorage': np.int32,
    'ShortStorage': np.int16, 'CharStorage': np.int8, 'ByteStorage': np.uint8,
    'BoolStorage': np.bool_,
}


class CheckpointError(ValueError):
    """A checkpoint file that cannot be read or does not fit the model."""


def _np_dtype(name):
    dt = _STORAGE_DTYPES[name]
    if dt == 'bfloat16':
        import ml_dtypes
        return np.dtype(ml_dtypes.bfloat16)
    return np.dtype(dt)


class _StorageType:
    def __init__(self, name):
        self.name = name
        self.dtype = _np_dtype(name)


class _Storage:
    """A storage whose bytes may arrive after the pickle (legacy format)."""

    def __init__(self, dtype, numel):
        self.dtype, self.numel, self.array = dtype, numel, None


class _LazyTensor:
    def __init__(self, storage, offset, size, stride):
        self.storage, self.offset, self.size, self.stride = storage, offset, tuple(size), stride

    def materialize(self):
        arr = self.storage.array
        if arr is None:
            raise CheckpointError('a tensor refers to a storage the file does not contain')
        n = int(np.prod(self.size)) if self.size else 1
        if self.offset + (n and sum((s - 1) * st for s, st in zip(self.size, self.stride)) + 1) > arr.size:
            raise CheckpointError('a tensor reaches past the end of its storage (truncated file?)')
        item = arr.itemsize
        out = np.lib.stride_tricks.as_strided(
            arr[self.offset:], shape=self.size, strides=[s * item for s in self.stride])
        return np.array(out)  # own the memory, C-contiguous


def _rebuild_tensor(storage, storage_offset, size, stride, *unused):
    return _LazyTensor(storage, storage_offset, size, stride)


def _rebuild_parameter(data, requires_grad=None, backward_hooks=None, *unused):
    return data


_ALLOWED = {
    ('collections', 'OrderedDict'): collections.OrderedDict,
    ('argparse', 'Namespace'): argparse.Namespace,
    ('torch._utils', '_rebuild_tensor_v2'): _rebuild_tensor,
    ('torch._utils', '_rebuild_tensor'): _rebuild_tensor,
    ('torch._utils', '_rebuild_parameter'): _rebuild_parameter,
    ('builtins', 'set'): set,
    ('builtins', 'frozenset'): frozenset,
    ('builtins', 'slice'): slice,
}


class _Unpickler(pickle.Unpickler):
    def __init__(self, fileobj, source, load_storage):
        super().__init__(fileobj)
        self._source, self._load_storage = source, load_storage

    def find_class(self, module, name):
        if (module, name) in _ALLOWED:
            return _ALLOWED[(module, name)]
        if module == 'torch' and name in _STORAGE_DTYPES:
            return _StorageType(name)
        raise CheckpointError(
            f'{self._source}: refusing to load {module}.{name}: only tensors, OrderedDict and '
            'argparse.Namespace are allowed in a checkpoint (nothing in it is executed)')

    def persistent_load(self, pid):
        if not isinstance(pid, tuple) or not pid or pid[0] != 'storage':
            raise CheckpointError(f'{self._source}: unsupported persistent id {pid!r:.80}')
        return self._load_storage(pid[1:])


def _walk(obj):
    if isinstance(obj, _LazyTensor):
        return obj.materialize()
    if isinstance(obj, dict):
        return type(obj)((k, _walk(v)) for k, v in obj.items())
    if isinstance(obj, (list, tuple)):
        return type(obj)(_walk(v) for v in obj)
    return obj


def _load_zip(path, data):
    zf = zipfile.ZipFile(io.BytesIO(data))
    pkls = [n for n in zf.namelist() if n.endswith('/data.pkl') or n == 'data.pkl']
    if not pkls:
        raise CheckpointError(f'{path}: a zip file without data.pkl is not a torch checkpoint')
    prefix = pkls[0][:-len('data.pkl')]
    byteorder = 'little'
    if prefix + 'byteorder' in zf.namelist():
        byteorder = zf.read(prefix + 'byteorder').decode().strip()
    storages = {}

    def load_storage(info):
        storage_type, key, _location, numel = info[:4]
        if key not in storages:
            dtype = storage_type.dtype.newbyteorder('<' if byteorder == 'little' else '>')
            try:
                raw = zf.read(f'{prefix}data/{key}')
            except KeyError as e:
                raise CheckpointError(f'{path}: storage data/{key} is missing') from e
            st = _Storage(dtype, numel)
            st.array = np.frombuffer(raw, dtype=dtype)[:numel].astype(dtype.newbyteorder('='))
            if st.array.size < numel:
                raise CheckpointError(f'{path}: storage data/{key} is truncated')
            storages[key] = st
        return storages[key]

    return _walk(_Unpickler(io.BytesIO(zf.read(pkls[0])), path, load_storage).load())


def _load_legacy(path, f):
    magic = pickle.load(f)
    if magic != _LEGACY_MAGIC:
        raise CheckpointError(f'{path}: not a torch checkpoint (bad magic number)')
    pickle.load(f)  # protocol version
    pickle.load(f)  # sys info
    storages = {}

    def load_storage(info):
        storage_type, root_key, _location, numel, view_metadata = info
        if root_key not in storages:
            storages[root_key] = _Storage(storage_type.dtype, numel)
        root = storages[root_key]
        if view_metadata is not None:  # a view into the root storage
            _view_key, offset, view_size = view_metadata
            view = _Storage(root.dtype, view_size)
            view.root, view.offset = root, offset
            return view
        return root

    result = _Unpickler(f, path, load_storage).load()
    keys = pickle.load(f)
    for key in keys:
        st = storages[key]
        header = f.read(8)
        if len(header) < 8:
            raise CheckpointError(f'{path}: truncated (storage {key} missing)')
        (numel,) = struct.unpack('<q', header)
        raw = f.read(numel * st.dtype.itemsize)
        if len(raw) < numel * st.dtype.itemsize:
            raise CheckpointError(f'{path}: truncated inside storage {key}')
        st.array = np.frombuffer(raw, dtype=st.dtype.newbyteorder('<')).astype(st.dtype)
    _resolve_views(result)
    return _walk(result)


def _resolve_views(obj):
    if isinstance(obj, _LazyTensor) and hasattr(obj.storage, 'root'):
        view = obj.storage
        if view.root.array is not None:
            view.array = view.root.array[view.offset:view.offset + view.numel]
    elif isinstance(obj, dict):
        for v in obj.values():
            _resolve_views(v)
    elif isinstance(obj, (list, tuple)):
        for v in obj:
            _resolve_views(v)


def load_pth(path):
    """Returns the checkpoint's object with every tensor as a numpy array."""
    path = str(path)
    try:
        with open(path, 'rb') as f:
            data = f.read()
    except OSError as e:
        raise CheckpointError(f'{path}: cannot read checkpoint: {e.strerror}') from e
    try:
        if data[:4] == b'PK\x03\x04':
            return _load_zip(path, data)
        return _load_legacy(path, io.BytesIO(data))
    except CheckpointError:
        raise
    except (zipfile.BadZipFile, EOFError, pickle.UnpicklingError, struct.error,
            ValueError, KeyError, TypeError, IndexError, AttributeError) as e:
        raise CheckpointError(
            f'{path}: not a readable torch checkpoint (truncated or corrupt?): '
            f'{type(e).__name__}: {e}') from e
