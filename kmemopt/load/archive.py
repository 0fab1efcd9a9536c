"""Bounded, validated reading of saved Keras models: the zip container, its JSON and HDF5 metadata.

Nothing here deserializes Keras objects or reads weight values. What comes out is plain data: the
parsed config, and for every stored weight its HDF5 path, shape, dtype, declared and stored bytes.
Every read is bounded (member count, sizes, compression ratio, JSON depth), HDF5 links and external
storage are refused, and the zip is never extracted to disk.
"""

from __future__ import annotations

import collections
import contextlib
import copy
import dataclasses
import io
import json
import os
import re
import stat
import struct
import threading
import zipfile
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from kmemopt.errors import KmemoptError, MalformedModelError, UnsafeModelError, UsageError

ZIP_MAGIC = b"PK\x03\x04"
HDF5_MAGIC = b"\x89HDF\r\n\x1a\n"

# Archive rule ids, reported with every refusal so a user can look the rule up in the README.
RULE_ZIP_MEMBERS = "ARCHIVE-MEMBERS"
RULE_ZIP_NAME = "ARCHIVE-NAME"
RULE_ZIP_DUPLICATE = "ARCHIVE-DUPLICATE"
RULE_ZIP_ENCRYPTED = "ARCHIVE-ENCRYPTED"
RULE_ZIP_RATIO = "ARCHIVE-RATIO"
RULE_ZIP_SIZE = "ARCHIVE-SIZE"
RULE_ZIP_METHOD = "ARCHIVE-METHOD"
RULE_READ_LIMITS = "ARCHIVE-TIME"  # reading the metadata took too long, ran out of memory or crashed the reader
RULE_JSON = "CONFIG-JSON"
RULE_HDF5_LINK = "HDF5-LINK"
RULE_HDF5_EXTERNAL = "HDF5-EXTERNAL"
RULE_HDF5_DTYPE = "HDF5-DTYPE"
RULE_HDF5_LIMITS = "HDF5-LIMITS"
RULE_HDF5_RATIO = "HDF5-RATIO"  # a filtered dataset declaring far more bytes than it stores (a compression bomb)
RULE_FORMAT = "FORMAT-AMBIGUOUS"  # a file that parses as both a zip and an HDF5 file
RULE_CHANGED = "FILE-CHANGED"  # the file changed between kmemopt's checks and the load
RULE_LOAD_FAILED = "LOAD-FAILED"  # Keras or h5py failed on a file that passed every check


@dataclass(frozen=True)
class Limits:
    """Caps on what a model file may make kmemopt read. Generous for real models, tight for bombs."""

    max_members: int = 10_000
    max_config_bytes: int = 64 * 1024**2
    max_metadata_bytes: int = 1024**2
    max_json_depth: int = 200
    max_json_values: int = 4_000_000  # values in one JSON document (NASNetLarge's config: 61,795)
    max_compression_ratio: float = 1_000.0
    max_asset_bytes: int = 1024**3
    max_hdf5_objects: int = 1_000_000
    max_hdf5_depth: int = 64
    max_hdf5_rank: int = 32
    # Wall-clock seconds for reading one file's metadata. The reading runs in a child process, so a
    # file whose HDF5 structures send the HDF5 library into a loop (found by fuzzing) or crash it is
    # refused instead of hanging kmemopt. KMEMOPT_MAX_READ_SECONDS overrides it; 0 reads in-process.
    max_read_seconds: float = 120.0
    max_read_memory_bytes: int = 4 * 1024**3  # address space the reading child may add


DEFAULT_LIMITS = Limits()


@dataclass(frozen=True)
class StoredArray:
    """One HDF5 dataset: what it declares and how many bytes are really stored for it."""

    path: str
    shape: tuple[int, ...]
    dtype: str
    declared_bytes: int
    stored_bytes: int
    filtered: bool  # compressed in HDF5; then stored < declared is legitimate
    # Chunked datasets: how many chunks the shape needs and how many the file really holds. A chunk
    # never written reads as the fill value, so a filtered dataset can declare gigabytes, store
    # nothing and still look "compressed"; its chunk count tells the truth. 0 and 0 when contiguous.
    chunks_needed: int = 0
    chunks_stored: int = 0

    @property
    def size(self) -> int:
        n = 1
        for d in self.shape:
            n *= d
        return n

    @property
    def fully_stored(self) -> bool:
        """Every byte loading will allocate is backed by data in the file (a written chunk or plain bytes)."""
        if self.chunks_stored < self.chunks_needed:
            return False
        return self.filtered or self.stored_bytes >= self.declared_bytes

    @property
    def inflation(self) -> float:
        """Declared bytes per stored byte (1.0 for plain storage; above 1 when HDF5 filters compress)."""
        return self.declared_bytes / max(self.stored_bytes, 1)


@dataclass(frozen=True)
class FileComposition:
    """Where a model file's bytes go."""

    file_bytes: int
    weights_bytes: int
    optimizer_bytes: int
    config_bytes: int
    assets_bytes: int
    overhead_bytes: int
    weights_declared_bytes: int
    weights_fully_stored: bool

    def to_dict(self) -> dict[str, Any]:
        return {
            "file_bytes": self.file_bytes,
            "weights_bytes": self.weights_bytes,
            "optimizer_bytes": self.optimizer_bytes,
            "config_bytes": self.config_bytes,
            "assets_bytes": self.assets_bytes,
            "overhead_bytes": self.overhead_bytes,
            "weights_declared_bytes": self.weights_declared_bytes,
            "weights_fully_stored": self.weights_fully_stored,
        }


@dataclass(frozen=True)
class ModelFile:
    """What kmemopt knows of a model file without deserializing anything."""

    path: Path
    format: str  # "keras" (Keras 3 zip) or "h5" (legacy full-model HDF5)
    file_bytes: int
    config: dict[str, Any]
    compile_config: dict[str, Any] | None
    keras_version: str | None
    weights: tuple[StoredArray, ...]
    optimizer_weights: tuple[StoredArray, ...]
    composition: FileComposition
    members: tuple[str, ...] = field(default=())
    identity: tuple[int, ...] = field(default=())  # file_identity() of the bytes that were checked

    def to_dict(self) -> dict[str, Any]:
        return {
            "path": str(self.path),
            "name": self.config.get("config", {}).get("name") if isinstance(self.config.get("config"), dict) else None,
            "format": self.format,
            "file_bytes": self.file_bytes,
            "keras_version": self.keras_version,
        }


# --------------------------------------------------------------------------------------------
# JSON


def _json_depth_ok(value: Any, max_depth: int) -> bool:
    """Whether parsed JSON nests at most `max_depth` arrays/objects deep. Iterative and linear: one
    iterator a level, and it stops at the first level too deep."""
    if not isinstance(value, (dict, list)):
        return True
    stack = [iter(value.values() if isinstance(value, dict) else value)]
    while stack:
        for child in stack[-1]:
            if isinstance(child, (dict, list)):
                if len(stack) >= max_depth:
                    return False
                if child:
                    stack.append(iter(child.values() if isinstance(child, dict) else child))
                    break
        else:
            stack.pop()
    return True


def load_json(raw: bytes | str, what: str, limits: Limits = DEFAULT_LIMITS) -> Any:
    """Parse JSON from an untrusted file with size and depth caps; errors are MalformedModelError.

    A leading UTF-8 byte-order mark is accepted, as Keras's own loader accepts it.
    """
    if len(raw) > limits.max_config_bytes:
        raise UnsafeModelError(
            f"The {what} is {len(raw):,} bytes, over the {limits.max_config_bytes:,}-byte limit; "
            "kmemopt refuses configs this large.",
            rule=RULE_JSON,
        )
    try:
        text = raw.decode("utf-8") if isinstance(raw, bytes) else raw
    except UnicodeDecodeError:
        raise MalformedModelError(f"The {what} is not UTF-8 text; the file is not a valid Keras model.") from None
    too_deep = UnsafeModelError(
        f"The {what} is nested deeper than {limits.max_json_depth} levels; kmemopt refuses it.", rule=RULE_JSON
    )
    try:
        # json's C scanner bounds its own nesting by the interpreter's recursion limit (1,000 unless
        # raised; kmemopt never raises it): hostile nesting ends in RecursionError, not a stack overflow,
        # and parsing is linear in the text, whatever the text is.
        value = json.loads(text.removeprefix("\ufeff"))
    except RecursionError:
        raise too_deep from None
    except ValueError as exc:
        raise MalformedModelError(
            f"The {what} is not valid JSON ({exc}); the file is not a valid Keras model."
        ) from None
    if not _json_depth_ok(value, limits.max_json_depth):
        raise too_deep
    # Every value costs memory in each process and walk it goes through: a 24 MB list of {} is 8
    # million dicts. The count of brackets and commas bounds the values from above at C speed; only
    # a text over the limit by that bound is counted exactly (iteratively).
    bound = text.count("{") + text.count("[") + text.count(",") + 1
    if bound > limits.max_json_values and _json_values(value) > limits.max_json_values:
        raise UnsafeModelError(
            f"The {what} holds more than {limits.max_json_values:,} JSON values; real Keras configs hold far "
            "fewer, so kmemopt refuses it.",
            rule=RULE_JSON,
        )
    return value


def _json_values(value: Any) -> int:
    """How many values (containers and scalars) a parsed JSON document holds; iterative."""
    count, stack = 1, [value]
    while stack:
        node = stack.pop()
        items = node.values() if isinstance(node, dict) else node
        count += len(items)
        stack.extend(v for v in items if isinstance(v, (dict, list)) and v)
    return count


# --------------------------------------------------------------------------------------------
# HDF5


def _check_dtype(dt, path: str):
    import numpy as np

    if dt.kind not in "biuf" or dt.fields is not None or dt.subdtype is not None:
        # Keras stores numbers; strings or references have no business in a weights file, except
        # for the legacy format's string attributes (attributes are not datasets).
        raise UnsafeModelError(
            f"The HDF5 dataset {path!r} has dtype {dt}, which a Keras weights file never holds.",
            rule=RULE_HDF5_DTYPE,
            where=path,
        )
    return np.dtype(dt)


def read_hdf5_arrays(h5file, limits: Limits = DEFAULT_LIMITS) -> list[StoredArray]:
    """Every dataset of an open h5py.File, with links and external storage refused. No data read."""
    import h5py

    found: list[StoredArray] = []
    seen = 0
    stack: list[tuple[Any, str, int]] = [(h5file, "", 0)]
    while stack:
        group, prefix, depth = stack.pop()
        if depth > limits.max_hdf5_depth:
            raise UnsafeModelError(
                f"The weights file nests groups deeper than {limits.max_hdf5_depth} levels.",
                rule=RULE_HDF5_LIMITS,
                where=prefix,
            )
        for name in sorted(group.keys()):
            seen += 1
            if seen > limits.max_hdf5_objects:
                raise UnsafeModelError(
                    f"The weights file holds more than {limits.max_hdf5_objects:,} objects.",
                    rule=RULE_HDF5_LIMITS,
                )
            path = f"{prefix}/{name}" if prefix else name
            link = group.get(name, getlink=True)
            if isinstance(link, (h5py.SoftLink, h5py.ExternalLink)):
                kind = "an external link" if isinstance(link, h5py.ExternalLink) else "a soft link"
                raise UnsafeModelError(
                    f"The weights file holds {kind} at {path!r}; kmemopt never follows links in model files.",
                    rule=RULE_HDF5_LINK,
                    where=path,
                )
            obj = group.get(name)
            if isinstance(obj, h5py.Group):
                stack.append((obj, path, depth + 1))
                continue
            if not isinstance(obj, h5py.Dataset):
                continue
            if obj.is_virtual or obj.external:
                raise UnsafeModelError(
                    f"The HDF5 dataset {path!r} points at storage outside the file; kmemopt refuses it.",
                    rule=RULE_HDF5_EXTERNAL,
                    where=path,
                )
            if obj.ndim > limits.max_hdf5_rank:
                raise UnsafeModelError(
                    f"The HDF5 dataset {path!r} has rank {obj.ndim}.", rule=RULE_HDF5_LIMITS, where=path
                )
            dt = _check_dtype(obj.dtype, path)
            shape = tuple(int(d) for d in obj.shape)
            n = 1
            for d in shape:
                n *= d
            filtered = (
                bool(obj.compression) or obj.chunks is not None and bool(obj.id.get_create_plist().get_nfilters())
            )
            needed = stored_chunks = 0
            if obj.chunks is not None and n:
                needed = 1
                for d, c in zip(shape, obj.chunks):
                    needed *= -(-d // max(int(c), 1))
                stored_chunks = int(obj.id.get_num_chunks())  # walks the chunk index, reads no data
            found.append(
                StoredArray(
                    path=path,
                    shape=shape,
                    dtype=dt.name,
                    declared_bytes=n * dt.itemsize,
                    stored_bytes=int(obj.id.get_storage_size()),
                    filtered=filtered,
                    chunks_needed=needed,
                    chunks_stored=stored_chunks,
                )
            )
    found.sort(key=lambda a: a.path)
    return found


def _open_h5(fileobj):
    import h5py

    try:
        return h5py.File(fileobj, "r")
    except (OSError, RuntimeError, ValueError, KeyError) as exc:
        raise MalformedModelError(f"The weights are not a readable HDF5 file ({_first_line(exc)}).") from None


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip()
    return text.splitlines()[0][:200] if text else type(exc).__name__


@contextlib.contextmanager
def _damaged_hdf5(path: Path) -> Iterator[None]:
    """h5py reports a corrupt file with whatever exception its C layer maps to: turn them into exit 3."""
    try:
        yield
    except KmemoptError:
        raise
    except (OSError, RuntimeError, ValueError, KeyError, TypeError, IndexError, OverflowError, UnicodeError) as exc:
        raise MalformedModelError(f"{path}: the HDF5 data is damaged ({_first_line(exc)}).") from None


# --------------------------------------------------------------------------------------------
# Entry point


def _check_path(path: Path) -> int:
    try:
        st = path.stat()
    except FileNotFoundError:
        raise UsageError(f"No such file: {path}. Check the path and try again.") from None
    except OSError as exc:
        raise UsageError(f"Cannot read {path}: {exc.strerror}.") from None
    if stat.S_ISDIR(st.st_mode):
        if (path / "saved_model.pb").exists():
            raise UsageError(
                f"{path} is a TensorFlow SavedModel folder; kmemopt reads Keras models saved as .keras "
                "or .h5 files: re-save the model with model.save('model.keras')."
            )
        raise UsageError(f"{path} is a folder; give the path of a .keras or .h5 model file.")
    if not stat.S_ISREG(st.st_mode):
        raise UsageError(f"{path} is not a regular file; give the path of a .keras or .h5 model file.")
    if not os.access(path, os.R_OK):
        raise UsageError(f"Cannot read {path}: permission denied.")
    return st.st_size


def read_model_file(path: str | os.PathLike, limits: Limits = DEFAULT_LIMITS) -> ModelFile:
    """Read and validate a `.keras` or legacy `.h5` model file's metadata. Never reads weight values.

    The format is decided by the content alone, never by the file name, and a file that parses as
    both a zip and an HDF5 file is refused (`FORMAT-AMBIGUOUS`): Keras picks the format from the
    name, so such a file would be checked as one format and loaded as the other. Whatever kmemopt
    later loads goes through `open_verified`, which hands Keras the same bytes by their format.
    """
    path = Path(path)
    size = _check_path(path)
    if size == 0:
        raise MalformedModelError(f"{path} is empty; it is not a Keras model file.")
    with open(path, "rb") as fh:
        identity = file_identity(fh)
        changed_ns = os.fstat(fh.fileno()).st_ctime_ns
    key = (identity, changed_ns, limits)
    with _READ_LOCK:
        known = _READ_MEMO.get(key)
        if known is not None:
            _READ_MEMO.move_to_end(key)
    if known is not None:
        # The same bytes, checked already in this process: a fresh copy of what their read found.
        return dataclasses.replace(
            known, path=path, config=copy.deepcopy(known.config), compile_config=copy.deepcopy(known.compile_config)
        )
    model_file = _read_bounded(path, size, limits, identity)
    with _READ_LOCK:
        _READ_MEMO[key] = dataclasses.replace(
            model_file, config=copy.deepcopy(model_file.config), compile_config=copy.deepcopy(model_file.compile_config)
        )
        while len(_READ_MEMO) > _READ_MEMO_SIZE:
            _READ_MEMO.popitem(last=False)
    return model_file


# Reads that passed, by the identity of the bytes read: a command (or a library user) that reads one file
# several times (shrink reads its input, then profiles it; plan prices every variant of it) pays for the
# reading child once. The key is the file's device, inode, size, modification and status-change times
# (ctime, which no user call can set back) and the limits it was read under; refusals are never kept, so
# a refused file is read, and refused, again. Bounded: the least recently used read goes first.
_READ_MEMO: collections.OrderedDict[tuple, ModelFile] = collections.OrderedDict()
_READ_MEMO_SIZE = 16
_READ_LOCK = threading.Lock()


def forget_reads() -> None:
    """Drop every remembered read: the next `read_model_file` of any file runs the reading child again."""
    with _READ_LOCK:
        _READ_MEMO.clear()


def file_identity(fh) -> tuple[int, ...]:
    """What identifies the bytes of an open file: device, inode, size and modification time (ns)."""
    st = os.fstat(fh.fileno())
    return (st.st_dev, st.st_ino, st.st_size, st.st_mtime_ns)


@contextlib.contextmanager
def open_verified(model_file: ModelFile) -> Iterator[io.BufferedReader]:
    """The checked file, opened again for loading, refused if it is no longer the file that was checked.

    A file replaced (renamed over, rewritten) between the checks and the load would otherwise be
    loaded unchecked; comparing device, inode, size and mtime closes that gap for every writer but
    one that rewrites the file in place within the same nanosecond and at the same size.
    """
    try:
        fh = open(model_file.path, "rb")
    except OSError as exc:
        raise UsageError(f"Cannot read {model_file.path}: {exc.strerror}.") from None
    with fh:
        if model_file.identity and file_identity(fh) != model_file.identity:
            raise UnsafeModelError(
                f"{model_file.path} changed while kmemopt was reading it; run the command again once "
                "nothing writes to the file.",
                rule=RULE_CHANGED,
            )
        yield fh


def hdf5_signature_offsets(fh, size: int) -> list[int]:
    """Where an HDF5 superblock signature sits at an offset the HDF5 library searches: 0, 512, 1024,
    2048, ... (a file may start with a 'user block' of any such size that HDF5 skips)."""
    found = []
    offset = 0
    while offset + len(HDF5_MAGIC) <= size:
        fh.seek(offset)
        if fh.read(len(HDF5_MAGIC)) == HDF5_MAGIC:
            found.append(offset)
        offset = 512 if offset == 0 else offset * 2
    return found


def _opens_as_zip(fh) -> tuple[bool, int, int | None]:
    """Whether zipfile (and so Keras) reads the file as a zip archive, where its first member starts,
    and where the data of a stored `model.weights.h5` member starts (None without one)."""
    fh.seek(0)
    try:
        with zipfile.ZipFile(fh) as zf:
            infos = zf.infolist()
            first = min((i.header_offset for i in infos), default=0)
            weights_at = None
            for info in infos:
                if info.filename == "model.weights.h5" and info.compress_type == zipfile.ZIP_STORED:
                    fh.seek(info.header_offset)
                    header = fh.read(30)
                    if len(header) == 30 and header[:4] == ZIP_MAGIC:
                        name_len, extra_len = struct.unpack("<HH", header[26:30])
                        weights_at = info.header_offset + 30 + name_len + extra_len
            return True, first, weights_at
    except (zipfile.BadZipFile, OSError, EOFError, ValueError, NotImplementedError, OverflowError, struct.error):
        return False, 0, None


def _read_by_content(path: Path, size: int, limits: Limits, identity: tuple[int, ...]) -> ModelFile:
    """Decide the format from the bytes (runs in the bounded reader) and read the file as that format."""
    with open(path, "rb") as fh:
        if identity and file_identity(fh) != identity:
            raise UnsafeModelError(
                f"{path} changed while kmemopt was reading it; run the command again.", rule=RULE_CHANGED
            )
        head = fh.read(8)
        hdf5_at = hdf5_signature_offsets(fh, size)
        zip_seen = head.startswith(ZIP_MAGIC) or head.startswith(b"PK\x05\x06")
        opens_as_zip, first_member, weights_at = _opens_as_zip(fh)
        fh.seek(0)
        return dataclasses.replace(
            _read_format(path, size, limits, fh, zip_seen, opens_as_zip, first_member, weights_at, hdf5_at),
            identity=identity,
        )


def _read_format(path, size, limits, fh, zip_seen, opens_as_zip, first_member, weights_at, hdf5_at) -> ModelFile:
    """Read the open file `fh` (the one whose identity was checked) as the one format its bytes have."""
    is_zip = zip_seen or opens_as_zip
    # A stored weights member that happens to start at 512, 1024, ... makes the whole archive readable
    # as that same HDF5 file: not a second model (the member is checked, and refused if it holds a
    # model_config), so only other signatures make the file ambiguous.
    hdf5_at = [at for at in hdf5_at if at != weights_at]
    if is_zip and hdf5_at:
        raise UnsafeModelError(
            f"{path} is both a zip archive and an HDF5 file (HDF5 signature at byte {hdf5_at[0]:,}); a "
            "Keras model is one or the other, and such a file could be checked as one and loaded as the "
            "other, so kmemopt refuses it.",
            rule=RULE_FORMAT,
        )
    if opens_as_zip and not zip_seen:
        raise MalformedModelError(
            f"{path} holds a zip archive that starts at byte {first_member:,}, after other data; a .keras "
            "file starts with its archive. kmemopt refuses it."
        )
    if is_zip:
        return _read_keras_zip(path, size, limits, fh)
    if hdf5_at:
        return _read_legacy_h5(path, size, limits, fh)
    if path.name.endswith(".weights.h5"):
        raise MalformedModelError(f"{path} is not an HDF5 file.")
    raise MalformedModelError(
        f"{path} is neither a Keras 3 .keras archive nor an HDF5 .h5 model; kmemopt cannot read it."
    )


# --------------------------------------------------------------------------------------------
# Reading in a bounded child


def _model_file_to_json(mf: ModelFile) -> dict[str, Any]:
    return {
        "path": str(mf.path),
        "format": mf.format,
        "file_bytes": mf.file_bytes,
        "config": mf.config,
        "compile_config": mf.compile_config,
        "keras_version": mf.keras_version,
        "weights": [a.__dict__ for a in mf.weights],
        "optimizer_weights": [a.__dict__ for a in mf.optimizer_weights],
        "composition": mf.composition.to_dict(),
        "members": list(mf.members),
        "identity": list(mf.identity),
    }


def _model_file_from_json(d: dict[str, Any]) -> ModelFile:
    def arrays(items):
        return tuple(StoredArray(**{**a, "shape": tuple(a["shape"])}) for a in items)

    return ModelFile(
        path=Path(d["path"]),
        format=d["format"],
        file_bytes=d["file_bytes"],
        config=d["config"],
        compile_config=d["compile_config"],
        keras_version=d["keras_version"],
        weights=arrays(d["weights"]),
        optimizer_weights=arrays(d["optimizer_weights"]),
        composition=FileComposition(**d["composition"]),
        members=tuple(d["members"]),
        identity=tuple(d.get("identity", ())),
    )


READ_TARGET = "kmemopt.load.archive:read_in_child"
# What the reading child may hold besides what a file makes it read: the interpreter, NumPy and h5py
# (about 60 MiB here). The memory a file can make it take is capped by `Limits.max_read_memory_bytes`.
READER_BASE_BYTES = 512 * 1024**2


def read_seconds(limits: Limits) -> float:
    """The reading child's time limit: KMEMOPT_MAX_READ_SECONDS overrides the default limits' (not a
    caller's explicit ones); 0 reads in this process."""
    if limits is DEFAULT_LIMITS:
        return float(os.environ.get("KMEMOPT_MAX_READ_SECONDS", limits.max_read_seconds))
    return limits.max_read_seconds


def _read_bounded(path: Path, size: int, limits: Limits, identity: tuple[int, ...]) -> ModelFile:
    """Read the metadata in a child process (`kmemopt.sandbox`) with a time and memory limit.

    The HDF5 library parses hostile bytes in C: a crafted file can loop forever or crash it, and a
    loop holds the GIL, so no in-process timeout could stop it; a child can be killed. The child is a
    fresh interpreter that imports only the reader (NumPy, h5py; never Keras or TensorFlow), not a
    fork of this process, whose framework threads may hold locks a forked copy could never release.
    """
    seconds = read_seconds(limits)
    if seconds <= 0:
        return _read_by_content(path, size, limits, identity)
    from kmemopt import sandbox

    request = {"path": str(path), "size": size, "identity": list(identity), "limits": dataclasses.asdict(limits)}
    try:
        done = sandbox.run_child(
            READ_TARGET,
            request,
            max_memory_bytes=READER_BASE_BYTES + limits.max_read_memory_bytes,
            timeout_s=seconds,
            what="the metadata reader",
        )
    except sandbox.RunLimitExceeded as exc:
        if exc.rule == sandbox.RULE_TIME:
            raise UnsafeModelError(
                f"Reading {path}'s metadata did not finish within {seconds:g} s (set KMEMOPT_MAX_READ_SECONDS "
                "to allow longer); kmemopt refuses it.",
                rule=RULE_READ_LIMITS,
            ) from None
        raise _read_memory_error(path, limits) from None
    except sandbox.ChildFailed as exc:
        if exc.signal is None:
            raise  # a bug in kmemopt's reader (exit 4), its traceback chained
        raise UnsafeModelError(
            f"Reading {path}'s metadata crashed the HDF5 reader (signal {exc.signal}); the file is damaged "
            "or hostile. kmemopt refuses it.",
            rule=RULE_READ_LIMITS,
        ) from None
    return _model_file_from_json(done.value)


def _read_memory_error(path: Path, limits: Limits) -> UnsafeModelError:
    return UnsafeModelError(
        f"Reading {path}'s metadata needs more than {limits.max_read_memory_bytes:,} bytes of memory; "
        "kmemopt refuses it.",
        rule=RULE_READ_LIMITS,
    )


def read_in_child(request: dict[str, Any], arrays: list[Any]) -> tuple[dict[str, Any], list[Any]]:
    """The metadata reader's child (run by `kmemopt.sandbox`): read the file, return its ModelFile as JSON.

    A kmemopt error goes back to the parent by type (rule and all); so does running out of the memory
    the reader may take (ARCHIVE-TIME).
    """
    limits = Limits(**request["limits"])
    path = Path(request["path"])
    _limit_memory(limits.max_read_memory_bytes)
    try:
        model_file = _read_by_content(path, int(request["size"]), limits, tuple(request["identity"]))
    except MemoryError:
        raise _read_memory_error(path, limits) from None
    return _model_file_to_json(model_file), []


def _limit_memory(extra_bytes: int) -> None:
    """Cap the child's address space at what it has now plus `extra_bytes` (Linux; best effort)."""
    try:
        import resource

        with open("/proc/self/statm") as fh:
            current = int(fh.read().split()[0]) * os.sysconf("SC_PAGE_SIZE")
        limit = current + extra_bytes
        soft, hard = resource.getrlimit(resource.RLIMIT_AS)
        if hard != resource.RLIM_INFINITY:
            limit = min(limit, hard)
        if soft == resource.RLIM_INFINITY or soft > limit:
            resource.setrlimit(resource.RLIMIT_AS, (limit, hard))
    except (OSError, ValueError, ImportError):
        pass


_ALLOWED_TOP = {"metadata.json", "config.json", "model.weights.h5", "model.weights.npz"}


def _check_members(zf: zipfile.ZipFile, path: Path, limits: Limits) -> list[zipfile.ZipInfo]:
    infos = zf.infolist()
    if len(infos) > limits.max_members:
        raise UnsafeModelError(
            f"{path} holds {len(infos):,} zip members, over the limit of {limits.max_members:,}.",
            rule=RULE_ZIP_MEMBERS,
        )
    seen: set[str] = set()
    asset_total = 0
    for info in infos:
        name = info.filename
        if (
            name.startswith(("/", "\\"))
            or "\\" in name
            or re.match(r"^[A-Za-z]:", name)
            or any(part in ("..", "") for part in name.rstrip("/").split("/"))
            or "\x00" in name
        ):
            raise UnsafeModelError(
                f"{path} holds a zip member with an unsafe name: {name!r}.", rule=RULE_ZIP_NAME, where=name
            )
        if name in seen:
            raise UnsafeModelError(f"{path} holds the zip member {name!r} twice.", rule=RULE_ZIP_DUPLICATE, where=name)
        seen.add(name)
        if info.flag_bits & 0x1:
            raise UnsafeModelError(
                f"{path} holds an encrypted zip member {name!r}.", rule=RULE_ZIP_ENCRYPTED, where=name
            )
        if info.compress_type not in (zipfile.ZIP_STORED, zipfile.ZIP_DEFLATED):
            raise UnsafeModelError(
                f"{path}: member {name!r} uses zip compression method {info.compress_type}; a .keras file is "
                "stored or deflated.",
                rule=RULE_ZIP_METHOD,
                where=name,
            )
        if name not in _ALLOWED_TOP and not name.startswith("assets/"):
            raise UnsafeModelError(
                f"{path} holds an unexpected zip member {name!r}; a .keras file holds only "
                "metadata.json, config.json, the weights and assets/.",
                rule=RULE_ZIP_MEMBERS,
                where=name,
            )
        if info.compress_type != zipfile.ZIP_STORED and info.file_size > 1024**2:
            ratio = info.file_size / max(info.compress_size, 1)
            if ratio > limits.max_compression_ratio:
                raise UnsafeModelError(
                    f"{path}: member {name!r} would inflate {ratio:,.0f}x ({info.file_size:,} bytes); "
                    "kmemopt refuses it as a zip bomb.",
                    rule=RULE_ZIP_RATIO,
                    where=name,
                )
        if name.startswith("assets/"):
            asset_total += info.file_size
            if asset_total > limits.max_asset_bytes:
                raise UnsafeModelError(
                    f"{path}: assets exceed {limits.max_asset_bytes:,} bytes.", rule=RULE_ZIP_SIZE, where=name
                )
    return infos


def _read_member(zf: zipfile.ZipFile, name: str, cap: int) -> bytes:
    info = zf.getinfo(name)
    if info.file_size > cap:
        raise UnsafeModelError(
            f"The member {name!r} is {info.file_size:,} bytes, over the {cap:,}-byte limit.",
            rule=RULE_ZIP_SIZE,
            where=name,
        )
    with zf.open(info) as fh:
        data = fh.read(cap + 1)  # never trust the declared size alone
    if len(data) > cap:
        raise UnsafeModelError(f"The member {name!r} inflates past {cap:,} bytes.", rule=RULE_ZIP_SIZE, where=name)
    return data


def _read_keras_zip(path: Path, size: int, limits: Limits, raw=None) -> ModelFile:
    try:
        zf = zipfile.ZipFile(raw if raw is not None else path)
    except (zipfile.BadZipFile, OSError, EOFError, ValueError, NotImplementedError, OverflowError, struct.error) as exc:
        raise MalformedModelError(
            f"{path} is not a readable zip archive ({_first_line(exc)}); it may be truncated."
        ) from None
    with zf:
        try:
            infos = _check_members(zf, path, limits)
            names = {i.filename for i in infos}
            if "config.json" not in names:
                if any(n.endswith(".h5") for n in names):
                    raise MalformedModelError(f"{path} has no config.json; it is not a Keras 3 model archive.")
                raise MalformedModelError(f"{path} is a zip file without config.json; it is not a .keras model.")
            config_raw = _read_member(zf, "config.json", limits.max_config_bytes)
            config = load_json(config_raw, "config.json", limits)
            _check_structure(config)  # before the weights file is walked, and long before Keras is imported
            metadata: dict = {}
            metadata_raw = b""
            if "metadata.json" in names:
                metadata_raw = _read_member(zf, "metadata.json", limits.max_metadata_bytes)
                loaded = load_json(metadata_raw, "metadata.json", limits)
                metadata = loaded if isinstance(loaded, dict) else {}
            if not isinstance(config, dict) or "class_name" not in config:
                raise MalformedModelError(f"{path}: config.json does not describe a Keras object.")
            weights: list[StoredArray] = []
            optimizer: list[StoredArray] = []
            h5_member = 0
            if "model.weights.h5" in names:
                info = zf.getinfo("model.weights.h5")
                h5_member = info.compress_size
                with _damaged_hdf5(path), _open_member(zf, info, path, raw) as fh, _open_h5(fh) as h5:
                    if "model_config" in h5.attrs:
                        # A weights member never holds an architecture; one that does is a legacy model
                        # hiding inside the archive (readable as HDF5 from the archive's own bytes).
                        raise UnsafeModelError(
                            f"{path}: its weights member holds a whole legacy model (model_config); "
                            "kmemopt refuses a file that carries two models.",
                            rule=RULE_FORMAT,
                        )
                    arrays = read_hdf5_arrays(h5, limits)
                for a in arrays:
                    (optimizer if a.path.startswith("optimizer/") else weights).append(a)
            elif "model.weights.npz" in names:
                raise MalformedModelError(f"{path} stores its weights as .npz, which kmemopt does not read yet.")
            assets = sum(i.compress_size for i in infos if i.filename.startswith("assets/"))
        except zipfile.BadZipFile as exc:
            raise MalformedModelError(f"{path} is a damaged zip archive ({exc}).") from None
        except (EOFError, zlib_error()) as exc:
            raise MalformedModelError(f"{path} is truncated or damaged ({exc}).") from None
        except (NotImplementedError, ValueError, OSError, OverflowError, struct.error) as exc:
            # zipfile's other ways of saying "damaged" (found by fuzzing: a mutated method field, ...)
            raise MalformedModelError(f"{path} is a damaged zip archive ({_first_line(exc)}).") from None
    compile_config = config.get("compile_config")
    return _finish(
        path,
        "keras",
        size,
        config,
        compile_config if isinstance(compile_config, dict) else None,
        metadata.get("keras_version"),
        weights,
        optimizer,
        config_bytes=sum(i.compress_size for i in infos if i.filename in ("config.json", "metadata.json")),
        assets_bytes=assets,
        h5_bytes=h5_member,
        members=tuple(sorted(names)),
    )


class _Window(io.RawIOBase):
    """A read-only, seekable view of bytes [start, start + size) of a file.

    HDF5 seeks back and forth to read its metadata. Python 3.11's zip member stream answers every
    backward seek by reading the member again from its start, which made reading the metadata of a
    100 MB stored member take seconds; a stored member is plain bytes in the archive, so read it there.
    """

    def __init__(self, fh, start: int, size: int):
        super().__init__()
        self._fh, self._start, self._size, self._pos = fh, start, size, 0

    def readable(self) -> bool:
        return True

    def seekable(self) -> bool:
        return True

    def tell(self) -> int:
        return self._pos

    def seek(self, offset: int, whence: int = io.SEEK_SET) -> int:
        base = {io.SEEK_SET: 0, io.SEEK_CUR: self._pos, io.SEEK_END: self._size}[whence]
        self._pos = max(0, base + offset)
        return self._pos

    def readinto(self, buffer) -> int:
        n = min(len(buffer), self._size - self._pos)
        if n <= 0:
            return 0
        self._fh.seek(self._start + self._pos)
        got = self._fh.readinto(memoryview(buffer).cast("B")[:n])  # straight into the reader's buffer
        self._pos += got or 0
        return got or 0


@contextlib.contextmanager
def _open_member(zf: zipfile.ZipFile, info: zipfile.ZipInfo, path: Path, raw=None):
    """A seekable stream of a member: a window on the archive when stored, zipfile's stream otherwise.

    `raw`, an already open handle on the archive (the verified one the loader holds), is read instead
    of opening `path` again."""
    if info.compress_type != zipfile.ZIP_STORED:
        with zf.open(info) as fh:
            yield fh
        return
    with contextlib.nullcontext(raw) if raw is not None else open(path, "rb") as raw:
        raw.seek(info.header_offset)
        header = raw.read(30)
        if len(header) != 30 or header[:4] != ZIP_MAGIC:
            raise MalformedModelError(f"{path}: the local header of {info.filename!r} is damaged.")
        name_len, extra_len = struct.unpack("<HH", header[26:30])
        start = info.header_offset + 30 + name_len + extra_len
        if start + info.file_size > os.fstat(raw.fileno()).st_size:
            raise MalformedModelError(f"{path} is truncated: {info.filename!r} runs past the end of the file.")
        window = _Window(raw, start, info.file_size)
        yield io.BufferedReader(window, buffer_size=64 * 1024)


def _check_structure(config: Any) -> None:
    """Refuse a model too big in structure (layers, depth, nesting) for Keras to rebuild in seconds."""
    from kmemopt.load.model_size import check_model_size

    check_model_size(config)


def zlib_error():
    import zlib

    return zlib.error


def _read_legacy_h5(path: Path, size: int, limits: Limits, raw=None) -> ModelFile:
    with (
        _damaged_hdf5(path),
        contextlib.nullcontext(raw) if raw is not None else open(path, "rb") as fh,
        _open_h5(fh) as h5,
    ):
        raw = h5.attrs.get("model_config")
        if raw is None:
            if "layers" in h5 or "vars" in h5 or "layer_names" in h5.attrs:
                raise MalformedModelError(
                    f"{path} holds weights only, without the architecture; kmemopt needs a full model "
                    "saved with model.save('model.keras')."
                )
            raise MalformedModelError(f"{path} is an HDF5 file but not a saved Keras model (no model_config).")
        if isinstance(raw, bytes) or hasattr(raw, "decode"):
            raw = bytes(raw)
        elif not isinstance(raw, str):
            raise MalformedModelError(f"{path}: its model_config attribute is not text.")
        config = load_json(raw, "model_config attribute", limits)
        _check_structure(config)
        training_raw = h5.attrs.get("training_config")
        training = (
            load_json(
                bytes(training_raw) if not isinstance(training_raw, str) else training_raw,
                "training_config attribute",
                limits,
            )
            if training_raw is not None
            else None
        )
        version = h5.attrs.get("keras_version")
        version = version.decode() if isinstance(version, bytes) else (str(version) if version is not None else None)
        arrays = read_hdf5_arrays(h5, limits)
    if not isinstance(config, dict) or "class_name" not in config:
        raise MalformedModelError(f"{path}: model_config does not describe a Keras model.")
    weights = [a for a in arrays if not a.path.startswith("optimizer_weights/")]
    optimizer = [a for a in arrays if a.path.startswith("optimizer_weights/")]
    return _finish(
        path,
        "h5",
        size,
        config,
        training if isinstance(training, dict) else None,
        version,
        weights,
        optimizer,
        config_bytes=len(raw),
        assets_bytes=0,
        h5_bytes=size,
        members=(),
    )


def _finish(
    path,
    fmt,
    size,
    config,
    compile_config,
    version,
    weights,
    optimizer,
    *,
    config_bytes,
    assets_bytes,
    h5_bytes,
    members,
) -> ModelFile:
    stored_w = sum(a.stored_bytes for a in weights)
    stored_o = sum(a.stored_bytes for a in optimizer)
    composition = FileComposition(
        file_bytes=size,
        weights_bytes=stored_w,
        optimizer_bytes=stored_o,
        config_bytes=config_bytes,
        assets_bytes=assets_bytes,
        overhead_bytes=max(size - stored_w - stored_o - config_bytes - assets_bytes, 0),
        weights_declared_bytes=sum(a.declared_bytes for a in weights),
        weights_fully_stored=all(a.fully_stored for a in weights + optimizer),
    )
    return ModelFile(
        path=path,
        format=fmt,
        file_bytes=size,
        config=config,
        compile_config=compile_config,
        keras_version=version,
        weights=tuple(weights),
        optimizer_weights=tuple(optimizer),
        composition=composition,
        members=members,
    )
