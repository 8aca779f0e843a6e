"""The valley kernel cache runs no code it did not generate (issue 27): an edited kernel file is replaced
before anything runs, and a cache directory that other users can write is not used."""

import importlib.util
import marshal
import os
import pickle
import struct
import subprocess
import sys

VALLEY = [sys.executable, "-m", "valleysim", "valley", "--loss", "exp-toy", "--noise-scale", "0.05", "--eta", "0.01"]
VALLEY += ["--steps", "40", "--burn-in", "0", "--trajectories", "8", "--json"]


def _valley(cache, cwd):
    res = subprocess.run(
        VALLEY, cwd=cwd, env={**os.environ, "VALLEYSIM_CACHE": str(cache)}, capture_output=True, text=True, timeout=600
    )
    assert res.returncode == 0, res.stderr
    return res


class _Payload:
    """Unpickled, it creates ``marker`` (what a planted pickle could do with any code)."""

    def __init__(self, marker):
        self.marker = marker

    def __reduce__(self):
        return open, (str(self.marker), "w")


def test_code_appended_to_a_cached_kernel_does_not_run(tmp_path):
    marker = tmp_path / "MARKER"
    first = _valley(tmp_path / "cache", tmp_path)
    (kernel,) = (tmp_path / "cache" / "kernels").glob("valleysim_kernel_*.py")
    generated = kernel.read_bytes()
    with kernel.open("a") as f:
        f.write(f"\nopen({str(marker)!r}, 'w').write('ran')\n")
    again = _valley(tmp_path / "cache", tmp_path)
    assert not marker.exists()
    assert again.stdout == first.stdout  # the same numbers
    assert kernel.read_bytes() == generated  # rewritten from the generated source
    assert not list((tmp_path / "cache").rglob("*.pyc"))  # Python's bytecode cache is not consulted either


def test_a_planted_bytecode_file_does_not_run(tmp_path):
    """Python's import would run a kernels/__pycache__/*.pyc whose header matches the .py's mtime and size
    (before: it did); the kernel is executed from the generated source instead."""
    marker = tmp_path / "MARKER"
    first = _valley(tmp_path / "cache", tmp_path)
    (kernel,) = (tmp_path / "cache" / "kernels").glob("valleysim_kernel_*.py")
    code = compile(kernel.read_text() + f"\nopen({str(marker)!r}, 'w').write('ran')\n", str(kernel), "exec")
    st = kernel.stat()
    header = importlib.util.MAGIC_NUMBER + struct.pack("<III", 0, int(st.st_mtime) & 0xFFFFFFFF, st.st_size)
    pyc = importlib.util.cache_from_source(str(kernel))
    with open(pyc, "wb") as f:
        f.write(header + marshal.dumps(code))
    again = _valley(tmp_path / "cache", tmp_path)
    assert not marker.exists()
    assert again.stdout == first.stdout


def test_a_cache_others_can_write_is_not_used(tmp_path):
    """numba's index files are pickles its loader unpickles: in a directory another user can write, one
    could be planted; the cache is then set aside for a private temporary one, with a warning."""
    marker = tmp_path / "MARKER"
    first = _valley(tmp_path / "cache", tmp_path)
    kernels = tmp_path / "cache" / "kernels"
    index = list(kernels.rglob("*.nbi"))
    assert index
    for path in index:
        path.write_bytes(pickle.dumps(_Payload(marker)))
    kernels.chmod(0o777)
    again = _valley(tmp_path / "cache", tmp_path)
    assert not marker.exists()
    assert again.stdout == first.stdout
    assert "kernel cache" in again.stderr and "not this user's alone" in again.stderr
    assert again.stderr.count("\n") == 1
