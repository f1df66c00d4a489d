import pytest
import torch
from torch import nn

from ticketlab.errors import TicketlabError
from ticketlab.sparsity import semistructured
from ticketlab.sparsity.masks import nm_masks
from ticketlab.sparsity.semistructured import (
    is_two_four,
    kernel_problem,
    semi_structured_support,
    to_semi_structured,
)

from helpers import TinyNet

T, F = True, False


def test_cpu_is_not_supported_and_conversion_says_why():
    ok, reason = semi_structured_support("cpu")
    assert not ok and "CUDA" in reason
    model = TinyNet()
    masks = nm_masks({"fc.weight": torch.rand(4, 8)})
    with pytest.raises(TicketlabError, match="cannot run 2:4 sparse layers: .*CUDA"):
        to_semi_structured(model, masks)
    assert type(model.fc.weight) is nn.Parameter  # untouched


def test_gpus_need_compute_capability_8(monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "get_device_name", lambda device=None: "Tesla T4")
    monkeypatch.setattr(torch.cuda, "get_device_capability", lambda device=None: (7, 5))
    ok, reason = semi_structured_support("cuda")
    assert not ok and "Tesla T4" in reason and "7.5" in reason and "8.0" in reason
    monkeypatch.setattr(torch.cuda, "get_device_capability", lambda device=None: (8, 0))
    monkeypatch.setattr(torch.backends.cusparselt, "is_available", lambda: True)
    assert semi_structured_support(torch.device("cuda", 0))[0]
    monkeypatch.setattr(torch.backends.cusparselt, "is_available", lambda: False)
    ok, reason = semi_structured_support("cuda")
    assert not ok and "cuSPARSELt" in reason


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the message of a machine without CUDA")
def test_cuda_device_without_cuda():
    ok, reason = semi_structured_support("cuda")
    assert not ok and "CUDA is not available" in reason


def test_unknown_device_is_a_user_error():
    with pytest.raises(TicketlabError, match="unknown device"):
        semi_structured_support("gpu")


def test_two_four_detection_follows_nm_masks_grouping():
    assert is_two_four(torch.tensor([[T, F, T, F, F, F, T, T], [F, T, T, F, T, F, F, T]]))
    assert not is_two_four(torch.tensor([[T, T, T, F, F, F, T, T]]))  # 3 then 2
    assert not is_two_four(torch.tensor([[T, F, F, F, T, T, T, F]]))  # 1 then 3: 4 of 8, but not per group
    assert not is_two_four(torch.tensor([[T, F, F, F, T, T, F, F]]))  # 1 then 2: sparser is not 2:4 either
    assert not is_two_four(torch.tensor([[T, T, F, F, T, T]]))  # 6 inputs: not whole groups of 4
    assert not is_two_four(torch.zeros(0, 4, dtype=torch.bool)) and not is_two_four(torch.zeros(4, 0))  # empty
    assert not is_two_four(torch.ones(2, 4, 1, 1, dtype=torch.bool))  # conv weights have no 2:4 kernel
    # groups run along the input dimension (dim 1), as nm_masks makes them; 2 of 4 along the outputs is not 2:4
    mask = nm_masks({"w": torch.rand(8, 16, generator=torch.Generator().manual_seed(0))})["w"]
    assert is_two_four(mask)
    along_outputs = torch.tensor([[T, T, T, T], [F, F, F, F], [T, T, F, F], [F, F, T, T]])
    assert not is_two_four(along_outputs) and is_two_four(along_outputs.T)


def test_kernel_shape_and_dtype_filter():
    assert kernel_problem((32, 64), torch.float16) is None
    assert kernel_problem((96, 640), torch.bfloat16) is None
    assert "dtype" in kernel_problem((32, 64), torch.float32)
    assert "shape" in kernel_problem((16, 64), torch.float16)  # too few rows
    assert "shape" in kernel_problem((48, 64), torch.float16)  # rows not a multiple of 32
    assert "shape" in kernel_problem((32, 96), torch.float16)  # columns not a multiple of 64
    assert "shape" in kernel_problem((10, 128), torch.half)  # the usual classifier: 10 classes


class TwoLinears(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.hidden = nn.Linear(128, 64)
        self.out = nn.Linear(64, 10)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.out(torch.relu(self.hidden(x)))


def test_only_exact_two_four_linears_the_kernels_accept_are_converted(monkeypatch):
    # the choice of layers, without a GPU: support is faked and the "conversion" records the weight it gets
    monkeypatch.setattr(semistructured, "semi_structured_support", lambda device: (True, "faked"))
    given = {}
    monkeypatch.setattr(semistructured, "to_sparse_semi_structured", lambda w: given.setdefault("w", w))
    model = nn.ModuleDict(
        {
            "conv": nn.Conv2d(8, 32, 1),
            "hidden": nn.Linear(128, 64),
            "other": nn.Linear(128, 64),
            "out": nn.Linear(64, 10),
            "attn": nn.MultiheadAttention(64, 4),  # its out_proj fits the kernels, but attention reads it itself
        }
    ).half()
    g = torch.Generator().manual_seed(0)
    masks = nm_masks({f"{n}.weight": torch.rand(model[n].weight.shape, generator=g) for n in ("conv", "hidden", "out")})
    masks["attn.out_proj.weight"] = nm_masks({"w": torch.rand(64, 64, generator=g)})["w"]
    masks["other.weight"] = torch.rand(64, 128, generator=g) < 0.5
    with pytest.warns(UserWarning) as record:
        assert to_semi_structured(model, masks) == ["hidden.weight"]
    message = str(record[0].message)
    for reason in (
        "conv.weight: not an nn.Linear",
        "other.weight: mask is not exactly 2:4",
        "out.weight: weight shape",
        "attn.out_proj.weight: read by nn.MultiheadAttention's fused kernels",
    ):
        assert reason in message
    assert torch.equal(given["w"], (model.hidden.weight * masks["hidden.weight"]).detach())  # pruned weights are 0
    assert not model.hidden.weight.requires_grad and model.other.weight.requires_grad


@pytest.mark.gpu
@pytest.mark.skipif(
    torch.cuda.is_available() and not semi_structured_support("cuda")[0],
    reason="needs a CUDA GPU of compute capability >= 8.0 with cuSPARSELt",
)
def test_converted_linear_matches_the_dense_masked_layer():
    torch.manual_seed(0)
    model = TwoLinears().half().cuda()
    masks = nm_masks({n: p.detach().abs() for n, p in model.named_parameters() if n.endswith("weight")})
    x = torch.randn(64, 128, dtype=torch.half, device="cuda")
    with torch.no_grad():
        hidden = torch.relu(x @ (model.hidden.weight * masks["hidden.weight"]).T + model.hidden.bias)
        expected = hidden @ (model.out.weight * masks["out.weight"]).T + model.out.bias
    with pytest.warns(UserWarning, match=r"out\.weight: weight shape \(10, 64\)"):
        converted = to_semi_structured(model, masks)
    assert converted == ["hidden.weight"]
    assert isinstance(model.hidden.weight, torch.sparse.SparseSemiStructuredTensor)
    with torch.no_grad():
        torch.testing.assert_close(model(x), expected, rtol=1e-2, atol=1e-2)
