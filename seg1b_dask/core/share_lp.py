"""The closest country share vector to a reference within linear limits (DESIGN §12).

One linear programme serves two questions: S4(a)'s targets (the vector nearest 1A's own
shares within the bundle's governance limits, ties toward S2's population vector) and
``seg1b feasibility``'s price of a grade (the least relocation of any vector meeting the
grade's country gates). Both minimise the total variation ½ Σ |t − a| under:

- per-country bounds ``lower ≤ t ≤ upper``;
- Gini: with every one of the ``gini_active`` countries holding outlets and Σ t = 1,
  G = Σ_{i<j} |t_i − t_j| / m, so Σ_{i<j} |t_i − t_j| ≤ n − K (1 − g) over the n countries
  of the programme holds for any active set of at least K countries (exact when n = m = K);
  one variable per pair bounds |t_i − t_j| (n²/2 of them: the slow part, seconds; cutting
  planes on the orderings zig-zag between the many equally close vertices and do not end);
- top-k: the k largest sum to at most ``cap`` (Ogryczak: T_k = min over λ of kλ + Σ (t − λ)⁺);
- coverage: Σ min(t, 1/N) ≥ K / N (concave: its upper level set is convex);
- a southern share and region floors, which are linear.

Solved by HiGHS (interior point); without a Gini limit, O(n) variables and milliseconds.

Interchangeable countries (the same reference, bounds, southern fraction and region, no
prior) may enter as one entry with ``copies``: the programme is convex and symmetric under
permuting them, so averaging any optimum over those permutations is optimal too, and some
optimum gives them one share. Pairs inside a group then cost nothing, pairs across groups
count ``copies_i · copies_j`` times: the same optimum with far fewer pair variables.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
from numpy.typing import NDArray
from scipy import sparse
from scipy.optimize import linprog


@dataclass(frozen=True)
class ShareLimits:
    """Linear limits on a share vector over ``n`` countries (Σ t = 1)."""

    lower: NDArray[np.float64]
    upper: NDArray[np.float64]  # np.inf where unbounded
    gini_max: float | None = None
    gini_active: int = 0  # K of the Gini relaxation (n: every country holds outlets)
    top_max: tuple[tuple[int, float], ...] = ()  # (k, cap on the k largest)
    coverage: tuple[int, float] | None = None  # (K, 1/N): at least K countries with a whole outlet
    south: NDArray[np.float64] | None = None  # each country's southern fraction
    south_min: float = 0.0
    region: NDArray[np.str_] | None = None
    region_min: dict[str, float] = field(default_factory=dict)


@dataclass(frozen=True)
class Closest:
    feasible: bool
    share: NDArray[np.float64]  # empty when infeasible
    distance: float  # ½ Σ |t − reference| (nan when infeasible)
    message: str


class _Rows:
    """Sparse inequality rows ``A x ≤ b``, block by block."""

    def __init__(self, n_var: int) -> None:
        self.n_var = n_var
        self.r: list[NDArray[np.intp]] = []
        self.c: list[NDArray[np.intp]] = []
        self.v: list[NDArray[np.float64]] = []
        self.b: list[float] = []

    def add(self, rows: NDArray[np.intp], cols: NDArray[np.intp], values: NDArray[np.float64], b: list[float]) -> None:
        self.r.append(np.asarray(rows) + len(self.b))
        self.c.append(np.asarray(cols))
        self.v.append(np.asarray(values, dtype=np.float64))
        self.b.extend(b)

    def matrix(self) -> tuple[sparse.csr_matrix, NDArray[np.float64]]:
        shape = (len(self.b), self.n_var)
        if not self.b:
            return sparse.csr_matrix(shape), np.zeros(0)
        a = sparse.csr_matrix((np.concatenate(self.v), (np.concatenate(self.r), np.concatenate(self.c))), shape=shape)
        return a, np.asarray(self.b)


def closest_shares(
    reference: NDArray[np.float64],
    limits: ShareLimits,
    prior: NDArray[np.float64] | None = None,
    prior_weight: float = 0.0,
    copies: NDArray[np.float64] | None = None,
) -> Closest:
    """argmin ½ Σ |t − reference| + prior_weight · ½ Σ |t − prior| within ``limits``; entry i
    stands for ``copies[i]`` interchangeable countries (default 1), each with share t_i.

    With ``prior_weight`` < 1 the prior only chooses among the vectors at least distance
    from the reference (moving a unit toward the prior always costs more than it saves)."""
    n = len(reference)
    use_prior = prior is not None and prior_weight > 0
    m = np.ones(n) if copies is None else np.asarray(copies, dtype=np.float64)
    pair_i, pair_j = np.triu_indices(n, k=1) if limits.gini_max is not None else (np.zeros(0, np.intp),) * 2
    n_pairs = len(pair_i)
    # variables: t | p q (t - p + q = reference) | e f (t - e + f = prior) | w (coverage, outlets) | d (pairs) | top-k
    o_p, o_q = n, 2 * n
    o_e, o_f = 3 * n, 4 * n
    o_w = 5 * n if use_prior else 3 * n
    o_d = o_w + n
    o_k = [o_d + n_pairs + i * (n + 1) for i in range(len(limits.top_max))]
    ub = _Rows(o_d + n_pairs + len(limits.top_max) * (n + 1))
    rn = np.arange(n)
    if limits.gini_max is not None:
        pairs = np.arange(n_pairs)
        for sign in (1.0, -1.0):  # ±(t_i − t_j) − d_ij ≤ 0
            ub.add(
                np.r_[pairs, pairs, pairs],
                np.r_[pair_i, pair_j, o_d + pairs],
                np.r_[np.full(n_pairs, sign), np.full(n_pairs, -sign), -np.ones(n_pairs)],
                [0.0] * n_pairs,
            )
        bound = m.sum() - limits.gini_active * (1.0 - limits.gini_max)
        ub.add(np.zeros(n_pairs, np.intp), o_d + pairs, m[pair_i] * m[pair_j], [bound])
    for (k, cap), lam in zip(limits.top_max, o_k, strict=True):
        u = lam + 1 + rn  # t − λ − u ≤ 0;  k λ + Σ u ≤ cap
        ub.add(np.r_[rn, rn, rn], np.r_[rn, np.full(n, lam), u], np.r_[np.ones(n), -np.ones(2 * n)], [0.0] * n)
        ub.add(np.zeros(n + 1, np.intp), np.r_[lam, u], np.r_[float(k), m], [cap])
    if limits.coverage is not None:
        # w_i ∈ [0, 1] counts country i's whole outlet: w_i / N ≤ t_i and Σ w ≥ K. Counted in
        # outlets, not shares, so the rows stay far above the solver's tolerances at any N.
        cover, unit = limits.coverage
        ub.add(np.r_[rn, rn], np.r_[o_w + rn, rn], np.r_[np.full(n, unit), -np.ones(n)], [0.0] * n)
        ub.add(np.zeros(n, np.intp), o_w + rn, -m, [-float(cover)])
    if limits.south is not None:
        ub.add(np.zeros(n, np.intp), rn, -limits.south * m, [-limits.south_min])
    if limits.region is not None:
        for name, floor in limits.region_min.items():
            inside = np.flatnonzero(limits.region == name)
            ub.add(np.zeros(len(inside), np.intp), inside, -m[inside], [-floor])
    a_ub, b_ub = ub.matrix()
    eq_rows = [rn, rn, rn, np.full(n, n)]
    eq_cols = [rn, o_p + rn, o_q + rn, rn]
    eq_vals = [np.ones(n), -np.ones(n), np.ones(n), m]
    b_eq = [np.asarray(reference, dtype=np.float64), [1.0]]
    if use_prior:
        assert prior is not None
        eq_rows += [n + 1 + rn] * 3
        eq_cols += [rn, o_e + rn, o_f + rn]
        eq_vals += [np.ones(n), -np.ones(n), np.ones(n)]
        b_eq.append(np.asarray(prior, dtype=np.float64))
    a_eq = sparse.csr_matrix(
        (np.concatenate(eq_vals), (np.concatenate(eq_rows), np.concatenate(eq_cols))),
        shape=(n + 1 + (n if use_prior else 0), ub.n_var),
    )
    cost = np.zeros(ub.n_var)
    cost[o_p : o_q + n] = 0.5 * np.r_[m, m]
    if use_prior:
        cost[o_e : o_f + n] = 0.5 * prior_weight * np.r_[m, m]
    bounds = np.zeros((ub.n_var, 2))
    bounds[:, 1] = np.inf
    bounds[:n, 0] = limits.lower
    bounds[:n, 1] = limits.upper
    if limits.coverage is not None:
        bounds[o_w : o_w + n, 1] = 1.0  # at most one whole outlet counts
    for lam in o_k:
        bounds[lam] = (-np.inf, np.inf)
    method = "highs-ipm" if n_pairs else "highs"
    eq = np.concatenate([np.asarray(b, dtype=np.float64) for b in b_eq])
    result = linprog(cost, A_ub=a_ub, b_ub=b_ub, A_eq=a_eq, b_eq=eq, bounds=bounds, method=method)
    if result.status != 0:
        return Closest(False, np.zeros(0), float("nan"), str(result.message))
    share = np.clip(result.x[:n], 0.0, None)
    return Closest(True, share, float(0.5 * (m * np.abs(share - reference)).sum()), "optimal")
