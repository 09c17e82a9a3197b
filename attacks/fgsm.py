"""``fgsm``: the fast gradient sign method (one step of size eps on cross-entropy)."""

from __future__ import annotations

from foolbox.attacks import LinfFastGradientAttack

from attacks.foolbox_attack import FoolboxAttack
from bench.contract import BOOLEAN, check_options


class FGSM(FoolboxAttack):
    """``x_adv = clip(x + eps * sign(grad_x CE(f(x), y)))``; deterministic."""

    name = "fgsm"

    def __init__(self, *, random_start: bool = False) -> None:
        check_options(random_start=(random_start, BOOLEAN))
        self.random_start = random_start
        self.restarts = 1

    def make_attack(self) -> LinfFastGradientAttack:
        return LinfFastGradientAttack(random_start=self.random_start)
