"""A cosine classifier (normalized linear layer), optional for the box predictor."""

import torch
from torch import nn
from torch.nn import functional as F

__all__ = ["NormedLinear"]


class NormedLinear(nn.Linear):
    """Cosine classifier: ``tau * <x / |x|, w_j / |w_j|> + b_j``.

    A subclass of ``nn.Linear`` with the same parameters (``weight`` (out, in), ``bias``
    (out,)), so its checkpoints load into a plain linear layer and back. The bias is kept for
    that layout compatibility (mmdetection's NormedLinear keeps one too) and is initialised to
    0; the weight is initialised N(0, 0.01^2) like Detectron2's ``cls_score``. The norms are
    computed in float32 (``eps`` guards a zero row).

    Args:
        in_features, out_features: as ``nn.Linear`` (out = K+1 for the Seesaw head).
        tau: temperature (20 in the published LVIS recipe).
        bias: keep a bias (default True).
        eps: added to the norms.

    Shapes: input (R, in_features) (higher-dimensional inputs are flattened from dim 1),
    output (R, out_features).
    """

    def __init__(
        self,
        in_features: int,
        out_features: int,
        tau: float = 20.0,
        bias: bool = True,
        eps: float = 1e-6,
        device=None,
        dtype=None,
    ):
        if not float(tau) > 0:
            raise ValueError(f"NormedLinear: tau must be > 0, got {tau}")
        self.tau = float(tau)
        self.eps = float(eps)
        super().__init__(in_features, out_features, bias=bias, device=device, dtype=dtype)

    def reset_parameters(self) -> None:
        nn.init.normal_(self.weight, std=0.01)
        if self.bias is not None:
            nn.init.zeros_(self.bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if x.dim() > 2:
            x = x.flatten(1)
        xf = x.float()
        wf = self.weight.float()
        x_n = (xf / (xf.norm(p=2, dim=1, keepdim=True) + self.eps)).to(x.dtype)
        w_n = (wf / (wf.norm(p=2, dim=1, keepdim=True) + self.eps)).to(x.dtype)
        out = self.tau * F.linear(x_n, w_n)
        if self.bias is not None:
            out = out + self.bias.to(out.dtype)
        return out

    def extra_repr(self) -> str:
        return f"{super().extra_repr()}, tau={self.tau}"
