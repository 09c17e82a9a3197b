"""Linear bound propagation: the engine (intervals, backward linear relaxation, optimised
slopes) and the plugins ``ibp``, ``lp``, ``crown`` and ``alpha-crown`` over it."""
