import torch
import torch.nn.functional as F
from torch import nn

from ticketlab.data.augment import normalize
from ticketlab.train.evaluate import evaluate, predict


def _images(n):
    """n colour 8x8 uint8 images of 4 classes, with their normalisation."""
    x = torch.randint(0, 256, (n, 3, 8, 8), dtype=torch.uint8, generator=torch.Generator().manual_seed(0))
    return x, torch.arange(n) % 4, torch.tensor([0.5, 0.4, 0.3]), torch.tensor([0.2, 0.25, 0.3])


def test_flip_shift_tta_is_airbenchs_mirror_translate():
    """airbench: 0.5 * mirror(x) + 0.5 * mean over the (-1,-1) and (+1,+1) reflect-padded shifts of mirror(.)"""
    x, y, mean, std = _images(6)
    torch.manual_seed(0)
    model = nn.Sequential(nn.Flatten(), nn.Linear(3 * 8 * 8, 4))  # not mirror- or shift-invariant

    def mirror(inputs):
        return 0.5 * model(inputs) + 0.5 * model(inputs.flip(-1))

    inputs = normalize(x, mean, std)
    padded = F.pad(inputs, (1,) * 4, "reflect")
    shifted = [mirror(padded[:, :, 0:8, 0:8]), mirror(padded[:, :, 2:10, 2:10])]
    with torch.no_grad():
        logits = 0.5 * mirror(inputs) + 0.5 * torch.stack(shifted).mean(0)
    expected = F.cross_entropy(logits, y).item()
    got = evaluate(model, x, y, mean, std, tta="flip_shift")
    assert abs(got["loss"] - expected) < 1e-5
    assert abs(evaluate(model, x, y, mean, std)["loss"] - expected) > 1e-3  # TTA changes the logits


def test_batch_size_and_layout_change_nothing_but_speed():
    """The default batch size depends on the device and the trainer may evaluate channels-last:
    the figures must not."""
    torch.manual_seed(0)
    model = nn.Sequential(nn.Conv2d(3, 6, 3, padding=1), nn.BatchNorm2d(6), nn.ReLU(), nn.AdaptiveAvgPool2d(1),
                          nn.Flatten(), nn.Linear(6, 4))
    x = torch.randint(0, 256, (300, 3, 8, 8), dtype=torch.uint8)
    y = torch.randint(0, 4, (300,))
    mean, std = torch.full((3,), 120.0 / 255), torch.full((3,), 60.0 / 255)
    reference = evaluate(model, x, y, mean, std, batch_size=300)
    for options in ({}, {"batch_size": 7}, {"channels_last": True}):
        out = evaluate(model, x, y, mean, std, **options)
        assert out["accuracy"] == reference["accuracy"]
        assert abs(out["loss"] - reference["loss"]) < 1e-5


def test_evaluation_leaves_every_submodule_in_its_own_mode():
    model = nn.Sequential(nn.Flatten(), nn.Linear(3 * 4 * 4, 6), nn.BatchNorm1d(6), nn.Linear(6, 2)).train()
    model[2].eval()  # a BatchNorm the user froze
    x = torch.randint(0, 256, (4, 3, 4, 4), dtype=torch.uint8)
    evaluate(model, x, torch.arange(4) % 2, torch.zeros(3), torch.ones(3))
    assert [m.training for m in model] == [True, True, False, True]


def test_predict_gives_the_logits_evaluate_scores():
    """The selective-SAT coverage table is built from predict's logits: they must be evaluate's, TTA included."""
    x, y, mean, std = _images(40)
    torch.manual_seed(0)
    model = nn.Sequential(nn.Conv2d(3, 4, 3), nn.Flatten(), nn.Linear(4 * 6 * 6, 4))
    for tta in ("none", "flip", "flip_shift"):
        logits = predict(model, x, mean, std, batch_size=16, tta=tta)
        expected = evaluate(model, x, y, mean, std, tta=tta)
        assert int((logits.argmax(1) == y).sum()) == round(expected["accuracy"] * len(y))
        assert abs(F.cross_entropy(logits, y).item() - expected["loss"]) < 1e-5
