"""Symbolic derivations (sympy), one module per result.

Each module in ``MODULES`` derives its result from the SGD update rule, checks every
step (``derive()`` raises ``proofs._util.ProofError`` on a failed step and returns the final
expressions by name) and renders a Markdown section (``report()``).
``python -m proofs [--out PATH]`` runs them all. Add a new module by appending its name.
"""

MODULES = (
    "proofs.sgd_second_moment",  # R1
    "proofs.break_even",  # R2
    "proofs.gd_damping",  # R7
    "proofs.degenerate_valley",  # R3, R4, R5
    "proofs.gauss_newton",  # R6
    "proofs.nsgd",  # R8
)
