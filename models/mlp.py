"""ReLU multilayer perceptrons, the networks every verifier and attack works on.

``MLP([d, m1, ..., K])`` computes ``f(x) = L_k relu(... relu(L_1 x))`` with affine
layers ``L_i(z) = W_i z + b_i``; input ``x`` has shape ``(N, d)``, logits ``(N, K)``.
The paper's network is ``MLP([784, 500, 10])``: ``f(x) = V relu(W x + b) + c0``.
"""

from __future__ import annotations

import torch
from torch import nn


class MLP(nn.Module):
    """A fully connected ReLU network with the layer widths given, input first."""

    def __init__(self, widths: list[int] | tuple[int, ...]) -> None:
        super().__init__()
        if len(widths) < 2 or any(int(w) < 1 for w in widths):
            raise ValueError(f"an MLP needs at least two positive widths, got {widths}")
        self.widths = [int(w) for w in widths]
        self.linears = nn.ModuleList(
            nn.Linear(a, b) for a, b in zip(self.widths[:-1], self.widths[1:]))
        # tensors that travel with the weights, e.g. trained SDP dual vectors
        # (``sdp_dual.I.J``); not parameters, never used by ``forward``
        self.certificates: dict[str, torch.Tensor] = {}

    @property
    def hidden_layers(self) -> int:
        """Number of ReLU layers (0 for a linear classifier)."""
        return len(self.linears) - 1

    @property
    def input_dim(self) -> int:
        return self.widths[0]

    @property
    def num_classes(self) -> int:
        return self.widths[-1]

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """``x (N, d)`` -> logits ``(N, K)``."""
        z = x.reshape(x.shape[0], -1)
        for layer in self.linears[:-1]:
            z = torch.relu(layer(z))
        return self.linears[-1](z)

    def float64_copy(self) -> "MLP":
        """An independent copy in float64, in eval mode (for exact margins and bounds)."""
        copy = MLP(self.widths)
        copy.load_state_dict(self.state_dict())
        copy.certificates = dict(self.certificates)
        return copy.double().eval()

    def one_hidden_layer(self) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
        """``(W (m, d), b (m,), V (K, m), c0 (K,))`` of ``f = V relu(W x + b) + c0``.

        Raises ``ValueError`` unless the network has exactly one hidden layer.
        """
        if self.hidden_layers != 1:
            raise ValueError(f"expected one hidden layer, the network has {self.hidden_layers}")
        first, second = self.linears
        return first.weight, first.bias, second.weight, second.bias
