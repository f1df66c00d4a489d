import json

import pytest
import torch

import ticketlab
from ticketlab.errors import TicketlabError
from ticketlab.sparsity import save_masks
from ticketlab.tickets.signature import Signature, connectivity, embed, verify

from helpers import run_cli, tiny_dataset


def _ticket(seed=0, density=0.3):
    g = torch.Generator().manual_seed(seed)
    weights = {"conv.weight": torch.randn(48, 40, 3, 3, generator=g), "fc.weight": torch.randn(10, 48, generator=g)}
    masks = {n: torch.rand(w.shape, generator=g) < density for n, w in weights.items()}
    return weights, masks


def test_the_code_is_written_at_the_keyed_place_and_the_weight_count_is_kept():
    weights, masks = _ticket()
    signature = Signature("conv.weight", "my secret", 16, 12)
    signed = embed(masks, signature, weights)
    row, col, code = signature.place((48, 40, 3, 3))
    after = signed["conv.weight"]
    assert torch.equal(connectivity(after)[row:row + 16, col:col + 12], code)
    assert int(after.sum()) == int(masks["conv.weight"].sum()) and torch.equal(signed["fc.weight"], masks["fc.weight"])
    inside = torch.zeros(48, 40, dtype=torch.bool)
    inside[row:row + 16, col:col + 12] = True
    before = masks["conv.weight"]
    switched_on = code & ~connectivity(before)[row:row + 16, col:col + 12]
    for i, j in switched_on.nonzero().tolist():  # one weight, the kernel's largest
        kernel = after[row + i, col + j]
        assert int(kernel.sum()) == 1 and kernel.flatten()[weights["conv.weight"][row + i, col + j].abs().argmax()]
    # outside the code only the rebalancing moved weights, the largest pruned ones there added back (the code
    # switched off more weights than it switched on)
    outside = ~inside[:, :, None, None].expand_as(after)
    added, size = outside & ~before & after, weights["conv.weight"].abs()
    assert not (outside & before & ~after).any() and added.any()
    assert size[added].min() >= size[outside & ~after].max()
    sparse = {"conv.weight": masks["conv.weight"] & (torch.rand(48, 40, 3, 3) < 0.1)}  # now it switches more on
    after = embed(sparse, signature, weights)["conv.weight"]
    dropped = outside & sparse["conv.weight"] & ~after
    assert int(after.sum()) == int(sparse["conv.weight"].sum()) and dropped.any()
    assert not (outside & ~sparse["conv.weight"] & after).any()
    assert size[dropped].max() <= size[outside & after].min()


def test_the_place_and_code_follow_the_key_and_the_layer():
    a = Signature("conv.weight", "key one").place((64, 64, 3, 3))
    assert a[0] == Signature("conv.weight", "key one").place((64, 64, 3, 3))[0]
    assert torch.equal(a[2], Signature("conv.weight", "key one").place((64, 64, 3, 3))[2])
    for other in (Signature("conv.weight", "key two"), Signature("other.weight", "key one")):
        b = other.place((64, 64, 3, 3))
        assert (a[0], a[1]) != (b[0], b[1]) or not torch.equal(a[2], b[2])
    assert 0.35 < float(a[2].float().mean()) < 0.65  # a fair coin per bit


def test_verification_reads_the_code_from_masks_or_trained_weights_and_gives_its_chance():
    weights, masks = _ticket()
    signature = Signature("conv.weight", "my secret", 16, 16)
    signed = embed(masks, signature, weights)
    trained = {n: torch.randn(m.shape) * m for n, m in signed.items()}  # a thief ships weights, not masks
    for found in (verify(signed, signature), verify(trained, signature)):
        assert found["mismatches"] == 0 and found["log10_chance"] == pytest.approx(256 * -0.30103, abs=0.01)
    for unsigned in (verify(masks, signature), verify(signed, Signature("conv.weight", "a guess", 16, 16))):
        assert 0.3 < unsigned["mismatch_rate"] < 0.7 and unsigned["chance"] > 1e-3


@pytest.mark.parametrize("signature, message", [
    (Signature("fc.weight", "k", 4, 4), "written into a convolution's kernels"),
    (Signature("conv.weight", "k", 64, 8), "does not fit conv.weight's 48 output x 40 input channels"),
    (Signature("stem.weight", "k"), "the masks have no layer 'stem.weight'"),
    (Signature("conv.weight", "k", 8.0, 8), "rows and cols are whole numbers"),
])
def test_a_signature_that_cannot_be_written_is_a_user_error(signature, message):
    weights, masks = _ticket()
    with pytest.raises(TicketlabError, match=message):
        embed(masks, signature, weights)


class ConvNet(torch.nn.Module):
    def __init__(self):
        super().__init__()
        self.stem, self.conv = torch.nn.Conv2d(3, 16, 3, padding=1), torch.nn.Conv2d(16, 16, 3, padding=1)
        self.fc = torch.nn.Linear(16, 4)

    def forward(self, x):
        return self.fc(torch.relu(self.conv(torch.relu(self.stem(x)))).mean((2, 3)))


def test_a_signed_ticket_retrained_carries_its_signature_in_its_weights(tmp_path):
    torch.manual_seed(0)
    net = ConvNet()
    g = torch.Generator().manual_seed(1)
    masks = {n: torch.rand(p.shape, generator=g) < 0.4 for n, p in net.named_parameters() if p.dim() > 1}
    signature = Signature("conv.weight", "owner", 8, 8)
    signed = embed(masks, signature, dict(net.named_parameters()))
    result = ticketlab.train(net, tiny_dataset(n=64), masks=signed, store=tmp_path, epochs=2, batch_size=32,
                             lr=0.01, optimizer="adam", progress=False)
    found = verify(dict(result.model.named_parameters()), signature)
    assert found["mismatches"] == 0 and found["chance"] < 1e-18


def test_sign_and_verify_on_the_command_line(tmp_path, capsys):
    weights, masks = _ticket()
    save_masks(tmp_path / "m.safetensors", masks)
    (tmp_path / "key").write_text("my secret\n")
    code, out, err = run_cli(capsys, "sign", "--masks", tmp_path / "m.safetensors", "--layer", "conv.weight",
                             "--key-file", tmp_path / "key", "--bits", "16x16", "--out", tmp_path / "s.safetensors",
                             "--json")
    assert code == 0, err
    report = json.loads(out)
    assert report["bits"] == 256 and report["weights_kept"] == report["weights_kept_before"]
    code, out, err = run_cli(capsys, "verify", tmp_path / "s.safetensors", "--layer", "conv.weight",
                             "--key", "my secret", "--bits", "16", "--json")
    assert code == 0 and json.loads(out)["signed"] and "SIGNED" in err
    code, out, err = run_cli(capsys, "verify", tmp_path / "m.safetensors", "--layer", "conv.weight",
                             "--key", "my secret", "--bits", "16", "--json")
    assert code == 0 and not json.loads(out)["signed"] and "NOT SHOWN" in err
    for argv, message in ((["--key", "a", "--key-file", tmp_path / "key"], "give the secret as --key TEXT or"),
                          (["--key", "a", "--bits", "0x3"], "at least one row"),
                          (["--key", "a", "--layer", "nope"], "the file has no tensor 'nope'")):
        args = ["verify", tmp_path / "s.safetensors", "--layer", "conv.weight", *argv]
        code, _, err = run_cli(capsys, *args)
        assert code == 2 and message in err and "Traceback" not in err
    code, _, err = run_cli(capsys, "verify", tmp_path / "none.safetensors", "--layer", "conv.weight", "--key", "a")
    assert code == 2 and "no file at" in err


def test_a_code_too_short_to_rule_out_forging_is_never_called_signed(tmp_path, capsys):
    """64 bits read back perfectly still leave a chance of 5e-20: a forger trying keys would find one."""
    weights, masks = _ticket()
    signature = Signature("conv.weight", "short", 8, 8)
    save_masks(tmp_path / "s.safetensors", embed(masks, signature, weights))
    code, out, _ = run_cli(capsys, "verify", tmp_path / "s.safetensors", "--layer", "conv.weight", "--key", "short",
                           "--bits", "8", "--json")
    result = json.loads(out)
    assert code == 0 and result["mismatches"] == 0 and not result["signed"]
