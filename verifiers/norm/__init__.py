"""Norm bounds of the paper (eq. 17-18): the plugins ``spectral`` and ``frobenius``."""
