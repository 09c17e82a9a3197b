"""The ReLU program (LP and MILP with HiGHS) and the per-sample MILP verdicts; the
plugins ``lp-exact``, ``milp`` and ``milp-cex``."""
