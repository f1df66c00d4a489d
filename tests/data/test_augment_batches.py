import torch

from ticketlab.data.augment import Augment, cutout_mask, draw, finish, normalize, shift_and_flip, translate
from ticketlab.data.batches import DeviceData


def test_translate_is_a_zero_filled_shift():
    x = torch.arange(1, 17, dtype=torch.uint8).view(1, 1, 4, 4)
    out = translate(x, torch.tensor([1]), torch.tensor([-1]), 2)
    assert out[0, 0, 0].tolist() == [0, 5, 6, 7]
    assert out[0, 0, 3].tolist() == [0, 0, 0, 0]
    assert torch.equal(translate(x, torch.tensor([0]), torch.tensor([0]), 2), x)


def test_cutout_square_is_clipped_at_borders():
    keep = cutout_mask(torch.Size([1, 1, 6, 6]), torch.tensor([0]), torch.tensor([5]), 4, "cpu")[0, 0]
    assert (~keep).sum() == 2 * 3  # rows -2..1 -> 0..1, cols 3..6 -> 3..5


def test_epoch_order_and_draws_depend_only_on_seed_and_epoch():
    x = torch.randint(0, 255, (50, 3, 8, 8), dtype=torch.uint8)
    y = torch.arange(50) % 5
    data = DeviceData(x, y, (0.5,) * 3, (0.25,) * 3, "cpu", Augment(crop_padding=2, flip=True, cutout=3))
    a, b, c = data.epoch(0, 3), data.epoch(0, 3), data.epoch(0, 4)
    assert torch.equal(a.order, b.order) and not torch.equal(a.order, c.order)
    xa, ya, ia = data.batch(a, 1, 16)
    xb, yb, ib = data.batch(b, 1, 16)
    assert torch.equal(xa, xb) and torch.equal(ia, a.order[16:32]) and torch.equal(ya, y[ia])
    assert data.steps_per_epoch(16) == 4 and len(data.batch(a, 3, 16)[1]) == 2  # last batch kept
    assert data.steps_per_epoch(16, drop_last=True) == 3


def test_flip_draws_are_fair():
    d = draw(Augment(flip=True), 20000, 8, 8, torch.Generator().manual_seed(0))
    assert abs(d.flip.float().mean().item() - 0.5) < 0.02
    assert d.dy.eq(0).all()  # no padding, no shift


def test_reflect_translate_mirrors_across_the_border_like_reflect_padding():
    x = torch.randint(0, 255, (4, 3, 6, 6), dtype=torch.uint8)
    dy, dx = torch.tensor([-2, -1, 1, 2]), torch.tensor([2, 0, -2, 1])
    out = translate(x, dy, dx, 2, reflect=True)
    padded = torch.nn.functional.pad(x.float(), (2, 2, 2, 2), mode="reflect")
    for b in range(4):
        r, c = 2 + dy[b], 2 + dx[b]
        assert torch.equal(out[b].float(), padded[b, :, r:r + 6, c:c + 6])


def test_alternating_flips_invert_the_first_epochs_draw_on_odd_epochs():
    x = torch.randint(0, 255, (64, 3, 8, 8), dtype=torch.uint8)
    data = DeviceData(x, torch.arange(64) % 4, (0.5,) * 3, (0.25,) * 3, "cpu",
                      Augment(crop_padding=2, flip=True, alternate_flip=True))
    flips = [data.epoch(7, e).draws.flip for e in range(4)]
    assert 0 < flips[0].sum() < 64
    assert torch.equal(flips[1], ~flips[0]) and torch.equal(flips[2], flips[0]) and torch.equal(flips[3], ~flips[0])
    assert not torch.equal(data.epoch(8, 0).draws.flip, flips[0])  # a different seed, different first draw
    plain = DeviceData(x, torch.arange(64) % 4, (0.5,) * 3, (0.25,) * 3, "cpu", Augment(crop_padding=2, flip=True))
    assert not torch.equal(plain.epoch(7, 1).draws.flip, ~plain.epoch(7, 0).draws.flip)  # independent draws


def test_an_epoch_augmented_at_once_gives_the_batches_of_augmenting_each_batch():
    """Shifts and flips run over the whole epoch up front; a batch must equal its own augmentation."""
    x = torch.randint(0, 255, (50, 3, 8, 8), dtype=torch.uint8)
    aug = Augment(crop_padding=2, flip=True, cutout=3, reflect=True, alternate_flip=True)
    data = DeviceData(x, torch.arange(50) % 5, (0.5, 0.4, 0.3), (0.25, 0.2, 0.3), "cpu", aug)
    for e in (0, 1):
        ep = data.epoch(3, e)
        for step in range(4):
            inputs, _, idx = data.batch(ep, step, 16)
            d = ep.draws.take(idx)
            expected = finish(aug, shift_and_flip(aug, x[idx], d), d, data.mean, data.std)
            assert torch.equal(inputs, expected)
    inputs, _, idx = data.batch(data.epoch(3, 0), 0, 16)
    assert not torch.equal(inputs, normalize(x[idx], data.mean, data.std))  # the augmentation did something


def test_batches_come_in_the_requested_dtype_with_the_same_augmentation():
    x = torch.randint(0, 255, (40, 3, 8, 8), dtype=torch.uint8)
    aug = Augment(crop_padding=2, flip=True, cutout=3)
    single = DeviceData(x, torch.arange(40) % 4, (0.5, 0.4, 0.3), (0.25, 0.2, 0.3), "cpu", aug)
    double = DeviceData(x, torch.arange(40) % 4, (0.5, 0.4, 0.3), (0.25, 0.2, 0.3), "cpu", aug, dtype=torch.float64)
    plain = DeviceData(x, torch.arange(40) % 4, (0.5, 0.4, 0.3), (0.25, 0.2, 0.3), "cpu", Augment(),
                       dtype=torch.float64)
    a, _, ia = single.batch(single.epoch(1, 0), 1, 16)
    b, _, ib = double.batch(double.epoch(1, 0), 1, 16)
    assert a.dtype == torch.float32 and b.dtype == torch.float64 and torch.equal(ia, ib)
    assert torch.allclose(a.double(), b, atol=1e-6) and not torch.equal(a.double(), b)  # computed in float64
    assert plain.batch(plain.epoch(1, 0), 0, 8)[0].dtype == torch.float64  # unaugmented batches too
