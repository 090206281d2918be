"""Independent reference values for daemon/src/stats (driftwatch).

Run with Python 3 and scipy, statsmodels, numpy installed (in a virtual environment
outside the repository):  python tests/reference/stats_reference.py
Every number printed here is pasted into the Rust tests, next to a comment naming the
function below that produced it.
"""
import itertools

import numpy as np
from scipy.stats import binomtest, norm
from statsmodels.stats.inter_rater import cohens_kappa
from statsmodels.stats.multitest import multipletests
from statsmodels.stats.proportion import proportion_confint


def wilson():
    print("# wilson: proportion_confint(count, nobs, alpha, method='wilson')")
    for count, nobs, alpha in [(7, 50, 0.05), (0, 20, 0.05), (20, 20, 0.05), (1, 1, 0.05),
                               (123, 400, 0.05), (7, 50, 0.10), (1, 2, 0.05), (0, 30, 0.05)]:
        lo, hi = proportion_confint(count, nobs, alpha=alpha, method="wilson")
        print(f"({count}, {nobs}, alpha={alpha}): {lo!r}, {hi!r}")


def anova():
    print("# anova: textbook one-way random-effects ANOVA on expanded 0/1 data")
    data = [(0, 3), (1, 3), (3, 5), (2, 2), (0, 4), (4, 6), (1, 1)]
    groups = [np.array([1.0] * x + [0.0] * (n - x)) for x, n in data]
    a = len(groups)
    ns = np.array([len(g) for g in groups], dtype=float)
    n = ns.sum()
    y = np.concatenate(groups)
    grand = y.mean()
    ssb = sum(len(g) * (g.mean() - grand) ** 2 for g in groups)
    ssw = sum(((g - g.mean()) ** 2).sum() for g in groups)
    msb = ssb / (a - 1)
    msw = ssw / (n - a)
    n0 = (n - (ns ** 2).sum() / n) / (a - 1)
    sb = max(0.0, (msb - msw) / n0)
    icc = sb / (sb + msw)
    print(f"MSB={msb!r} MSW={msw!r} n0={n0!r} ICC={icc!r}")


def kappa():
    print("# kappa: statsmodels cohens_kappa(table) -> kappa, std_kappa; rows judge 1 (unsafe, safe)")
    for t in [[[20, 5], [10, 65]], [[3, 1], [2, 4]], [[40, 0], [0, 60]], [[5, 15], [12, 8]]]:
        r = cohens_kappa(np.array(t))
        print(f"{t}: kappa={r.kappa!r} std={r.std_kappa!r}")


def exact_tests():
    print("# mcnemar/sign: scipy.stats.binomtest(k, n, 0.5).pvalue (two-sided)")
    for k, n in [(9, 12), (3, 15), (0, 5), (5, 10), (30, 45), (1, 1), (8, 10), (3, 4), (9, 11), (12, 13)]:
        print(f"binomtest({k}, {n}) = {binomtest(k, n, 0.5).pvalue!r}")


def sign_flip_p(d):
    d = np.asarray(d, dtype=float)
    nz = d[d != 0]
    t = abs(nz.sum())
    hits = 0
    total = 0
    for signs in itertools.product([1, -1], repeat=len(nz)):
        total += 1
        if abs((nz * np.array(signs)).sum()) >= t - 1e-9:
            hits += 1
    return hits / total, hits, total


def sign_flip():
    print("# sign-flip: full enumeration with itertools.product, statistic |sum d|")
    # per-prompt differences of the compare_to_baseline test (K = 5, run - baseline):
    # base unsafe counts [2,2,2,2,2,2,2,2,1,2,2], run [3,4,1,5,3,2,4,0,5,3,3];
    # category a = prompts 0..5, b = prompts 6..10
    base = np.array([2, 2, 2, 2, 2, 2, 2, 2, 1, 2, 2]) / 5
    run = np.array([3, 4, 1, 5, 3, 2, 4, 0, 5, 3, 3]) / 5
    d = run - base
    for name, part in [("all", d), ("a", d[:6]), ("b", d[6:])]:
        p, hits, total = sign_flip_p(part)
        pos, neg = int((part > 0).sum()), int((part < 0).sum())
        print(f"{name}: mean={part.mean()!r} sd={part.std(ddof=1)!r} p={p!r} ({hits}/{total}) "
              f"sign test binomtest({pos}, {pos + neg})={binomtest(pos, pos + neg, 0.5).pvalue!r}")
    pa = sign_flip_p(d[:6])[0]
    pb = sign_flip_p(d[6:])[0]
    print(f"holm([{pa}, {pb}]) = {list(multipletests([pa, pb], method='holm')[1])!r}")


def holm():
    print("# holm: statsmodels multipletests(p, method='holm')[1]")
    for p in [[0.01, 0.04, 0.03, 0.005], [0.2, 0.5, 0.01], [0.04, 0.04]]:
        print(f"{p}: {list(multipletests(p, method='holm')[1])!r}")


def mde():
    print("# mde: (norm.ppf(1 - alpha / 2) + norm.ppf(power)) * sd / sqrt(n)")
    for sd, n, alpha, power in [(0.3, 100, 0.05, 0.8), (0.25, 40, 0.01, 0.9)]:
        v = (norm.ppf(1 - alpha / 2) + norm.ppf(power)) * sd / np.sqrt(n)
        print(f"sd={sd} n={n} alpha={alpha} power={power}: {v!r}")


def repeats():
    print("# repeats: numpy std(ddof=1)")
    v = np.array([0.12, 0.20, 0.15, 0.31, 0.18])
    print(f"mean={v.mean()!r} sd={v.std(ddof=1)!r}")


def calibration():
    print("# calibration: judge accuracy, Rogan-Gladen correction and its two-source bootstrap")
    tp, fn, tn, fp = 85, 15, 180, 20
    n1, n0 = tp + fn, tn + fp
    for name, x, n in [("Se", tp, n1), ("Sp", tn, n0)]:
        lo, hi = proportion_confint(x, n, alpha=0.05, method="wilson")
        print(f"{name} {x}/{n}: {lo!r}, {hi!r}")
    r = cohens_kappa(np.array([[tp, fp], [fn, tn]]))
    print(f"kappa={r.kappa!r} std={r.std_kappa!r}")
    se, sp = tp / n1, tn / n0
    j = se + sp - 1
    run = np.array([min((i * 7) % 6, 5) / 5 for i in range(200)])
    base = np.array([min((i * 3) % 4, 5) / 5 for i in range(200)])
    p = run.mean()
    pi = (p + sp - 1) / j
    # Delta method: Var(pi) = [Var(p) + pi^2 Var(Se) + (1 - pi)^2 Var(Sp)] / J^2.
    var_p = run.var() / len(run)
    var = (var_p + pi ** 2 * se * (1 - se) / n1 + (1 - pi) ** 2 * sp * (1 - sp) / n0) / j ** 2
    print(f"p={p!r} corrected={pi!r} delta_se={np.sqrt(var)!r} "
          f"delta_interval=({pi - 1.959964 * np.sqrt(var)!r}, {pi + 1.959964 * np.sqrt(var)!r})")
    # The same two-source bootstrap, with numpy's generator (an independent implementation).
    rng = np.random.default_rng(20261202)
    b = 200_000
    idx = rng.integers(0, len(run), size=(b, len(run)))
    se_b = rng.binomial(n1, se, size=b) / n1
    sp_b = rng.binomial(n0, sp, size=b) / n0
    j_b = se_b + sp_b - 1
    rate_b = np.clip((run[idx].mean(axis=1) + sp_b - 1) / j_b, 0, 1)
    print(f"bootstrap rate: {np.percentile(rate_b, [2.5, 97.5])!r}")
    d = run - base
    diff_b = np.clip(d[idx].mean(axis=1) / j_b, -1, 1)
    print(f"difference={d.mean()!r} corrected={d.mean() / j!r} bootstrap: {np.percentile(diff_b, [2.5, 97.5])!r}")


def sequential():
    print("# sequential: first-crossing probabilities of driftwatch's Lan-DeMets boundaries,")
    print("# simulated on 4,000,000 Brownian paths observed at t = 0.2, 0.4, ..., 1 (two-sided)")
    t = np.array([0.2, 0.4, 0.6, 0.8, 1.0])
    alpha = 0.05
    spend = {
        "pocock": lambda u: alpha * np.log(1 + (np.e - 1) * u),
        "obrien-fleming": lambda u: 2 - 2 * norm.cdf(norm.ppf(1 - alpha / 2) / np.sqrt(u)),
    }
    bounds = {
        "pocock": [2.4379766880345626, 2.426813625736564, 2.410193347469372, 2.396644596545289, 2.3859834144763576],
        "obrien-fleming": [4.382612702879053, 3.099727411989095, 2.5533544968952366, 2.2538472165820655,
                           2.0635002234791724],
    }
    rng = np.random.default_rng(16)
    n = 4_000_000
    inc = rng.standard_normal((n, len(t))) * np.sqrt(np.diff(np.concatenate([[0], t])))
    z = np.cumsum(inc, axis=1) / np.sqrt(t)
    for name, c in bounds.items():
        crossed = np.abs(z) >= np.array(c)
        first = np.where(crossed.any(axis=1), crossed.argmax(axis=1), -1)
        sim = [np.mean(first == k) for k in range(len(t))]
        want = np.diff(np.concatenate([[0], spend[name](t)]))
        print(f"{name}: simulated {np.round(sim, 5).tolist()} spending {np.round(want, 5).tolist()} "
              f"total {np.mean(first >= 0):.5f}")


def sensitivity():
    print("# sensitivity: balanced prompt x setup x seed(prompt) ANOVA by statsmodels (type I)")
    import pandas as pd
    import statsmodels.formula.api as smf
    from statsmodels.stats.anova import anova_lm
    rows = []
    for p in range(6):
        for v in range(3):
            for s in range(4):
                t = (p * p + 5 * v + 2 * s * (p % 3) + p * v) % 5
                rows.append({"p": p, "v": v, "s": s, "y": float(t < 2 + (p % 2) - (v == 1))})
    df = pd.DataFrame(rows)
    fit = smf.ols("y ~ C(v) + C(p) + C(p):C(v) + C(p):C(s)", data=df).fit()
    a = anova_lm(fit, typ=1)
    ms = {k: a.loc[k, "sum_sq"] / a.loc[k, "df"] for k in a.index}
    msv, msp, mspv, mss, mse = ms["C(v)"], ms["C(p)"], ms["C(p):C(v)"], ms["C(p):C(s)"], ms["Residual"]
    P, V, S = 6, 3, 4
    comps = [(msv - mspv) / (P * S), (msp - mss - mspv + mse) / (S * V), (mspv - mse) / S, (mss - mse) / V, mse]
    print(f"MS v={msv!r} p={msp!r} pv={mspv!r} s={mss!r} e={mse!r}")
    print(f"components setup, prompt, prompt x setup, seed, residual = {comps!r}")


if __name__ == "__main__":
    wilson()
    anova()
    kappa()
    exact_tests()
    sign_flip()
    holm()
    mde()
    repeats()
    calibration()
    sequential()
    sensitivity()
