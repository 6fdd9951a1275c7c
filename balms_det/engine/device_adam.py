"""Adam on one tensor, every decision on the tensor's device (the Meta Reweigher's ``psi``).

``torch.optim.Adam`` keeps its step count on the host, so skipping a step whose gradient is not
finite needs a read of the gradient (a host-device sync every step). :class:`DeviceAdam` keeps
the step count on the device and takes ``ok``, a 0-d bool tensor: where it is false the
parameter, the moments and the step count are left as they were, decided on the device.

The update is Adam's (Kingma & Ba 2015), as ``torch.optim.Adam`` computes it without weight
decay or AMSGrad: ``m <- b1 m + (1 - b1) g``, ``v <- b2 v + (1 - b2) g^2``,
``p <- p - lr / (1 - b1^t) * m / (sqrt(v) / sqrt(1 - b2^t) + eps)``. Its ``state_dict`` has the
layout of ``torch.optim.Adam``'s (``state[0]`` with ``step``, ``exp_avg``, ``exp_avg_sq``;
``param_groups[0]`` with ``lr``, ``betas``, ``eps``), so checkpoints of either load into it.
"""

import torch

__all__ = ["DeviceAdam"]


class DeviceAdam:
    """Adam on ``param`` (a tensor or Parameter, updated in place) with device-side skips."""

    def __init__(self, param, lr, betas=(0.9, 0.999), eps=1e-8):
        if not lr > 0:
            raise ValueError(f"DeviceAdam: lr must be > 0, got {lr}")
        self.param = param
        self.lr = float(lr)
        self.betas = (float(betas[0]), float(betas[1]))
        self.eps = float(eps)
        self._reset_state()

    def _reset_state(self):
        p = self.param.detach()
        self.step_count = torch.zeros((), dtype=torch.float32, device=p.device)
        self.exp_avg = torch.zeros_like(p)
        self.exp_avg_sq = torch.zeros_like(p)

    def to(self, device):
        """Move the state to ``device`` (the parameter is the caller's)."""
        self.step_count = self.step_count.to(device)
        self.exp_avg = self.exp_avg.to(device)
        self.exp_avg_sq = self.exp_avg_sq.to(device)
        return self

    @torch.no_grad()
    def step(self, grad, ok=None):
        """One Adam step with ``grad`` (same shape as the parameter); none where the 0-d bool
        tensor ``ok`` is false (no host-device sync either way)."""
        b1, b2 = self.betas
        p = self.param.detach()
        grad = grad.to(p)
        t = self.step_count + 1
        # bias corrections in float64 (float32 loses 1 - 0.999^t), applied in p's dtype
        t64 = t.to(torch.float32 if t.device.type == "mps" else torch.float64)
        step_size = self.lr / (1.0 - b1**t64)
        m = self.exp_avg.lerp(grad, 1.0 - b1)
        v = torch.addcmul(self.exp_avg_sq * b2, grad, grad, value=1.0 - b2)
        denom = v.sqrt() / (1.0 - b2**t64).sqrt() + self.eps
        new = p + (-step_size * m) / denom
        if ok is not None:
            t = torch.where(ok, t, self.step_count)
            m = torch.where(ok, m, self.exp_avg)
            v = torch.where(ok, v, self.exp_avg_sq)
            new = torch.where(ok, new, p)
        self.step_count, self.exp_avg, self.exp_avg_sq = t, m, v
        p.copy_(new)

    def state_dict(self):
        """``torch.optim.Adam``'s layout, tensors on the CPU."""
        return {
            "state": {
                0: {
                    "step": self.step_count.detach().cpu().clone(),
                    "exp_avg": self.exp_avg.detach().cpu().clone(),
                    "exp_avg_sq": self.exp_avg_sq.detach().cpu().clone(),
                }
            },
            "param_groups": [
                {
                    "lr": self.lr,
                    "betas": self.betas,
                    "eps": self.eps,
                    "weight_decay": 0.0,
                    "amsgrad": False,
                    "maximize": False,
                    "params": [0],
                }
            ],
        }

    def load_state_dict(self, state):
        """From :meth:`state_dict` or ``torch.optim.Adam.state_dict()`` of one parameter (its
        lr, betas and eps are taken, as ``torch.optim.Adam.load_state_dict`` does)."""
        groups = state.get("param_groups") or [{}]
        if len(groups) != 1 or len(groups[0].get("params", [0])) != 1:
            raise ValueError("DeviceAdam: the optimizer state must hold exactly one parameter")
        group = groups[0]
        for key in ("weight_decay",):
            if group.get(key, 0.0):
                raise ValueError(f"DeviceAdam: a state with {key}={group[key]} is not Adam's")
        if group.get("amsgrad", False):
            raise ValueError("DeviceAdam: a state with amsgrad=True is not plain Adam's")
        self.lr = float(group.get("lr", self.lr))
        self.betas = tuple(float(b) for b in group.get("betas", self.betas))
        self.eps = float(group.get("eps", self.eps))
        self._reset_state()
        entries = list(state.get("state", {}).values())
        if not entries:
            return
        s, p = entries[0], self.param.detach()
        for name in ("exp_avg", "exp_avg_sq"):
            if tuple(s[name].shape) != tuple(p.shape):
                raise ValueError(
                    f"DeviceAdam: checkpointed {name} has shape {tuple(s[name].shape)}, the "
                    f"parameter {tuple(p.shape)}"
                )
        self.step_count = torch.as_tensor(s["step"], dtype=torch.float32).to(p.device).clone()
        self.exp_avg = s["exp_avg"].to(device=p.device, dtype=p.dtype).clone()
        self.exp_avg_sq = s["exp_avg_sq"].to(device=p.device, dtype=p.dtype).clone()
