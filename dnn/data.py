"""CIFAR-10 loading, caching, augmentation and normalisation (no downloads, no torchvision).

Accepted layouts (``load_cifar10(path, ...)``; ``path`` defaults to ``$VALLEYSIM_DATA``):

(a) the canonical pickled batches: a ``cifar-10-batches-py`` directory (``data_batch_1`` ..
    ``data_batch_5``, ``test_batch``), a directory containing one, or the
    ``cifar-10-python.tar.gz`` archive;
(b) an image folder ``<split>/<class>/<n>.jpg|jpeg|png`` (split ``train`` or ``test``, class one
    of :data:`CIFAR10_CLASSES`), as a directory or as a tar (uncompressed or gzip), optionally under
    one top-level folder. A directory that holds ``cifar10-jpeg.tar`` or
    ``cifar-10-python.tar.gz`` (and nothing of the layouts above) is read through that archive.

Images come back as ``uint8`` arrays of shape ``(N, 32, 32, 3)`` (NHWC, RGB, the layout of the
decoded files and of ``PIL``), labels as ``int64`` ``(N,)`` in CIFAR-10's canonical label order
(0 airplane .. 9 truck), mapped from the class-folder names. Image-folder data come in class-major
order (class 0's files by number, then class 1, ...) unless a label-order file is given: an
``.npz`` with ``train`` / ``test`` label sequences (``cifar10-original-label-order.npz``), which
rebuilds the original interleaved order (the k-th example is the next unused file of class
``order[k]``). Pickled batches are already in the original order.

Decoded arrays are cached in ``cache_dir`` (argument, else ``$VALLEYSIM_DATA_CACHE``, else
``~/.cache/valleysim/data``) as an uncompressed ``.npz`` keyed by the source's identity (path, size,
mtime; for a directory every file's relative path, size and mtime), the split and the label order.
The cache is written to a temporary file and renamed, and a cache that fails to load or whose stored
key does not match is ignored and rewritten.

Untrusted files stay bounded: an image file is read only up to 1 MiB and a pickled batch up to 64 MiB
(a larger file, or a tar member that declares more, is refused unread), and an image whose header declares
any size but 32x32 is refused before it is decoded. :func:`data_digest` is the data's identity by content:
the digest a run records in its config.json and a study in its study.json.

Batches: :func:`batches` yields ``(x, y)`` torch tensors, ``x`` float ``(B, 3, 32, 32)``, shuffled,
augmented (:class:`RandomCropFlip`: random crop of the 4-pixel zero-padded image, horizontal flip with
probability 1/2) and normalised (:class:`Normalize`, per-channel mean/std on the 0-1 scale; see
:func:`channel_stats`), all randomness from one ``torch.Generator``: the same seed gives the same
batches. Padding is applied before normalisation (zero pixel value), as in the standard pipeline.
"""

from __future__ import annotations

import hashlib
import io
import json
import os
import pickle
import tarfile
import tempfile
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from valleysim.errors import UserInputError

__all__ = [
    "CIFAR10_CLASSES",
    "CIFAR10_MEAN",
    "CIFAR10_STD",
    "ACCEPTED_LAYOUTS",
    "resolve_data_path",
    "default_cache_dir",
    "load_cifar10",
    "channel_stats",
    "to_float_nchw",
    "Normalize",
    "RandomCropFlip",
    "normalize",
    "random_crop_flip",
    "batches",
    "measurement_subset",
    "DataSource",
    "data_digest",
]

CIFAR10_CLASSES = ("airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship", "truck")
_CLASS_INDEX = {name: i for i, name in enumerate(CIFAR10_CLASSES)}

#: Per-channel mean / std of the original CIFAR-10 training images on the 0-1 scale (population std
#: over all pixels). The JPEG copy differs slightly: compute with :func:`channel_stats` for it.
CIFAR10_MEAN = (0.4913997, 0.4821584, 0.4465309)
CIFAR10_STD = (0.2470322, 0.2434851, 0.2615878)

ACCEPTED_LAYOUTS = (
    "accepted layouts: (a) the pickled batches, a 'cifar-10-batches-py' directory (data_batch_1..5, "
    "test_batch) or 'cifar-10-python.tar.gz'; (b) an image folder '<split>/<class>/<n>.jpg|png' "
    "(split train|test, class airplane..truck) as a directory or a .tar/.tar.gz"
)

_SPLITS = ("train", "test")
_BATCH_FILES = {"train": tuple(f"data_batch_{i}" for i in range(1, 6)), "test": ("test_batch",)}
_IMAGE_EXT = (".jpg", ".jpeg", ".png")
_ARCHIVE_NAMES = ("cifar10-jpeg.tar", "cifar-10-python.tar.gz")
_LABEL_ORDER_NAME = "cifar10-original-label-order.npz"
_CACHE_VERSION = 1
_SHAPE = (32, 32, 3)
#: The most bytes read for one file of the data: an image file (CIFAR-10's JPEGs are ~1 kB) and a pickled
#: batch (CIFAR-10's are 31 MB). Larger files (or tar members declaring more) are refused unread.
IMAGE_LIMIT = (1 << 20, "an image file")
BATCH_LIMIT = (64 << 20, "a pickled CIFAR-10 batch")


# --------------------------------------------------------------------------- paths and layouts


def resolve_data_path(path: str | os.PathLike | None = None) -> Path:
    """``path``, else ``$VALLEYSIM_DATA``; it must exist. Never downloads anything."""
    if path is None or str(path) == "":
        path = os.environ.get("VALLEYSIM_DATA") or None
    if path is None:
        raise UserInputError(
            "no CIFAR-10 data path: pass a path (--data PATH) or set VALLEYSIM_DATA; " + ACCEPTED_LAYOUTS
        )
    p = Path(path).expanduser()
    if not p.exists():
        raise UserInputError(f"CIFAR-10 data path {str(p)!r} does not exist; " + ACCEPTED_LAYOUTS)
    return p


def default_cache_dir() -> Path:
    """``$VALLEYSIM_DATA_CACHE``, else ``~/.cache/valleysim/data``."""
    env = os.environ.get("VALLEYSIM_DATA_CACHE")
    return Path(env).expanduser() if env else Path.home() / ".cache" / "valleysim" / "data"


def _is_tar(p: Path) -> bool:
    try:
        return p.is_file() and tarfile.is_tarfile(p)
    except OSError:
        return False


def _batches_dir(p: Path) -> Path | None:
    """The directory holding the pickled batches (``p`` itself or ``p/cifar-10-batches-py``)."""
    for d in (p, p / "cifar-10-batches-py"):
        if (d / "test_batch").is_file() or (d / "data_batch_1").is_file():
            return d
    return None


def _image_dir(p: Path, split: str) -> Path | None:
    """The ``<split>`` directory of an image-folder layout under ``p`` (or one folder below)."""
    candidates = [p] + sorted(c for c in p.iterdir() if c.is_dir())
    for root in candidates:
        d = root / split
        if d.is_dir() and any((d / c).is_dir() for c in CIFAR10_CLASSES):
            return d
    return None


def _detect(p: Path, split: str) -> tuple[str, Path]:
    """Returns (kind, location): kind in {'pickle-dir', 'image-dir', 'tar'}."""
    if p.is_dir():
        if (d := _batches_dir(p)) is not None:
            return "pickle-dir", d
        if (d := _image_dir(p, split)) is not None:
            return "image-dir", d
        for name in _ARCHIVE_NAMES:
            if _is_tar(p / name):
                return "tar", p / name
        raise UserInputError(
            f"CIFAR-10 data directory {str(p)!r} is in an unknown layout (no pickled "
            f"batches, no '{split}/<class>/' image folders, no {' or '.join(_ARCHIVE_NAMES)}); " + ACCEPTED_LAYOUTS
        )
    if _is_tar(p):
        return "tar", p
    raise UserInputError(f"CIFAR-10 data file {str(p)!r} is not a tar archive; " + ACCEPTED_LAYOUTS)


# --------------------------------------------------------------------------- decoding


def _read_at_most(fh, size: int, limit: tuple[int, str], name: str) -> bytes:
    """The bytes of an open file (or tar member) that declares ``size`` bytes, refused when it declares or
    holds more than ``limit`` (bytes, what the file is): nothing is read (or allocated) by a declared size."""
    most, what = limit
    if size > most:
        raise UserInputError(f"{name!r} declares {size:,} bytes; {what} is at most {most:,} bytes (not read)")
    data = fh.read(most + 1)
    if len(data) > most:
        raise UserInputError(f"{name!r} holds more than {most:,} bytes; {what} is at most that")
    return data


def _read_file(path: Path, limit: tuple[int, str]) -> bytes:
    with open(path, "rb") as fh:
        return _read_at_most(fh, os.fstat(fh.fileno()).st_size, limit, str(path))


def _decode_image(data: bytes, name: str = "?") -> np.ndarray:
    """Decodes one image file (JPEG/PNG bytes) to ``uint8`` (32, 32, 3) RGB; an image whose header declares
    another size is refused before decoding."""
    import warnings

    from PIL import Image, UnidentifiedImageError

    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", Image.DecompressionBombWarning)  # the header's size is checked next
            with Image.open(io.BytesIO(data)) as im:
                size = im.size
                arr = np.asarray(im.convert("RGB")) if size == _SHAPE[1::-1] else None
    except Image.DecompressionBombError as err:
        raise UserInputError(f"image {name!r} is not 32x32 pixels: {err}") from None
    except (UnidentifiedImageError, OSError, SyntaxError, ValueError) as err:
        raise UserInputError(f"cannot decode image {name!r}: {err}") from None
    if arr is None:
        raise UserInputError(f"image {name!r} is {size[0]}x{size[1]} pixels; CIFAR-10 images are 32x32 RGB")
    return arr


def _file_sort_key(name: str) -> tuple:
    stem = name.rsplit("/", 1)[-1].rsplit(".", 1)[0]
    return (0, int(stem), name) if stem.isdigit() else (1, 0, name)


def _image_member(name: str, split: str) -> tuple[int, str] | None:
    """(label, name) if ``name`` is ``[root/]<split>/<class>/<file>.<ext>``."""
    parts = [s for s in name.split("/") if s not in ("", ".")]
    if len(parts) not in (3, 4) or parts[-3] != split:
        return None
    if not parts[-1].lower().endswith(_IMAGE_EXT) or parts[-1].startswith("."):
        return None
    label = _CLASS_INDEX.get(parts[-2])
    return None if label is None else (label, name)


def _assemble(files: list[tuple[int, str]], read, order: np.ndarray | None, where: str):
    """Decodes ``files`` [(label, name)] into arrays, class-major or in ``order``."""
    by_class: dict[int, list[str]] = {}
    for label, name in files:
        by_class.setdefault(label, []).append(name)
    for names in by_class.values():
        names.sort(key=_file_sort_key)
    counts = np.bincount([lab for lab, _ in files], minlength=10)
    n = len(files)
    if order is None:
        labels = np.repeat(np.arange(10, dtype=np.int64), counts)
    else:
        labels = np.asarray(order).astype(np.int64)
        want = np.bincount(labels, minlength=10) if labels.size else np.zeros(10, np.int64)
        if labels.ndim != 1 or len(want) != 10 or not np.array_equal(want, counts):
            raise UserInputError(
                f"label-order file does not match {where}: it has per-class counts {want.tolist()}, "
                f"the image folders have {counts.tolist()}"
            )
    # positions[c] = indices in the output of class c's files, in file order
    images = np.empty((n,) + _SHAPE, dtype=np.uint8)
    for c, names in by_class.items():
        pos = np.flatnonzero(labels == c)
        for k, name in zip(pos, names):
            images[k] = _decode_image(read(name), name)
    return images, labels


def _load_image_dir(d: Path, split: str, order):
    files = []
    for cdir in sorted(d.iterdir()):
        if not cdir.is_dir():
            continue
        label = _CLASS_INDEX.get(cdir.name)
        if label is None:
            raise UserInputError(
                f"unknown class folder {str(cdir)!r}; class folders must be the CIFAR-10 "
                f"classes {', '.join(CIFAR10_CLASSES)}"
            )
        for f in cdir.iterdir():
            if f.is_file() and f.name.lower().endswith(_IMAGE_EXT) and not f.name.startswith("."):
                files.append((label, str(f)))
    if not files:
        raise UserInputError(f"image folder {str(d)!r} has no .jpg/.png files under <class>/; " + ACCEPTED_LAYOUTS)
    return _assemble(files, lambda name: _read_file(Path(name), IMAGE_LIMIT), order, f"image folder {str(d)!r}")


class _RestrictedUnpickler(pickle.Unpickler):
    """Unpickles CIFAR batches: numpy arrays, lists, dicts, bytes; nothing else is importable."""

    _ALLOWED = {
        ("numpy.core.multiarray", "_reconstruct"): ("numpy._core.multiarray", "_reconstruct"),
        ("numpy._core.multiarray", "_reconstruct"): ("numpy._core.multiarray", "_reconstruct"),
        ("numpy", "ndarray"): ("numpy", "ndarray"),
        ("numpy", "dtype"): ("numpy", "dtype"),
        ("_codecs", "encode"): ("_codecs", "encode"),
    }

    def find_class(self, module, name):
        target = self._ALLOWED.get((module, name))
        if target is None:
            raise pickle.UnpicklingError(f"global {module}.{name} is not allowed in a CIFAR-10 batch")
        return super().find_class(*target)


def _parse_batch(raw: bytes, name: str) -> tuple[np.ndarray, np.ndarray]:
    try:
        d = _RestrictedUnpickler(io.BytesIO(raw), encoding="bytes").load()
    except Exception as err:  # noqa: BLE001 - any unpickling failure is bad input
        raise UserInputError(f"CIFAR-10 batch {name!r} is not a valid pickled batch: {err}") from None
    if not isinstance(d, Mapping):
        raise UserInputError(f"CIFAR-10 batch {name!r} is not a dict")
    get = lambda k: d.get(k.encode(), d.get(k))  # noqa: E731
    data, labels = get("data"), get("labels")
    if data is None or labels is None:
        raise UserInputError(f"CIFAR-10 batch {name!r} lacks 'data' or 'labels'")
    data = np.asarray(data, dtype=np.uint8)
    labels = np.asarray(labels, dtype=np.int64)
    if data.ndim != 2 or data.shape[1] != 3072 or labels.shape != (data.shape[0],):
        raise UserInputError(
            f"CIFAR-10 batch {name!r} has data {data.shape} and labels {labels.shape}; expected (n, 3072) and (n,)"
        )
    if labels.size and (labels.min() < 0 or labels.max() > 9):
        raise UserInputError(f"CIFAR-10 batch {name!r} has labels outside 0..9")
    images = data.reshape(-1, 3, 32, 32).transpose(0, 2, 3, 1)  # CHW rows -> NHWC
    return np.ascontiguousarray(images), labels


def _concat_batches(parsed: list[tuple[np.ndarray, np.ndarray]], order):
    images = np.concatenate([p[0] for p in parsed])
    labels = np.concatenate([p[1] for p in parsed])
    if order is not None and not np.array_equal(np.asarray(order).astype(np.int64), labels):
        raise UserInputError("label-order file does not match the labels of the pickled batches")
    return images, labels


def _load_pickle_dir(d: Path, split: str, order):
    parsed = []
    for name in _BATCH_FILES[split]:
        f = d / name
        if not f.is_file():
            raise UserInputError(
                f"CIFAR-10 batches directory {str(d)!r} lacks {name!r} "
                f"(needs {', '.join(_BATCH_FILES[split])} for split {split!r}); " + ACCEPTED_LAYOUTS
            )
        parsed.append(_parse_batch(_read_file(f, BATCH_LIMIT), str(f)))
    return _concat_batches(parsed, order)


def _load_tar(p: Path, split: str, order):
    """One sequential pass (efficient for .tar.gz): pickled batches if present, else image folders."""
    batch_raw: dict[str, bytes] = {}
    image_raw: dict[str, bytes] = {}
    files: list[tuple[int, str]] = []
    try:
        with tarfile.open(p, mode="r:*") as tf:
            for m in tf:
                if not m.isfile():
                    continue
                base = m.name.rsplit("/", 1)[-1]
                where = f"{p}:{m.name}"
                if base in _BATCH_FILES[split]:
                    batch_raw[base] = _read_at_most(tf.extractfile(m), m.size, BATCH_LIMIT, where)
                elif (hit := _image_member(m.name, split)) is not None:
                    image_raw[m.name] = _read_at_most(tf.extractfile(m), m.size, IMAGE_LIMIT, where)
                    files.append(hit)
    except (tarfile.TarError, OSError, EOFError) as err:
        raise UserInputError(f"cannot read tar {str(p)!r}: {err}") from None
    if batch_raw:
        missing = [b for b in _BATCH_FILES[split] if b not in batch_raw]
        if missing:
            raise UserInputError(
                f"tar {str(p)!r} lacks the pickled batches {missing} for split {split!r}; " + ACCEPTED_LAYOUTS
            )
        return _concat_batches([_parse_batch(batch_raw[b], f"{p}:{b}") for b in _BATCH_FILES[split]], order)
    if not files:
        raise UserInputError(
            f"tar {str(p)!r} has no members '{split}/<class>/<n>.jpg|png' and no pickled "
            f"batches ({', '.join(_BATCH_FILES[split])}); " + ACCEPTED_LAYOUTS
        )
    return _assemble(files, image_raw.pop, order, f"tar {str(p)!r}")


# --------------------------------------------------------------------------- label order


def _resolve_label_order(label_order, split: str, source: Path) -> np.ndarray | None:
    """None, 'auto' (``cifar10-original-label-order.npz`` beside the source if present), a path to an
    ``.npz`` with ``train``/``test`` keys, a mapping with those keys, or a 1-D label array."""
    if label_order is None:
        return None
    if isinstance(label_order, str) and label_order == "auto":
        cand = (source if source.is_dir() else source.parent) / _LABEL_ORDER_NAME
        if not cand.is_file():
            return None
        label_order = cand
    if isinstance(label_order, (str, os.PathLike)):
        f = Path(label_order).expanduser()
        if not f.is_file():
            raise UserInputError(f"label-order file {str(f)!r} does not exist")
        try:
            with open(f, "rb") as fh, np.load(fh, allow_pickle=False) as z:
                if split not in z.files:
                    raise UserInputError(f"label-order file {str(f)!r} has keys {z.files}; it needs {split!r}")
                arr = z[split]
        except UserInputError:
            raise
        except Exception as err:  # noqa: BLE001
            raise UserInputError(f"label-order file {str(f)!r} is not a readable .npz: {err}") from None
    elif isinstance(label_order, Mapping):
        if split not in label_order:
            raise UserInputError(f"label order has keys {sorted(label_order)}; it needs {split!r}")
        arr = np.asarray(label_order[split])
    else:
        arr = np.asarray(label_order)
    if arr.ndim != 1 or not np.issubdtype(arr.dtype, np.integer) or (arr.size and (arr.min() < 0 or arr.max() > 9)):
        raise UserInputError(
            f"label order for {split!r} must be a 1-D integer array with values 0..9; "
            f"got shape {arr.shape}, dtype {arr.dtype}"
        )
    return arr.astype(np.int64)


# --------------------------------------------------------------------------- cache


def _source_identity(kind: str, loc: Path) -> list:
    if kind == "image-dir":
        ident = []
        for f in sorted(loc.rglob("*")):
            if f.is_file():
                st = f.stat()
                ident.append([str(f.relative_to(loc)), st.st_size, st.st_mtime_ns])
        return [str(loc.resolve()), ident]
    if kind == "pickle-dir":
        return [str(loc.resolve())] + [
            [n, (loc / n).stat().st_size, (loc / n).stat().st_mtime_ns]
            for n in sorted(os.listdir(loc))
            if (loc / n).is_file()
        ]
    st = loc.stat()
    return [str(loc.resolve()), st.st_size, st.st_mtime_ns]


def _cache_key(kind: str, loc: Path, split: str, order: np.ndarray | None) -> str:
    h = hashlib.sha256()
    h.update(json.dumps([_CACHE_VERSION, kind, split, _source_identity(kind, loc)]).encode())
    h.update(b"order:" + (b"none" if order is None else np.ascontiguousarray(order, np.int64).tobytes()))
    return h.hexdigest()


def _read_cache(f: Path, key: str):
    try:
        with open(f, "rb") as fh, np.load(fh, allow_pickle=False) as z:
            if str(z["key"]) != key:
                return None
            images, labels = z["images"], z["labels"]
    except Exception:  # noqa: BLE001 - a partial / corrupt cache is ignored
        return None
    if (
        images.dtype != np.uint8
        or images.ndim != 4
        or images.shape[1:] != _SHAPE
        or labels.dtype != np.int64
        or labels.shape != (images.shape[0],)
    ):
        return None
    return images, labels


def _write_cache(f: Path, key: str, images: np.ndarray, labels: np.ndarray) -> bool:
    """Atomic: temp file in the same directory, fsync, rename. Returns False if not writable."""
    tmp = None
    try:
        f.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(prefix=f.name + ".", suffix=".tmp", dir=f.parent)
        with os.fdopen(fd, "wb") as fh:
            np.savez(fh, images=images, labels=labels, key=np.array(key))
            fh.flush()
            os.fsync(fh.fileno())
        os.chmod(tmp, 0o644)
        os.replace(tmp, f)
        return True
    except OSError:
        if tmp is not None:
            try:
                os.unlink(tmp)
            except OSError:
                pass
        return False


# --------------------------------------------------------------------------- public loader


def load_cifar10(
    path: str | os.PathLike | None = None,
    split: str = "train",
    label_order=None,
    cache_dir: str | os.PathLike | None | bool = None,
) -> tuple[np.ndarray, np.ndarray]:
    """Loads one CIFAR-10 split: ``(images uint8 (N, 32, 32, 3) NHWC RGB, labels int64 (N,))``.

    ``path``: any accepted layout (see the module docstring), default ``$VALLEYSIM_DATA``.
    ``label_order``: None (image folders in class-major order), ``"auto"`` (use
    ``cifar10-original-label-order.npz`` beside the data if present), a path to such an ``.npz``, a
    mapping ``{"train": ..., "test": ...}`` or a 1-D label array for this split: restores the original
    interleaved order. ``cache_dir``: where decoded arrays are cached (None: default, False: no cache).
    Raises :class:`valleysim.errors.UserInputError` for a missing path, an unknown layout, missing
    members, undecodable files or a label order that does not fit.
    """
    if split not in _SPLITS:
        raise UserInputError(f"split must be 'train' or 'test'; got {split!r}")
    src = resolve_data_path(path)
    kind, loc = _detect(src, split)
    order = _resolve_label_order(label_order, split, src)

    cache_file = key = None
    if cache_dir is not False:
        cdir = default_cache_dir() if cache_dir is None or cache_dir is True else Path(cache_dir).expanduser()
        key = _cache_key(kind, loc, split, order)
        cache_file = cdir / f"cifar10-{split}-{key[:24]}.npz"
        if cache_file.is_file() and (hit := _read_cache(cache_file, key)) is not None:
            return hit

    if kind == "pickle-dir":
        images, labels = _load_pickle_dir(loc, split, order)
    elif kind == "image-dir":
        images, labels = _load_image_dir(loc, split, order)
    else:
        images, labels = _load_tar(loc, split, order)
    images = np.ascontiguousarray(images, dtype=np.uint8)
    labels = np.ascontiguousarray(labels, dtype=np.int64)
    if cache_file is not None:
        _write_cache(cache_file, key, images, labels)
    return images, labels


@dataclass(frozen=True)
class DataSource:
    """Where a worker reads CIFAR-10: a path that is valid on the worker and the label order (as for
    :func:`load_cifar10`). Sweeps send this to their workers instead of the decoded arrays; each worker
    reads its own cache (``$VALLEYSIM_DATA_CACHE`` there, else its home directory) or decodes and writes
    it (atomically, so two workers starting at once both get whole arrays)."""

    path: str
    label_order: str | None = "auto"

    def load(self, split: str = "train") -> tuple[np.ndarray, np.ndarray]:
        return load_cifar10(self.path, split, label_order=self.label_order)


def data_digest(images, labels, test=None) -> str:
    """The identity of the data a run trains and scores on, by content: sha256 over the dtype, shape and
    bytes of the training images and labels, then of the test pair (``None``: none). A moved or renamed copy
    of the data gives the same digest; other images, labels, label order or test examples another."""
    h = hashlib.sha256()
    for a in (images, labels, *(() if test is None else test)):
        a = np.ascontiguousarray(a)
        h.update(f"{a.dtype.str}{a.shape};".encode())
        h.update(a.data)
    h.update(b"no test" if test is None else b"test")
    return h.hexdigest()


# --------------------------------------------------------------------------- statistics and transforms


def channel_stats(images: np.ndarray) -> tuple[tuple[float, float, float], tuple[float, float, float]]:
    """Per-channel mean and (population) std on the 0-1 scale of ``uint8`` NHWC images, exact
    integer sums (no float accumulation error)."""
    x = np.asarray(images)
    if x.dtype != np.uint8 or x.ndim != 4 or x.shape[-1] != 3:
        raise UserInputError(f"channel_stats needs uint8 images (N, H, W, 3); got {x.dtype} {x.shape}")
    flat = x.reshape(-1, 3)
    n = flat.shape[0]
    if n == 0:
        raise UserInputError("channel_stats needs at least one image")
    s = np.zeros(3, np.int64)
    s2 = np.zeros(3, np.int64)
    for i in range(0, n, 1 << 20):
        c = flat[i : i + (1 << 20)].astype(np.int64)
        s += c.sum(0)
        s2 += (c * c).sum(0)
    mean = s / n
    var = s2 / n - mean * mean
    mean, std = mean / 255.0, np.sqrt(np.maximum(var, 0.0)) / 255.0
    return tuple(float(v) for v in mean), tuple(float(v) for v in std)


def to_float_nchw(images, dtype: torch.dtype = torch.float32) -> torch.Tensor:
    """``uint8`` NHWC (numpy or torch) -> float NCHW on the 0-1 scale (channels_last memory)."""
    t = torch.as_tensor(np.asarray(images)) if not isinstance(images, torch.Tensor) else images
    return t.permute(0, 3, 1, 2).to(dtype) / 255.0


class Normalize:
    """``(x - mean[c]) / std[c]`` on NCHW float batches."""

    def __init__(self, mean, std):
        self.mean = tuple(float(m) for m in mean)
        self.std = tuple(float(s) for s in std)
        if len(self.mean) != len(self.std) or any(s <= 0 for s in self.std):
            raise UserInputError(
                f"normalisation needs one mean and one std > 0 per channel; got mean {self.mean}, std {self.std}"
            )

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        if x.ndim != 4 or x.shape[1] != len(self.mean):
            raise UserInputError(f"Normalize expects (B, {len(self.mean)}, H, W); got {tuple(x.shape)}")
        m = torch.tensor(self.mean, dtype=x.dtype, device=x.device).view(1, -1, 1, 1)
        s = torch.tensor(self.std, dtype=x.dtype, device=x.device).view(1, -1, 1, 1)
        return (x - m) / s


class RandomCropFlip:
    """Random ``H x W`` crop of the zero-padded image (``padding`` pixels each side) and horizontal
    flip with probability 1/2, per image, vectorised. Works on NCHW tensors of any dtype.

    Per batch it draws ``torch.randint(0, 2p+1, (B,))`` row offsets, then column offsets, then
    ``torch.rand(B) < 0.5`` flips from ``generator``; ``last_params`` keeps them (for tests)."""

    def __init__(self, padding: int = 4, flip: bool = True):
        if int(padding) != padding or padding < 0:
            raise UserInputError(f"padding must be an integer >= 0; got {padding!r}")
        self.padding = int(padding)
        self.flip = bool(flip)
        self.last_params = None

    def __call__(self, x: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
        if x.ndim != 4:
            raise UserInputError(f"RandomCropFlip expects (B, C, H, W); got {tuple(x.shape)}")
        B, C, H, W = x.shape
        p = self.padding
        i = torch.randint(0, 2 * p + 1, (B,), generator=generator)
        j = torch.randint(0, 2 * p + 1, (B,), generator=generator)
        f = (torch.rand(B, generator=generator) < 0.5) if self.flip else torch.zeros(B, dtype=torch.bool)
        self.last_params = (i, j, f)
        xp = torch.nn.functional.pad(x, (p, p, p, p)) if p else x
        dev = x.device
        rows = (i[:, None] + torch.arange(H)[None, :]).to(dev)  # (B, H)
        cols = j[:, None] + torch.arange(W)[None, :]
        cols = torch.where(f[:, None], cols.flip(1), cols).to(dev)  # (B, W)
        b = torch.arange(B, device=dev)[:, None, None]
        out = xp[b, :, rows[:, :, None], cols[:, None, :]]  # (B, H, W, C)
        return out.permute(0, 3, 1, 2)


def normalize(x: torch.Tensor, mean, std) -> torch.Tensor:
    """Functional form of :class:`Normalize`."""
    return Normalize(mean, std)(x)


def random_crop_flip(x: torch.Tensor, generator: torch.Generator, padding: int = 4, flip: bool = True):
    """Functional form of :class:`RandomCropFlip`."""
    return RandomCropFlip(padding, flip)(x, generator)


def batches(
    images,
    labels,
    batch_size: int,
    generator: torch.Generator | None = None,
    *,
    augment: bool = True,
    shuffle: bool = True,
    drop_last: bool = False,
    mean=None,
    std=None,
    padding: int = 4,
    dtype: torch.dtype = torch.float32,
    device: str | torch.device = "cpu",
    memory_format: torch.memory_format = torch.contiguous_format,
) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
    """One epoch of ``(x (B, 3, 32, 32) float, y (B,) int64)`` batches from ``uint8`` NHWC images.

    Order: ``torch.randperm(N, generator)`` if ``shuffle``, else the stored order. ``augment``:
    :class:`RandomCropFlip` (zero padding ``padding``) on the ``uint8`` pixels, then conversion to the
    0-1 scale, then :class:`Normalize` if ``mean``/``std`` are given. The same generator state gives
    the same batches. ``drop_last`` drops a final batch smaller than ``batch_size``.
    """
    imgs = torch.as_tensor(np.asarray(images)) if not isinstance(images, torch.Tensor) else images
    labs = torch.as_tensor(np.asarray(labels)) if not isinstance(labels, torch.Tensor) else labels
    if imgs.ndim != 4 or imgs.shape[-1] != 3 or labs.shape != (imgs.shape[0],):
        raise UserInputError(
            f"batches needs images (N, H, W, 3) and labels (N,); got {tuple(imgs.shape)} and {tuple(labs.shape)}"
        )
    n = imgs.shape[0]
    if isinstance(batch_size, bool) or int(batch_size) != batch_size or batch_size < 1:
        raise UserInputError(f"batch size must be an integer >= 1; got {batch_size!r}")
    batch_size = int(batch_size)
    if (shuffle or augment) and generator is None:
        raise UserInputError("batches needs a torch.Generator when shuffle or augment is on (seeded batches)")
    if (mean is None) != (std is None):
        raise UserInputError("give both mean and std for normalisation, or neither")
    norm = Normalize(mean, std) if mean is not None else None
    aug = RandomCropFlip(padding) if augment else None
    perm = torch.randperm(n, generator=generator) if shuffle else torch.arange(n)
    stop = (n // batch_size) * batch_size if drop_last else n
    for s in range(0, stop, batch_size):
        idx = perm[s : s + batch_size]
        xb = imgs[idx].permute(0, 3, 1, 2)  # uint8 NCHW view
        if aug is not None:
            xb = aug(xb, generator)
        xb = xb.to(device=device, dtype=dtype) / 255.0
        if norm is not None:
            xb = norm(xb)
        yield xb.contiguous(memory_format=memory_format), labs[idx].to(device=device, dtype=torch.int64)


def measurement_subset(n_total: int, fraction: float = 0.05, seed: int = 0, size: int | None = None) -> np.ndarray:
    """A fixed, seeded subset of ``range(n_total)``: sorted ``int64`` indices, ``size`` of them (default
    ``round(fraction * n_total)``, at least 1), drawn without replacement by
    ``numpy.random.default_rng(seed)``. Same arguments, same subset."""
    if isinstance(n_total, bool) or int(n_total) != n_total or n_total < 1:
        raise UserInputError(f"n_total must be an integer >= 1; got {n_total!r}")
    n_total = int(n_total)
    if size is None:
        if not (0.0 < float(fraction) <= 1.0):
            raise UserInputError(f"measurement fraction must be in (0, 1]; got {fraction!r}")
        size = max(1, int(round(float(fraction) * n_total)))
    if isinstance(size, bool) or int(size) != size or not (1 <= size <= n_total):
        raise UserInputError(f"measurement subset size must be in 1..{n_total}; got {size!r}")
    rng = np.random.default_rng(seed)
    return np.sort(rng.choice(n_total, size=int(size), replace=False)).astype(np.int64)
