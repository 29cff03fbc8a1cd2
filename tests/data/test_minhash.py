"""MinHash near-dedup: planted duplicates found, distinct documents kept."""

from __future__ import annotations

import random

import numpy as np

from tokenworks.data.minhash import MinHashParameters, duplicate_clusters, jaccard, shingle_hashes, signatures

PARAMETERS = MinHashParameters()


def _corpus(originals: int, seed: int = 0) -> tuple[list[str], random.Random]:
    rng = random.Random(seed)
    vocabulary = ["".join(rng.choice("abcdefghijklmnop") for _ in range(rng.randint(3, 9))) for _ in range(4000)]
    return [" ".join(rng.choice(vocabulary) for _ in range(150)) for _ in range(originals)], rng


def _edited(text: str, edits: int, rng: random.Random) -> str:
    words = text.split()
    for _ in range(edits):
        words[rng.randrange(len(words))] = "edited"
    return " ".join(words)


def test_shingles_and_exact_jaccard() -> None:
    assert len(shingle_hashes("one two three four five six", 5)) == 2
    assert len(shingle_hashes("One, two!", 5)) == 1  # shorter than a shingle: one shingle of all words
    assert jaccard(shingle_hashes("a b c d e f", 5), shingle_hashes("A b c d e, F", 5)) == 1.0
    assert jaccard(shingle_hashes("a b c d e f g", 5), shingle_hashes("a b c d e f x", 5)) == 2 / 4


def test_signature_agreement_estimates_jaccard() -> None:
    texts, rng = _corpus(1)
    edited = _edited(texts[0], 6, rng)
    true = jaccard(shingle_hashes(texts[0], 5), shingle_hashes(edited, 5))
    first, second = signatures([texts[0], edited], MinHashParameters(bands=100, rows=10))
    assert abs(np.mean(first == second) - true) < 0.06
    np.testing.assert_array_equal(signatures([texts[0]], PARAMETERS)[0], signatures([texts[0], edited], PARAMETERS)[0])


def test_planted_duplicates_are_found_and_distinct_documents_kept() -> None:
    originals, rng = _corpus(400)
    planted = {}  # index of a duplicate -> index of its original
    texts = list(originals)
    for original in rng.sample(range(400), 60):
        planted[len(texts)] = original
        texts.append(_edited(originals[original], rng.randint(0, 3), rng))
    roots, similarity = duplicate_clusters(signatures(texts, PARAMETERS), texts, PARAMETERS)
    flagged = {i for i, root in enumerate(roots) if root != i}
    assert flagged == set(planted)
    assert all(roots[duplicate] == original for duplicate, original in planted.items())
    assert all(similarity[i] >= 0.8 for i in flagged)


def test_a_pair_below_the_threshold_is_kept() -> None:
    texts, rng = _corpus(1)
    far = _edited(texts[0], 12, rng)  # about 12 * 5 of 146 shingles changed: Jaccard near 0.5
    assert jaccard(shingle_hashes(texts[0], 5), shingle_hashes(far, 5)) < 0.8
    roots, _ = duplicate_clusters(signatures([texts[0], far], PARAMETERS), [texts[0], far], PARAMETERS)
    assert roots.tolist() == [0, 1]


def test_clusters_keep_their_first_document() -> None:
    texts, rng = _corpus(1)
    copies = [_edited(texts[0], 1, rng) for _ in range(4)]
    corpus = [*copies[:2], texts[0], *copies[2:]]
    roots, _ = duplicate_clusters(signatures(corpus, PARAMETERS), corpus, PARAMETERS)
    assert roots.tolist() == [0, 0, 0, 0, 0]
