"""Reading data files, k-shot sampling, IID and Dirichlet partitions, and the bundled benchmark splits."""

import json

import numpy as np
import pytest

from fedbpt.data import (
    DataError,
    Example,
    class_histogram,
    k_shot,
    partition_dirichlet,
    partition_iid,
    read_rows,
    validation_split,
)
from fedbpt.tasks import AG_NEWS_POOL_PER_CLASS, builtin_task

# ---------------------------------------------------------------- partitions


def balanced_labels(n_classes: int = 4, per_class: int = 50) -> np.ndarray:
    return np.repeat(np.arange(n_classes), per_class)


def assert_exact_cover(shares: list[np.ndarray], n_examples: int) -> None:
    used = np.sort(np.concatenate(shares))
    np.testing.assert_array_equal(used, np.arange(n_examples))


def same_split(a: list[np.ndarray], b: list[np.ndarray]) -> bool:
    return len(a) == len(b) and all(np.array_equal(x, y) for x, y in zip(a, b, strict=True))


@pytest.mark.parametrize(("n_examples", "n_parties", "seed"), [(10, 1, 0), (10, 3, 1), (101, 7, 2), (50, 50, 3)])
def test_partition_iid_uses_every_index_once(n_examples, n_parties, seed):
    shares = partition_iid(n_examples, n_parties, seed)
    assert len(shares) == n_parties
    assert_exact_cover(shares, n_examples)
    sizes = [len(share) for share in shares]
    assert min(sizes) >= 1
    assert max(sizes) - min(sizes) <= 1


def test_partition_iid_is_reproducible_by_seed():
    assert same_split(partition_iid(100, 5, seed=7), partition_iid(100, 5, seed=7))
    assert not same_split(partition_iid(100, 5, seed=7), partition_iid(100, 5, seed=8))


def test_partition_iid_rejects_more_parties_than_examples():
    with pytest.raises(DataError, match="5 parties"):
        partition_iid(4, 5, seed=0)


@pytest.mark.parametrize(
    ("n_classes", "per_class", "n_parties", "alpha", "seed"),
    [
        (2, 10, 2, 1.0, 0),
        (4, 50, 10, 0.1, 1),
        (4, 50, 10, 100.0, 2),
        (3, 7, 21, 0.05, 3),  # as many parties as examples
        (4, 25, 50, 0.01, 4),  # very skewed: many parties would be left empty without the fix-up
        (5, 40, 8, 0.5, 5),
    ],
)
def test_partition_dirichlet_uses_every_index_once_and_leaves_no_party_empty(
    n_classes, per_class, n_parties, alpha, seed
):
    labels = balanced_labels(n_classes, per_class)
    shares = partition_dirichlet(labels, n_parties, alpha, seed)
    assert len(shares) == n_parties
    assert_exact_cover(shares, len(labels))
    assert all(len(share) >= 1 for share in shares)


def test_partition_dirichlet_never_leaves_a_party_empty_over_many_seeds():
    labels = balanced_labels(4, 25)
    for seed in range(50):
        shares = partition_dirichlet(labels, 40, 0.01, seed)
        assert min(len(share) for share in shares) >= 1, f"seed {seed}"
        assert_exact_cover(shares, len(labels))


def test_partition_dirichlet_is_reproducible_by_seed():
    labels = balanced_labels()
    assert same_split(partition_dirichlet(labels, 5, 0.5, seed=3), partition_dirichlet(labels, 5, 0.5, seed=3))
    assert not same_split(partition_dirichlet(labels, 5, 0.5, seed=3), partition_dirichlet(labels, 5, 0.5, seed=4))


def skew(alpha: float, seeds=range(5), n_parties: int = 10) -> float:
    """Mean total-variation distance between each party's class mix and the global one, over seeds."""
    labels = balanced_labels(4, 200)
    overall = np.bincount(labels) / len(labels)
    distances = []
    for seed in seeds:
        histogram = class_histogram(labels, partition_dirichlet(labels, n_parties, alpha, seed), 4)
        mixes = histogram / histogram.sum(axis=1, keepdims=True)
        distances.append((0.5 * np.abs(mixes - overall).sum(axis=1)).mean())
    return float(np.mean(distances))


def test_partition_dirichlet_skew_grows_as_alpha_shrinks():
    very_skewed, moderate, near_iid = skew(0.1), skew(1.0), skew(100.0)
    assert very_skewed > moderate > near_iid
    assert near_iid < 0.1  # alpha=100 is close to IID
    assert very_skewed > 0.4  # alpha=0.1 gives most parties a few dominant classes


@pytest.mark.parametrize("alpha", [0.0, -1.0])
def test_partition_dirichlet_rejects_non_positive_alpha(alpha):
    with pytest.raises(DataError, match="alpha must be positive"):
        partition_dirichlet(balanced_labels(), 3, alpha, seed=0)


def test_partition_dirichlet_rejects_more_parties_than_examples():
    with pytest.raises(DataError, match="cannot give 9 parties"):
        partition_dirichlet(np.array([0, 1, 0, 1]), 9, 1.0, seed=0)


def test_class_histogram_shape_and_row_sums():
    labels = np.array([0, 0, 1, 2, 2, 2, 1, 0])
    shares = [np.array([0, 1, 2]), np.array([3, 4]), np.array([5, 6, 7])]
    histogram = class_histogram(labels, shares, n_classes=4)  # class 3 never occurs: still a column
    assert histogram.shape == (3, 4)
    np.testing.assert_array_equal(histogram.sum(axis=1), [3, 2, 3])
    np.testing.assert_array_equal(histogram, [[2, 1, 0, 0], [0, 0, 2, 0], [1, 1, 1, 0]])


def test_class_histogram_row_sums_match_dirichlet_shares():
    labels = balanced_labels(5, 30)
    shares = partition_dirichlet(labels, 6, 0.3, seed=11)
    histogram = class_histogram(labels, shares, 5)
    assert histogram.shape == (6, 5)
    np.testing.assert_array_equal(histogram.sum(axis=1), [len(share) for share in shares])
    np.testing.assert_array_equal(histogram.sum(axis=0), np.bincount(labels))


# ---------------------------------------------------------------- k-shot


def pool(per_label: dict[int, int]) -> list[Example]:
    return [Example(f"label {label} example {i}", label) for label, n in per_label.items() for i in range(n)]


def test_k_shot_takes_exactly_k_per_label():
    examples = pool({0: 30, 1: 12, 2: 20})
    chosen = k_shot(examples, k=5, seed=0)
    assert len(chosen) == 15
    assert sorted(np.bincount([e.label for e in chosen])) == [5, 5, 5]
    assert len(set(chosen)) == 15  # without replacement
    assert all(e in examples for e in chosen)


def test_k_shot_can_take_every_example_of_a_label():
    examples = pool({0: 4, 1: 9})
    chosen = k_shot(examples, k=4, seed=1)
    assert [e for e in chosen if e.label == 0] == [e for e in examples if e.label == 0]


def test_k_shot_is_reproducible_by_seed():
    examples = pool({0: 40, 1: 40})
    assert k_shot(examples, 8, seed=5) == k_shot(examples, 8, seed=5)
    assert k_shot(examples, 8, seed=5) != k_shot(examples, 8, seed=6)


def test_k_shot_rejects_a_label_with_fewer_than_k():
    with pytest.raises(DataError, match=r"label 1 has only 3 examples, fewer than k=4"):
        k_shot(pool({0: 10, 1: 3}), k=4, seed=0)


# ---------------------------------------------------------------- read_rows


def write(path, text: str):
    path.write_text(text, encoding="utf-8")
    return path


def test_read_rows_csv_with_header(tmp_path):
    path = write(tmp_path / "data.csv", 'sentence,label\n"great, really",1\nawful,0\n"he said ""hi""",1\n')
    assert read_rows(path) == [
        {"sentence": "great, really", "label": "1"},
        {"sentence": "awful", "label": "0"},
        {"sentence": 'he said "hi"', "label": "1"},
    ]


def test_read_rows_tsv_keeps_bare_double_quotes_as_text(tmp_path):
    path = write(tmp_path / "data.tsv", 'sentence\tlabel\n"it\'s a "charming" film\t1\na, b and c\t0\n')
    assert read_rows(path) == [
        {"sentence": '"it\'s a "charming" film', "label": "1"},
        {"sentence": "a, b and c", "label": "0"},
    ]


def test_read_rows_tsv_quoted_on_request(tmp_path):
    path = write(tmp_path / "data.tsv", 'text\tlabel\n"tab\tinside"\t1\n')
    assert read_rows(path, quoted=True) == [{"text": "tab\tinside", "label": "1"}]


def test_read_rows_jsonl(tmp_path):
    lines = [{"text": "good", "label": 1}, {"text": "bad", "label": 0, "extra": 2.5}]
    path = write(tmp_path / "data.jsonl", "\n".join(json.dumps(row) for row in lines) + "\n\n")
    assert read_rows(path) == [{"text": "good", "label": "1"}, {"text": "bad", "label": "0", "extra": "2.5"}]


def test_read_rows_without_header_uses_given_columns(tmp_path):
    path = write(tmp_path / "data.csv", '"3","Title","Body, with comma"\n"1","T2","B2"\n')
    rows = read_rows(path, has_header=False, columns=["label", "title", "description"])
    assert rows == [
        {"label": "3", "title": "Title", "description": "Body, with comma"},
        {"label": "1", "title": "T2", "description": "B2"},
    ]


def test_read_rows_missing_file(tmp_path):
    with pytest.raises(DataError, match="does not exist"):
        read_rows(tmp_path / "nope.csv")


def test_read_rows_unsupported_extension(tmp_path):
    path = write(tmp_path / "data.txt", "text,label\nx,1\n")
    with pytest.raises(DataError, match=r"unsupported file type '\.txt'"):
        read_rows(path)


def test_read_rows_wrong_field_count_names_the_line(tmp_path):
    path = write(tmp_path / "data.csv", "text,label\ngood,1\nbad,0,extra\n")
    with pytest.raises(DataError, match=r"data\.csv:3: expected 2 fields, found 3"):
        read_rows(path)


def test_read_rows_wrong_field_count_in_headerless_tsv_names_the_line(tmp_path):
    path = write(tmp_path / "data.tsv", "good\t1\nbad\n")
    with pytest.raises(DataError, match=r"data\.tsv:2: expected 2 fields, found 1"):
        read_rows(path, has_header=False, columns=["text", "label"])


def test_read_rows_wrong_field_count_line_number_after_a_multiline_field(tmp_path):
    # The short row "bad" is on line 4 of the file; line 3 is the second half of a quoted field.
    path = write(tmp_path / "data.csv", 'text,label\n"two\nlines",1\nbad\n')
    with pytest.raises(DataError, match=r"data\.csv:4: expected 2 fields, found 1"):
        read_rows(path)


@pytest.mark.parametrize("name", ["empty.csv", "empty.tsv"])
def test_read_rows_empty_file_with_header_is_a_data_error(tmp_path, name):
    path = write(tmp_path / name, "")
    with pytest.raises(DataError, match="is empty"):
        read_rows(path)


def test_read_rows_headerless_without_columns_asks_for_columns(tmp_path):
    path = write(tmp_path / "data.csv", "good,1\n")
    with pytest.raises(DataError, match="columns"):
        read_rows(path, has_header=False)


def test_read_rows_malformed_json_names_the_line(tmp_path):
    path = write(tmp_path / "data.jsonl", '{"text": "ok", "label": 1}\n{"text": "broken", \n')
    with pytest.raises(DataError, match=r"data\.jsonl:2: not valid JSON"):
        read_rows(path)


@pytest.mark.parametrize("line", ['["text", 1]', '"just a string"', "3"])
def test_read_rows_jsonl_line_that_is_not_an_object(tmp_path, line):
    path = write(tmp_path / "data.jsonl", '{"text": "ok", "label": 1}\n' + line + "\n")
    with pytest.raises(DataError, match=r"data\.jsonl:2: each line must be a JSON object"):
        read_rows(path)


# ---------------------------------------------------------------- bundled benchmark data


def test_sst2_eval_is_the_872_row_dev_set():
    examples = builtin_task("sst2").load_eval()
    assert len(examples) == 872
    assert {e.label for e in examples} == {0, 1}
    assert all(e.text.strip() for e in examples)


@pytest.fixture(scope="module")
def agnews():
    task = builtin_task("agnews")
    return task.load_train(), task.load_eval()


def test_agnews_split_sizes(agnews):
    train, evaluation = agnews
    assert len(train) == 4 * AG_NEWS_POOL_PER_CLASS == 800
    np.testing.assert_array_equal(np.bincount([e.label for e in train], minlength=4), [200] * 4)
    assert len(evaluation) == 6800
    np.testing.assert_array_equal(np.bincount([e.label for e in evaluation], minlength=4), [1700] * 4)


def test_agnews_train_pool_and_eval_are_disjoint(agnews):
    train, evaluation = agnews
    assert not {e.text for e in train} & {e.text for e in evaluation}
    assert all("\\" not in e.text for e in train)


def test_agnews_split_is_the_same_when_loaded_twice(agnews):
    task = builtin_task("agnews")
    assert task.load_train() == agnews[0]
    assert task.load_eval() == agnews[1]


def test_a_validation_split_holds_out_a_seeded_share_and_leaves_something_to_search():
    searching, scoring = validation_split(16, 0.25, 3)
    assert len(scoring) == 4 and sorted([*searching, *scoring]) == list(range(16))
    again = validation_split(16, 0.25, 3)
    assert all(np.array_equal(a, b) for a, b in zip((searching, scoring), again, strict=True))
    assert not np.array_equal(validation_split(16, 0.25, 4)[1], scoring)
    assert [len(part) for part in validation_split(2, 0.9, 1)] == [1, 1]
    one = validation_split(1, 0.25, 1)
    assert one[0].tolist() == one[1].tolist() == [0]
    everything = validation_split(5, 0.0, 1)
    assert everything[0].tolist() == everything[1].tolist() == list(range(5))
