"""A walk with SGD (R9, Xing et al. 2018, Secs. 3-4): a valley with walls, a rough floor and flat directions.

The landscape is a finite sum over N examples, theta = (x, y, z_1..z_m):

    l_i(theta) = k_i W(x - a_i) + V(x, y) - (s + e_i) y + kappa/2 |z|^2
    W(u)       = (w^2 / 2) log(1 + u^2 / w^2)       (-> u^2 / 2 for w = inf: a quadratic wall)
    V(x, y)    = b sin^2(pi y / p) exp(-x^2 / (2 h^2))
    L(theta)   = (1/N) sum_i l_i(theta)

x is the wall direction (curvature about k = mean k_i at the floor; the
per-example curvatures k_i and offsets a_i make mini-batch gradients noisy
mostly along x, i.e. along the sharp direction, as for SGD on a network), y
runs along the valley floor (mean slope s drives the progress, per-example
slopes s + e_i add a little noise along it), V puts periodic barriers of
height b on the floor that fade with the height above it (the floor is rough,
the walls high up are not), and z are m weakly curved (kappa) directions that
no example's gradient moves: SGD's noise never enters them, isotropic noise
does. sum a_i = sum e_i = 0.

The saturating wall W (curvature k at the floor, decaying beyond |u| ~ w)
makes GD *bounce*: for 2 < eta k < 4 (and no barrier or slope) GD has a stable
period-2 orbit x <-> -x with x*^2 = w^2 (eta k / 2 - 1), so the cosine of
consecutive gradients along x is exactly -1 for ever, at height
k w^2 / 2 log(eta k / 2) above the floor. On a quadratic wall (w = inf) GD's
x-gradients multiply by (1 - eta k) every step (R7): over-damped for
eta k < 1 (cos -> +1), under-damped for 1 < eta k < 2 (cos = -1, decaying),
divergent beyond 2.

Optimisers (``OPTIMIZERS``): ``gd`` (full gradient), ``sgd`` (mean over a
uniform S-subset of the N examples, drawn without replacement every step),
``gd-noise`` (full gradient + isotropic Gaussian noise sigma xi, xi ~ N(0, I_D)).
The isotropic noise has SGD's noise power at the start: D sigma^2 =
noise_factor * tr Cov[g_B(theta_0)] for batch size S, with
tr Cov[g_B] = c(S, N) tr Cov_i[grad l_i], c(S, N) = (N - S) / (S (N - 1)) (the
paper scales the largest gradient variance at initialisation instead; with
one noisy direction the two agree up to the factor).

Walk metrics (paper Sec. 3, 3.2), per step t (segment theta_t -> theta_{t+1}),
all on the FULL-batch loss L:

- interpolation: L at theta_t^alpha = (1 - alpha) theta_t + alpha theta_{t+1} for
  10 points alpha_j = j / 11, j = 1..10, strictly between the iterates, plus the
  endpoints alpha = 0, 1;
- floor: L(theta_t^min), the smallest of these 12 values (alpha in [0, 1]);
- height: (L(theta_t) + L(theta_{t+1}) - 2 L(theta_t^min)) / 2  (Table 2), >= 0;
- barrier crossed: some interpolated point has L above both L(theta_t) and
  L(theta_{t+1}) (Table 1); its size max_j L - max(L(theta_t), L(theta_{t+1}));
  "above" means by more than BARRIER_RTOL (1 + |L|), so that round-off on a
  segment of a converged run is not counted;
- floor rise: the floor of segment t is above that of segment t - 1 (same
  tolerance; the floor of GD descends, SGD's goes up and down);
- cos(g_{t-1}, g_t) of the gradients used by the updates (mini-batch for SGD,
  full + noise for gd-noise), skipped when one of them has norm < GRAD_ATOL;
- distance from initialisation ||theta_t - theta_0|| and progress y_t - y_0.

Per trajectory the run accumulates the per-step metrics in ``n_bins`` equal
windows of the run (the paper's "epochs" of Tables 1 and 2). A trajectory
whose parameters become non-finite or exceed ``div_threshold`` in absolute
value stops; its ``diverged_step`` (first bad step, else -1) is reported and
the summaries average over the others.

Implementation: one numba kernel, ``prange`` over trajectories, each with its
own counter-seeded generator (``valleysim.rng``): the numbers do not depend on
the thread count. Every trajectory starts at the same theta_0.
"""

from valleysim._lazy import lazy_exports

__getattr__, __all__ = lazy_exports(
    __name__,
    {
        "metrics": ("BARRIER_RTOL", "GRAD_ATOL", "N_INTERP", "cosine", "interpolation_alphas", "segment_metrics"),
        "landscape": ("WIDTH_RANGE", "WalkLandscape"),
        "sim": ("OPTIMIZERS", "TRACE_FIELDS", "WalkRun", "isotropic_sigma", "per_bin", "simulate", "summarise"),
    },
)
