"""kind: text -- tokenization (known answers and a per-value reference for the vectorised path), the fitted
vocabulary (lowercase, no punctuation, n-grams, max_vocab, min_count), the schema rules of its keys, and a
model trained on a text column through the normal CLI path (data prepare, train)."""
from __future__ import annotations

import json
import re
from collections import Counter

import numpy as np
import pyarrow as pa
import pyarrow.csv as pacsv
import pytest
import yaml

from dynarec.cli import main
from dynarec.data.encode import Encoders
from dynarec.data.prepare import prepare_table
from dynarec.data.schema import Feature, Schema, Task
from dynarec.data.text import tokenize, tokens
from dynarec.errors import SchemaError

WORDS = ["love", "dress", "great", "fit", "small", "return", "cute", "cheap", "perfect", "bad", "color", "size"]
POSITIVE = {"love", "perfect"}


def _reviews(n: int, seed: int = 0) -> pa.Table:
    """Titles of 3-5 words in random case with random punctuation; click = the title holds 'love' or
    'perfect' in any case (Bayes AUC 1). Two domains, no other signal."""
    rng = np.random.default_rng(seed)
    titles, y = [], []
    for _ in range(n):
        ws = list(rng.choice(WORDS, rng.integers(3, 6)))
        shown = [(w.upper() if r < 0.15 else w.title() if r < 0.5 else w) + str(rng.choice(["", "", "!", ",", "."]))
                 for w, r in zip(ws, rng.random(len(ws)))]
        titles.append(" ".join(shown))
        y.append(int(bool(POSITIVE & set(ws))))
    return pa.table({"shop": rng.choice(["a", "b"], n), "title": titles, "click": np.array(y, np.int8)})


def _schema(**title) -> Schema:
    return Schema(features=[Feature("title", group="item", **{"kind": "text", **title})], tasks=[Task("click")],
                  domain="shop")


def test_tokens_lowercase_and_drop_punctuation():
    f = Feature("t", kind="text")
    assert tokens("Love this dress!", f) == ["love", "this", "dress"]
    assert tokens("dress! DRESS, Dress.", f) == ["dress"] * 3  # 'Love'/'love', 'dress'/'dress!' are one token
    assert tokens("café crème 42", f) == ["café", "crème", "42"]  # unicode letters and digits
    assert tokens(None, f) == [] and tokens("", f) == [] and tokens("!!", f) == []
    assert tokens("Love It", Feature("t", kind="text", lowercase=False)) == ["Love", "It"]
    assert tokens("a-b c_d", Feature("t", kind="text", token_pattern="[a-z]+")) == ["a", "b", "c", "d"]


def test_ngrams_follow_the_words_in_order():
    f = Feature("t", kind="text", ngrams=3)
    assert tokens("Love this dress!", f) == ["love", "this", "dress", "love this", "this dress", "love this dress"]
    assert tokens("one", f) == ["one"]


def test_vectorised_tokenize_equals_the_per_value_reference():
    rng = np.random.default_rng(3)
    vals = [None if rng.random() < 0.1 else " ".join(rng.choice(["Aa", "bb!", "c-c", "", "42"], rng.integers(0, 5)))
            for _ in range(500)]
    f = Feature("t", kind="text", ngrams=2)
    flat, offs = tokenize(pa.array(vals, pa.string()), f)
    ref = [tokens(v, f) for v in vals]
    assert offs.tolist() == np.concatenate([[0], np.cumsum([len(r) for r in ref])]).tolist()
    assert flat.to_pylist() == [t for r in ref for t in r]
    flat, offs = tokenize(pa.array([7, None, 12]), Feature("t", kind="text"))  # a column read as numbers
    assert flat.to_pylist() == ["7", "12"] and offs.tolist() == [0, 1, 1, 2]


def test_vocabulary_is_the_lowercase_words_and_max_vocab_keeps_the_most_frequent():
    t = _reviews(800)
    enc = Encoders(_schema()).fit(t)
    assert set(enc.cat["title"].vocab) == set(WORDS)
    loose = Schema(features=[Feature("title", "sequence", "item", separator=" ")], tasks=[Task("click")],
                   domain="shop")
    assert len(Encoders(loose).fit(t).cat["title"].vocab) > 4 * len(WORDS)  # what `kind: sequence` made of it
    counts = Counter(w for v in t.column("title").to_pylist() for w in re.findall(r"\w+", v.lower()))
    top = sorted(counts, key=lambda w: (-counts[w], w))[:5]
    assert Encoders(_schema(max_vocab=5)).fit(t).cat["title"].vocab == top
    bi = Encoders(_schema(ngrams=2, min_count=3)).fit(t).cat["title"].vocab
    pairs = Counter(p for v in t.column("title").to_pylist() for p in tokens(v, Feature("x", kind="text", ngrams=2)))
    assert set(bi) == {p for p, c in pairs.items() if c >= 3} and any(" " in p for p in bi)


def test_encoded_rows_are_the_token_ids_padded_to_max_len():
    t = pa.table({"shop": ["a", "a", "b"], "title": ["Love love LOVE!", None, "dress"], "click": [1, 0, 1]})
    s = _schema(max_len=4)
    enc = Encoders(s).fit(t)
    ids = enc.transform(t, "t")["title"]
    love, dress = (enc.cat["title"].vocab.index(w) + 1 for w in ("love", "dress"))
    assert ids.tolist() == [[love] * 3 + [0], [0] * 4, [dress, 0, 0, 0]]
    assert s.feature("title").kind == "sequence" and s.sequences == [s.feature("title")]  # the sequence path


def test_text_keys_are_checked_and_survive_schema_json(tmp_path):
    s = _schema(ngrams=2, max_vocab=100, lowercase=False, token_pattern="[A-Za-z]+")
    s.save(tmp_path / "s.json")
    f = Schema.load(tmp_path / "s.json").feature("title")
    assert (f.kind, f.text, f.ngrams, f.max_vocab, f.lowercase, f.token_pattern) == \
        ("sequence", True, 2, 100, False, "[A-Za-z]+")
    assert tokens("Love It", f) == ["Love", "It", "Love It"]
    for kw, msg in [({"kind": "sparse", "ngrams": 2}, "key 'ngrams' applies to kind: text features only"),
                    ({"kind": "sequence", "max_vocab": 5}, "key 'max_vocab' applies to kind: text"),
                    ({"kind": "text", "separator": " "}, "key 'separator' has no effect on a text feature"),
                    ({"kind": "text", "dynamic": True}, "key 'dynamic' applies to sparse and sequence"),
                    ({"kind": "text", "token_pattern": "(a"}, "key 'token_pattern' is not a valid regular"),
                    ({"kind": "text", "ngrams": 0}, "key 'ngrams' expects an integer >= 1"),
                    ({"kind": "text", "max_vocab": "many"}, "key 'max_vocab' expects an integer >= 1")]:
        with pytest.raises(SchemaError, match=re.escape(msg)):
            Feature("title", **kw)


def test_a_model_learns_from_a_text_column_through_the_cli(tmp_path):
    pacsv.write_csv(_reviews(3000, seed=1), tmp_path / "reviews.csv")
    (tmp_path / "schema.yaml").write_text(yaml.safe_dump(
        {"domain": "shop", "features": [{"name": "title", "kind": "text", "group": "item", "max_len": 8}],
         "tasks": [{"name": "click"}]}))
    assert main(["data", "prepare", "--schema", str(tmp_path / "schema.yaml"), str(tmp_path / "reviews.csv"),
                 "--out", str(tmp_path / "data")]) == 0
    assert main(["train", "--model", "dnn", "--data", str(tmp_path / "data"), "--epochs", "2", "--batch-size", "64",
                 "--set", "trainer.progress=false", "--out", str(tmp_path / "run")]) == 0
    auc = json.loads((tmp_path / "run" / "metrics.json").read_text())["auc"]["click"]["all"]
    # the label is a function of the title's tokens (Bayes AUC 1): a model that sees them as words separates
    # the classes; the margin is for 2 short epochs, not for a tokenizer that splits 'Love' from 'love'
    assert auc > 0.95, auc


def test_prepare_table_keeps_text_as_a_padded_sequence():
    tables = prepare_table(_reviews(400), _schema(max_len=6), None)
    assert tables["train"].sequences["title"].shape[1] == 6


def test_the_servers_row_encoder_tokenizes_text_as_the_table_encoder_does():
    from types import SimpleNamespace

    import torch

    from dynarec.serve.predictor import Predictor
    from dynarec.serve.rows import columns_to_table, rows_to_columns

    s = _schema(max_len=5, ngrams=2, null_values=["the"])
    enc = Encoders(s).fit(_reviews(300))
    rows = [{"shop": "a", "title": "Love the DRESS!"}, {"shop": "b", "title": None},
            {"shop": "a", "title": "zzz, love; Perfect fit"}, {"shop": "b", "title": ["Cute", "small!"]}]
    p = Predictor(SimpleNamespace(schema=s), enc)
    cols = rows_to_columns(rows, s)
    fast, ref = p.encode_columns(cols), p.encode(columns_to_table(cols, s), labels=False)
    assert torch.equal(fast.table.sequences["title"], ref.table.sequences["title"])
    assert fast.unknown == ref.unknown
    j = [f.name for f in s.fields].index("title")
    assert fast.unknown_rows[:2, j].tolist() == [2, 0]  # 'love the', 'the dress' ('the' alone is a null token)
    love = enc.cat["title"].vocab.index("love") + 1
    assert fast.table.sequences["title"][0, 0].item() == love
