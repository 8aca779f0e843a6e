"""The public API: every name in valleysim.__all__ resolves to the object of its defining module."""

import importlib
import subprocess
import sys

import valleysim


def test_every_public_name_resolves():
    for name in valleysim.__all__:
        assert getattr(valleysim, name) is not None
    assert valleysim.PerExampleQuadratic is importlib.import_module("valleysim.quadratic.landscape").PerExampleQuadratic
    assert valleysim.walk.simulate is importlib.import_module("valleysim.walk.sim").simulate


def test_subpackages_export_what_they_list():
    for pkg in valleysim.SUBPACKAGES:
        mod = importlib.import_module(f"valleysim.{pkg}")
        missing = [n for n in mod.__all__ if not hasattr(mod, n)]
        assert not missing, (pkg, missing)
        assert callable(mod.simulate)  # one simulator per toy


def test_the_definitions_dnn_uses_load_no_numba():
    code = (
        "import sys, valleysim.theory, valleysim.stats, valleysim.walk.metrics, valleysim.nsgd.directions, "
        "valleysim.break_even.theory; print('numba' in sys.modules)"
    )
    assert subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout == "False\n"


def test_import_is_cheap_and_the_command_line_does_not_load_torch():
    code = (
        "import sys, valleysim; a = {'numba', 'sympy', 'torch'} & set(sys.modules); "
        "from valleysim.cli import build_parser; build_parser(); print(sorted(a), 'torch' in sys.modules)"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout.split()
    assert out == ["[]", "False"], out


def test_messages_show_numpy_scalars_as_plain_numbers():
    import numpy as np
    import pytest

    from valleysim.errors import UserInputError, check_int_range, check_positive, check_range

    with pytest.raises(UserInputError, match=r"got -1\.0$"):
        check_positive(np.float64(-1.0), "eta")
    with pytest.raises(UserInputError, match=r"got 7\.0$"):
        check_range(np.float32(7.0), "x", 0, 1)
    with pytest.raises(UserInputError, match=r"must be an integer; got 1\.5$"):
        check_int_range(np.float64(1.5), "n", 1)
