import pytest
import torch

import ticketlab
from ticketlab.errors import TicketlabError
from ticketlab.store import RunStore
from ticketlab.train.dynamic import DynamicSparsity, initial_masks

from helpers import InterruptAt, TinyNet, tiny_dataset


class Watched(DynamicSparsity):
    """Records each update: the masks, weights and dense gradients before it, the masks and momentum after."""

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self._seen = []

    def _update(self, iteration):
        before = {n: (m.clone(), p.detach().clone(), self._grads.get(n)) for n, m, p in
                  zip(self.masks, self._current.values(), self._params)}
        super()._update(iteration)
        state = self._trainer.optimizer.state
        after = {n: (self._current[n].clone(), p.detach().clone(), state[p]["momentum_buffer"].clone())
                 for n, p in zip(self.masks, self._params)}
        self._seen.append((iteration, before, after))


def _net(seed=0):
    torch.manual_seed(seed)
    return TinyNet()


def _train(tmp_path, hook, net=None, **options):
    ds = tiny_dataset(n=96)
    return ticketlab.train(net or _net(), ds, store=tmp_path, epochs=4, batch_size=16, lr=0.05, hooks=[hook],
                           progress=False, **options)


def test_rigl_drops_the_smallest_weights_and_grows_where_the_gradient_is_largest(tmp_path, monkeypatch):
    import importlib

    dynamic = importlib.import_module("ticketlab.train.dynamic")  # `ticketlab.train` is also the function
    moves = []

    def recorded(*args):
        moves.append(plain(*args))
        return moves[-1]

    plain = dynamic.drop_and_grow
    monkeypatch.setattr(dynamic, "drop_and_grow", recorded)
    net = _net()
    hook = Watched("rigl", initial_masks(net, 0.3, "uniform"), every=3)
    result = _train(tmp_path, hook, net)
    layers = len(hook.masks)
    assert len(moves) == layers * len(hook._seen) and any(bool(grown.any()) for _, grown in moves)
    for k, (_, _, after) in enumerate(hook._seen):
        for (name, (_, trained, buffer)), (_, grown) in zip(after.items(), moves[layers * k:layers * (k + 1)]):
            # every grown weight starts from zero with no momentum, one just dropped and grown again too
            assert (trained[grown] == 0).all() and (buffer[grown] == 0).all(), name
    assert len(hook._seen) == 5  # 24 steps: updates after 3, 6, .., 15 (75% = 18 is the end)
    for _, before, after in hook._seen:
        for name, (old, weight, grad) in before.items():
            new, trained, momentum = after[name]
            assert int(new.sum()) == int(old.sum())  # RigL keeps each layer's density
            untouched = old & new & (trained == weight)  # a weight dropped and grown again restarts from zero
            dropped, grown = old & ~untouched, new & ~untouched
            if not grown.any():
                continue
            assert int(dropped.sum()) == int(grown.sum())
            assert weight.abs()[dropped].max() <= weight.abs()[untouched].min()
            assert grad[grown].min() >= grad[~untouched & ~grown].max()  # the largest among those free
            assert (trained[grown] == 0).all() and (momentum[grown] == 0).all()  # from zero, no stale momentum
    masks = hook.current
    assert any(not torch.equal(masks[n], m) for n, m in initial_masks(_net(), 0.3, "uniform").items())
    for name, param in result.model.named_parameters():
        if name in masks:
            assert (param.detach()[~masks[name]] == 0).all()  # pruned weights exactly zero
    saved = ticketlab.sparsity.load_masks(result.folder / "masks.safetensors")
    assert all(torch.equal(saved[n], masks[n]) for n in masks)


def test_set_grows_at_random_from_its_seed(tmp_path):
    runs = []
    for seed in (0, 0, 1):
        net = _net()
        hook = DynamicSparsity("set", initial_masks(net, 0.3, "uniform"), every=3, seed=seed)
        _train(tmp_path / f"store{len(runs)}", hook, net)
        runs.append(hook.current)
    assert all(torch.equal(runs[0][n], runs[1][n]) for n in runs[0])
    assert any(not torch.equal(runs[0][n], runs[2][n]) for n in runs[0])


def test_granet_prunes_on_the_cubic_schedule_to_its_final_density(tmp_path):
    net = _net()
    hook = Watched("granet", initial_masks(net, 1.0), every=2, final_density=0.2, alpha=0.3)
    _train(tmp_path, hook, net)
    densities = [DynamicSparsity.density({n: a[0] for n, a in after.items()}) for _, _, after in hook._seen]
    assert densities == sorted(densities, reverse=True) and densities[0] < 1.0
    end = round(0.75 * 24)  # a multiple of 2: the last update, at the final density
    assert hook._seen[-1][0] == end
    total = sum(m.numel() for m in hook.masks.values())
    for (iteration, _, _), d in zip(hook._seen, densities):
        target = 0.2 + 0.8 * (1 - iteration / end) ** 3
        assert abs(d - target) <= 1 / total
    assert DynamicSparsity.density(hook.current) == pytest.approx(0.2, abs=0.01)


def test_an_interrupted_dynamic_run_resumes_to_the_uninterrupted_result(tmp_path):
    def run(store, interrupt):
        net = _net()
        hook = DynamicSparsity("rigl", initial_masks(net, 0.3), every=3)
        hooks = [hook, InterruptAt(10)] if interrupt else [hook]
        ds = tiny_dataset(n=96)
        options = dict(store=store, epochs=4, batch_size=16, lr=0.05, progress=False)
        if interrupt:
            with pytest.raises(KeyboardInterrupt):
                ticketlab.train(net, ds, hooks=hooks, **options)
            net, hook = _net(), DynamicSparsity("rigl", initial_masks(_net(), 0.3), every=3)
            hooks = [hook]
        result = ticketlab.train(net, ds, hooks=hooks, **options)
        return result, hook.current

    plain, plain_masks = run(tmp_path / "a", False)
    resumed, resumed_masks = run(tmp_path / "b", True)
    assert plain.run_id == resumed.run_id
    assert all(torch.equal(plain_masks[n], resumed_masks[n]) for n in plain_masks)
    for (name, a), b in zip(plain.model.state_dict().items(), resumed.model.state_dict().values()):
        assert torch.equal(a, b), name


def test_the_method_and_its_settings_enter_the_run_id(tmp_path):
    net = _net()
    masks = initial_masks(net, 0.3)
    first = _train(tmp_path, DynamicSparsity("rigl", masks, every=3), net)
    assert _train(tmp_path, DynamicSparsity("rigl", masks, every=3), _net()).reused
    for other in (DynamicSparsity("set", masks, every=3), DynamicSparsity("rigl", masks, every=4),
                  DynamicSparsity("rigl", initial_masks(_net(), 0.3, seed=1), every=3)):
        run = _train(tmp_path, other, _net())
        assert not run.reused and run.run_id != first.run_id


@pytest.mark.parametrize("kwargs, message", [
    (dict(method="sparse"), "unknown dynamic sparse training method 'sparse'"),
    (dict(method="granet"), "GraNet prunes from the starting masks' density"),
    (dict(method="rigl", final_density=0.1), "a final density is GraNet's"),
    (dict(method="rigl", every=0), "--update-every must be a positive whole number"),
    (dict(method="rigl", alpha=1.0), "--update-fraction must be in"),
    (dict(method="rigl", end=0.0), "--update-end is the fraction of training"),
    (dict(method="rigl", alpha="0.3"), "--update-fraction must be a number, got '0.3'"),
    (dict(method="rigl", masks={}), "needs starting masks of at least one layer"),
])
def test_impossible_settings_are_user_errors(kwargs, message):
    with pytest.raises(TicketlabError, match=message):
        DynamicSparsity(**{"masks": initial_masks(_net(), 0.3), **kwargs})


def test_a_weight_average_is_refused_and_leaves_no_run(tmp_path):
    with pytest.raises(TicketlabError, match="would bring dropped weights back"):
        _train(tmp_path, DynamicSparsity("rigl", initial_masks(_net(), 0.3)), ema_decay=0.9, ema_every=1)
    assert RunStore(tmp_path).list() == []


@pytest.mark.gpu
def test_rigl_on_cuda_keeps_its_density_and_pruned_weights_at_zero(tmp_path):
    net = _net()
    hook = DynamicSparsity("rigl", initial_masks(net, 0.3, "uniform"), every=3)
    result = _train(tmp_path, hook, net, device="cuda")
    masks = hook.current
    assert any(not torch.equal(masks[n], m) for n, m in initial_masks(_net(), 0.3, "uniform").items())
    for name, param in result.model.named_parameters():
        if name in masks:
            assert (param.detach().cpu()[~masks[name]] == 0).all()
            assert int(masks[name].sum()) == round(0.3 * masks[name].numel())
