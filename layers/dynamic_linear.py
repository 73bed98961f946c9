"""Dynamic linear layer: y = x (W0 + dW(x)) + b, with dW predicted from a pooled context.

The context P (B, M, in) of M tokens summarises all N input tokens. A small hypernetwork maps
each context token to a pair of factors, a_m (in) and b_m (out), and the update is their summed
outer product, dW = sum_m a_m^T b_m / (sqrt(in) * n) = A^T B / (sqrt(in) * n). The weight has a
fixed in x out size whatever N, so the layer stays O(N) while every output token depends on
every input token through dW.

n is the full token count N when M grows with the grid (avg/max pools: the paper's convention,
which makes dW independent of resolution) and M for fixed-size contexts (a mean over them).
"""

from __future__ import annotations

import contextlib
import math

import torch
from torch import Tensor, nn
from torch.autograd.function import once_differentiable

from .dynamic_config import DynamicConfig
from .gating import create_gate
from .linear_predictors import LINEAR_PREDICTORS, FactorHead
from .pooling import create_pool
from .weight_norm import create_weight_norm

#: Norms that only divide each column of dW by a function of its L2 norm, and whether they do
#: (unit1: by norm + 1). With these the layer keeps the update factored (``_FactoredLinear``);
#: the others (layernorm, tanh) go through the full per-sample update.
_COLUMN_NORMS = {"none": False, "unit1": True}


class DynamicLinear(nn.Module):
    """A linear layer on (B, H, W, in) tokens whose weight is W0 + dW(x), one weight per sample."""

    def __init__(self, in_features: int, out_features: int, dyn: DynamicConfig):
        super().__init__()
        predictor, _ = LINEAR_PREDICTORS.parse(dyn.linear_predictor)
        # Stored as (in, out) so that y = x W reads as in the paper and feeds baddbmm directly.
        self.weight = nn.Parameter(torch.empty(in_features, out_features))
        self.bias = nn.Parameter(torch.empty(out_features))
        nn.init.trunc_normal_(self.weight, std=0.02)
        nn.init.trunc_normal_(self.bias, std=0.02)
        self.pool = create_pool(dyn.context_pool, in_features, dyn.pool_rounding)
        self.factors = FactorHead(
            in_features,
            out_features,
            predictor,
            rank_ratio=dyn.rank_ratio,
            hyper_depth=dyn.hyper_depth,
            act=dyn.linear_act,
        )
        self.norm = create_weight_norm(dyn.norm)
        self.unit1 = _COLUMN_NORMS.get(dyn.norm)
        self.gate = create_gate(dyn.gate, in_features, out_features, channel_dim=-1)
        self.scale = 1.0 / math.sqrt(in_features)

    def _factors(self, x: Tensor) -> tuple[Tensor, Tensor, Tensor]:
        """The context and dW's unnormalised factors (left^T right = A^T B / (sqrt(in) n))."""
        context = self.pool(x)
        count = x.shape[1] * x.shape[2] if self.pool.grows_with_grid else context.shape[1]
        return context, *self.factors.factors(context, self.scale / count)

    def delta(self, x: Tensor) -> Tensor:
        """The per-sample update dW of shape (B, in, out) for tokens x of shape (B, H, W, in)."""
        context, left, right = self._factors(x)
        dw = torch.bmm(left.transpose(1, 2), right)
        return self.gate(self.norm(dw, (1,)), context)

    def forward(self, x: Tensor) -> Tensor:
        batch, height, width, channels = x.shape
        tokens = x.reshape(batch, height * width, channels)
        if self.unit1 is None:
            y = torch.baddbmm(self.bias, tokens, self.weight + self.delta(x))
            return y.view(batch, height, width, y.shape[-1])
        context, left, right = self._factors(x)
        gate = self.gate.scale(context, 3)
        # Under autocast everything enters in the compute dtype, so the per-sample weight is
        # built in it once rather than in float32 and copied.
        device = x.device.type
        autocast = torch.amp.is_autocast_available(device) and torch.is_autocast_enabled(device)
        dtype = torch.get_autocast_dtype(device) if autocast else x.dtype
        inputs = [t if t is None else t.to(dtype) for t in (tokens, self.weight, self.bias, left, right, gate)]
        # Costing runs on meta tensors (layers.complexity) and takes the route the GMACs convention
        # describes, dW built (docs/design.md section 4); real tensors take the cheaper one.
        factored = not x.is_meta and _factored_is_cheaper(height * width, *left.shape[1:], self.weight.shape[1])
        with torch.autocast(device, enabled=False) if autocast else contextlib.nullcontext():
            y = _FactoredLinear.apply(*inputs, self.unit1, factored)
        return y.view(batch, height, width, y.shape[-1])


#: What the weight route's memory-bound passes over the per-sample weight (building, norm, scale,
#: reading it back, and their gradients) cost together on the CPU, in multiply-adds per weight
#: element (measured with benchmarks/layer_scaling.py: those passes against matmuls).
_PASS_MACS = 200


def _factored_is_cheaper(tokens: int, rank: int, inp: int, out: int) -> bool:
    """Whether working on the rank-r factors beats building the B x in x out per-sample weight.

    Per sample, the factored route's extra matmuls are N r (in + out) forward and N r (3 out + 2 in)
    backward; the weight route's are in r out forward and 2 in r out backward, plus its
    memory-bound passes over in x out elements (``_PASS_MACS`` per element for all of them),
    which decide small grids.
    """
    return tokens * rank * (4 * out + 3 * inp) <= 3 * inp * rank * out + _PASS_MACS * inp * out


def _column_scale(norm: Tensor | None, gate: Tensor | None) -> tuple[Tensor | None, Tensor | None]:
    """unit1's 1 / (norm + 1) (None without the norm), and that times the gate (None for neither)."""
    unit = None if norm is None else 1.0 / (norm + 1.0)
    if unit is None:
        return None, gate
    return unit, unit if gate is None else unit * gate


class _FactoredLinear(torch.autograd.Function):
    """y = x (W0 + s * left^T right) + b with s a per-sample, per-column scale: the unit1 norm's
    1 / (||column|| + 1) and the gate's.

    Without ``factored`` the forward builds the per-sample weight, once, in the inputs' dtype, with
    the matmuls the layer is costed by (docs/design.md section 4). With it, no B x in x out tensor
    is ever formed, forward or backward: with Z = x left^T the update's part of the output is
    (Z right) * s, and the norm's squared columns are right_j^T (left left^T) right_j.
    """

    @staticmethod
    def forward(ctx, x, w0, bias, left, right, gate, unit1, factored):
        # at least float32: a float16 column's sum of squares may overflow where its norm does not
        wide = torch.promote_types(x.dtype, torch.float32)
        ctx.factored = factored
        if factored:
            gram = norm = None
            if unit1:  # ||dW_j||^2 = right_j^T (left left^T) right_j
                wide_left, wide_right = left.to(wide), right.to(wide)
                gram = torch.bmm(wide_left, wide_left.transpose(1, 2))  # (B, r, r)
                norm = (torch.bmm(gram, wide_right) * wide_right).sum(1, keepdim=True).clamp_min_(0).sqrt_()
            _, scale = _column_scale(norm, gate)
            # s scales columns, so it folds into the small right factor: (Z right) s = Z (right s)
            right_s = right if scale is None else right * scale.to(right.dtype)
            z = torch.bmm(x, left.transpose(1, 2))  # (B, N, r)
            y = torch.addmm(bias, x.flatten(0, 1), w0).view(*z.shape[:2], w0.shape[1]).baddbmm_(z, right_s)
            ctx.save_for_backward(x, w0, left, right, norm, gate, z, gram)
            return y
        dw = torch.bmm(left.transpose(1, 2), right)  # (B, in, out)
        norm = torch.linalg.vector_norm(dw, dim=1, keepdim=True, dtype=wide) if unit1 else None
        _, scale = _column_scale(norm, gate)
        weight = dw.add_(w0) if scale is None else torch.addcmul(w0, dw, scale.to(dw.dtype))
        ctx.save_for_backward(x, w0, left, right, norm, gate)
        return torch.baddbmm(bias, x, weight)

    @staticmethod
    @once_differentiable  # its saved Z, Gram and norm are no graph: a second derivative would be wrong
    def backward(ctx, grad):
        x, w0, left, right, norm, gate, *kept = ctx.saved_tensors
        unit, scale = _column_scale(norm, gate)
        scale = None if scale is None else scale.to(grad.dtype)
        wide = torch.promote_types(grad.dtype, torch.float32)
        flat_x, flat_grad = x.flatten(0, 1), grad.flatten(0, 1)
        grad_bias = flat_grad.sum(0)
        if ctx.factored:
            z, gram = kept
            grad_w0 = flat_x.t() @ flat_grad
            right_s = right if scale is None else right * scale
            grad_z = torch.bmm(grad, right_s.transpose(1, 2))  # (B, N, r)
            grad_x = (flat_grad @ w0.t()).view_as(x).baddbmm_(grad_z, left)
            grad_left = torch.bmm(grad_z.transpose(1, 2), x)
            # Z^T grad (B, r, out) gives both the right factor's gradient and the scale's, without
            # a pass over B x N x out: d loss / d s_j = sum_n grad_nj (Z right)_nj
            z_grad = torch.bmm(z.transpose(1, 2), grad)
            grad_right = z_grad if scale is None else z_grad * scale
            grad_scale = (z_grad * right).sum(1, keepdim=True) if scale is not None else None
        else:
            dw = torch.bmm(left.transpose(1, 2), right)
            weight = dw + w0 if scale is None else torch.addcmul(w0, dw, scale)
            grad_x = torch.bmm(grad, weight.transpose(1, 2))
            grad_weight = torch.bmm(x.transpose(1, 2), grad)  # (B, in, out)
            grad_w0 = grad_weight.sum(0)
            grad_scale = torch.linalg.vecdot(grad_weight, dw, dim=1).unsqueeze(1) if scale is not None else None
            grad_dw = grad_weight if scale is None else grad_weight.mul_(scale)
        grad_gate = None
        if gate is not None:
            from_gate = grad_scale.to(wide) if unit is None else grad_scale.to(wide) * unit
            grad_gate = from_gate.sum_to_size(gate.shape).to(gate.dtype)
        if unit is not None:
            # s = 1 / (n + 1): d s / d n = -s^2; d n_j / d dW_ij = dW_ij / n_j (0 at n_j = 0)
            grad_unit = grad_scale.to(wide) if gate is None else grad_scale.to(wide) * gate
            per_norm = torch.where(norm > 0, -grad_unit * unit * unit / norm, 0.0).to(grad.dtype)  # (B, 1, out)
            if ctx.factored:
                gram = gram.to(grad.dtype)
                grad_right = grad_right.add_(torch.bmm(gram, right) * per_norm)
                grad_left = grad_left.add_(torch.bmm(torch.bmm(right * per_norm, right.transpose(1, 2)), left))
            else:
                grad_dw = grad_dw.addcmul_(dw, per_norm)
        if not ctx.factored:
            grad_left = torch.bmm(right, grad_dw.transpose(1, 2))
            grad_right = torch.bmm(left, grad_dw)
        return grad_x, grad_w0, grad_bias, grad_left, grad_right, grad_gate, None, None
