"""User expressions are data: the whitelist parser against sympy's own parser, and hostile input.

sympy's ``parse_expr`` evaluates Python, so it is only ever called here, on
strings the test itself wrote (the independent truth for what an expression
means); every string from a user goes through ``valleysim.expr``.
"""

from __future__ import annotations

import re
from pathlib import Path

import pytest
import sympy as sp
from hypothesis import given, settings
from hypothesis import strategies as st
from sympy.parsing.sympy_parser import parse_expr

from valleysim.cli import main
from valleysim.errors import UserInputError
from valleysim.expr import FUNCTIONS, MAX_LENGTH, check_name, parse_expression, parse_number
from valleysim.valley.landscape import CATALOGUE, catalogue

ROOT = Path(__file__).resolve().parents[2]
T = sp.symbols("t1 t2 t3 t4", real=True)
LOCAL = {s.name: s for s in T}


def _trusted(text: str) -> sp.Expr:
    return parse_expr(text, local_dict=LOCAL)


# ------------------------------------------------------------------ the same expressions as before


@pytest.mark.parametrize(
    "text",
    [
        "Abs(t3 + t4)*t1**2 + Abs(t3 + 2*t4)*t2**2",  # abs-toy (README example)
        "(4 - 2*exp(-t3 - t4))*t1**2 + exp(-(t3 - t4)**2)*t2**2",  # exp-toy
        "(3 + t3**2/1000)*t1**2/2",
        "t1**2*(1 + t2**2) + Abs(t2 - 1)",
        "-t1**-2 + +t2",
        "0.1*t1 + 1e-3*t2 - 2.5e10",
        "log(t1, 2) + sqrt(t2)/cbrt(t3)",
        "Max(t1, t2) - Min(t3, 0)",
        "pi*E*t1",
        "sign(t1)*Heaviside(t2 - 1)",
        "atan2(t1, t2) + erf(t3) + erfc(t4) + tanh(t1)*cosh(t2)/sinh(t3)",
        "1_000*t1",
        "t1/t2/t3",
        "t1**t2**t3",
    ],
)
def test_parses_to_what_sympy_parses(text):
    assert parse_expression(text, T) == _trusted(text)


def test_every_catalogue_toy_keeps_its_expression():
    sources = {
        "abs-toy": "Abs(t3 + t4)*t1**2 + Abs(t3 + 2*t4)*t2**2",
        "exp-toy": "(4 - 2*exp(-t3 - t4))*t1**2 + exp(-(t3 - t4)**2)*t2**2",
    }
    for name in CATALOGUE:
        land = catalogue(name)  # builds (and validates) every toy
        if name in sources:
            assert land.loss == _trusted(sources[name])


def test_the_readme_expressions_parse_as_before():
    readme = (ROOT / "README.md").read_text(encoding="utf-8")
    losses = re.findall(r'--loss "([^"]+)"', readme)
    assert losses, "the README shows no --loss expression"
    for text in losses:
        names = sorted(set(re.findall(r"\bt\d\b", text)))
        syms = [sp.Symbol(n, real=True) for n in names]
        assert parse_expression(text, syms) == parse_expr(text, local_dict={s.name: s for s in syms})
    specs = re.findall(r'"designed:([^"]+)"', readme)
    assert specs, "the README shows no designed:EXPR example"
    lam = sp.symbols("lam1 lam2", positive=True)
    for spec in specs:
        assert parse_expression(spec, lam) == parse_expr(spec, local_dict={s.name: s for s in lam})
    for value in re.findall(r'--init "?t3=([^",`\s]+)', readme):
        assert parse_number(value, "--init") == pytest.approx(float(parse_expr(value)), rel=1e-15)


_atoms = st.sampled_from(["t1", "t2", "t3", "2", "3", "0.5", "pi"])


def _combine(children):
    binary = st.tuples(children, st.sampled_from(["+", "-", "*", "/"]), children).map(
        lambda t: f"({t[0]} {t[1]} {t[2]})"
    )
    power = st.tuples(children, st.sampled_from(["2", "3", "-1", "(1/2)"])).map(lambda t: f"({t[0]})**{t[1]}")
    unary = children.map(lambda c: f"-({c})")
    call = st.tuples(st.sampled_from(["exp", "sin", "tanh", "Abs", "atan"]), children).map(lambda t: f"{t[0]}({t[1]})")
    return binary | power | unary | call


@settings(max_examples=150, deadline=None)
@given(st.recursive(_atoms, _combine, max_leaves=12))
def test_random_expressions_match_sympy(text):
    assert parse_expression(text, T[:3]) == parse_expr(text, local_dict=LOCAL)


def test_numbers_read_as_constant_expressions():
    assert parse_number("1/3", "x") == pytest.approx(1 / 3, rel=1e-15)
    assert parse_number("-pi/4", "x") == pytest.approx(-0.7853981633974483, rel=1e-15)
    assert parse_number("2e-3", "x") == 0.002
    for bad in ("t1", "sqrt(-1)", "exp(1000)", "nan", "inf", "1/0", "'1'"):
        with pytest.raises(UserInputError, match="--init t3"):
            parse_number(bad, "--init t3")


# ------------------------------------------------------------------ what is refused


@pytest.mark.parametrize(
    "text, reason",
    [
        ("t1.real", "attribute"),
        ("t1[0]", "subscripts"),
        ("lambda: t1", "lambda"),
        ("'t1'", "str literals"),
        ("b't1'", "bytes literals"),
        ("f'{t1}'", "strings"),
        ("[t1 for _ in t2]", "comprehensions"),
        ("(t1, t2)", "tuples"),
        ("[t1]", "lists"),
        ("{t1: 1}", "dicts"),
        ("t1 < t2", "comparisons"),
        ("t1 and t2", "and/or"),
        ("t1 if t2 else t3", "if-else"),
        ("(q := t1)", ":="),
        ("foo(t1)", "'foo'"),
        ("exp(t1, t2)", "exp takes 1"),
        ("exp(x=t1)", "keyword"),
        ("exp(*t1)", "*args"),
        ("exp", "without arguments"),
        ("q", "unknown name 'q'"),
        ("__builtins__", "unknown name"),
        ("t1 ^ 2", "use ** for powers"),
        ("t1 % 2", "Mod"),
        ("~t1", "Invert"),
        ("1j*t1", "complex"),
        ("True*t1", "bool"),
        ("None", "NoneType"),
        ("...", "ellipsis"),
        ("1e999*t1", "float range"),
        ("9**9**9**9", "digits"),
        ("(t1 + 1)**1000", "exponent"),
        ("1/(t1 - t1)", "not finite"),
        ("log(0)*t1", "not finite"),
        ("t1 +", "not a valid expression"),
        ("import os", "not a valid expression"),
        ("t1; t2", "not a valid expression"),
        ("", "empty"),
        ("(" * 300 + "t1" + ")" * 300, "not a valid expression"),
        ("-" * 60 + "t1", "nesting"),
        ("+".join(["t1"] * 400), "syntax nodes"),
        ("t1 " * (MAX_LENGTH // 3 + 1), "characters long"),
        ("t1\x00", "NUL"),
        ("ｅｘｐ.__globals__", "attribute"),
    ],
)
def test_everything_outside_the_grammar_is_a_named_error(text, reason):
    with pytest.raises(UserInputError, match=re.escape(reason)) as err:
        parse_expression(text, T, "--loss")
    assert str(err.value).startswith("--loss")


@pytest.mark.parametrize("name", ["__import__", "exp", "pi", "lambda", "match", "1a", "a-b", "θ", "a" * 65, ""])
def test_declared_names_are_plain_identifiers(name):
    with pytest.raises(UserInputError, match="--degenerate"):
        check_name(name, "--degenerate")


# ------------------------------------------------------------------ hostile input through the command line


def _payloads(marker: Path) -> list[str]:
    m = str(marker)
    return [
        f"__import__('os').system('touch {m}')",
        f"Symbol.__new__.__globals__['__builtins__']['__import__']('os').system('touch {m}')",
        f"exec(\"open('{m}', 'w')\")",
        f"eval(\"__import__('os').system('touch {m}')\")",
        f"(lambda: __import__('os').system('touch {m}'))()",
        f"open('{m}', 'w')",
        f"[c for c in ().__class__.__base__.__subclasses__() if c.__name__ == 'Popen'][0](['touch', '{m}'])",
        f"t1.__class__.__init__.__globals__['os'].system('touch {m}')",
        f"exp.__globals__['__builtins__']['open']('{m}', 'w')",
        f"t1 + __import__('os').system('touch {m}')",
        f"t1 if __import__('os').system('touch {m}') else t3",
        f"(__import__('os').system('touch {m}'), t1)[1]",
        f"sympify(\"__import__('os').system('touch {m}')\")",
        f"S(\"__import__('os').system('touch {m}')\")",
        f"f\"{{__import__('os').system('touch {m}')}}\"",
        f"(x := __import__('os')).system('touch {m}')",
        f"ｅｘｅｃ(\"open('{m}', 'w')\")",
        "getattr(t1, '__class__')",
        f"Function('system')('touch {m}')",
        f"t1**2 + exp(open('{m}', 'w'))",
    ]


def test_payloads_in_every_expression_flag_leave_no_trace(tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    marker = tmp_path / "pwned"
    base = ["valley", "--eta", "0.01", "--noise-scale", "1", "--steps", "10", "--burn-in", "10", "--trajectories", "2"]
    for payload in _payloads(marker):
        for argv in (
            base + ["--loss", payload, "--nondegenerate", "t1", "--degenerate", "t3"],
            base + ["--loss", "abs-toy", "--noise", "designed:" + payload],
            base + ["--loss", "abs-toy", "--init", "t3=" + payload],
        ):
            assert main(argv) == 2, argv
            err = capsys.readouterr().err
            assert err.startswith("valleysim: error: ") and err.count("\n") == 1, err
            assert not marker.exists(), payload
    assert list(tmp_path.iterdir()) == []


@pytest.mark.parametrize("flag", ["--loss", "designed", "--init", "--degenerate"])
def test_the_installed_command_runs_no_payload(tmp_path, installed, flag):
    marker = tmp_path / "pwned"
    payload = f"__import__('os').system('touch {marker}')"
    args = {
        "--loss": ["--loss", payload, "--nondegenerate", "t1", "--degenerate", "t3"],
        "designed": ["--loss", "abs-toy", "--noise", "designed:" + payload],
        "--init": ["--loss", "abs-toy", "--init", "t3=" + payload],
        "--degenerate": ["--loss", "t1**2*__import__", "--nondegenerate", "t1", "--degenerate", "__import__"],
    }
    proc = installed("valley", "--eta", "0.01", "--noise-scale", "1", *args[flag], timeout=120)
    assert proc.returncode == 2, proc.stderr
    assert proc.stderr.startswith("valleysim: error: ") and "Traceback" not in proc.stderr
    assert not marker.exists()


def test_whitelisted_functions_and_their_derivatives_print_as_kernel_code():
    from sympy.printing.pycode import PythonCodePrinter

    from valleysim.valley.landscape import diff

    x, y = sp.symbols("x y", real=True)
    for fn, arities in FUNCTIONS.values():
        f = fn(*[x, y][: max(arities)])
        for e in (f, diff(f, x), diff(f, x, 2)):
            PythonCodePrinter({"strict": True}).doprint(e)  # raises on anything it cannot print


_SOUP = st.lists(
    st.sampled_from(
        [
            "t1",
            "t2",
            "q",
            "__class__",
            "exp",
            "(",
            ")",
            "[",
            "]",
            ".",
            ",",
            "+",
            "-",
            "*",
            "/",
            "**",
            "^",
            "'",
            '"',
            "lambda",
            ":",
            "=",
            "1",
            "2.5",
            "1e999",
            "os",
            "import",
            " ",
            "{",
            "}",
            "if",
            "else",
            "not",
            "f'",
            "__import__",
            "\\",
            "#",
            ";",
            "@",
        ]
    ),
    max_size=40,
).map("".join)


@settings(max_examples=300, deadline=None)
@given(st.one_of(st.text(max_size=120), _SOUP))
def test_any_string_is_an_expression_or_a_named_error(text):
    """Fuzz: arbitrary text and Python-token soup never escape as anything but UserInputError."""
    try:
        expr = parse_expression(text, T[:2], "--loss")
    except UserInputError as err:
        assert str(err).startswith("--loss")
    else:
        assert isinstance(expr, sp.Expr) and expr.free_symbols <= set(T[:2])
