"""VNN-COMP: the VNN-LIB format, the portfolio on one instance, and a benchmark run in
the competition's format."""
