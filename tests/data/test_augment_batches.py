import torch

from ticketlab.data.augment import Augment, cutout_mask, draw, translate
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


def test_flip_draws_are_fair():
    d = draw(Augment(flip=True), 20000, 8, 8, torch.Generator().manual_seed(0))
    assert abs(d.flip.float().mean().item() - 0.5) < 0.02
    assert d.dy.eq(0).all()  # no padding, no shift
