"""Task files (TOML and JSON), their validation, verbalizer token ids, templates and task resolution."""

import json

import pytest
from conftest import word_tokenizer

from fedbpt.data import DataError, Example
from fedbpt.tasks import Task, TaskError, builtin_task, load_task_file, resolve_task, verbalizer_token_ids

# ---------------------------------------------------------------- helpers

TOML_TASK = """\
name = "reviews"
template = "Review: {text}\\nSentiment:"
instruction = "Is the review positive or negative?"
train = "train.DATA"
eval = "dev.DATA"
text_column = "sentence"
label_column = "label"

[labels]
"pos" = " positive"
"neg" = " negative"
"mixed" = " mixed"
"""

ROWS = [
    {"sentence": "a fine film", "label": "pos"},
    {"sentence": 'dull, "dreary" and long', "label": "neg"},
    {"sentence": "some of both", "label": "mixed"},
    {"sentence": "loved it", "label": "pos"},
]
# Label indices follow the order of the [labels] table (pos, neg, mixed), not sorted order.
EXPECTED = [
    Example("a fine film", 0),
    Example('dull, "dreary" and long', 1),
    Example("some of both", 2),
    Example("loved it", 0),
]


def write_rows(path, rows: list[dict[str, str]]) -> None:
    """Rows as CSV (quoted), TSV (bare, GLUE style) or JSONL, by the path's extension."""
    columns = list(rows[0])
    if path.suffix == ".jsonl":
        text = "".join(json.dumps(row) + "\n" for row in rows)
    elif path.suffix == ".tsv":
        lines = ["\t".join(columns)] + ["\t".join(row[c] for c in columns) for row in rows]
        text = "\n".join(lines) + "\n"
    else:
        quote = '"{}"'.format
        lines = [",".join(quote(c) for c in columns)]
        lines += [",".join(quote(row[c].replace('"', '""')) for c in columns) for row in rows]
        text = "\n".join(lines) + "\n"
    path.write_text(text, encoding="utf-8")


def base_spec(**changes) -> dict:
    spec = {
        "name": "reviews",
        "template": "Review: {text}\nSentiment:",
        "train": "train.csv",
        "eval": "dev.csv",
        "text_column": "sentence",
        "label_column": "label",
        "labels": {"pos": " positive", "neg": " negative"},
    }
    spec.update(changes)
    return {key: value for key, value in spec.items() if value is not None}


def json_task(tmp_path, rows=None, **changes):
    """A JSON task file (plus CSV data) under tmp_path; ``key=None`` removes a key."""
    rows = rows if rows is not None else ROWS[:2]
    write_rows(tmp_path / "train.csv", rows)
    write_rows(tmp_path / "dev.csv", rows)
    path = tmp_path / "task.json"
    path.write_text(json.dumps(base_spec(**changes)), encoding="utf-8")
    return path


def simple_task(verbalizers=(" negative", " positive"), name="t") -> Task:
    labels = tuple(f"label{i}" for i in range(len(verbalizers)))
    return Task(name, "Review: {text}\nSentiment:", labels, tuple(verbalizers), "", list, list)


# ---------------------------------------------------------------- loading task files


@pytest.mark.parametrize("extension", ["csv", "tsv", "jsonl"])
def test_load_toml_task_with_each_data_format(tmp_path, extension):
    write_rows(tmp_path / f"train.{extension}", ROWS)
    write_rows(tmp_path / f"dev.{extension}", ROWS[1:3])
    path = tmp_path / "task.toml"
    path.write_text(TOML_TASK.replace("DATA", extension), encoding="utf-8")

    task = load_task_file(path)
    assert task.name == "reviews"
    assert task.template == "Review: {text}\nSentiment:"
    assert task.instruction == "Is the review positive or negative?"
    assert task.label_names == ("pos", "neg", "mixed")
    assert task.verbalizers == (" positive", " negative", " mixed")
    assert task.n_labels == 3
    assert task.load_train() == EXPECTED
    assert task.load_eval() == EXPECTED[1:3]


@pytest.mark.parametrize("extension", ["csv", "tsv", "jsonl"])
def test_load_json_task_with_each_data_format(tmp_path, extension):
    write_rows(tmp_path / f"train.{extension}", ROWS)
    write_rows(tmp_path / f"dev.{extension}", ROWS[:1])
    spec = base_spec(
        train=f"train.{extension}",
        eval=f"dev.{extension}",
        labels={"pos": " positive", "neg": " negative", "mixed": " mixed"},
    )
    path = tmp_path / "task.json"
    path.write_text(json.dumps(spec), encoding="utf-8")

    task = load_task_file(path)
    assert task.label_names == ("pos", "neg", "mixed")
    assert task.verbalizers == (" positive", " negative", " mixed")
    assert task.instruction == "Classify the text."  # the default when none is given
    assert task.load_train() == EXPECTED
    assert task.load_eval() == EXPECTED[:1]


def test_data_paths_are_relative_to_the_task_file(tmp_path, monkeypatch):
    folder = tmp_path / "tasks"
    folder.mkdir()
    path = json_task(folder)
    monkeypatch.chdir(tmp_path)  # the working directory holds no data files
    assert load_task_file(path).load_train() == [Example("a fine film", 0), Example('dull, "dreary" and long', 1)]


@pytest.mark.parametrize("extension", ["csv", "tsv", "jsonl"])
def test_text_pair_column(tmp_path, extension):
    rows = [
        {"premise": "a man sleeps", "hypothesis": "someone rests", "label": "yes"},
        {"premise": "a dog barks", "hypothesis": "a cat meows", "label": "no"},
    ]
    write_rows(tmp_path / f"pairs.{extension}", rows)
    spec = base_spec(
        template="{text} Question: {text_pair}? Answer:",
        train=f"pairs.{extension}",
        eval=f"pairs.{extension}",
        text_column="premise",
        text_pair_column="hypothesis",
        labels={"yes": " Yes", "no": " No"},
    )
    path = tmp_path / "task.json"
    path.write_text(json.dumps(spec), encoding="utf-8")

    task = load_task_file(path)
    assert task.load_train() == [
        Example("a man sleeps", 0, "someone rests"),
        Example("a dog barks", 1, "a cat meows"),
    ]
    assert [field for field, is_field in task.template_parts() if is_field] == ["text", "text_pair"]


# ---------------------------------------------------------------- mistakes in task files


def test_missing_task_file(tmp_path):
    with pytest.raises(TaskError, match="does not exist"):
        load_task_file(tmp_path / "absent.toml")


def test_unparseable_toml(tmp_path):
    path = tmp_path / "task.toml"
    path.write_text('name = "reviews"\ntemplate = \n', encoding="utf-8")
    with pytest.raises(TaskError, match="cannot be parsed"):
        load_task_file(path)


def test_unparseable_json(tmp_path):
    path = tmp_path / "task.json"
    path.write_text('{"name": "reviews",', encoding="utf-8")
    with pytest.raises(TaskError, match="cannot be parsed"):
        load_task_file(path)


def test_json_task_that_is_not_an_object(tmp_path):
    path = tmp_path / "task.json"
    path.write_text('["name", "template"]', encoding="utf-8")
    with pytest.raises(TaskError, match="table/object"):
        load_task_file(path)


@pytest.mark.parametrize("key", ["name", "template", "train", "eval", "text_column", "label_column", "labels"])
def test_missing_required_key_is_named(tmp_path, key):
    with pytest.raises(TaskError, match=rf"is missing \['{key}'\]"):
        load_task_file(json_task(tmp_path, **{key: None}))


def test_several_missing_keys_are_all_listed(tmp_path):
    with pytest.raises(TaskError, match=r"is missing \['eval', 'labels'\]"):
        load_task_file(json_task(tmp_path, eval=None, labels=None))


def test_unknown_key(tmp_path):
    with pytest.raises(TaskError, match=r"unknown keys \['colour', 'lables'\]"):
        load_task_file(json_task(tmp_path, colour="blue", lables={}))


def test_template_without_text(tmp_path):
    with pytest.raises(TaskError, match=r"must contain \{text\}"):
        load_task_file(json_task(tmp_path, template="Sentiment:"))


def test_unknown_template_field(tmp_path):
    with pytest.raises(TaskError, match=r"unknown template fields \['label', 'review'\]"):
        load_task_file(json_task(tmp_path, template="{review} {text} {label}"))


@pytest.mark.parametrize("labels", [{"pos": " positive"}, {}, [" positive", " negative"], " positive"])
def test_labels_must_be_a_table_of_at_least_two(tmp_path, labels):
    with pytest.raises(TaskError, match="'labels' must map each label value"):
        load_task_file(json_task(tmp_path, labels=labels))


def test_single_label_message_says_two_are_needed(tmp_path):
    with pytest.raises(TaskError, match="at least two"):
        load_task_file(json_task(tmp_path, labels={"pos": " positive"}))


def test_duplicate_verbalizer_words(tmp_path):
    with pytest.raises(TaskError, match=r"verbalizer words must differ, got \[' good', ' good'\]"):
        load_task_file(json_task(tmp_path, labels={"pos": " good", "neg": " good"}))


def test_data_file_missing_a_column_is_named(tmp_path):
    task = load_task_file(json_task(tmp_path, text_column="review"))
    with pytest.raises(DataError, match=r"train\.csv: row 1 has no column 'review'"):
        task.load_train()


def test_data_file_missing_the_label_column_is_named(tmp_path):
    task = load_task_file(json_task(tmp_path, label_column="gold"))
    with pytest.raises(DataError, match="no column 'gold'"):
        task.load_eval()


def test_label_value_the_task_does_not_define_is_named(tmp_path):
    rows = [{"sentence": "fine", "label": "pos"}, {"sentence": "meh", "label": "maybe"}]
    task = load_task_file(json_task(tmp_path, rows=rows))
    with pytest.raises(DataError, match=r"row 2 has label 'maybe', which the task does not define"):
        task.load_train()


def test_text_pair_column_needs_text_pair_in_the_template(tmp_path):
    with pytest.raises(TaskError, match=r"needs both text_pair_column and \{text_pair\}"):
        load_task_file(json_task(tmp_path, text_pair_column="hypothesis"))


def test_text_pair_template_needs_text_pair_column(tmp_path):
    with pytest.raises(TaskError, match=r"needs both text_pair_column and \{text_pair\}"):
        load_task_file(json_task(tmp_path, template="{text} / {text_pair}:"))


def test_template_that_is_not_a_string(tmp_path):
    with pytest.raises(TaskError, match="template"):
        load_task_file(json_task(tmp_path, template=5))


# ---------------------------------------------------------------- verbalizer token ids


@pytest.fixture(scope="module")
def tokenizer():
    return word_tokenizer()


def encoder(tokenizer):
    return lambda word: tokenizer.encode(word, add_special_tokens=False)


def test_sst2_verbalizers_are_single_tokens(tokenizer):
    ids = verbalizer_token_ids(builtin_task("sst2"), encoder(tokenizer))
    assert ids == [tokenizer.convert_tokens_to_ids("negative"), tokenizer.convert_tokens_to_ids("positive")]
    assert len(set(ids)) == 2


def test_multi_token_verbalizer_names_word_and_token_count(tokenizer):
    task = simple_task((" very bad", " good"), name="reviews")
    with pytest.raises(TaskError, match=r"task 'reviews'.*' very bad' is 2 tokens") as raised:
        verbalizer_token_ids(task, encoder(tokenizer))
    assert "' good'" not in str(raised.value)  # the single-token word is not reported


def test_every_multi_token_verbalizer_is_reported(tokenizer):
    task = simple_task((" very bad", " not so good", " fine"))
    with pytest.raises(TaskError) as raised:
        verbalizer_token_ids(task, encoder(tokenizer))
    assert "' very bad' is 2 tokens" in str(raised.value)
    assert "' not so good' is 3 tokens" in str(raised.value)


FAKE_VOCAB = {" great": [10], "great": [11], " Great": [20, 21], " bad": [30], "Bad": [31], " B": [40]}


def fake_encode(word: str) -> list[int]:
    """Known words from FAKE_VOCAB; anything else is one token per character."""
    return FAKE_VOCAB.get(word, [ord(character) for character in word])


def test_multi_token_verbalizer_suggests_single_token_spellings():
    task = simple_task((" Great", " bad"))
    with pytest.raises(TaskError, match=r"' Great' is 2 tokens \[20, 21\]; single-token alternatives:") as raised:
        verbalizer_token_ids(task, fake_encode)
    message = str(raised.value)
    assert "' great'" in message
    assert "'great'" in message
    assert "' bad'" not in message


def test_multi_token_verbalizer_without_alternatives_asks_for_another_word():
    task = simple_task((" awful", " great"))
    with pytest.raises(TaskError, match=r"' awful' is 6 tokens .*choose a shorter or more common word"):
        verbalizer_token_ids(task, fake_encode)


def test_single_token_verbalizers_pass_with_a_custom_encoder():
    assert verbalizer_token_ids(simple_task((" bad", " great", " B")), fake_encode) == [30, 10, 40]


def test_verbalizers_mapping_to_the_same_token_are_rejected(tokenizer):
    # Words outside the word tokenizer's vocabulary all become the single [UNK] token.
    task = simple_task((" zzzunknownword", " qqqunknownword"))
    with pytest.raises(TaskError, match="same token"):
        verbalizer_token_ids(task, encoder(tokenizer))


# ---------------------------------------------------------------- templates


def test_template_parts_splits_text_and_fields():
    task = builtin_task("sst2")
    assert task.template == "Review: {text}\nSentiment:"
    assert task.template_parts() == [("Review: ", False), ("text", True), ("\nSentiment:", False)]


def test_template_parts_with_a_pair_and_leading_field():
    task = Task("pair", "{text} means {text_pair}?", ("no", "yes"), (" No", " Yes"), "", list, list)
    assert task.template_parts() == [("text", True), (" means ", False), ("text_pair", True), ("?", False)]


# ---------------------------------------------------------------- resolve_task


def test_resolve_task_unknown_name_lists_builtins():
    with pytest.raises(TaskError, match="unknown task 'sst5'") as raised:
        resolve_task("sst5")
    for name in ("sst2", "agnews", "yelp2", "dbpedia"):
        assert name in str(raised.value)


@pytest.mark.parametrize("name", ["sst2", "agnews", "yelp2", "dbpedia"])
def test_resolve_task_builtin_names(name):
    task = resolve_task(name)
    assert task.name == name
    assert task.n_labels == len(task.verbalizers) >= 2


def test_resolve_task_loads_a_toml_path(tmp_path):
    write_rows(tmp_path / "train.csv", ROWS)
    write_rows(tmp_path / "dev.csv", ROWS)
    path = tmp_path / "task.toml"
    path.write_text(TOML_TASK.replace("DATA", "csv"), encoding="utf-8")
    task = resolve_task(str(path))
    assert task.name == "reviews"
    assert task.label_names == ("pos", "neg", "mixed")
    assert task.load_eval() == EXPECTED


def test_resolve_task_loads_a_json_path(tmp_path):
    task = resolve_task(str(json_task(tmp_path)))
    assert task.verbalizers == (" positive", " negative")


def test_resolve_task_missing_toml_path(tmp_path):
    with pytest.raises(TaskError, match="does not exist"):
        resolve_task(str(tmp_path / "missing.toml"))
