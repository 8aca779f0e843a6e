"""Symbolic derivations (sympy), one module per result."""
