import numpy as np
import pytest

from backends.caching import CachingBackend, image_key
from backends.counting import BudgetExhausted, CountingBackend
from backends.toy import ToyBackend


def images(rng, n, size=16):
    return rng.integers(0, 256, size=(n, size, size, 3), dtype=np.uint8)


def test_a_repeated_image_costs_nothing(toy, rng):
    counter = CountingBackend(toy, budget=10)
    cached = CachingBackend(counter)
    batch = images(rng, 4)
    first = cached.query(batch)
    assert (counter.images_sent, counter.calls) == (4, 1)
    again = cached.query(batch)
    assert (counter.images_sent, counter.calls) == (4, 1)  # nothing sent, no call made
    np.testing.assert_array_equal(first, again)
    assert (cached.hits, cached.misses, cached.requests) == (4, 4, 8)


def test_duplicates_within_one_call_are_sent_once(toy, rng):
    counter = CountingBackend(toy)
    cached = CachingBackend(counter)
    a, b, c = images(rng, 3)
    batch = np.stack([a, b, a, c, b, a])
    scores = cached.query(batch)
    assert (counter.images_sent, counter.calls) == (3, 1)
    assert (cached.hits, cached.misses, len(cached)) == (3, 3, 3)
    np.testing.assert_array_equal(scores, toy.query(batch))
    # A later call mixing cached and new images sends only the new one.
    d = images(rng, 1)[0]
    cached.query(np.stack([c, d, a]))
    assert counter.images_sent == 4 and (cached.hits, cached.misses) == (5, 4)


def test_scores_are_identical_to_uncached(rng):
    toy = ToyBackend(max_batch=5)
    cached = CachingBackend(ToyBackend(max_batch=5))
    batch = images(rng, 23, size=24)
    batch[10] = batch[3]
    np.testing.assert_array_equal(cached.query(batch), toy.query(batch))
    shuffled = batch[rng.permutation(len(batch))]
    np.testing.assert_array_equal(cached.query(shuffled), toy.query(shuffled))
    assert cached.misses == 22 and cached.hits == 24


def test_key_depends_on_shape_and_every_byte(rng):
    image = images(rng, 1, size=16)[0]
    flipped = image.copy()
    flipped[7, 9, 2] ^= 1
    assert image_key(image) != image_key(flipped)
    assert image_key(image) == image_key(image.copy())
    assert image_key(image[:, :8]) == image_key(np.ascontiguousarray(image[:, :8]))
    same_bytes = image.reshape(8, 32, 3)
    assert image_key(image) != image_key(same_bytes)


def test_lru_eviction_keeps_the_most_recently_used(toy, rng):
    counter = CountingBackend(toy)
    cached = CachingBackend(counter, max_entries=3)
    a, b, c, d = images(rng, 4)
    cached.query(np.stack([a, b, c]))
    cached.query(a[None])  # a is now the most recent; b the least
    cached.query(d[None])  # evicts b
    assert len(cached) == 3 and counter.images_sent == 4
    cached.query(np.stack([a, c, d]))
    assert counter.images_sent == 4  # all still cached
    cached.query(b[None])  # b was evicted: sent again, evicting the least recent (a)
    assert counter.images_sent == 5
    cached.query(a[None])
    assert counter.images_sent == 6
    assert (cached.hits, cached.misses) == (4, 6)


def test_zero_entries_still_deduplicates_within_a_call(toy, rng):
    counter = CountingBackend(toy)
    cached = CachingBackend(counter, max_entries=0)
    a = images(rng, 1)[0]
    cached.query(np.stack([a, a, a]))
    cached.query(a[None])
    assert counter.images_sent == 2 and len(cached) == 0
    with pytest.raises(ValueError):
        CachingBackend(toy, max_entries=-1)


def test_a_refused_call_changes_nothing(toy, rng):
    counter = CountingBackend(toy, budget=3)
    cached = CachingBackend(counter)
    first = images(rng, 2)
    cached.query(first)
    new = images(rng, 2)
    with pytest.raises(BudgetExhausted):
        cached.query(np.concatenate([first, new]))
    assert (counter.images_sent, cached.hits, cached.misses, len(cached)) == (2, 0, 2, 2)
    # Cached images are still free even with one image of budget left, and one new image fits.
    cached.query(np.concatenate([first, new[:1]]))
    assert counter.images_sent == 3 and counter.remaining == 0


def test_empty_call_and_wrapper_attributes(toy):
    cached = CachingBackend(toy)
    assert cached.query(np.zeros((0, 8, 8, 3), dtype=np.uint8)).shape == (0, toy.num_labels)
    assert cached.labels == toy.labels and cached.unwrap() is toy
    with pytest.raises(TypeError):
        cached.query(np.zeros((1, 8, 8, 3), dtype=np.float32))
