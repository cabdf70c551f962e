"""Invariants of the shipped demo retrieval sets in assets/demo/ (FlagEmbedding fine-tune format).

Why: the offline demo trains and evaluates on these files; a malformed line, a query leaking from train
into eval, or a positive that is also listed as a negative would silently spoil its numbers. The last test
rebuilds the sets from source/ into a temp copy and checks the shipped files are exactly what the script
writes, so source/ and the JSONL files cannot drift apart.
"""
import importlib.util
import json
import math
import random
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

DEMO = Path(__file__).resolve().parent.parent / "assets" / "demo"
DOMAINS = ("cooking", "software", "general")
SPLITS = ("train", "eval")


def load_build_sets():
    spec = importlib.util.spec_from_file_location("build_sets", DEMO / "build_sets.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def read_rows(domain, split):
    lines = (DEMO / domain / f"{split}.jsonl").read_text(encoding="utf-8").splitlines()
    return [json.loads(line) for line in lines]


@pytest.mark.parametrize("domain", DOMAINS)
@pytest.mark.parametrize("split", SPLITS)
def test_every_row_has_one_positive_and_four_to_seven_distinct_negatives(domain, split):
    rows = read_rows(domain, split)
    assert rows, f"{domain}/{split}.jsonl is empty"
    for row in rows:
        assert set(row) == {"query", "pos", "neg"}
        assert isinstance(row["query"], str) and row["query"].strip()
        assert len(row["pos"]) == 1 and 25 <= len(row["pos"][0].split()) <= 70
        assert 4 <= len(row["neg"]) <= 7
        assert len(set(row["neg"])) == len(row["neg"]), f"repeated negative for {row['query']!r}"
        assert row["pos"][0] not in row["neg"], f"positive listed as negative for {row['query']!r}"
        assert all(isinstance(n, str) and len(n.split()) >= 8 for n in row["neg"])


@pytest.mark.parametrize("domain", DOMAINS)
def test_queries_are_unique_and_eval_is_disjoint_from_train(domain):
    train = [r["query"].lower() for r in read_rows(domain, "train")]
    held_out = [r["query"].lower() for r in read_rows(domain, "eval")]
    assert len(set(train)) == len(train)
    assert len(set(held_out)) == len(held_out)
    assert not set(train) & set(held_out)
    assert len(held_out) >= 10 and len(train) >= 3 * len(held_out)


def test_domains_share_no_query_and_no_positive():
    seen = {}
    for domain in DOMAINS:
        for split in SPLITS:
            for row in read_rows(domain, split):
                for key in (row["query"].lower(), row["pos"][0]):
                    assert seen.setdefault(key, domain) == domain, f"{key[:60]!r} in {seen[key]} and {domain}"


def test_negatives_come_from_the_same_domain():
    positives = {d: {r["pos"][0] for s in SPLITS for r in read_rows(d, s)} for d in DOMAINS}
    for domain in DOMAINS:
        others = set().union(*(positives[d] for d in DOMAINS if d != domain))
        for split in SPLITS:
            for row in read_rows(domain, split):
                assert not others & set(row["neg"]), f"{domain} query {row['query']!r} has another domain's passage"


def test_shipped_files_are_what_build_sets_writes(tmp_path):
    copy = tmp_path / "demo"
    shutil.copytree(DEMO / "source", copy / "source")
    shutil.copy(DEMO / "build_sets.py", copy / "build_sets.py")
    subprocess.run([sys.executable, str(copy / "build_sets.py")], check=True, capture_output=True, timeout=120)
    for domain in DOMAINS:
        for split in SPLITS:
            name = f"{domain}/{split}.jsonl"
            assert (copy / name).read_bytes() == (DEMO / name).read_bytes(), f"{name} differs from a fresh build"


def test_bm25_matches_the_okapi_formula_written_out():
    build_sets = load_build_sets()
    passages = ["crisp crust crust", "soft crumb", "crust and crumb of bread"]
    index = build_sets.BM25(passages)
    # tokens (stopword "and"/"of" dropped): d0 = crisp crust crust (3), d1 = soft crumb (2), d2 = crust crumb bread (3)
    n, avg_length, k1, b = 3, 8 / 3, 1.2, 0.75
    idf_crust = math.log(1 + (n - 2 + 0.5) / (2 + 0.5))
    idf_crumb = idf_crust  # also in two of three passages

    def term(tf, length, idf):
        return idf * tf * (k1 + 1) / (tf + k1 * (1 - b + b * length / avg_length))

    expected = [term(2, 3, idf_crust), term(1, 2, idf_crumb), term(1, 3, idf_crust) + term(1, 3, idf_crumb)]
    assert index.scores(["crust", "crumb"]) == pytest.approx(expected)


def test_negatives_are_filled_from_other_items_closest_first():
    build_sets = load_build_sets()
    items = [
        {"query": "rest steak", "pos": "Rest the steak for five minutes.", "neg": ["Rest bread dough for an hour."]},
        {"query": "sear steak", "pos": "Sear the steak in a smoking hot pan.", "neg": []},
        {"query": "boil pasta", "pos": "Boil pasta in salted water.", "neg": []},
    ]
    rows = build_sets.add_negatives(items, random.Random(0))
    first = rows[0]
    assert first["pos"] == ["Rest the steak for five minutes."]
    assert first["neg"][0] == "Rest bread dough for an hour."  # hand-written near miss comes first
    assert first["neg"][1] == "Sear the steak in a smoking hot pan."  # shares "steak" with the query
    assert "Rest the steak for five minutes." not in first["neg"]
    assert all(len(row["neg"]) == len(set(row["neg"])) for row in rows)
