"""Training the paper's networks: recipes, objectives, the SDP regulariser and the
objective hooks (apart from the plugin hooks)."""
