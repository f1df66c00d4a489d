"""Where datasets are looked for, how they are downloaded, and what happens when that fails."""

from __future__ import annotations

import dataclasses
import hashlib
import io
import tarfile
import urllib.error
import urllib.request
from pathlib import Path

import numpy as np
import pytest
from tests.data.conftest import write_cifar10, write_mnist

from ticketlab.data import load_dataset, search_roots
from ticketlab.data.catalog import Resource, load_spec
from ticketlab.data.cifar import CIFAR10
from ticketlab.data.locate import download, extract_tar
from ticketlab.data.mnist import MNIST
from ticketlab.errors import TicketlabError


def files_under(path: Path) -> list[Path]:
    return [p for p in path.rglob("*") if p.is_file()] if path.exists() else []


def test_search_roots_order(tmp_path, monkeypatch, isolated_roots):
    assert search_roots() == [isolated_roots]
    monkeypatch.setenv("TICKETLAB_DATA", str(tmp_path / "env"))
    assert search_roots() == [tmp_path / "env", isolated_roots]
    assert search_roots(tmp_path / "arg") == [tmp_path / "arg", tmp_path / "env", isolated_roots]
    assert search_roots(str(tmp_path / "env")) == [tmp_path / "env", isolated_roots]  # no duplicates


def test_cache_falls_back_to_home(tmp_path, monkeypatch):
    monkeypatch.delenv("XDG_CACHE_HOME")
    monkeypatch.setenv("HOME", str(tmp_path))
    assert search_roots() == [tmp_path / ".cache" / "ticketlab" / "data"]


def test_data_dir_beats_env_beats_cache(tmp_path, monkeypatch, isolated_roots):
    write_mnist(tmp_path / "arg" / "mnist", n_train=11)
    write_mnist(tmp_path / "env" / "mnist", n_train=12)
    write_mnist(isolated_roots / "MNIST" / "raw", n_train=13, gz=True)
    monkeypatch.setenv("TICKETLAB_DATA", str(tmp_path / "env"))
    assert len(load_dataset("mnist", data_dir=tmp_path / "arg", download=False).train_y) == 11
    assert len(load_dataset("mnist", download=False).train_y) == 12
    monkeypatch.delenv("TICKETLAB_DATA")
    assert len(load_dataset("mnist", download=False).train_y) == 13
    # A folder with only some of the files is passed over.
    (tmp_path / "arg" / "mnist" / "t10k-labels-idx1-ubyte").unlink()
    assert len(load_dataset("mnist", data_dir=tmp_path / "arg", download=False).train_y) == 13


def test_missing_dataset_without_download_explains_everything(tmp_path, monkeypatch, isolated_roots):
    monkeypatch.setenv("TICKETLAB_DATA", str(tmp_path / "env"))
    (tmp_path / "arg" / "mnist").mkdir(parents=True)
    with pytest.raises(TicketlabError) as info:
        load_dataset("mnist", data_dir=tmp_path / "arg", download=False)
    message = str(info.value)
    assert "\n" not in message
    for expected in (
        "train-images-idx3-ubyte[.gz]",
        "t10k-labels-idx1-ubyte[.gz]",
        str(tmp_path / "arg" / "mnist"),
        str(tmp_path / "env" / "MNIST" / "raw"),
        str(isolated_roots / "mnist"),
        "https://ossci-datasets.s3.amazonaws.com/mnist/train-images-idx3-ubyte.gz",
        "--data-dir",
        "TICKETLAB_DATA",
        f"{tmp_path / 'arg' / 'mnist'} lacks",  # the empty folder that was found is pointed out
    ):
        assert expected in message


@pytest.mark.parametrize("name, url", [("mnist", "ossci-datasets"), ("cifar10", "cifar-10-python.tar.gz")])
def test_offline_download_fails_cleanly(tmp_path, monkeypatch, name, url):
    def no_network(*args, **kwargs):
        raise urllib.error.URLError("Temporary failure in name resolution")

    monkeypatch.setattr(urllib.request, "urlopen", no_network)
    with pytest.raises(TicketlabError) as info:
        load_dataset(name, data_dir=tmp_path / "data", download=True)
    message = str(info.value)
    assert "downloading failed" in message and "name resolution" in message
    assert url in message and "--data-dir" in message and str(tmp_path / "data") in message
    assert files_under(tmp_path) == []
    assert not (tmp_path / "data").exists()  # folders made for the download are removed too


class FakeServer:
    """Serves fixed bytes per URL in place of urllib.request.urlopen."""

    def __init__(self, files: dict[str, bytes]):
        self.files = files
        self.requested: list[str] = []

    def __call__(self, url, timeout=None):
        self.requested.append(url)
        if url not in self.files:
            raise urllib.error.HTTPError(url, 404, "Not Found", {}, None)
        return io.BytesIO(self.files[url])


def test_md5_mismatch_leaves_nothing(tmp_path, monkeypatch):
    monkeypatch.setattr(urllib.request, "urlopen", FakeServer({"https://x/f.gz": b"not what was promised"}))
    with pytest.raises(TicketlabError, match="MD5"):
        download("https://x/f.gz", tmp_path / "f.gz", md5="0" * 32, progress=False)
    assert files_under(tmp_path) == []


def test_download_verifies_and_places_file(tmp_path, monkeypatch):
    payload = b"payload" * 1000
    monkeypatch.setattr(urllib.request, "urlopen", FakeServer({"https://x/f": payload}))
    download("https://x/f", tmp_path / "f", hashlib.md5(payload).hexdigest(), progress=False)
    assert files_under(tmp_path) == [tmp_path / "f"] and (tmp_path / "f").read_bytes() == payload


def test_download_then_parse_mnist(tmp_path, monkeypatch):
    source = tmp_path / "source"
    write_mnist(source, gz=True)
    resources, files = [], {}
    for r in MNIST.resources:
        data = (source / r.filename).read_bytes()
        files[r.url] = data
        resources.append(r._replace(md5=hashlib.md5(data).hexdigest()))
    server = FakeServer(files)
    monkeypatch.setattr(urllib.request, "urlopen", server)
    spec = dataclasses.replace(MNIST, resources=tuple(resources))
    dataset = load_spec(spec, tmp_path / "data", download=True, progress=False)
    assert len(dataset.train_y) == 20 and len(server.requested) == 4
    assert sorted(p.name for p in files_under(tmp_path / "data")) == sorted(r.filename for r in resources)
    # Found on disk the second time: no new requests.
    load_spec(spec, tmp_path / "data", download=True, progress=False)
    assert len(server.requested) == 4


def test_download_then_extract_cifar(tmp_path, monkeypatch):
    write_cifar10(tmp_path / "source" / "cifar-10-batches-py")
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w:gz") as tar:
        tar.add(tmp_path / "source" / "cifar-10-batches-py", arcname="cifar-10-batches-py")
    archive = buffer.getvalue()
    resource = Resource("https://x/cifar.tar.gz", "cifar.tar.gz", hashlib.md5(archive).hexdigest(), extract=True)
    monkeypatch.setattr(urllib.request, "urlopen", FakeServer({resource.url: archive}))
    dataset = load_spec(dataclasses.replace(CIFAR10, resources=(resource,)), tmp_path / "data", True, progress=False)
    assert dataset.train_x.shape == (20, 3, 32, 32)
    # The archive is removed after unpacking and no staging folder remains.
    assert [p.name for p in (tmp_path / "data").iterdir()] == ["cifar-10-batches-py"]


def test_extract_tar_refuses_path_traversal(tmp_path):
    archive = tmp_path / "evil.tar"
    with tarfile.open(archive, "w") as tar:
        info = tarfile.TarInfo("../escaped.txt")
        info.size = 3
        tar.addfile(info, io.BytesIO(b"bad"))
    into = tmp_path / "into"
    with pytest.raises(TicketlabError, match="evil.tar"):
        extract_tar(archive, into)
    assert not (tmp_path / "escaped.txt").exists()
    assert list(into.iterdir()) == []


def test_extract_tar_will_not_merge_into_existing_folder(tmp_path):
    (tmp_path / "src" / "folder").mkdir(parents=True)
    (tmp_path / "src" / "folder" / "a").write_text("a")
    archive = tmp_path / "a.tar"
    with tarfile.open(archive, "w") as tar:
        tar.add(tmp_path / "src" / "folder", arcname="folder")
    (tmp_path / "into" / "folder").mkdir(parents=True)
    with pytest.raises(TicketlabError, match="already exists"):
        extract_tar(archive, tmp_path / "into")
    assert [p.name for p in (tmp_path / "into").iterdir()] == ["folder"]


def test_user_npz_found_under_data_dir(tmp_path):
    x = np.random.default_rng(0).integers(0, 256, (10, 8, 8), dtype=np.uint8)
    np.savez(tmp_path / "mine.npz", x=x, y=np.arange(10) % 2, x_test=x[:2], y_test=np.array([0, 1]))
    assert load_dataset("mine.npz", data_dir=tmp_path).name == "mine"
    with pytest.raises(TicketlabError, match="no such file"):
        load_dataset("absent.npz", data_dir=tmp_path)


def test_gzip_and_plain_idx_both_accepted(tmp_path):
    plain = write_mnist(tmp_path / "a" / "mnist", gz=False)
    write_mnist(tmp_path / "b" / "mnist", gz=True)
    a = load_dataset("mnist", data_dir=tmp_path / "a", download=False)
    b = load_dataset("mnist", data_dir=tmp_path / "b", download=False)
    assert a.train_x.equal(b.train_x) and a.test_y.equal(b.test_y)
    assert a.train_x[:, 0].numpy().tolist() == plain["train-images-idx3-ubyte"].tolist()


def test_data_dir_may_be_the_datasets_own_folder(tmp_path, isolated_roots):
    write_cifar10(tmp_path / "cifar-10-batches-py")
    inside = load_dataset("cifar10", data_dir=tmp_path / "cifar-10-batches-py", download=False)
    above = load_dataset("cifar10", data_dir=tmp_path, download=False)
    assert inside.train_x.equal(above.train_x) and inside.test_y.equal(above.test_y)


def test_quiet_callers_get_no_download_bar(monkeypatch, tmp_path):
    """--quiet reaches the download: load_dataset passes `progress` to the registered spec's loader."""
    from ticketlab.data import catalog

    seen = []
    monkeypatch.setattr(catalog, "load_spec", lambda spec, data_dir, download, progress=True: seen.append(progress))
    catalog.load_dataset("cifar10", data_dir=tmp_path, progress=False)
    catalog.load_dataset("cifar10", data_dir=tmp_path)
    assert seen == [False, True]
