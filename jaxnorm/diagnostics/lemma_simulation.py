"""The Lemma 2.2 simulations of “Gradient Conditioning in Deep Neural Networks” (BYU
thesis 2022, §2.1.1, Figs. 2.1 and 2.2).

Lemma 2.2 relates two inequalities between a pair of vector pairs (u, v) (space A) and
(x, y) (space B), with one step size δ on both sides (δ = 1 here; with equal δ the
direction of each inequality does not depend on it):

* the *condition* inequality (2.2): ``‖u − v‖/‖u‖ < ‖x − y‖/‖x‖``;
* the *result* inequality (2.3) without its error terms:
  ``(‖u‖² − <u, v>)/‖u‖² < (‖x‖² − <x, y>)/‖x‖²``.

The thesis checks in simulation that when the condition holds *in expectation* over a
pair of vector distributions, so does the result -- the extra requirement (2.11) of
Theorem 2.3 being then "extremely likely" to hold. Per simulated pair of distributions
(:func:`simulate`), for each side: the first vector's elements are normal with a mean
and a standard deviation drawn uniformly (from [−1, 1] and [0.1, 2]); the second vector
is the first plus a normal perturbation whose scale is drawn uniformly from [0, 1/5] of
the first vector's scale (its root-mean-square element). With ``magnitude_bias``
(Fig. 2.2) every one of the four vectors is also stretched by its own factor
``1 + r·s`` per distribution, r uniform in [0.5, 1.5] and s that side's perturbation
scale -- the thesis's "re-scaling factor between .5 and 1.5 multiplied by the
distribution perturbation scale factor", which lets ‖v‖/‖u‖ and ‖y‖/‖x‖ differ by up
to about 0.4 (the text gives the recipe in words only; this is one reading of it).

Two readings of "perturbing it by another randomly sampled vector"
(:data:`PERTURBATIONS`): ``'independent'`` (the text as written: a zero-mean normal
vector independent of the first) and ``'shrink'`` (the first vector shrunk by a factor
``1 − a``, a uniform in [0, 1/5], plus that independent noise: what a small gradient
step does to the gradient on a locally convex loss, v = u − δHu). The distinction
matters: with ``v = u + p`` and p zero-mean and independent of u,
``‖u‖² − <u, v> = −<u, p>`` has expectation 0 whatever the condition says, so under
``'independent'`` the result's direction in expectation is a coin flip; under
``'shrink'`` it is ``a‖u‖²`` plus that noise.

For each distribution pair, with ``e = ‖·−·‖/‖·‖`` and ``R = (‖·‖² − <·,·>)/‖·‖²`` per
sample, and the expected direction ``d = sign(E e_B − E e_A)``:
``condition_gap = |E e_B − E e_A|``; ``result_gap = d·(E R_B − E R_A)`` (> 0: the result
holds in expectation in the condition's direction); ``condition_agreement`` /
``result_agreement``: the fraction of samples whose own inequality has direction d
(summarized by :func:`jaxnorm.analysis.toys.summarize_lemma`).
"""

from __future__ import annotations

import numpy as np

__all__ = ["PERTURBATIONS", "simulate"]

#: How the second vector of a pair is drawn from the first (module docstring).
PERTURBATIONS = ("independent", "shrink")


def _side(rng, n_dist, samples, dim, bias, shrink):
    mu = rng.uniform(-1.0, 1.0, size=(n_dist, 1, 1))
    sigma = rng.uniform(0.1, 2.0, size=(n_dist, 1, 1))
    s = rng.uniform(0.0, 0.2, size=(n_dist, 1, 1))
    first = mu + sigma * rng.standard_normal((n_dist, samples, dim))
    scale = np.sqrt(mu**2 + sigma**2)  # the first vector's root-mean-square element
    second = first + s * scale * rng.standard_normal((n_dist, samples, dim))
    if shrink:
        second = second - rng.uniform(0.0, 0.2, size=(n_dist, 1, 1)) * first
    if bias:
        first = first * (1.0 + rng.uniform(0.5, 1.5, size=(n_dist, 1, 1)) * s)
        second = second * (1.0 + rng.uniform(0.5, 1.5, size=(n_dist, 1, 1)) * s)
    sq = np.sum(first**2, axis=-1)
    e = np.linalg.norm(first - second, axis=-1) / np.sqrt(sq)
    r = (sq - np.sum(first * second, axis=-1)) / sq
    return e, r  # (n_dist, samples) each


def simulate(seed: int, *, distributions: int = 1000, samples: int = 1000, dim: int = 64,
             magnitude_bias: bool = False, perturbation: str = "independent", chunk: int = 50) -> dict[str, np.ndarray]:
    """The simulation of the module docstring: ``{'condition_gap', 'result_gap',
    'condition_agreement', 'result_agreement'}``, each ``(distributions,)``.

    Raises:
      ValueError: a size < 1 or an unknown perturbation.
    """
    if min(distributions, samples, dim, chunk) < 1:
        raise ValueError(f"sizes must be >= 1, got {distributions}, {samples}, {dim}, {chunk}.")
    if perturbation not in PERTURBATIONS:
        raise ValueError(f"unknown perturbation {perturbation!r}; known: {list(PERTURBATIONS)}.")
    shrink = perturbation == "shrink"
    rng = np.random.default_rng(seed)
    out = {k: [] for k in ("condition_gap", "result_gap", "condition_agreement", "result_agreement")}
    for start in range(0, distributions, chunk):
        n = min(chunk, distributions - start)
        e_a, r_a = _side(rng, n, samples, dim, magnitude_bias, shrink)
        e_b, r_b = _side(rng, n, samples, dim, magnitude_bias, shrink)
        d = np.sign(e_b.mean(axis=1) - e_a.mean(axis=1))
        out["condition_gap"].append(np.abs(e_b.mean(axis=1) - e_a.mean(axis=1)))
        out["result_gap"].append(d * (r_b.mean(axis=1) - r_a.mean(axis=1)))
        out["condition_agreement"].append(np.mean(np.sign(e_b - e_a) == d[:, None], axis=1))
        out["result_agreement"].append(np.mean(np.sign(r_b - r_a) == d[:, None], axis=1))
    return {k: np.concatenate(v) for k, v in out.items()}

