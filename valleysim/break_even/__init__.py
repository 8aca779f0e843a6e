"""Break-even dynamics (R2): progressive sharpening that SGD stops at the mean-square stability edge.

The landscape
-------------
Parameters theta = (x_1 .. x_k, z): k sharp coordinates x_j and one slow
coordinate z that training drives forward. Per-example loss, i = 1..N,

    l_i(x, z) = sum_j 1/2 h_ij(z) (x_j - b_ij)^2 - beta z,
    h_ij(z)   = a_j(z) f_ij,   a_j(z) = a0_j exp(r_j z),   f_ij = 1 + sigma xi_ij,

with xi_ij fixed draws standardised exactly to mean 0 and population variance 1
(per direction), so along x_j the mean per-example curvature is a_j(z) and the
population variance of the curvatures is s_j^2 = sigma^2 a_j(z)^2 (spread
proportional to the mean). The offsets b_ij (scale ``offset``) are projected so
that sum_i f_ij b_ij = 0: the full-batch minimum along x is x = 0 for every z,
but the per-example gradients -h_ij b_ij differ there, so mini-batch gradient
noise exists at the minimum. The drive -beta z makes the loss fall as z grows,
and with it every curvature a_j grows (progressive sharpening; r_1 the fastest).

Why it self-stabilises (assumptions 3-4 of the paper emerge, none is imposed):
the full-batch z-gradient is

    dL/dz = sum_j 1/2 r_j a_j(z) (x_j^2 + B_j) - beta,   B_j = (1/N) sum_i f_ij b_ij^2,

so while SGD is stable along x, <x^2> stays at its small noise floor and z grows
(lambda_H^1 = max_j a_j rises); once SGD becomes mean-square unstable along x,
<x^2> grows geometrically until 1/2 r a x^2 exceeds beta and pushes z back,
lowering the curvature. At frozen z the x_j-recursion is (R1)

    x' = (1 - eta h_B) x + eta m_B,    h_B, m_B batch means of h_ij, h_ij b_ij,
    E[x'^2] = q E[x^2] + eta^2 c V,    q = (1 - eta a)^2 + eta^2 c sigma^2 a^2,  V = (1/N) sum_i h_ij^2 b_ij^2,

with c = c(S, N) (``theory.variance_factor``); from x_0 = 0 exactly
E[x_t^2] = eta^2 c V (1 - q^t) / (1 - q) (``frozen_second_moment``). q = 1 at the
break-even curvature

    lambda*(eta, S) = 2 / (eta (1 + c sigma^2))

(``predicted_break_even``; equal to ``theory.break_even_curvature`` with the
landscape's own alpha = s^2 / lambda = sigma^2 lambda*, and 2 / eta at S = N).

The Hessian and the gradient covariance
---------------------------------------
H_xjxj = a_j, H_xjz = r_j a_j x_j, H_zz = sum_j 1/2 r_j^2 a_j (x_j^2 + B_j): the
x-block is diag(a_j) exactly, so lambda_H^1 of the x-block is max_j a_j(z) (the
"curvature" recorded every step); the true top eigenvalue of the full (k+1)-square
Hessian and the top eigenvalue of K = (1/N) sum_i (g_i - g)(g_i - g)^T are computed
at the recorded states (``hessian``, ``gradient_covariance``). Near x = 0 the
variance of the per-example gradients along x_j is a_j^2 mean(f^2 b^2): lambda_K
grows like lambda_H^2 here (the paper's alpha is not constant in this toy).

The integrator
--------------
``simulate`` runs R trajectories in a numba kernel, one trajectory per prange
iteration with its own RNG stream ``rng.seed_state(seed, r)`` (results do not
depend on the thread count). A step draws a uniform S-subset without
replacement (partial Fisher-Yates on a per-trajectory permutation; S = N is
plain GD), computes the batch gradient in x and z and updates both. A
trajectory whose |x_j| passes ``DIVERGE_AT`` (or that turns non-finite) stops:
divergence is a result, with its step. ``frozen=True`` keeps z fixed (the R1
check at fixed curvature).

Break-even is reached, in a trajectory, when the curvature stops growing and
turns back: the first record at which max_j a_j falls ``TURN`` (1%) below its
running maximum (``growth_stops``; while SGD is stable z only grows, so this is
the push-back of the instability, read off the dynamics, not off lambda*). A
trajectory that turns in the first half of the run has a plateau in the last
half; only those count as having reached break-even, and the break-even
quantities average only them. When none has, the summary says so
(``reached`` false, the break-even fields None, ``note`` with the steps the
drift alone would need).

Measured per trajectory: ``max_curvature`` (max over every step of max_j a_j),
and, where break-even was reached, ``curvature_at_break_even`` (the median of
max_j a_j over the records of the last half of the run: the curvature where
growth stops; a median because rare catapults -- bursts of x that knock z far
back -- pull the mean down, reported as ``mean_late_curvature``, every step of
the last half), ``steps_to_break_even`` (first recorded step at which max_j a_j
reaches that level); at the recorded steps the full-Hessian top eigenvalue,
lambda_K^1, Tr(H), Tr(K), loss.
Next to lambda* the summary gives ``almost_sure_break_even``, where the
Lyapunov exponent of the frozen x-recursion crosses 0 (above lambda* for S < N):
the self-stabilised curvature follows the mean-square edge, because what pushes
z back is the time average of x^2 along a trajectory, which diverges at the
mean-square edge (the stationary law of x gets a heavy tail, infinite variance)
while the typical trajectory is still contracting.
``max_lambda_K`` is set by the largest catapult (a burst of x makes the
per-example gradients, and K, large), heavy-tailed across trajectories;
``median_late_lambda_K`` (the median over the last half) is lambda_K^1 at the
self-stabilised state.

What to expect: the self-stabilised curvature sits at lambda* (0.9-1.02 lambda*
over eta 0.05-0.4, S 1-64); the maximum overshoots it, because x needs time to
grow from its noise floor while z keeps sharpening: the overshoot shrinks with
the sharpening speed eta beta (S = 8, eta = 0.1: max / lambda* = 1.31, 1.15,
1.04 at beta = 1e-2, 1e-3, 1e-4). In full-batch GD there is no noise floor: x
collapses to rounding level between bursts, the curvature runs a sawtooth around
2 / eta (about 0.8-1.2 x 2 / eta) and the maximum stays ~1.2 x 2 / eta.
"""

from valleysim._lazy import lazy_exports

__getattr__, __all__ = lazy_exports(
    __name__,
    {
        "landscape": ("MAX_SPREAD", "SharpeningLandscape"),
        "theory": (
            "almost_sure_break_even",
            "drift_steps",
            "frozen_q",
            "frozen_second_moment",
            "predicted_break_even",
            "steps_for_break_even",
        ),
        "sim": (
            "BREAK_EVEN_KEYS",
            "DIVERGE_AT",
            "MAX_DEFAULT_STEPS",
            "TRAJECTORIES",
            "TURN",
            "BreakEvenRun",
            "break_even_per_trajectory",
            "default_steps",
            "growth_stops",
            "simulate",
            "spectra",
            "summarise",
            "sweep",
        ),
    },
)
