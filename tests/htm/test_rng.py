import numpy as np

from pensu.htm.rng import new_rng_state, rng_next, rng_randint, rng_shuffle, rng_uniform


def test_same_seed_gives_same_stream_and_state_copy_continues_it():
    a = new_rng_state(42)
    b = new_rng_state(42)
    first = [int(rng_next(a)) for _ in range(5)]
    assert first == [int(rng_next(b)) for _ in range(5)]
    saved = a.copy()
    rest = [int(rng_next(a)) for _ in range(5)]
    assert rest == [int(rng_next(saved)) for _ in range(5)]


def test_streams_and_seeds_differ():
    assert int(rng_next(new_rng_state(1))) != int(rng_next(new_rng_state(2)))
    assert int(rng_next(new_rng_state(1, 0))) != int(rng_next(new_rng_state(1, 1)))


def test_uniform_and_randint_ranges_are_roughly_uniform():
    s = new_rng_state(7)
    u = np.array([rng_uniform(s) for _ in range(20000)])
    assert u.min() >= 0.0 and u.max() < 1.0
    assert abs(u.mean() - 0.5) < 0.01
    counts = np.bincount([rng_randint(s, 10) for _ in range(20000)], minlength=10)
    assert counts.shape == (10,) and counts.min() > 1700


def test_shuffle_is_a_permutation():
    s = new_rng_state(3)
    arr = np.arange(100, dtype=np.int32)
    rng_shuffle(s, arr)
    assert sorted(arr.tolist()) == list(range(100))
    assert arr.tolist() != list(range(100))
