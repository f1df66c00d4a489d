"""`ticketlab sign` and `ticketlab verify`: an ownership signature in a ticket's mask, and reading it back."""

from __future__ import annotations

import argparse
from pathlib import Path

from ticketlab.cli.table import key_values, print_json
from ticketlab.errors import TicketlabError

# A signature counts as shown when a ticket this key did not sign matches as well with at most this chance: so
# low that a forger trying keys until one "matches" someone else's ticket would need about 1e20 of them (a
# code of under about 100 bits can never be shown, whatever it reads)
SHOWN = 1e-20


def _bits(text: str) -> tuple[int, int]:
    rows, _, cols = text.lower().partition("x")
    try:
        shape = (int(rows), int(cols or rows))
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected ROWSxCOLS such as 29x29 (or one number), got {text!r}") from None
    if min(shape) < 1:
        raise argparse.ArgumentTypeError(f"a code needs at least one row and column, got {text!r}")
    return shape


def _signature(args: argparse.Namespace):
    from ticketlab.tickets.signature import Signature

    if (args.key is None) == (args.key_file is None):
        raise TicketlabError("give the secret as --key TEXT or --key-file PATH (one of them; a file keeps it out "
                             "of the shell's history)")
    key = args.key
    if args.key_file is not None:
        try:
            key = Path(args.key_file).read_text().strip()
        except OSError as error:
            raise TicketlabError(f"cannot read --key-file {args.key_file} ({error.strerror}); give a readable "
                                 "file holding the secret") from None
    if not key:
        raise TicketlabError("the secret is empty; give a key that only you know")
    return Signature(args.layer, key, *args.bits)


def _tensors(path: str) -> dict:
    from ticketlab.store.files import read_tensors

    if not Path(path).is_file():
        raise TicketlabError(f"no file at {path}; give a .safetensors of masks or weights")
    return read_tensors(Path(path))


def cmd_sign(args: argparse.Namespace) -> int:
    from ticketlab.sparsity import load_masks, save_masks
    from ticketlab.store.files import writable
    from ticketlab.tickets.signature import connectivity, embed, verify

    signature = _signature(args)
    writable(args.out, ".safetensors", "--out")
    masks = load_masks(args.masks)
    signed = embed(masks, signature, _tensors(args.weights) if args.weights else None)
    check = verify(signed, signature)
    before, after = masks[args.layer], signed[args.layer]
    save_masks(args.out, signed)
    switched = int((connectivity(before) != connectivity(after)).sum())
    report = {"layer": args.layer, "bits": check["bits"], "kernels switched": switched,
              "weights moved": int((before.bool() != after).sum()), "weights kept": int(after.sum()),
              "weights kept before": int(before.bool().sum()), "written": str(args.out)}
    print(key_values(report))
    print(f"train it as any ticket: ticketlab train --masks {args.out} ...; then check the trained weights with "
          f"ticketlab verify FILE --layer {args.layer} --bits {args.bits[0]}x{args.bits[1]} and your key")
    if args.json:
        print_json(args, {k.replace(" ", "_"): v for k, v in report.items()})
    return 0


def cmd_verify(args: argparse.Namespace) -> int:
    from ticketlab.tickets.signature import verify

    result = verify(_tensors(args.file), _signature(args))
    shown = result["chance"] <= SHOWN
    verdict = ("SIGNED: this key's code is there" if shown else
               "NOT SHOWN: no better than a ticket this key did not sign")
    print(key_values({"bits": result["bits"], "mismatches": result["mismatches"],
                      "mismatch rate": f"{100 * result['mismatch_rate']:.2f}%",
                      "chance (unsigned)": f"1e{result['log10_chance']:.1f}" if result["chance"] < 1e-3
                      else f"{result['chance']:.3f}", "verdict": verdict}))
    if args.json:
        print_json(args, {**result, "signed": shown})
    return 0


def add_commands(sub: argparse._SubParsersAction) -> None:
    def secret(p: argparse.ArgumentParser) -> None:
        p.add_argument("--layer", required=True,
                       help="the Conv2d weight the code is written in, e.g. layer3.0.conv1.weight")
        p.add_argument("--key", help="the owner's secret: it fixes the code and where it sits")
        p.add_argument("--key-file", help="a file holding the secret (kept out of the shell's history)")
        p.add_argument("--bits", type=_bits, default=(29, 29),
                       help="the code's size, ROWSxCOLS (29x29, as the paper's QR code)")
        p.add_argument("--json", action="store_true")

    p = sub.add_parser("sign", help="write an ownership signature into a ticket's masks (retrain them after)")
    p.add_argument("--masks", required=True, help="the ticket's masks (.safetensors)")
    p.add_argument("--weights", help="the weights it retrains from (chooses which weights switch and move)")
    p.add_argument("--out", required=True, help="where the signed masks are written")
    secret(p)
    p.set_defaults(func=cmd_sign)

    p = sub.add_parser("verify", help="read an ownership signature back from masks or trained weights")
    p.add_argument("file", help="masks or weights (.safetensors), e.g. a run's final.safetensors")
    secret(p)
    p.set_defaults(func=cmd_verify)

