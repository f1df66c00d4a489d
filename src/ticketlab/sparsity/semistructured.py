"""2:4 masks on sparse tensor cores (N:M sparsity, 2 of every 4 weights kept).

PyTorch's semi-structured sparse tensors (`torch.sparse.to_sparse_semi_structured`) store a weight whose every
group of 4 consecutive entries along the input dimension holds exactly 2 kept values, and multiply it on the
sparse tensor cores of CUDA GPUs of compute capability 8.0 or newer. Only matrix multiplies use them, so only
`nn.Linear` layers gain (about 1.1-1.4x on large shapes, slower on small ones: measure); there is no 2:4
convolution. `nm_masks(n=2, m=4)` makes masks with exactly this grouping for a Linear [out, in].

Kernel limits, for the two backends PyTorch picks from (cuSPARSELt and CUTLASS): float16 or bfloat16 weights,
a 2-D weight whose rows are a multiple of 32 and columns a multiple of 64 (cuSPARSELt alone needs 16 and 16,
CUTLASS 32 and 64; float32 is only 1:2 sparse on CUTLASS, so it is left out). Batch sizes need nothing: PyTorch
pads the dense input itself.
"""

from __future__ import annotations

import warnings

import torch
from torch import nn
from torch.sparse import SparseSemiStructuredTensor, to_sparse_semi_structured

from ticketlab.errors import TicketlabError
from ticketlab.sparsity.masks import Masks, check_masks

_DTYPES = (torch.float16, torch.bfloat16)
_MULTIPLE = (32, 64)  # rows (out_features), columns (in_features) of the weight


def semi_structured_support(device: torch.device | str) -> tuple[bool, str]:
    """(ok, reason in words): whether `device` runs 2:4 sparse Linear layers."""
    try:
        device = torch.device(device)
    except RuntimeError:
        raise TicketlabError(f"unknown device {device!r}; use 'cuda', 'cuda:0', 'cpu', ...") from None
    if device.type != "cuda":
        return False, f"2:4 semi-structured kernels run only on CUDA GPUs, not on {device.type}"
    if not torch.cuda.is_available():
        return False, "CUDA is not available (no NVIDIA GPU, or a PyTorch build without CUDA)"
    name = torch.cuda.get_device_name(device)
    major, minor = torch.cuda.get_device_capability(device)
    if (major, minor) < (8, 0):
        return False, f"{name} has compute capability {major}.{minor}; 2:4 sparse tensor cores need 8.0 or newer"
    if not torch.backends.cusparselt.is_available():
        return False, "this PyTorch build has no cuSPARSELt, the library torch.sparse.to_sparse_semi_structured uses"
    return True, f"{name} (compute capability {major}.{minor}) runs 2:4 sparse Linear layers"


def is_two_four(mask: torch.Tensor) -> bool:
    """Whether a 2-D mask keeps exactly 2 of every 4 consecutive entries along dim 1 (the input dimension)."""
    if mask.dim() != 2 or mask.shape[1] % 4 or mask.numel() == 0:
        return False
    return bool((mask.bool().reshape(mask.shape[0], -1, 4).sum(-1) == 2).all())


def kernel_problem(shape: tuple[int, ...], dtype: torch.dtype) -> str | None:
    """Why the 2:4 kernels refuse a Linear weight of this shape and dtype, or None when they accept it."""
    if dtype not in _DTYPES:
        return f"dtype {dtype} (the 2:4 kernels take float16 or bfloat16: convert the model with .half() first)"
    rows, cols = shape
    if rows < _MULTIPLE[0] or rows % _MULTIPLE[0] or cols < _MULTIPLE[1] or cols % _MULTIPLE[1]:
        return f"weight shape ({rows}, {cols}) (out_features must be a multiple of 32, in_features of 64)"
    return None


def _why_dense(layer: nn.Module | None, mask: torch.Tensor, in_attention: bool) -> str | None:
    if in_attention:
        return "read by nn.MultiheadAttention's fused kernels, which take no sparse weight"
    if not isinstance(layer, nn.Linear):
        return "not an nn.Linear weight (there is no 2:4 convolution)"
    if isinstance(layer.weight, SparseSemiStructuredTensor):
        return "already semi-structured"
    if not is_two_four(mask):
        return "mask is not exactly 2:4 (make it with nm_masks(n=2, m=4))"
    return kernel_problem(tuple(layer.weight.shape), layer.weight.dtype)


@torch.no_grad()
def to_semi_structured(model: nn.Module, masks: Masks) -> list[str]:
    """Replace, in place, the weights of the Linear layers whose masks are exactly 2:4 by semi-structured sparse
    tensors; returns the names converted.

    Every masked weight is masked first, the ones left dense too, so the model computes the ticket whatever
    converts. Converted weights are for inference: they no longer take gradients or masks. Every masked layer left
    dense is named with its reason in one warning. Raises TicketlabError when a masked weight's device cannot
    run 2:4.
    """
    check_masks(model, masks)
    params = dict(model.named_parameters())
    for device in {params[name].device for name in masks}:
        ok, reason = semi_structured_support(device)
        if not ok:
            raise TicketlabError(f"cannot run 2:4 sparse layers: {reason}; move the model to an Ampere or newer GPU")
    # an attention block's output projection is a Linear whose weight MultiheadAttention reads itself, in fused
    # kernels that take no sparse tensor: it stays dense
    inside_attention = {f"{n}.{child}.weight" if n else f"{child}.weight" for n, m in model.named_modules()
                        if isinstance(m, nn.MultiheadAttention) for child, _ in m.named_modules() if child}
    linears = {f"{n}.weight" if n else "weight": m for n, m in model.named_modules() if isinstance(m, nn.Linear)}
    converted, dense = [], []
    for name, mask in masks.items():
        reason = _why_dense(linears.get(name), mask, name in inside_attention)
        weight = params[name]
        if not isinstance(weight, SparseSemiStructuredTensor):
            weight.mul_(mask.to(device=weight.device, dtype=weight.dtype))
        if reason is not None:
            dense.append(f"{name}: {reason}")
            continue
        with warnings.catch_warnings():  # torch calls the API a prototype at every conversion; README says so once
            warnings.filterwarnings("ignore", message="The PyTorch API of SparseSemiStructuredTensor")
            sparse = to_sparse_semi_structured(weight.detach().contiguous())
        linears[name].weight = nn.Parameter(sparse, requires_grad=False)
        converted.append(name)
    if dense:
        warnings.warn("layers left dense: " + "; ".join(dense), stacklevel=2)
    return converted
