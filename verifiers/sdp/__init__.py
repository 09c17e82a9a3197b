"""The paper's SDP relaxation for one hidden layer: the pair solver and its certificate;
the plugins ``sdp`` and ``sdp-dual``."""
