"""R8: sharpest directions and Nudged-SGD on a valley whose walls sharpen (sharpest-directions-sgd-step.txt).

The landscape (``SharpValley``): theta = (u_1..u_Ks, z_1..z_Df), Ks sharp and Df flat coordinates,
D = Ks + Df. With per-example offsets n_i (centred: sum_i n_i = 0) and curvatures

    h_k(z_1) = c_k a(z_1)  (sharp, k < Ks),   a(z) = a_lo + (a_hi - a_lo) sigmoid((z - mid) / width),
    h_j      = b_j         (flat, constant),

the per-example loss is L_i(theta) = 1/2 sum_d h_d [(theta_d - t_d - n_id)^2 - n_id^2] and the full loss
L = (1/N) sum_i L_i = 1/2 sum_d h_d (theta_d - t_d)^2 (targets t: 0 on the sharp coordinates). The walls
(the u block) sharpen as z_1 moves towards its target z_1* (= ``t[Ks]``) in the sharp region, so the
route to zero loss leads into a region of lambda_max ~ c_1 a_hi: a method whose effective rate along the
sharpest directions is too large for that region (eta lambda > 2) is pushed back by the term
1/2 a'(z_1) c_k u_k^2 and stalls at the edge of stability; which region is reached depends on the method.

Everything is exact and dense (D ~ 10-50): gradient, Hessian, eigenvectors (``numpy.linalg.eigh``,
algebraically largest first, as in ``dnn``). The mini-batch gradient needs only the batch mean of
the offsets, so a step is O(R (S + D)) plus the eigen-decompositions.

Optimisers (update theta <- theta - eta d, g the mini-batch gradient, E (K, D) the top-K eigenvectors
of H, one per row):

    sgd               d = g
    sgd_top           d = E^T E g                     (only the top-K components; paper's variant 1)
    sgd_no_top        d = g - E^T E g                 (top-K components removed; variant 3)
    sgd_constant_top  d = E_0^T E_0 g, E_0 the top-K eigenvectors at step 0 (the paper's variant 2,
                      "updates along the constant direction of the top eigenvector e_1(0)")
    nsgd              d = g - (1 - gamma) E^T E g     (rate gamma eta along E, eta elsewhere), E recomputed
                      every ``recompute`` steps (the paper: once per epoch)

The ensemble of R trajectories is vectorised numpy (no numba: the batched ``eigh`` dominates and is
already compiled); trajectory r draws its mini-batches from ``numpy.random.default_rng([seed, r])`` (S
distinct examples per step), so it is the same whatever R is.
"""

from valleysim._lazy import lazy_exports

__getattr__, __all__ = lazy_exports(
    __name__,
    {
        "landscape": ("SharpValley", "make_valley", "quadratic_valley"),
        "directions": (
            "ALPHAS",
            "METHODS",
            "alpha_cross_quadratic",
            "lambda_max",
            "loss_change_quadratic",
            "nsgd_direction",
            "step_direction",
            "top_eigen",
        ),
        "sim": (
            "GAMMAS",
            "TOP_K",
            "TRAJECTORIES",
            "BatchStream",
            "default_record_every",
            "epoch_steps",
            "gamma_sweep",
            "loss_change_along_top",
            "settled",
            "simulate",
        ),
    },
)
