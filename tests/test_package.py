import subprocess
import sys

import pytest

import ticketlab


def _run(code: str) -> None:
    subprocess.run([sys.executable, "-c", code], check=True)


def test_every_public_name_resolves():
    assert set(ticketlab.__all__) == {*ticketlab._HOMES, "train"}
    for name in ticketlab.__all__:
        assert getattr(ticketlab, name) is not None
    assert set(ticketlab.__all__) <= set(dir(ticketlab))


def test_unknown_name_is_an_attribute_error():
    with pytest.raises(AttributeError, match="no_such_thing"):
        ticketlab.no_such_thing  # noqa: B018


def test_cli_parses_without_importing_torch():
    # a fast --help, and Ctrl-C during start-up reaches main()'s handler instead of a traceback
    _run("import sys; from ticketlab.cli.main import build_parser; "
         "build_parser().parse_args(['find', '--model', 'x', '--dataset', 'y']); "
         "assert 'torch' not in sys.modules, 'torch imported'")


def test_train_is_the_function_after_its_subpackage_is_imported():
    _run("import ticketlab.train.trainer, ticketlab; from ticketlab import train; "
         "assert callable(ticketlab.train) and ticketlab.train is train and train.__module__ == 'ticketlab.train.run'")


def test_each_subpackage_imports_first_in_a_fresh_interpreter():
    # an import cycle shows only when its far end is imported first (`import ticketlab.robust` failed so)
    for name in ("config", "data", "models", "sparsity", "train", "tickets", "compact", "robust", "report",
                 "store", "speed", "errors", "registry", "cli.main"):
        _run(f"import ticketlab.{name}")
