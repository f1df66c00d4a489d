"""Ticket files of a user's own module: what the stored graph holds is what loads back."""

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from ticketlab.tickets.ticketfile import load_ticket, save_ticket


class _Spare(nn.Module):
    """A layer the forward never calls, and the classifier registered under a second name."""

    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv2d(3, 8, 3, padding=1)
        self.fc = nn.Linear(8, 4)
        self.spare = nn.Linear(8, 4)
        self.head = self.fc

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(F.relu(self.conv(x)).mean((2, 3)))


class _Flat(nn.Module):
    def __init__(self, height: int, width: int) -> None:
        super().__init__()
        self.conv = nn.Conv2d(3, 4, 3, padding=1)
        self.fc = nn.Linear(4 * height * width, 4)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc(F.relu(self.conv(x)).flatten(1))


def test_a_layer_the_forward_never_calls_or_calls_by_another_name_loads_back(tmp_path):
    torch.manual_seed(0)
    model = _Spare().eval()
    masks = {"conv.weight": torch.rand(8, 3, 3, 3) < 0.5, "fc.weight": torch.rand(4, 8) < 0.5,
             "spare.weight": torch.rand(4, 8) < 0.5}
    with torch.no_grad():
        for name, mask in masks.items():
            model.get_parameter(name).mul_(mask)
    path = save_ticket(tmp_path / "t.safetensors", model, masks, model_name=None, model_options={}, num_classes=4,
                       in_channels=3, image_size=8)
    ticket = load_ticket(path)
    x = torch.randn(2, 3, 8, 8)
    assert torch.allclose(ticket.model(x), model(x), atol=1e-6)
    assert set(ticket.masks) == {"conv.weight", "fc.weight"}  # the graph holds the shared layer once; no spare
    assert torch.equal(ticket.masks["fc.weight"], masks["fc.weight"])


@pytest.mark.parametrize("height, width", [(8, 12), (12, 8)])
def test_a_ticket_of_non_square_images_keeps_their_shape(tmp_path, height, width):
    model = _Flat(height, width).eval()
    path = save_ticket(tmp_path / "t.safetensors", model, {}, model_name=None, model_options={}, num_classes=4,
                       in_channels=3, image_size=height, image_width=width)
    ticket = load_ticket(path)
    assert ticket.input_shape == (3, height, width)
    x = torch.randn(2, 3, height, width)
    assert torch.allclose(ticket.model(x), model(x), atol=1e-6)
