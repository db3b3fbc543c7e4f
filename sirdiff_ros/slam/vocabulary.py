"""DBoW2 bag-of-words vocabularies of ORB descriptors, built offline.

ORB-SLAM3 needs a vocabulary for initialisation, relocalisation, tracking
against the reference keyframe and loop closing. The official ``ORBvoc.txt``
(139 MB) is not always at hand; :func:`build_vocabulary` makes one from any
set of images: OpenCV ORB descriptors (the same 256-bit rBRIEF as ORB-SLAM3's
extractor), a hierarchical k-majority tree (k-means in Hamming space with
bitwise-majority centres, k-means++ seeding), and TF-IDF word weights.

The text format ORB-SLAM3 loads (``ORBVocabulary::loadFromTextFile``):

* line 1: ``k L scoring weighting`` (scoring 0 = L1 norm, weighting 0 = TF-IDF);
* then one line per node except the root, node ids 1, 2, ... in file order
  (the root is 0): ``parent is_leaf d0 ... d31 weight``, the descriptor as 32
  byte values; a parent precedes its children; leaves are the words, weighted
  by their inverse document frequency ``log(N / n_i)``.

``sirdiff-vocab OUT IMAGES...`` is the command-line front end.
"""

from __future__ import annotations

import argparse
import math
import os
import sys
from collections import deque
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Iterable, Sequence

import cv2
import numpy as np

__all__ = [
    "Vocabulary",
    "VocabularyError",
    "orb_descriptors",
    "build_vocabulary",
    "read_vocabulary_header",
    "vocabulary_from_images",
    "VocabularyChoice",
    "cache_dir",
    "synthetic_vocabulary",
    "resolve_vocabulary",
    "main",
]

DESCRIPTOR_BYTES = 32
_SCORING_L1 = 0
_WEIGHTING_TF_IDF = 0


class VocabularyError(ValueError):
    """Input that cannot make (or is not) a DBoW2 text vocabulary."""


@dataclass
class Vocabulary:
    """A k-ary tree of ORB descriptors; ``parents[0] == -1`` is the root.

    ``descriptors[i]`` (32 bytes) is node ``i``'s cluster centre; leaves
    (``is_leaf``) are the words, with IDF ``weights``.
    """

    k: int
    levels: int
    parents: np.ndarray  # (n,) int64
    descriptors: np.ndarray  # (n, 32) uint8
    is_leaf: np.ndarray  # (n,) bool
    weights: np.ndarray  # (n,) float64, 0 for inner nodes
    images: int = 0
    source_descriptors: int = 0

    @property
    def words(self) -> int:
        return int(self.is_leaf.sum())

    @property
    def nodes(self) -> int:
        return int(len(self.parents))

    def children(self) -> list[list[int]]:
        kids: list[list[int]] = [[] for _ in range(self.nodes)]
        for i, p in enumerate(self.parents[1:], start=1):
            kids[int(p)].append(i)
        return kids

    def word_of(self, descriptors: np.ndarray) -> np.ndarray:
        """Leaf id each descriptor falls into, descending by Hamming distance (as DBoW2 does)."""
        bits = _bits(descriptors)
        kids = self.children()
        node_bits = _bits(self.descriptors)
        out = np.empty(len(bits), np.int64)
        for j, b in enumerate(bits):
            node = 0
            while not self.is_leaf[node]:
                c = kids[node]
                d = np.count_nonzero(node_bits[c] != b, axis=1)
                node = c[int(np.argmin(d))]
            out[j] = node
        return out

    def save(self, path: str | Path) -> None:
        """Write the DBoW2 text format ORB-SLAM3 loads."""
        lines = [f"{self.k} {self.levels}  {_SCORING_L1} {_WEIGHTING_TF_IDF}"]
        for i in range(1, self.nodes):
            d = " ".join(str(int(v)) for v in self.descriptors[i])
            lines.append(f"{int(self.parents[i])} {int(self.is_leaf[i])} {d} {self.weights[i]:.6g}")
        Path(path).write_text("\n".join(lines) + "\n")

    @classmethod
    def load(cls, path: str | Path) -> Vocabulary:
        """Read a DBoW2 text vocabulary (ours or the official ``ORBvoc.txt``)."""
        k, levels = read_vocabulary_header(path)
        parents, descs, leaf, weights = [-1], [np.zeros(DESCRIPTOR_BYTES, np.uint8)], [False], [0.0]
        with open(path) as fh:
            next(fh)
            for n, line in enumerate(fh, start=2):
                parts = line.split()
                if not parts:
                    continue
                if len(parts) != 3 + DESCRIPTOR_BYTES:
                    raise VocabularyError(f"{path}:{n}: expected {3 + DESCRIPTOR_BYTES} fields, got {len(parts)}")
                parent = int(parts[0])
                if not 0 <= parent < len(parents):
                    raise VocabularyError(f"{path}:{n}: parent {parent} does not precede node {len(parents)}")
                parents.append(parent)
                leaf.append(parts[1] == "1")
                descs.append(np.array([int(v) for v in parts[2:-1]], np.uint8))
                weights.append(float(parts[-1]))
        return cls(k, levels, np.array(parents), np.stack(descs), np.array(leaf), np.array(weights))


def read_vocabulary_header(path: str | Path) -> tuple[int, int]:
    """``(k, L)`` of a DBoW2 text vocabulary; VocabularyError if it is not one."""
    try:
        with open(path) as fh:
            first = fh.readline().split()
    except (OSError, UnicodeDecodeError) as exc:
        raise VocabularyError(f"cannot read vocabulary {path}: {exc}") from exc
    try:
        k, levels, scoring, weighting = (int(v) for v in first[:4])
    except ValueError:
        raise VocabularyError(f"{path} is not a DBoW2 text vocabulary (first line {' '.join(first)!r})") from None
    if not (1 < k <= 20 and 1 <= levels <= 10 and 0 <= scoring <= 5 and 0 <= weighting <= 3):
        raise VocabularyError(f"{path}: header 'k={k} L={levels} scoring={scoring} weighting={weighting}' is out of range")
    return k, levels


def orb_descriptors(image: np.ndarray, features: int = 1000) -> np.ndarray:
    """(n, 32) uint8 ORB descriptors of an RGB/BGR/grey image, with ORB-SLAM3's pyramid (8 levels, 1.2)."""
    gray = image if image.ndim == 2 else cv2.cvtColor(image, cv2.COLOR_RGB2GRAY)
    orb = cv2.ORB_create(nfeatures=features, scaleFactor=1.2, nlevels=8, edgeThreshold=19, fastThreshold=12)
    _, desc = orb.detectAndCompute(gray, None)
    return np.zeros((0, DESCRIPTOR_BYTES), np.uint8) if desc is None else desc


def _bits(descriptors: np.ndarray) -> np.ndarray:
    """(n, 32) uint8 -> (n, 256) uint8 of 0/1."""
    return np.unpackbits(np.ascontiguousarray(descriptors, np.uint8), axis=1)


def _hamming(bits: np.ndarray, centres: np.ndarray) -> np.ndarray:
    """(n, k) Hamming distances between 0/1 rows, through one float matrix product."""
    b = bits.astype(np.float32)
    c = centres.astype(np.float32)
    return b.sum(1)[:, None] + c.sum(1)[None, :] - 2.0 * (b @ c.T)


def _k_majority(bits: np.ndarray, k: int, rng: np.random.Generator, iterations: int) -> tuple[np.ndarray, np.ndarray]:
    """Cluster 0/1 rows into ``k`` groups: (centres (k, 256), labels (n,))."""
    n = len(bits)
    # k-means++ seeding on squared Hamming distance.
    centres = [bits[int(rng.integers(n))]]
    nearest = _hamming(bits, centres[0][None])[:, 0]
    for _ in range(1, k):
        p = nearest.astype(np.float64) ** 2
        if p.sum() <= 0:
            break  # all remaining rows equal a centre
        c = bits[int(rng.choice(n, p=p / p.sum()))]
        centres.append(c)
        nearest = np.minimum(nearest, _hamming(bits, c[None])[:, 0])
    C = np.stack(centres)
    labels = np.full(n, -1)
    for _ in range(iterations):
        new = np.argmin(_hamming(bits, C), axis=1)
        if np.array_equal(new, labels):
            break
        labels = new
        for j in range(len(C)):
            members = bits[labels == j]
            if len(members):
                # Bitwise majority: the Hamming-space mean (ties go to 0, as DBoW2's FORB does).
                C[j] = (2 * members.sum(0, dtype=np.int64) > len(members)).astype(np.uint8)
    return C, labels


def build_vocabulary(descriptor_sets: Sequence[np.ndarray], k: int = 10, levels: int = 4, seed: int = 0,
                     iterations: int = 15) -> Vocabulary:
    """A ``k``-ary, ``levels``-deep vocabulary of the ORB descriptors of several images.

    ``descriptor_sets`` holds one (n_i, 32) uint8 array per training image
    (IDF counts images). A node becomes a word (leaf) at depth ``levels`` or
    when it holds a single distinct descriptor.
    """
    if not 2 <= k <= 20:
        raise VocabularyError(f"k must lie in [2, 20] (DBoW2's limit), got {k}")
    if not 1 <= levels <= 10:
        raise VocabularyError(f"levels must lie in [1, 10], got {levels}")
    sets = [np.asarray(d, np.uint8).reshape(-1, DESCRIPTOR_BYTES) for d in descriptor_sets]
    sets = [d for d in sets if len(d)]
    if not sets:
        raise VocabularyError("no ORB descriptors: the images have no texture (or none were given)")
    image_of = np.concatenate([np.full(len(d), i) for i, d in enumerate(sets)])
    packed = np.ascontiguousarray(np.concatenate(sets))
    bits = _bits(packed)
    # Each descriptor as one 32-byte value: equality and sorting compare bytes
    # (memcmp), in the order of the bit rows (bits unpack most significant first),
    # many times faster than np.unique(..., axis=0) over the bit rows.
    keys = packed.view(np.dtype((np.void, DESCRIPTOR_BYTES))).reshape(-1)
    rng = np.random.default_rng(seed)

    parents, centres, leaf = [-1], [np.zeros(256, np.uint8)], [False]
    members: dict[int, np.ndarray] = {}
    queue: deque[tuple[int, np.ndarray, int]] = deque([(0, np.arange(len(bits)), 0)])
    # Breadth first: every parent is written before its children.
    while queue:
        node, idx, depth = queue.popleft()
        if node != 0 and bool(np.all(packed[idx] == packed[idx[0]])):
            leaf[node] = True  # a single distinct descriptor
            members[node] = idx
            continue
        if len(idx) <= k:
            distinct, labels = np.unique(keys[idx], return_inverse=True)
            groups_c = _bits(distinct.view(np.uint8).reshape(-1, DESCRIPTOR_BYTES))
            labels = labels.reshape(-1)
        else:
            groups_c, labels = _k_majority(bits[idx], k, rng, iterations)
        for j, c in enumerate(groups_c):
            child_idx = idx[labels == j]
            if not len(child_idx):
                continue
            cid = len(parents)
            parents.append(node)
            centres.append(c)
            leaf.append(False)
            if depth + 1 >= levels:
                leaf[cid] = True
                members[cid] = child_idx
            else:
                queue.append((cid, child_idx, depth + 1))
    n_images = len(sets)
    weights = np.zeros(len(parents))
    for node, idx in members.items():
        seen_in = len(np.unique(image_of[idx]))
        weights[node] = math.log(n_images / seen_in)
    descs = np.packbits(np.stack(centres), axis=1)
    return Vocabulary(k, levels, np.array(parents), descs, np.array(leaf), weights, n_images, len(bits))


def vocabulary_from_images(images: Iterable[np.ndarray], k: int = 10, levels: int = 4, features: int = 1000,
                           seed: int = 0) -> Vocabulary:
    """:func:`build_vocabulary` over the ORB descriptors of ``images`` (uint8 RGB or grey arrays)."""
    return build_vocabulary([orb_descriptors(im, features) for im in images], k, levels, seed)


@dataclass(frozen=True)
class VocabularyChoice:
    """The vocabulary a run uses and where it came from (stated in reports)."""

    path: Path
    source: str  # "given", "PYORBSLAM3_VOCAB" or "synthetic"
    words: int | None = None

    def as_dict(self) -> dict[str, object]:
        return {"path": str(self.path), "source": self.source, "words": self.words}


# The built-in vocabulary: sharp renders of training-split scenes (never a
# held-out one), 4 views each. Its file name carries every build setting.
SYNTHETIC_VOCABULARY = {"seeds": 30, "views": 4, "k": 10, "levels": 6, "features": 1000, "seed": 0}


def cache_dir() -> Path:
    """Where built vocabularies are kept: ``$SIRDIFF_CACHE`` or ``$XDG_CACHE_HOME/sirdiff_ros``."""
    env = os.environ.get("SIRDIFF_CACHE")
    if env:
        return Path(env)
    return Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache") / "sirdiff_ros"


def synthetic_vocabulary(folder: Path | None = None, *, seeds: int | None = None, levels: int | None = None,
                         announce: Callable[[str], None] | None = None) -> Path:
    """The vocabulary of training-split synthetic renders, built on first use (about a minute) and cached."""
    from ..data.synth import generate_sequence
    from ..data.textures import training_seeds

    opts = {**SYNTHETIC_VOCABULARY, **({"seeds": seeds} if seeds else {}), **({"levels": levels} if levels else {})}
    name = "orbvoc_synth_s{seeds}_v{views}_k{k}_L{levels}_f{features}_r{seed}.txt".format(**opts)
    path = (folder or cache_dir()) / name
    if path.is_file():
        return path
    if announce:
        announce(f"building the synthetic ORB vocabulary {path} (once)")
    images = [f.extras["sharp"] for s in training_seeds(opts["seeds"])
              for f in generate_sequence(s, opts["views"], 640, 480, exposure_s=0.0, subframes=1, speed=1.5,
                                         angular_speed=1.5, burst_rate=0.0, noise_std=0.0, shot_noise=0.0)]
    voc = vocabulary_from_images(images, opts["k"], opts["levels"], opts["features"], opts["seed"])
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(f".tmp{os.getpid()}")
    voc.save(tmp)
    tmp.replace(path)  # atomic: concurrent builders never see half a file
    return path


def resolve_vocabulary(path: str | Path | None = None, *, announce: Callable[[str], None] | None = None
                       ) -> VocabularyChoice:
    """The vocabulary to use: ``path`` if given, else ``$PYORBSLAM3_VOCAB`` (e.g. the official
    ORBvoc.txt), else the built-in synthetic one. Raises VocabularyError for an unreadable file."""
    if path:
        source = "given"
    elif os.environ.get("PYORBSLAM3_VOCAB"):
        path, source = os.environ["PYORBSLAM3_VOCAB"], "PYORBSLAM3_VOCAB"
    else:
        path, source = synthetic_vocabulary(announce=announce), "synthetic"
    p = Path(path)
    if not p.is_file():
        raise VocabularyError(f"ORB vocabulary not found: {p}")
    read_vocabulary_header(p)
    return VocabularyChoice(p, source)


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="sirdiff-vocab",
        description="Build a DBoW2 text vocabulary of ORB descriptors (loadable by ORB-SLAM3) from images.",
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    p.add_argument("out", type=Path, help="output vocabulary file (.txt)")
    p.add_argument("images", nargs="+", type=Path, help="image files or folders of images")
    p.add_argument("--k", type=int, default=10, help="branching factor")
    p.add_argument("--levels", type=int, default=4, help="tree depth")
    p.add_argument("--features", type=int, default=1000, help="ORB features per image")
    p.add_argument("--seed", type=int, default=0, help="clustering seed")
    return p


_IMAGE_SUFFIXES = {".png", ".jpg", ".jpeg", ".bmp", ".pgm", ".ppm", ".tif", ".tiff"}


def _image_files(paths: Sequence[Path]) -> list[Path]:
    files: list[Path] = []
    for p in paths:
        if p.is_dir():
            files += sorted(f for f in p.rglob("*") if f.suffix.lower() in _IMAGE_SUFFIXES)
        elif p.is_file():
            files.append(p)
        else:
            raise VocabularyError(f"no such image or folder: {p}")
    return files


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        files = _image_files(args.images)
        sets = []
        for f in files:
            img = cv2.imread(str(f), cv2.IMREAD_GRAYSCALE)
            if img is None:
                print(f"sirdiff-vocab: skipping unreadable image {f}", file=sys.stderr)
                continue
            sets.append(orb_descriptors(img, args.features))
        voc = build_vocabulary(sets, args.k, args.levels, args.seed)
    except VocabularyError as exc:
        print(f"sirdiff-vocab: {exc}", file=sys.stderr)
        return 2
    args.out.parent.mkdir(parents=True, exist_ok=True)
    voc.save(args.out)
    print(f"sirdiff-vocab: {voc.words} words ({voc.nodes - 1} nodes, k={voc.k}, L={voc.levels}) from "
          f"{voc.source_descriptors} descriptors of {voc.images} images -> {args.out}")
    return 0


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
