import pytest
import torch
from torch import nn

from ticketlab.errors import TicketlabError
from ticketlab.speed import forward_flops, masked_module, measure, speedup


class _Probe(nn.Module):
    """A conv net that records the memory layout of what it is given."""

    def __init__(self, width: int = 4) -> None:
        super().__init__()
        self.conv = nn.Conv2d(3, width, 3, padding=1)
        self.fc = nn.Linear(width, 2)
        self.channels_last_inputs: list[bool] = []

    def forward(self, x):
        self.channels_last_inputs.append(x.is_contiguous(memory_format=torch.channels_last))
        return self.fc(self.conv(x).mean((2, 3)))


@pytest.mark.parametrize("channels_last", [True, False])
def test_every_variant_runs_in_the_same_layout(channels_last):
    variants = {"dense": _Probe(8), "small": _Probe(2)}
    timings = measure(variants, (3, 8, 8), (1, 4), repeats=2, warmup=1, min_seconds=0.0,
                      channels_last=channels_last)
    for model in variants.values():
        assert model.conv.weight.is_contiguous(memory_format=torch.channels_last) == channels_last
        assert model.channels_last_inputs and set(model.channels_last_inputs) == {channels_last}
    assert [(t.variant, t.batch_size) for t in timings] == [("dense", 1), ("small", 1), ("dense", 4), ("small", 4)]
    assert speedup(timings, "dense", 4) == 1.0 and speedup(timings, "small", 4) > 0


class _Views(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.conv, self.fc = nn.Conv2d(3, 2, 3, padding=1), nn.Linear(2 * 4 * 4, 2)

    def forward(self, x):
        y = self.conv(x)
        return self.fc(y.view(y.size(0), -1))


class _OptsOut(_Views):
    channels_last = False


def test_a_variant_that_cannot_run_is_a_user_error_and_an_opt_out_of_channels_last_holds_for_all():
    with pytest.raises(TicketlabError, match=r"variant 'views' calls \.view\(\).*--layout nchw"):
        measure({"probe": _Probe(), "views": _Views()}, (3, 4, 4), (2,), repeats=1, warmup=0, min_seconds=0.0)
    with pytest.raises(TicketlabError, match=r"variant 'dense' fails on an input of shape \(1, 3, 5, 5\)"):
        measure({"dense": _Views()}, (3, 5, 5), (2,), repeats=1, warmup=0, min_seconds=0.0, channels_last=False)
    probe = _Probe()
    measure({"probe": probe, "views": _OptsOut()}, (3, 4, 4), (2,), repeats=1, warmup=0, min_seconds=0.0)
    assert set(probe.channels_last_inputs) == {False}


def test_a_batch_size_given_twice_is_timed_once_and_progress_goes_to_stderr(capsys):
    timings = measure({"a": _Probe(), "b": _Probe()}, (3, 4, 4), (2, 2), repeats=2, warmup=0, min_seconds=0.0,
                      progress=True)
    assert [(t.variant, t.batch_size) for t in timings] == [("a", 2), ("b", 2)]
    out, err = capsys.readouterr()
    assert out == "" and "timing" in err and "/6 " in err  # per variant: sizing call + 2 repetitions


def test_non_image_inputs_keep_their_layout():
    timings = measure({"mlp": nn.Linear(6, 2)}, (6,), (3,), repeats=1, warmup=0, min_seconds=0.0)
    assert timings[0].ratio == 1.0 and timings[0].throughput > 0


class _Unmovable(nn.Linear):
    """Like a Linear with 2:4 semi-structured weights: built on its device, never moved again."""

    def _apply(self, fn, recurse=True):
        raise AssertionError("measure moved a model that was already in place")


def test_a_model_already_in_place_is_not_moved_again():
    timings = measure({"mlp": _Unmovable(8, 2)}, (8,), (4,), repeats=1, warmup=0, min_seconds=0.0)
    assert timings[0].throughput > 0
    probe = _Probe()  # NCHW weights asked to run channels-last: moved, as before
    measure({"conv": probe}, (3, 8, 8), (2,), repeats=1, warmup=0, min_seconds=0.0, channels_last=True)
    assert probe.conv.weight.is_contiguous(memory_format=torch.channels_last)


def test_masked_variant_computes_the_masked_function():
    model = _Probe()
    mask = (torch.rand_like(model.conv.weight) < 0.5).float()
    masked = masked_module(model, {"conv.weight": mask})
    x = torch.randn(2, 3, 8, 8)
    with torch.no_grad():
        model.conv.weight.mul_(mask)
        assert torch.allclose(masked(x), model(x), atol=1e-6)


def test_forward_flops_counts_two_per_multiply_accumulate_of_convolutions_and_matmuls():
    # conv: width x 3 x 3 x 3 multiply-accumulates at each of 8 x 8 positions; fc: width x 2
    for width in (2, 8):
        assert forward_flops(_Probe(width), (3, 8, 8)) == 2 * (width * 27 * 64 + width * 2)
    model = _Probe(8)
    mask = torch.zeros_like(model.conv.weight)
    assert forward_flops(masked_module(model, {"conv.weight": mask}), (3, 8, 8)) == forward_flops(model, (3, 8, 8))


def test_forward_flops_runs_batchnorm_on_one_example_and_leaves_the_model_as_it_was():
    model = nn.Sequential(nn.Linear(6, 4), nn.BatchNorm1d(4), nn.Linear(4, 3)).train()
    before = {k: v.clone() for k, v in model.state_dict().items()}
    assert forward_flops(model, (6,)) == 2 * (6 * 4 + 4 * 3)
    assert model.training
    assert all(torch.equal(before[k], v) for k, v in model.state_dict().items())
    model[1].eval()  # a BatchNorm the user froze stays frozen
    forward_flops(model, (6,))
    assert model.training and model[0].training and not model[1].training


def test_bad_requests_are_user_errors():
    with pytest.raises(TicketlabError, match="at least one"):
        measure({}, (3, 8, 8))
    with pytest.raises(TicketlabError, match="positive"):
        measure({"a": _Probe()}, (3, 8, 8), (0,))
    with pytest.raises(TicketlabError, match="no timing"):
        speedup([], "compacted", 64)
    with pytest.raises(TicketlabError, match="CUDA graphs need a CUDA device"):
        measure({"a": _Probe()}, (3, 8, 8), (2,), cuda_graph=True)
    with pytest.raises(TicketlabError, match="not both"):
        measure({"a": _Probe()}, (3, 8, 8), (2,), device="cuda", cuda_graph=True, compiled=True)
    with pytest.raises(TicketlabError, match=r"variant 'a' holds torch.float32 weights.*model.to\(torch.bfloat16\)"):
        measure({"a": nn.Conv2d(3, 4, 3)}, (3, 8, 8), (1,), dtype=torch.bfloat16)


def test_batch_sizes_whose_activations_cannot_fit_are_refused_before_any_timing(monkeypatch):
    from ticketlab import speed

    probe = _Probe(8)  # widest activation: the conv's 8 x 8 x 8 floats, 2 KiB per example
    monkeypatch.setattr(speed, "_available_bytes", lambda device: 3 * 2048 * 100)  # room for 100 examples
    with pytest.raises(TicketlabError, match=r"batch size 101 .* at most 100"):
        measure({"dense": probe}, (3, 8, 8), (1, 101), repeats=1, warmup=0, min_seconds=0.0)
    assert len(probe.channels_last_inputs) == 1  # only the sizing pass ran: nothing was timed
    timings = measure({"dense": probe}, (3, 8, 8), (100,), repeats=1, warmup=0, min_seconds=0.0)
    assert timings[0].batch_size == 100
    monkeypatch.setattr(speed, "_available_bytes", lambda device: None)  # unknown: not checked
    assert measure({"dense": _Probe(8)}, (3, 8, 8), (10**4,), repeats=1, warmup=0, min_seconds=0.0)


@pytest.mark.gpu
def test_cuda_graph_timings_replay_the_captured_forward():
    """The graph runs the real forward (the probe records its captured call, not each replay)."""
    probe, other = _Probe(), _Probe(width=8)
    timings = measure({"a": probe, "b": other}, (3, 8, 8), (4,), device="cuda", warmup=1, repeats=2,
                      cuda_graph=True)
    assert [t.variant for t in timings] == ["a", "b"] and all(t.latency_ms > 0 for t in timings)
    # warm-up, side-stream warm-up and capture each call forward once; replays do not
    assert len(probe.channels_last_inputs) == 3


class _Counted(nn.Module):
    """A conv net that counts the forward passes run eagerly, that is, not from compiled code."""

    def __init__(self, width: int) -> None:
        super().__init__()
        self.conv = nn.Conv2d(3, width, 3, padding=1)
        self.bn = nn.BatchNorm2d(width)
        self.fc = nn.Linear(width, 2)
        self.eager_calls = 0

    def forward(self, x):
        if not torch.compiler.is_compiling():
            self.eager_calls += 1
        return self.fc(torch.relu(self.bn(self.conv(x))).mean((2, 3)))


def test_compiled_timings_run_compiled_code_for_every_variant_and_batch_size():
    # nine compilations of one forward, then two more: past dynamo's default of eight, after which
    # it would silently run the rest eagerly
    variants = {f"w{width}": _Counted(width) for width in (2, 3, 4)}
    timings = measure(variants, (3, 8, 8), (1, 2, 3), repeats=2, warmup=1, min_seconds=0.0, compiled=True)
    assert [(t.variant, t.batch_size) for t in timings][:3] == [("w2", 1), ("w3", 1), ("w4", 1)]
    assert all(t.latency_ms > 0 for t in timings)
    assert [m.eager_calls for m in variants.values()] == [1, 1, 1]  # the memory check's sizing pass alone
    again = {"w5": _Counted(5)}  # dynamo's count per forward includes the compilations above
    measure(again, (3, 8, 8), (1, 2), repeats=1, warmup=1, min_seconds=0.0, compiled=True)
    assert again["w5"].eager_calls == 1
    eager = _Counted(2)
    measure({"eager": eager}, (3, 8, 8), (1,), repeats=2, warmup=1, min_seconds=0.0)
    assert eager.eager_calls == 5  # memory sizing, warm-up, the call that sizes a repetition, two repetitions


def test_a_model_that_cannot_compile_is_a_user_error(monkeypatch):
    def broken(model, **kwargs):
        def forward(x):
            raise RuntimeError("Compiler: cc not found\nmore detail")
        return forward

    monkeypatch.setattr(torch, "compile", broken)
    with pytest.raises(TicketlabError, match=r"'a' cannot be compiled by torch.compile \(Compiler: cc not found\)"):
        measure({"a": _Probe()}, (3, 8, 8), (2,), repeats=1, compiled=True)


@pytest.mark.gpu
def test_compiled_timings_on_cuda_run_compiled_code():
    variants = {"a": _Counted(4), "b": _Counted(8)}
    timings = measure(variants, (3, 8, 8), (2, 4), device="cuda", warmup=1, repeats=2, compiled=True)
    assert all(t.latency_ms > 0 for t in timings)
    assert [m.eager_calls for m in variants.values()] == [0, 0]
