"""Hostile data files end in one line and bounded memory (issue 27): a tar member (or a file of an image
folder) that declares gigabytes is refused before it is read, and an image whose header declares 20000x20000
pixels before it is decoded. Each case runs the real ``valleysim dnn train`` in its own process under a 2 GiB
address-space limit (the command itself needs < 1 GiB; the old code tried to hold the declared 3 GiB)."""

from __future__ import annotations

import io
import os
import resource
import subprocess
import sys
import tarfile
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

TRAIN = ["dnn", "train", "--model", "simplecnn", "--width", "0.125", "--batch", "4", "--max-steps", "1"]
TRAIN += ["--measure-size", "4", "--probes", "lanczos", "--top-k", "1", "--no-progress", "--label-order", "none"]
HUGE = 3 << 30  # bytes a hostile member declares
LIMIT_AS = 2 << 30


def png(size=(32, 32), mode="RGB") -> bytes:
    buf = io.BytesIO()
    Image.new(mode, size).save(buf, format="PNG")
    return buf.getvalue()


def write_tar(path: Path, files: dict[str, bytes], tail: bytes = b"") -> Path:
    """A tar of ``files``, then the raw header block(s) ``tail`` before its end-of-archive blocks."""
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w") as tf:
        for name, data in files.items():
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tf.addfile(info, io.BytesIO(data))
        end = tf.offset
    path.write_bytes(buf.getvalue()[:end] + tail + bytes(1024))
    return path


def sparse_member(name: str, size: int) -> bytes:
    """A GNU sparse tar header for ``name``: ``size`` bytes of zeros, none of them stored (512 bytes on
    disk; tarfile fills the hole when the member is read)."""
    info = tarfile.TarInfo(name)
    info.type, info.size = tarfile.GNUTYPE_SPARSE, 0
    buf = bytearray(info.tobuf(tarfile.GNU_FORMAT))
    buf[483:495] = b"%011o\0" % size  # the real size of the sparse file
    buf[148:156] = b" " * 8
    buf[148:156] = b"%06o\0 " % sum(buf)  # the header checksum
    return bytes(buf)


def valid_images(n: int = 4) -> dict[str, bytes]:
    return {f"train/cat/{i}.png": png() for i in range(n)}


def run_limited(tmp_path: Path, *argv) -> subprocess.CompletedProcess:
    """``valleysim *argv`` in its own process with an address space of at most LIMIT_AS."""

    def limit():
        resource.setrlimit(resource.RLIMIT_AS, (LIMIT_AS, LIMIT_AS))

    env = {**os.environ, "VALLEYSIM_DATA_CACHE": str(tmp_path / "cache")}
    return subprocess.run(
        [sys.executable, "-m", "valleysim", *map(str, argv)],
        cwd=tmp_path,
        env=env,
        preexec_fn=limit,
        capture_output=True,
        text=True,
        timeout=300,
    )


def one_line(res: subprocess.CompletedProcess) -> str:
    assert res.returncode == 2 and "Traceback" not in res.stderr, res.stderr[-3000:]
    assert res.stderr.count("\n") == 1 and res.stderr.startswith("valleysim: error: "), res.stderr
    return res.stderr


@pytest.mark.parametrize("member", ["train/cat/9.png", "cifar-10-batches-py/data_batch_1"])
def test_a_tar_member_declaring_gigabytes_is_refused_unread(tmp_path, member):
    """A 3 kB tar whose sparse member expands to 3 GiB: one line naming the member, under the memory limit."""
    tar = write_tar(tmp_path / "data.tar", valid_images(), tail=sparse_member(member, HUGE))
    assert tar.stat().st_size < 20_000
    with tarfile.open(tar) as tf:
        assert tf.getmember(member).size == HUGE
    err = one_line(run_limited(tmp_path, *TRAIN, "--data", tar, "--out", "run"))
    assert f"{tar}:{member}' declares 3,221,225,472 bytes" in err and "at most" in err, err
    assert not (tmp_path / "run").exists()


def test_an_image_file_of_gigabytes_in_a_folder_is_refused_unread(tmp_path):
    """The image-folder layout: a sparse 3 GiB file named like an image."""
    root = tmp_path / "folder"
    for name, data in valid_images().items():
        (root / name).parent.mkdir(parents=True, exist_ok=True)
        (root / name).write_bytes(data)
    with open(root / "train" / "cat" / "9.png", "wb") as f:
        f.truncate(HUGE)
    err = one_line(run_limited(tmp_path, *TRAIN, "--data", root, "--out", "run"))
    assert "9.png' declares 3,221,225,472 bytes; an image file is at most 1,048,576 bytes" in err, err


@pytest.mark.parametrize(
    "side, why",
    [
        (20000, "is not 32x32 pixels: Image size (400000000 pixels) exceeds limit"),  # PIL's bomb error at open
        (10000, "is 10000x10000 pixels; CIFAR-10 images are 32x32 RGB"),  # PIL only warns, then decodes 300 MB
        (64, "is 64x64 pixels; CIFAR-10 images are 32x32 RGB"),
    ],
)
def test_an_image_of_another_size_is_refused_before_decoding(tmp_path, side, why):
    """A small PNG whose header declares side x side pixels (1-bit: a few kB): one line naming the member."""
    tar = write_tar(tmp_path / "data.tar", {**valid_images(), "train/dog/0.png": png((side, side), mode="1")})
    assert tar.stat().st_size < 200_000
    err = one_line(run_limited(tmp_path, *TRAIN, "--data", tar, "--out", "run"))
    assert f"image 'train/dog/0.png' {why}" in err, err


def test_the_limits_pass_real_cifar_sized_files(tmp_path):
    """Files within the limits load as before: a tar of 32x32 PNGs trains (a sanity check of the helpers)."""
    rng = np.random.default_rng(0)
    files = {}
    for split, n in (("train", 8), ("test", 4)):
        for i in range(n):
            buf = io.BytesIO()
            Image.fromarray(rng.integers(0, 256, (32, 32, 3), dtype=np.uint8)).save(buf, format="PNG")
            files[f"{split}/{('cat', 'dog')[i % 2]}/{i}.png"] = buf.getvalue()
    tar = write_tar(tmp_path / "data.tar", files)
    res = run_limited(tmp_path, *TRAIN, "--data", tar, "--out", "run")
    assert res.returncode == 0 and '"step": 1' in res.stdout, res.stderr[-3000:]
