"""`ticketlab sign` and `ticketlab verify`: ownership marks (a signature in a ticket's mask, a keyed trigger set) and
checking them."""

from __future__ import annotations

import argparse
from pathlib import Path

from ticketlab.cli.table import key_values, print_json
from ticketlab.errors import TicketlabError


def positive_int(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        value = 0
    if value < 1:
        raise argparse.ArgumentTypeError(f"expected a whole number of at least 1, got {text!r}")
    return value


def _bits(text: str) -> tuple[int, int]:
    rows, _, cols = text.lower().partition("x")
    try:
        shape = (int(rows), int(cols or rows))
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected ROWSxCOLS such as 29x29 (or one number), got {text!r}") from None
    if min(shape) < 1:
        raise argparse.ArgumentTypeError(f"a code needs at least one row and column, got {text!r}")
    return shape


def read_key(text: str | None, file: str | None, flag: str) -> str:
    """The owner's secret, from `--FLAG TEXT` or `--FLAG-file PATH` (exactly one of them)."""
    if (text is None) == (file is None):
        raise TicketlabError(f"give the secret as {flag} TEXT or {flag}-file PATH (one of them; a file keeps it out "
                             "of the shell's history)")
    key = text
    if file is not None:
        try:
            key = Path(file).read_text().strip()
        except (OSError, UnicodeDecodeError) as error:
            why = getattr(error, "strerror", None) or "not text"
            raise TicketlabError(f"cannot read {flag}-file {file} ({why}); give a readable text file holding the "
                                 "secret") from None
    if not key:
        raise TicketlabError("the secret is empty; give a key that only you know")
    return key


def _signature(args: argparse.Namespace):
    from ticketlab.tickets.signature import Signature

    if args.layer is None:
        raise TicketlabError("name the layer the code is written in (--layer), or check a trigger set (--trigger)")
    return Signature(args.layer, read_key(args.key, args.key_file, "--key"), *(args.bits or ()))


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
          f"ticketlab verify FILE --layer {args.layer} --bits {signature.rows}x{signature.cols} and your key")
    if args.json:
        print_json(args, {k.replace(" ", "_"): v for k, v in report.items()})
    return 0


def _chance(result: dict) -> str:
    return f"1e{result['log10_chance']:.1f}" if result["chance"] < 1e-3 else f"{result['chance']:.3f}"


def cmd_verify(args: argparse.Namespace) -> int:
    if args.trigger:
        return _verify_trigger(args)
    given = [flag for flag, value in (("--dataset", args.dataset), ("--model", args.model),
                                      ("--data-dir", args.data_dir), ("--no-download", args.no_download),
                                      ("--trigger-size", args.trigger_size)) if value]
    if given:
        raise TicketlabError(f"{', '.join(given)} tell --trigger how to run the network; a mask signature reads "
                             "the file alone, so drop them (or add --trigger)")
    from ticketlab.tickets.signature import SHOWN, verify

    result = verify(_tensors(args.file), _signature(args))
    shown = result["chance"] <= SHOWN
    verdict = ("SIGNED: this key's code is there" if shown else
               "NOT SHOWN: no better than a ticket this key did not sign")
    print(key_values({"bits": result["bits"], "mismatches": result["mismatches"],
                      "mismatch rate": f"{100 * result['mismatch_rate']:.2f}%",
                      "chance (unsigned)": _chance(result), "verdict": verdict}))
    if args.json:
        print_json(args, {**result, "signed": shown})
    return 0


def _suspect(path: Path, model_name: str | None, dataset) -> object:
    """The network in `path`: a ticket file, an exported model, or a state dict of registered `model_name`."""
    from safetensors import SafetensorError, safe_open

    from ticketlab.compact.export import ARCHITECTURE, load_model
    from ticketlab.errors import state_mismatch
    from ticketlab.models import build_model
    from ticketlab.store.files import read_tensors
    from ticketlab.tickets.ticketfile import KEY, load_ticket

    if not path.is_file():
        raise TicketlabError(f"no file at {path}; give a network: a ticket file, an exported model, or a run's "
                             "final.safetensors with --model")
    try:
        with safe_open(str(path), framework="pt") as f:
            header = f.metadata() or {}
    except (SafetensorError, OSError, ValueError) as error:
        raise TicketlabError(f"{path} is not a readable safetensors file ({error}); give a network ticketlab "
                             "wrote") from None
    if model_name and (KEY in header or ARCHITECTURE in header):
        raise TicketlabError(f"{path} names its own architecture; drop --model")
    if KEY in header:
        return load_ticket(path).model
    if ARCHITECTURE in header:
        return load_model(path)
    if not model_name:
        raise TicketlabError(f"{path} holds weights only; name their architecture with --model (e.g. the run's "
                             "model, `ticketlab runs show ID`)")
    c, h, _ = dataset.image_shape
    state = read_tensors(path)
    problem = ""
    # K outputs, or K + 1: a selective network's (train --loss sat-selective) abstain output
    for outputs in (dataset.num_classes, dataset.num_classes + 1):
        model = build_model(model_name, num_classes=outputs, in_channels=c, image_size=h)
        try:
            model.load_state_dict(state)
            return model
        except RuntimeError as error:
            problem = problem or state_mismatch(error)
    raise TicketlabError(f"the weights in {path} do not fit {model_name} on {dataset.name}: {problem}; a model built "
                         "with other options needs its ticket file or exported model")


def _verify_trigger(args: argparse.Namespace) -> int:
    from ticketlab.data import load_dataset
    from ticketlab.tickets.signature import SHOWN
    from ticketlab.tickets.trigger import TriggerSet, check

    if args.layer is not None or args.bits is not None:
        raise TicketlabError("--layer and --bits place a mask signature; a trigger set is checked by running "
                             "the network, so drop them (or --trigger)")
    if not args.dataset:
        raise TicketlabError("--trigger runs the network on the trigger images, normalised as its dataset's; "
                             "name the dataset it was trained on (--dataset)")
    key = read_key(args.key, args.key_file, "--key")
    trigger = TriggerSet(key, args.trigger_size) if args.trigger_size else TriggerSet(key)
    dataset = load_dataset(args.dataset, data_dir=args.data_dir, download=not args.no_download,
                           progress=not args.quiet)
    model = _suspect(Path(args.file), args.model, dataset)
    try:
        result = check(model, trigger, dataset)
    except RuntimeError as error:
        raise TicketlabError(f"the network in {args.file} cannot run {args.dataset}'s images "
                             f"({str(error).splitlines()[0]}); give the dataset it was trained on") from None
    shown = result["chance"] <= SHOWN
    verdict = ("MARKED: this key's trigger set was trained in" if shown else
               "NOT SHOWN: no better than a network this key did not train")
    print(key_values({"trigger images": result["images"], "answered as keyed": result["matches"],
                      "trigger accuracy": f"{100 * result['accuracy']:.1f}%",
                      f"chance (unmarked, 1 in {dataset.num_classes} each)": _chance(result), "verdict": verdict}))
    if args.json:
        print_json(args, {**result, "marked": shown})
    return 0


def add_commands(sub: argparse._SubParsersAction) -> None:
    def secret(p: argparse.ArgumentParser, layer_required: bool = True) -> None:
        p.add_argument("--layer", required=layer_required,
                       help="the Conv2d weight the code is written in, e.g. layer3.0.conv1.weight")
        p.add_argument("--key", help="the owner's secret: it fixes the code and where it sits")
        p.add_argument("--key-file", help="a file holding the secret (kept out of the shell's history)")
        p.add_argument("--bits", type=_bits,
                       help="the code's size, ROWSxCOLS (29x29, as the paper's QR code)")
        p.add_argument("--json", action="store_true")

    p = sub.add_parser("sign", help="write an ownership signature into a ticket's masks (retrain them after)")
    p.add_argument("--masks", required=True, help="the ticket's masks (.safetensors)")
    p.add_argument("--weights", help="the weights it retrains from (chooses which weights switch and move)")
    p.add_argument("--out", required=True, help="where the signed masks are written")
    secret(p)
    p.set_defaults(func=cmd_sign)

    p = sub.add_parser("verify", help="read an ownership signature back from masks or trained weights, or check a "
                                      "network's answers on a keyed trigger set")
    p.add_argument("file", help="masks or weights (.safetensors), e.g. a run's final.safetensors; with --trigger a "
                                "network: a ticket file, an exported model, or weights with --model")
    secret(p, layer_required=False)
    g = p.add_argument_group("black box: a trigger set trained in (train --trigger-key)")
    g.add_argument("--trigger", action="store_true",
                   help="check the network's answers on the key's trigger images instead of a mask signature")
    g.add_argument("--trigger-size", type=positive_int,
                   help="the number of trigger images: the --trigger-size it was trained with (default 100)")
    g.add_argument("--dataset", help="the dataset the network was trained on (its normalisation and classes)")
    g.add_argument("--model", help="the registered model of a weights-only file")
    g.add_argument("--data-dir", help="folder holding datasets (else $TICKETLAB_DATA, else the user cache)")
    g.add_argument("--no-download", action="store_true", help="never download a missing dataset")
    g.add_argument("--quiet", action="store_true", help="no progress bar")
    p.set_defaults(func=cmd_verify)

