"""The multi-layer SDP relaxation (Raghunathan et al. 2018b): relaxation, certificate,
solvers; the plugin ``sdp-deep``."""
