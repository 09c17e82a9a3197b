"""Solvers of the VNN-LIB standard's command line as certbench verifiers: the engine that
runs one and checks what it prints (:mod:`verifiers.external.standard_solver`), an
instance handed to one (:mod:`verifiers.external.instances`), and the ``external``
plugin (:mod:`verifiers.external.external`)."""
