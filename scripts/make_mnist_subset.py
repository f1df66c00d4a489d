"""Regenerate src/ticketlab/data/assets/mnist_subset.npz from the official MNIST IDX files.

Selection: per class, the first 1,000 training images and the first 200 test images in
the official order; the selected images keep that order. The .npz is written like
numpy.savez_compressed does (a deflated zip of .npy members) but with fixed member
timestamps, so rerunning the script reproduces the file byte for byte.

    python scripts/make_mnist_subset.py --mnist-dir /path/to/mnist
"""

from __future__ import annotations

import argparse
import hashlib
import io
import zipfile
from pathlib import Path

import numpy as np

from ticketlab.data.mnist import IMAGES_MAGIC, LABELS_MAGIC, idx_path, read_idx

TRAIN_PER_CLASS = 1000
TEST_PER_CLASS = 200
DEFAULT_OUT = Path(__file__).resolve().parents[1] / "src" / "ticketlab" / "data" / "assets" / "mnist_subset.npz"


def first_per_class(labels: np.ndarray, per_class: int) -> np.ndarray:
    """Positions of the first ``per_class`` examples of every class, in the original order."""
    chosen = [np.flatnonzero(labels == c)[:per_class] for c in range(10)]
    if any(len(c) < per_class for c in chosen):
        raise SystemExit(f"some class has fewer than {per_class} examples; is this the official MNIST?")
    return np.sort(np.concatenate(chosen))


def select(mnist_dir: Path, prefix: str, per_class: int) -> tuple[np.ndarray, np.ndarray]:
    images = read_idx(idx_path(mnist_dir, f"{prefix}-images-idx3-ubyte"), IMAGES_MAGIC)
    labels = read_idx(idx_path(mnist_dir, f"{prefix}-labels-idx1-ubyte"), LABELS_MAGIC)
    keep = first_per_class(labels, per_class)
    return np.ascontiguousarray(images[keep]), labels[keep].astype(np.int64)


def write_npz(path: Path, arrays: dict[str, np.ndarray]) -> None:
    """Deterministic equivalent of numpy.savez_compressed."""
    with zipfile.ZipFile(path, "w") as archive:
        for key, array in arrays.items():
            buffer = io.BytesIO()
            np.lib.format.write_array(buffer, array, allow_pickle=False)
            info = zipfile.ZipInfo(f"{key}.npy", date_time=(1980, 1, 1, 0, 0, 0))
            info.compress_type = zipfile.ZIP_DEFLATED
            info.external_attr = 0o644 << 16
            archive.writestr(info, buffer.getvalue(), compresslevel=9)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--mnist-dir", type=Path, required=True, help="folder with the four official IDX files")
    parser.add_argument("--out", type=Path, default=DEFAULT_OUT, help=f"output file (default {DEFAULT_OUT})")
    args = parser.parse_args()

    x, y = select(args.mnist_dir, "train", TRAIN_PER_CLASS)
    x_test, y_test = select(args.mnist_dir, "t10k", TEST_PER_CLASS)
    write_npz(args.out, {"x": x, "y": y, "x_test": x_test, "y_test": y_test})
    digest = hashlib.sha256(args.out.read_bytes()).hexdigest()
    print(f"{args.out}: {len(x)} train, {len(x_test)} test, {args.out.stat().st_size} bytes, sha256 {digest}")


if __name__ == "__main__":
    main()
