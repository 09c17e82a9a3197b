"""Complete verification by branch and bound: subdomains, branching, bounding, root
tightening, the search; the plugins ``bab`` and ``bab-cex``."""
