"""Read PyTorch ``.pth`` checkpoints without torch, and without running pickled code.

``load_pth(path)`` reads the zip checkpoint format that ``torch.save`` writes by
default since torch 1.6::

    <archive>/data.pkl      the pickled object (protocol 2 by default)
    <archive>/data/<key>    one raw storage per key (little-endian unless the
                            ``<archive>/byteorder`` record says ``big``)
    <archive>/version, .format_version, .storage_alignment, byteorder, ...

``data.pkl`` refers to a storage by a persistent id
``('storage', storage_type, key, location, numel)``; ``storage_type`` is a legacy typed
class such as ``torch.FloatStorage`` (``numel`` in elements) or, for dtypes without one
(uint16/32/64, float8, ...), ``torch.storage.UntypedStorage`` (``numel`` in bytes, the
dtype then follows as the 7th argument of ``torch._utils._rebuild_tensor_v3``). Tensors
are rebuilt by ``_rebuild_tensor_v2(storage, storage_offset, size, stride,
requires_grad, backward_hooks[, metadata])``, ``_rebuild_tensor_v3``,
``_rebuild_parameter[_with_state]`` and ``torch._tensor._rebuild_from_type_v2``.

Here they come back as numpy arrays (a C-contiguous copy with the tensor's dtype and
shape, strides and storage offset honoured; tensors that shared a storage no longer
share memory). ``location`` is ignored: everything lands on the host. bfloat16 and
float8 use the ``ml_dtypes`` types that jax depends on.

The unpickler is restricted: ``find_class`` only resolves the torch rebuild functions,
storage classes and dtypes listed below and ``collections.OrderedDict``; every other
global (a config class, ``builtins.exec``, ``os.system``, ...) becomes an inert
:class:`PickledObject` subclass that records the call arguments and the state it was
given and never runs anything. A tensor this reader cannot rebuild (quantized, sparse,
complex32, ...) is such a stub too.

Legacy (pre-1.6, non-zip) files need ``torch.load``; ``load_pth`` raises a ValueError
for them. torch is never imported here.
"""

from __future__ import annotations

import _compat_pickle
import collections
import io
import math
import os
import pickle
import zipfile
from typing import Any, BinaryIO

import numpy as np

try:
    import ml_dtypes
except ImportError:  # pragma: no cover - ml_dtypes comes with jax
    ml_dtypes = None

__all__ = ["PickledObject", "is_torch_zip", "load_pth"]


def _ml(name: str):
    return np.dtype(getattr(ml_dtypes, name)) if hasattr(ml_dtypes, name) else None


# Legacy typed storage classes (torch.<Name>, also written for CUDA tensors since 1.6)
# -> numpy dtype. None: known, but not representable here (quantized tensors).
_STORAGE_DTYPES: dict[str, np.dtype | None] = {
    "DoubleStorage": np.dtype(np.float64),
    "FloatStorage": np.dtype(np.float32),
    "HalfStorage": np.dtype(np.float16),
    "BFloat16Storage": _ml("bfloat16"),
    "LongStorage": np.dtype(np.int64),
    "IntStorage": np.dtype(np.int32),
    "ShortStorage": np.dtype(np.int16),
    "CharStorage": np.dtype(np.int8),
    "ByteStorage": np.dtype(np.uint8),
    "BoolStorage": np.dtype(np.bool_),
    "ComplexDoubleStorage": np.dtype(np.complex128),
    "ComplexFloatStorage": np.dtype(np.complex64),
    "QInt8Storage": None,
    "QInt32Storage": None,
    "QUInt8Storage": None,
    "QUInt4x2Storage": None,
    "QUInt2x4Storage": None,
}

# torch.<dtype> globals (the dtype argument of _rebuild_tensor_v3) -> numpy dtype.
_TORCH_DTYPES: dict[str, np.dtype | None] = {
    "float64": np.dtype(np.float64), "double": np.dtype(np.float64),
    "float32": np.dtype(np.float32), "float": np.dtype(np.float32),
    "float16": np.dtype(np.float16), "half": np.dtype(np.float16),
    "bfloat16": _ml("bfloat16"),
    "int64": np.dtype(np.int64), "long": np.dtype(np.int64),
    "int32": np.dtype(np.int32), "int": np.dtype(np.int32),
    "int16": np.dtype(np.int16), "short": np.dtype(np.int16),
    "int8": np.dtype(np.int8), "uint8": np.dtype(np.uint8),
    "uint16": np.dtype(np.uint16), "uint32": np.dtype(np.uint32),
    "uint64": np.dtype(np.uint64), "bool": np.dtype(np.bool_),
    "complex128": np.dtype(np.complex128), "cdouble": np.dtype(np.complex128),
    "complex64": np.dtype(np.complex64), "cfloat": np.dtype(np.complex64),
    "float8_e4m3fn": _ml("float8_e4m3fn"), "float8_e5m2": _ml("float8_e5m2"),
    "float8_e4m3fnuz": _ml("float8_e4m3fnuz"), "float8_e5m2fnuz": _ml("float8_e5m2fnuz"),
    "float8_e8m0fnu": _ml("float8_e8m0fnu"),
}


class PickledObject:
    """Inert stand-in for a global the restricted unpickler does not resolve.

    ``find_class`` hands out one subclass per ``(module, name)``; its class attributes
    ``pickle_module`` / ``pickle_name`` say what the pickle asked for. Calling the class
    (pickle's REDUCE / NEWOBJ / INST) makes an instance that only records ``args`` and
    ``kwargs``; BUILD stores ``state``; SETITEM(S) / APPEND(S) go to ``items`` /
    ``list_items``. Nothing of the original class is imported or executed.
    """

    pickle_module = ""
    pickle_name = ""

    def __new__(cls, *args, **kwargs):
        obj = object.__new__(cls)
        obj.args, obj.kwargs = args, kwargs
        obj.state, obj.items, obj.list_items = None, {}, []
        return obj

    def __init__(self, *args, **kwargs):  # everything happened in __new__
        pass

    def __setstate__(self, state):
        self.state = state

    def __setitem__(self, key, value):
        self.items[key] = value

    def append(self, value):
        self.list_items.append(value)

    def extend(self, values):
        self.list_items.extend(values)

    @classmethod
    def qualname(cls) -> str:
        return f"{cls.pickle_module}.{cls.pickle_name}"

    def __repr__(self):
        return f"<unpickled stub of {self.qualname()}>"


class _Storage:
    """A storage's bytes, its numpy dtype (None: untyped) and its torch type name."""

    def __init__(self, buf: np.ndarray, dtype: np.dtype | None, type_name: str, big: bool):
        self.buf, self.dtype, self.type_name, self.big = buf, dtype, type_name, big

    def __setstate__(self, state):  # a pickle's BUILD must not swap the bytes
        raise pickle.UnpicklingError("a storage cannot be given state")


def _ints(value, what: str) -> tuple[int, ...]:
    if not isinstance(value, (tuple, list)) or not all(
            isinstance(v, int) and not isinstance(v, bool) and v >= 0 for v in value):
        raise pickle.UnpicklingError(f"tensor {what} must be non-negative ints, got {value!r}")
    return tuple(value)


def _stub_tensor(func: str, args) -> PickledObject:
    cls = type(func, (PickledObject,), {"pickle_module": "torch._utils", "pickle_name": func})
    return cls(*args)


def _tensor(storage, storage_offset, size, stride, dtype, metadata) -> np.ndarray:
    if not isinstance(storage, _Storage):
        raise pickle.UnpicklingError(f"expected a storage, got {storage!r}")
    size, stride = _ints(size, "size"), _ints(stride, "stride")
    (offset,) = _ints((storage_offset,), "storage_offset")
    if len(size) != len(stride):
        raise pickle.UnpicklingError(f"size {size} and stride {stride} differ in length")
    n = storage.buf.size // dtype.itemsize
    if math.prod(size) == 0:
        return np.zeros(size, dtype)
    last = offset + sum((s - 1) * st for s, st in zip(size, stride))
    if last >= n:
        raise pickle.UnpicklingError(
            f"tensor (offset {offset}, size {size}, stride {stride}) reads past its "
            f"storage of {n} elements")
    stored = dtype.newbyteorder(">") if storage.big else dtype
    flat = storage.buf[:n * dtype.itemsize].view(stored)
    view = np.lib.stride_tricks.as_strided(
        flat[offset:], shape=size, strides=[st * dtype.itemsize for st in stride],
        writeable=False)
    out = np.array(view, dtype=dtype, order="C", copy=True)
    if isinstance(metadata, dict):  # conj / neg bits of a lazily conjugated / negated view
        if metadata.get("conj"):
            out = np.conj(out)
        if metadata.get("neg"):
            out = np.negative(out)
    return out


def _rebuild_tensor_v2(storage, storage_offset, size, stride, requires_grad=False,
                       backward_hooks=None, metadata=None):
    del requires_grad, backward_hooks
    if isinstance(storage, _Storage) and storage.dtype is None:
        return _stub_tensor("_rebuild_tensor_v2", (storage, storage_offset, size, stride))
    return _tensor(storage, storage_offset, size, stride,
                   storage.dtype if isinstance(storage, _Storage) else None, metadata)


def _rebuild_tensor_v3(storage, storage_offset, size, stride, requires_grad, backward_hooks,
                       dtype, metadata=None):
    del requires_grad, backward_hooks
    if not isinstance(dtype, np.dtype):  # a dtype numpy has no type for: a stub
        return _stub_tensor("_rebuild_tensor_v3", (storage, storage_offset, size, stride, dtype))
    return _tensor(storage, storage_offset, size, stride, dtype, metadata)


def _rebuild_tensor(storage, storage_offset, size, stride):
    return _rebuild_tensor_v2(storage, storage_offset, size, stride)


def _rebuild_parameter(data, requires_grad, backward_hooks):
    del requires_grad, backward_hooks
    return data


def _rebuild_parameter_with_state(data, requires_grad, backward_hooks, state):
    del requires_grad, backward_hooks, state
    return data


def _rebuild_from_type_v2(func, new_type, args, state):
    """A tensor (subclass) with Python attributes: the tensor, attributes dropped.

    ``func`` came out of ``find_class``, so it is one of the rebuild functions here or
    a stub class (whose call only records ``args``).
    """
    del new_type, state
    return func(*args)


_FUNCTIONS = {
    ("torch._utils", "_rebuild_tensor"): _rebuild_tensor,
    ("torch._utils", "_rebuild_tensor_v2"): _rebuild_tensor_v2,
    ("torch._utils", "_rebuild_tensor_v3"): _rebuild_tensor_v3,
    ("torch._utils", "_rebuild_parameter"): _rebuild_parameter,
    ("torch._utils", "_rebuild_parameter_with_state"): _rebuild_parameter_with_state,
    ("torch._tensor", "_rebuild_from_type_v2"): _rebuild_from_type_v2,
    ("torch._utils", "_rebuild_from_type_v2"): _rebuild_from_type_v2,
    ("collections", "OrderedDict"): collections.OrderedDict,
    ("torch", "Size"): tuple,
}


class _StorageType:
    """What ``find_class`` returns for ``torch.FloatStorage`` etc.: a name and a dtype
    (None for ``UntypedStorage``, whose tensors carry their dtype)."""

    def __init__(self, name: str, dtype: np.dtype | None):
        self.name, self.dtype = name, dtype

    def __setstate__(self, state):
        raise pickle.UnpicklingError("a storage type cannot be given state")

    def __repr__(self):
        return f"<storage type {self.name}>"


class _Unpickler(pickle.Unpickler):
    def __init__(self, file: BinaryIO, zf: zipfile.ZipFile, prefix: str, big: bool):
        super().__init__(file)
        self._zf, self._prefix, self._big = zf, prefix, big
        self._storages: dict[str, _Storage] = {}
        self._stubs: dict[tuple[str, str], type] = {}

    def find_class(self, module: str, name: str):
        # Protocol 2 (torch's default) writes Python 2 names (``__builtin__.print``);
        # the stdlib does this mapping in the find_class overridden here.
        if (module, name) in _compat_pickle.NAME_MAPPING:
            module, name = _compat_pickle.NAME_MAPPING[(module, name)]
        elif module in _compat_pickle.IMPORT_MAPPING:
            module = _compat_pickle.IMPORT_MAPPING[module]
        if (module, name) in _FUNCTIONS:
            return _FUNCTIONS[(module, name)]
        if module in ("torch", "torch.cuda") and name in _STORAGE_DTYPES:
            return _StorageType(f"torch.{name}", _STORAGE_DTYPES[name])
        if (module, name) in (("torch", "UntypedStorage"), ("torch.storage", "UntypedStorage"),
                              ("torch", "TypedStorage"), ("torch.storage", "TypedStorage")):
            return _StorageType(f"{module}.{name}", None)
        if module == "torch" and _TORCH_DTYPES.get(name) is not None:
            return _TORCH_DTYPES[name]
        key = (module, name)
        if key not in self._stubs:
            self._stubs[key] = type(name, (PickledObject,),
                                    {"pickle_module": module, "pickle_name": name})
        return self._stubs[key]

    def persistent_load(self, pid):
        if not (isinstance(pid, tuple) and len(pid) == 5 and pid[0] == "storage"
                and isinstance(pid[2], str) and isinstance(pid[4], int)):
            raise pickle.UnpicklingError(f"unsupported persistent id {pid!r}")
        _, storage_type, key, _location, numel = pid
        if key in self._storages:
            return self._storages[key]
        if isinstance(storage_type, _StorageType):  # untyped: dtype from _rebuild_tensor_v3
            dtype, name = storage_type.dtype, storage_type.name
        else:  # a storage class this reader does not know: keep the bytes, untyped
            dtype, name = None, repr(storage_type)
        record = f"{self._prefix}data/{key}"
        try:
            raw = self._zf.read(record)
        except KeyError as e:
            raise pickle.UnpicklingError(f"the checkpoint has no storage record {record}") from e
        itemsize = dtype.itemsize if dtype is not None else 1
        if numel < 0 or len(raw) < numel * itemsize:
            raise pickle.UnpicklingError(
                f"storage {record} holds {len(raw)} bytes, {numel} x {itemsize} expected")
        buf = np.frombuffer(raw, dtype=np.uint8)
        self._storages[key] = _Storage(buf, dtype, name, self._big)
        return self._storages[key]


def _data_pkl(zf: zipfile.ZipFile, where: str) -> str:
    names = [n for n in zf.namelist() if n.endswith("data.pkl") and n.count("/") == 1]
    if not names:
        raise ValueError(f"{where} is a zip file but not a torch checkpoint: it has no "
                         "<archive>/data.pkl")
    return names[0]


def is_torch_zip(path: str | os.PathLike | BinaryIO) -> bool:
    """Whether ``path`` is a zip file (the torch >= 1.6 checkpoint format, or not torch)."""
    return zipfile.is_zipfile(path)


def load_pth(path: str | os.PathLike | BinaryIO) -> Any:
    """The object ``torch.save`` stored in a zip ``.pth``, tensors as numpy arrays.

    Safe for untrusted files in the sense of ``torch.load(weights_only=True)``: no
    pickled code runs; unknown objects come back as :class:`PickledObject` stubs.

    Raises:
      ValueError: ``path`` is not a zip checkpoint (a legacy torch < 1.6 file needs
        ``torch.load``) or has no ``data.pkl``.
      pickle.UnpicklingError: the checkpoint is malformed.
    """
    where = os.fspath(path) if isinstance(path, (str, os.PathLike)) else "the file"
    if not zipfile.is_zipfile(path):
        raise ValueError(
            f"{where} is not a zip checkpoint: files written by torch < 1.6 (or with "
            "torch.save(..., _use_new_zipfile_serialization=False)) use the legacy format, "
            "which needs torch to read (pip install torch)")
    if not isinstance(path, (str, os.PathLike)):
        path.seek(0)
    with zipfile.ZipFile(path) as zf:
        pkl = _data_pkl(zf, where)
        prefix = pkl[:-len("data.pkl")]
        big = False
        if f"{prefix}byteorder" in zf.namelist():
            big = zf.read(f"{prefix}byteorder").decode().strip() == "big"
        return _Unpickler(io.BytesIO(zf.read(pkl)), zf, prefix, big).load()
