"""dnn.data: CIFAR-10 layouts, label order, cache, augmentation, normalisation, bad input.

All data are synthetic (written to tmp_path) except ``test_real_shared_cifar10``, which reads
``../shared/data`` when it exists and is skipped otherwise.
"""

from __future__ import annotations

import io
import os
import pickle
import tarfile
import time
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

import dnn.data as D
from valleysim.errors import UserInputError

from tiny_nets import fake_batches_dir, noise_images

SHARED = Path(__file__).resolve().parents[2].parent / "shared" / "data"


# --------------------------------------------------------------------------- synthetic data


def smooth_images(n: int, seed: int) -> np.ndarray:
    """Smooth (JPEG-friendly) but distinct 32x32 RGB images."""
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[0:32, 0:32].astype(np.float64)
    out = np.empty((n, 32, 32, 3), np.uint8)
    for k in range(n):
        for c in range(3):
            a, b, ph = rng.uniform(-3, 3), rng.uniform(-3, 3), rng.uniform(0, 6.3)
            v = 128 + 90 * np.sin(a * xx / 32 + b * yy / 32 + ph)
            out[k, :, :, c] = np.clip(v, 0, 255).astype(np.uint8)
    return out


def encode(img: np.ndarray, ext: str) -> bytes:
    buf = io.BytesIO()
    if ext == "png":
        Image.fromarray(img).save(buf, format="PNG")
    else:
        Image.fromarray(img).save(buf, format="JPEG", quality=95, subsampling=0)
    return buf.getvalue()


# class -> file numbers; the numbers test numeric (not lexicographic) ordering: 2 < 10
FOLDER_SPEC = {"cat": [0, 1, 2, 10], "airplane": [0, 1], "truck": [0, 1, 2]}


def folder_contents(split: str = "test", ext: str = "png", seed: int = 0):
    """{relative path: bytes} for an image folder, and the expected class-major arrays."""
    files, imgs, labs = {}, [], []
    rng_seed = seed
    for cls in sorted(FOLDER_SPEC, key=D.CIFAR10_CLASSES.index):
        pics = (
            noise_images(len(FOLDER_SPEC[cls]), rng_seed)
            if ext == "png"
            else smooth_images(len(FOLDER_SPEC[cls]), rng_seed)
        )
        rng_seed += 1
        for num, pic in zip(FOLDER_SPEC[cls], pics):
            files[f"{split}/{cls}/{num:04d}.{ext}"] = encode(pic, ext)
            imgs.append(pic)
            labs.append(D.CIFAR10_CLASSES.index(cls))
    return files, np.stack(imgs), np.array(labs, np.int64)


def write_dir(root: Path, files: dict) -> Path:
    for rel, data in files.items():
        f = root / rel
        f.parent.mkdir(parents=True, exist_ok=True)
        f.write_bytes(data)
    return root


def write_tar(path: Path, files: dict, prefix: str = "") -> Path:
    mode = "w:gz" if path.name.endswith(".gz") else "w"
    with tarfile.open(path, mode) as tf:
        for rel, data in sorted(files.items()):
            info = tarfile.TarInfo(prefix + rel)
            info.size = len(data)
            tf.addfile(info, io.BytesIO(data))
    return path


# --------------------------------------------------------------------------- layouts and labels


def test_image_folder_directory_labels_by_class_name_png_exact(tmp_path):
    files, imgs, labs = folder_contents("test", "png")
    root = write_dir(tmp_path / "folder", files)
    x, y = D.load_cifar10(root, "test", cache_dir=False)
    assert x.dtype == np.uint8 and x.shape == (9, 32, 32, 3)
    assert y.dtype == np.int64
    # canonical labels by class name (airplane 0, cat 3, truck 9), class-major, numeric file order
    assert y.tolist() == [0, 0, 3, 3, 3, 3, 9, 9, 9]
    np.testing.assert_array_equal(x, imgs)  # PNG is lossless: exact
    np.testing.assert_array_equal(y, labs)


@pytest.mark.parametrize("name,prefix", [("f.tar", ""), ("f.tar.gz", "cifar10/"), ("f.tgz", "")])
def test_image_folder_tar_uncompressed_and_gz(tmp_path, name, prefix):
    files, imgs, labs = folder_contents("train", "png", seed=5)
    files.update({k.replace("train/", "test/"): v for k, v in folder_contents("test", "png", seed=50)[0].items()})
    tar = write_tar(tmp_path / name, files, prefix)
    x, y = D.load_cifar10(tar, "train", cache_dir=False)
    np.testing.assert_array_equal(x, imgs)
    np.testing.assert_array_equal(y, labs)
    xt, _ = D.load_cifar10(tar, "test", cache_dir=False)
    np.testing.assert_array_equal(xt, folder_contents("test", "png", seed=50)[1])


def test_jpeg_decoding_within_tolerance(tmp_path):
    files, imgs, labs = folder_contents("train", "jpg", seed=3)
    tar = write_tar(tmp_path / "j.tar", files)
    x, y = D.load_cifar10(tar, "train", cache_dir=False)
    np.testing.assert_array_equal(y, labs)
    err = np.abs(x.astype(np.int16) - imgs.astype(np.int16))
    assert err.mean() < 2.0 and err.max() <= 40, (err.mean(), err.max())
    # and it is exactly what PIL decodes
    pil = np.asarray(Image.open(io.BytesIO(files["train/airplane/0000.jpg"])).convert("RGB"))
    np.testing.assert_array_equal(x[0], pil)


def test_label_order_restores_original_interleaving(tmp_path):
    files, imgs, labs = folder_contents("test", "png")
    root = write_dir(tmp_path / "folder", files)
    order = np.array([3, 0, 9, 3, 9, 0, 3, 9, 3], np.uint8)
    np.savez(tmp_path / "order.npz", train=np.zeros(0, np.uint8), test=order)
    x, y = D.load_cifar10(root, "test", label_order=tmp_path / "order.npz", cache_dir=False)
    np.testing.assert_array_equal(y, order.astype(np.int64))
    # the k-th example is the next unused file (by number) of class order[k]
    used = {c: 0 for c in range(10)}
    for k, c in enumerate(order):
        j = np.flatnonzero(labs == c)[used[c]]
        used[c] += 1
        np.testing.assert_array_equal(x[k], imgs[j])
    # the same through a tar, a mapping and a plain array
    tar = write_tar(tmp_path / "f.tar", files)
    for lo in (tmp_path / "order.npz", {"test": order}, order):
        x2, y2 = D.load_cifar10(tar, "test", label_order=lo, cache_dir=False)
        np.testing.assert_array_equal(x2, x)
        np.testing.assert_array_equal(y2, y)
    # 'auto' finds the label-order file beside the data, by its canonical name
    np.savez(tmp_path / "cifar10-original-label-order.npz", test=order)
    x3, _ = D.load_cifar10(tar, "test", label_order="auto", cache_dir=False)
    np.testing.assert_array_equal(x3, x)


def test_label_order_mismatch_is_user_error(tmp_path):
    root = write_dir(tmp_path / "folder", folder_contents("test", "png")[0])
    with pytest.raises(UserInputError, match="per-class counts"):
        D.load_cifar10(root, "test", label_order=np.array([0, 0, 3]), cache_dir=False)
    np.savez(tmp_path / "o.npz", train=np.zeros(3, np.uint8))
    with pytest.raises(UserInputError, match="needs 'test'"):
        D.load_cifar10(root, "test", label_order=tmp_path / "o.npz", cache_dir=False)
    with pytest.raises(UserInputError, match="does not exist"):
        D.load_cifar10(root, "test", label_order=tmp_path / "missing.npz", cache_dir=False)


def test_pickled_batches_directory_and_targz(tmp_path):
    d, expect = fake_batches_dir(tmp_path / "src")
    for split in ("train", "test"):
        for src in (d, d.parent):  # the batches dir itself, or a directory holding it
            x, y = D.load_cifar10(src, split, cache_dir=False)
            np.testing.assert_array_equal(x, expect[split][0])  # (N, 3072) CHW rows -> NHWC
            np.testing.assert_array_equal(y, expect[split][1])
    files = {f"cifar-10-batches-py/{f.name}": f.read_bytes() for f in d.iterdir()}
    tgz = write_tar(tmp_path / "cifar-10-python.tar.gz", files)
    x, y = D.load_cifar10(tgz, "train", cache_dir=False)
    assert x.shape == (15, 32, 32, 3)
    np.testing.assert_array_equal(x, expect["train"][0])
    np.testing.assert_array_equal(y, expect["train"][1])
    # a matching label order is accepted, a different one is refused
    D.load_cifar10(d, "test", label_order=expect["test"][1], cache_dir=False)
    with pytest.raises(UserInputError, match="does not match"):
        D.load_cifar10(d, "test", label_order=(expect["test"][1] + 1) % 10, cache_dir=False)
    # a directory that holds only the archive is read through it
    (tmp_path / "only").mkdir()
    os.link(tgz, tmp_path / "only" / "cifar-10-python.tar.gz")
    x, _ = D.load_cifar10(tmp_path / "only", "train", cache_dir=False)
    np.testing.assert_array_equal(x, expect["train"][0])


def test_pickle_with_foreign_global_is_refused(tmp_path):
    d, _ = fake_batches_dir(tmp_path / "src")
    (d / "test_batch").write_bytes(pickle.dumps({b"data": os.getcwd, b"labels": []}))
    with pytest.raises(UserInputError, match="not a valid pickled batch"):
        D.load_cifar10(d, "test", cache_dir=False)


# --------------------------------------------------------------------------- cache


def _forbid_decoding(monkeypatch):
    def boom(*a, **k):
        raise AssertionError("decoder called although the cache should have been used")

    monkeypatch.setattr(D, "_decode_image", boom)


def test_cache_reused_and_keyed_by_source_identity(tmp_path, monkeypatch):
    files, imgs, labs = folder_contents("test", "png")
    tar = write_tar(tmp_path / "f.tar", files)
    cache = tmp_path / "cache"
    x1, y1 = D.load_cifar10(tar, "test", cache_dir=cache)
    cached = list(cache.iterdir())
    assert len(cached) == 1 and cached[0].suffix == ".npz"  # no temp file left behind
    with monkeypatch.context() as m:
        _forbid_decoding(m)
        x2, y2 = D.load_cifar10(tar, "test", cache_dir=cache)
        np.testing.assert_array_equal(x2, x1)
        np.testing.assert_array_equal(y2, y1)
        # a different label order is a different cache entry: it must decode
        with pytest.raises(AssertionError, match="decoder called"):
            D.load_cifar10(tar, "test", label_order=np.array([3, 0, 9, 3, 9, 0, 3, 9, 3]), cache_dir=cache)
        # a changed source (new mtime) invalidates the entry
        st = tar.stat()
        os.utime(tar, ns=(st.st_atime_ns, st.st_mtime_ns + 10**9))
        with pytest.raises(AssertionError, match="decoder called"):
            D.load_cifar10(tar, "test", cache_dir=cache)
    # a directory source: changing one file's content/size invalidates
    root = write_dir(tmp_path / "folder", files)
    D.load_cifar10(root, "test", cache_dir=cache)
    with monkeypatch.context() as m:
        _forbid_decoding(m)
        D.load_cifar10(root, "test", cache_dir=cache)
        (root / "test/cat/0001.png").write_bytes(encode(noise_images(1, 77)[0], "png"))
        with pytest.raises(AssertionError, match="decoder called"):
            D.load_cifar10(root, "test", cache_dir=cache)


@pytest.mark.parametrize("damage", ["truncate", "garbage", "wrong-key"])
def test_partial_or_corrupt_cache_is_ignored_and_rewritten(tmp_path, monkeypatch, damage):
    files, imgs, labs = folder_contents("test", "png")
    tar = write_tar(tmp_path / "f.tar", files)
    cache = tmp_path / "cache"
    x1, y1 = D.load_cifar10(tar, "test", cache_dir=cache)
    (entry,) = cache.iterdir()
    raw = entry.read_bytes()
    if damage == "truncate":  # as if killed while writing in place
        entry.write_bytes(raw[: len(raw) // 2])
    elif damage == "garbage":
        entry.write_bytes(b"\x00" * 1000)
    else:  # a valid npz with other content under this name
        np.savez(entry, images=np.zeros((9, 32, 32, 3), np.uint8), labels=np.zeros(9, np.int64), key=np.array("x"))
    calls = []
    real = D._decode_image
    monkeypatch.setattr(D, "_decode_image", lambda *a: calls.append(1) or real(*a))
    x2, y2 = D.load_cifar10(tar, "test", cache_dir=cache)
    assert len(calls) == 9  # decoded again
    np.testing.assert_array_equal(x2, imgs)
    np.testing.assert_array_equal(y2, labs)
    calls.clear()
    D.load_cifar10(tar, "test", cache_dir=cache)  # rewritten: now used
    assert calls == []


def test_env_vars_give_data_path_and_cache_dir(tmp_path, monkeypatch):
    files, imgs, labs = folder_contents("test", "png")
    tar = write_tar(tmp_path / "f.tar", files)
    monkeypatch.setenv("VALLEYSIM_DATA", str(tar))
    monkeypatch.setenv("VALLEYSIM_DATA_CACHE", str(tmp_path / "envcache"))
    x, y = D.load_cifar10(split="test")
    np.testing.assert_array_equal(x, imgs)
    assert len(list((tmp_path / "envcache").glob("cifar10-test-*.npz"))) == 1


# --------------------------------------------------------------------------- bad input


def test_bad_inputs_raise_user_input_error_naming_the_problem(tmp_path, monkeypatch):
    monkeypatch.delenv("VALLEYSIM_DATA", raising=False)
    with pytest.raises(UserInputError, match="VALLEYSIM_DATA.*accepted layouts"):
        D.load_cifar10(None, "train", cache_dir=False)
    with pytest.raises(UserInputError, match="does not exist"):
        D.load_cifar10(tmp_path / "nope", "train", cache_dir=False)
    (tmp_path / "empty").mkdir()
    with pytest.raises(UserInputError, match="unknown layout.*accepted layouts"):
        D.load_cifar10(tmp_path / "empty", "train", cache_dir=False)
    (tmp_path / "notatar.bin").write_bytes(b"hello" * 100)
    with pytest.raises(UserInputError, match="not a tar archive"):
        D.load_cifar10(tmp_path / "notatar.bin", "train", cache_dir=False)
    tar = write_tar(tmp_path / "other.tar", {"stuff/readme.txt": b"x", "train/dogs/0.jpg": b"y"})
    with pytest.raises(UserInputError, match=r"no members 'train/<class>/<n>\.jpg\|png'"):
        D.load_cifar10(tar, "train", cache_dir=False)
    # image folder for test only: asking for train is an unknown layout there
    root = write_dir(tmp_path / "folder", folder_contents("test", "png")[0])
    with pytest.raises(UserInputError, match="unknown layout"):
        D.load_cifar10(root, "train", cache_dir=False)
    (root / "test" / "kitten").mkdir()
    with pytest.raises(UserInputError, match="unknown class folder.*kitten"):
        D.load_cifar10(root, "test", cache_dir=False)
    with pytest.raises(UserInputError, match="split must be"):
        D.load_cifar10(root, "valid", cache_dir=False)
    bad = write_tar(tmp_path / "bad.tar", {"test/cat/0000.jpg": b"not a jpeg"})
    with pytest.raises(UserInputError, match="cannot decode image.*0000.jpg"):
        D.load_cifar10(bad, "test", cache_dir=False)
    big = io.BytesIO()
    Image.fromarray(np.zeros((64, 64, 3), np.uint8)).save(big, format="PNG")
    with pytest.raises(UserInputError, match="32x32"):
        D.load_cifar10(write_tar(tmp_path / "big.tar", {"test/cat/0.png": big.getvalue()}), "test", cache_dir=False)
    d, _ = fake_batches_dir(tmp_path / "b")
    (d / "data_batch_3").unlink()
    with pytest.raises(UserInputError, match="lacks 'data_batch_3'"):
        D.load_cifar10(d, "train", cache_dir=False)
    tgz = write_tar(tmp_path / "p.tar.gz", {"cifar-10-batches-py/data_batch_1": b"x"})
    with pytest.raises(UserInputError, match="lacks the pickled batches"):
        D.load_cifar10(tgz, "train", cache_dir=False)


# --------------------------------------------------------------------------- transforms


def test_augmentation_is_crop_of_zero_padded_image_and_flip():
    x = torch.as_tensor(noise_images(16, 1)).permute(0, 3, 1, 2)  # uint8 NCHW
    aug = D.RandomCropFlip(padding=4)
    out = aug(x, torch.Generator().manual_seed(0))
    assert out.shape == x.shape and out.dtype == x.dtype
    xp = torch.nn.functional.pad(x, (4, 4, 4, 4))
    i, j, f = aug.last_params
    assert f.any() and (~f).any()  # both cases occur with this seed
    for b in range(16):
        crop = xp[b, :, i[b] : i[b] + 32, j[b] : j[b] + 32]
        if f[b]:
            crop = crop.flip(-1)
        assert torch.equal(out[b], crop)
    # independently of last_params: every output is one of the 81 crops x 2 flips of the padded image
    for b in range(4):
        hits = [
            (di, dj, fl)
            for di in range(9)
            for dj in range(9)
            for fl in (0, 1)
            if torch.equal(out[b], (lambda c: c.flip(-1) if fl else c)(xp[b, :, di : di + 32, dj : dj + 32]))
        ]
        assert hits, b
    # determinism by seed; a different seed differs
    again = aug(x, torch.Generator().manual_seed(0))
    assert torch.equal(out, again)
    assert not torch.equal(out, aug(x, torch.Generator().manual_seed(1)))
    # float input works the same way and padding=0, flip=False is the identity
    assert torch.equal(D.random_crop_flip(x.float(), torch.Generator().manual_seed(0)), out.float())
    assert torch.equal(D.random_crop_flip(x, torch.Generator(), padding=0, flip=False), x)


def test_batches_shapes_determinism_normalisation():
    imgs = noise_images(10, 2)
    labs = np.arange(10, dtype=np.int64) % 10
    g = lambda s: torch.Generator().manual_seed(s)  # noqa: E731
    out = list(D.batches(imgs, labs, 4, g(3), mean=D.CIFAR10_MEAN, std=D.CIFAR10_STD))
    assert [tuple(xb.shape) for xb, _ in out] == [(4, 3, 32, 32), (4, 3, 32, 32), (2, 3, 32, 32)]
    assert all(xb.dtype == torch.float32 and yb.dtype == torch.int64 for xb, yb in out)
    assert sorted(torch.cat([yb for _, yb in out]).tolist()) == list(range(10))  # a permutation
    same = list(D.batches(imgs, labs, 4, g(3), mean=D.CIFAR10_MEAN, std=D.CIFAR10_STD))
    assert all(torch.equal(a[0], b[0]) and torch.equal(a[1], b[1]) for a, b in zip(out, same))
    other = list(D.batches(imgs, labs, 4, g(4), mean=D.CIFAR10_MEAN, std=D.CIFAR10_STD))
    assert not all(torch.equal(a[0], b[0]) for a, b in zip(out, other))
    assert len(list(D.batches(imgs, labs, 4, g(3), drop_last=True))) == 2
    # no shuffle, no augment: exactly (x/255 - mean)/std in NCHW
    ((xb, yb),) = D.batches(
        imgs,
        labs,
        10,
        None,
        augment=False,
        shuffle=False,
        mean=(0.5, 0.4, 0.3),
        std=(0.2, 0.25, 0.5),
        dtype=torch.float64,
    )
    want = (imgs.transpose(0, 3, 1, 2) / 255.0 - np.array([0.5, 0.4, 0.3])[:, None, None]) / np.array([0.2, 0.25, 0.5])[
        :, None, None
    ]
    np.testing.assert_allclose(xb.numpy(), want, rtol=0, atol=1e-12)
    np.testing.assert_array_equal(yb.numpy(), labs)
    with pytest.raises(UserInputError, match="Generator"):
        next(D.batches(imgs, labs, 4, None))
    with pytest.raises(UserInputError, match="batch size"):
        next(D.batches(imgs, labs, 0, g(0)))
    with pytest.raises(UserInputError, match="both mean and std"):
        next(D.batches(imgs, labs, 4, g(0), mean=D.CIFAR10_MEAN))


def test_channel_stats_match_float64_numpy_and_normalise_to_unit():
    imgs = noise_images(50, 4)
    imgs[..., 2] //= 3  # channels differ
    mean, std = D.channel_stats(imgs)
    f = imgs.reshape(-1, 3).astype(np.float64) / 255.0
    np.testing.assert_allclose(mean, f.mean(0), rtol=1e-12)
    np.testing.assert_allclose(std, f.std(0), rtol=1e-9)
    z = D.Normalize(mean, std)(D.to_float_nchw(imgs, torch.float64))
    np.testing.assert_allclose(z.mean((0, 2, 3)).numpy(), 0, atol=1e-12)
    np.testing.assert_allclose(z.std((0, 2, 3), unbiased=False).numpy(), 1, atol=1e-9)
    with pytest.raises(UserInputError, match="std > 0"):
        D.Normalize((0, 0, 0), (1, 0, 1))


def test_measurement_subset_fixed_and_seeded():
    a = D.measurement_subset(50_000, 0.05, seed=0)
    assert a.dtype == np.int64 and a.shape == (2500,)
    assert np.all(np.diff(a) > 0) and a.min() >= 0 and a.max() < 50_000
    np.testing.assert_array_equal(a, D.measurement_subset(50_000, 0.05, seed=0))
    assert not np.array_equal(a, D.measurement_subset(50_000, 0.05, seed=1))
    assert D.measurement_subset(50_000, seed=0, size=2560).shape == (2560,)
    assert D.measurement_subset(10, 0.01, seed=0).shape == (1,)
    with pytest.raises(UserInputError, match="fraction"):
        D.measurement_subset(100, 1.5, seed=0)
    with pytest.raises(UserInputError, match="size"):
        D.measurement_subset(100, seed=0, size=101)


# --------------------------------------------------------------------------- the real shared copy


def test_real_shared_cifar10_test_split(tmp_path):
    tar, order_file = SHARED / "cifar10-jpeg.tar", SHARED / "cifar10-original-label-order.npz"
    if not (tar.is_file() and order_file.is_file()):
        pytest.skip(reason=f"shared CIFAR-10 copy not present at {SHARED}")
    t0 = time.perf_counter()
    x, y = D.load_cifar10(tar, "test", label_order=order_file, cache_dir=tmp_path)
    assert time.perf_counter() - t0 < 60
    assert x.shape == (10_000, 32, 32, 3) and x.dtype == np.uint8
    assert np.bincount(y, minlength=10).tolist() == [1000] * 10
    order = np.load(order_file)["test"]
    np.testing.assert_array_equal(y, order.astype(np.int64))
    assert y[:10].tolist() == [3, 8, 8, 0, 6, 6, 1, 6, 3, 1]  # test_batch's first labels (cat, ship, ...)
    # example k is test/<class>/<occurrence>.jpg: check the first few against direct decoding
    with tarfile.open(tar) as tf:
        seen = {c: 0 for c in range(10)}
        for k in range(5):
            c = int(order[k])
            name = f"test/{D.CIFAR10_CLASSES[c]}/{seen[c]:04d}.jpg"
            seen[c] += 1
            direct = np.asarray(Image.open(io.BytesIO(tf.extractfile(name).read())).convert("RGB"))
            np.testing.assert_array_equal(x[k], direct)
