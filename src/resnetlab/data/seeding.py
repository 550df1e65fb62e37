"""Training augmentation as a function of (seed, epoch, image index), not of any RNG's state.

DataLoader workers live from epoch to epoch (``persistent_workers``) with RNG states that a kill
loses: a resumed run used to crop and mix its images differently from the run it continues. Keyed,
an image of an epoch is augmented alike in an uninterrupted run, a resumed one, with 0 or 8 workers.
"""
from __future__ import annotations

import contextlib
import hashlib
import itertools
from collections.abc import Iterator, Sequence
from typing import NamedTuple

import torch
from torch.utils.data import DistributedSampler


class SampleKey(NamedTuple):
    """Which training image, and what fixes its augmentation: what the train sampler yields."""

    seed: int  # the run's
    epoch: int
    index: int  # in the dataset


Key = int | SampleKey  # what a dataset is indexed by: a plain index (evaluation) or a SampleKey


class KeyedSampler(DistributedSampler):
    """``DistributedSampler``'s shuffled shard for the epoch of ``set_epoch``, each index as a ``SampleKey``."""

    def __iter__(self) -> Iterator[SampleKey]:
        return (SampleKey(self.seed, self.epoch, index) for index in super().__iter__())


def index_of(key: Key) -> int:
    return key.index if isinstance(key, SampleKey) else key


@contextlib.contextmanager
def seeded_by(keys: Sequence[Key], purpose: str) -> Iterator[None]:
    """Torch's global CPU RNG seeded from ``purpose`` and ``keys`` within the block, as it was after it.

    torchvision's v2 transforms draw from that RNG and take no generator. Putting it back leaves
    the main process's own draws (dropout, drop-path) as they would be without loading in it.
    Plain indices (evaluation, a caller's own sampler) fix nothing: the RNG is drawn from as it is.
    """
    if not keys or not isinstance(keys[0], SampleKey):
        yield
        return
    # The keys' numbers as one flat tuple: its repr runs in C, a NamedTuple's in Python
    # (51 instead of 90 us for a batch of 128 keys).
    numbers = repr((purpose, *itertools.chain.from_iterable(keys)))
    digest = hashlib.blake2b(numbers.encode(), digest_size=8).digest()
    state = torch.get_rng_state()
    # The CPU generator alone: torch.manual_seed would reseed every GPU's RNG too.
    torch.default_generator.manual_seed(int.from_bytes(digest, "little"))
    try:
        yield
    finally:
        torch.set_rng_state(state)
