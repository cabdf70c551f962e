"""Build the demo retrieval sets (assets/demo/<domain>/{train,eval}.jsonl) from the hand-written items in source/.

Why: the offline demo fine-tunes an embedder on one narrow domain and shows what merging does to the
narrow skill and to general skill. Its data must be reproducible, so the written items live in
source/<domain>_<n>.jsonl and this script turns them, deterministically, into FlagEmbedding's
fine-tune format, one object per line: {"query": str, "pos": [str], "neg": [str, ...]}.

Steps, per domain:
  1. read every source/<domain>_*.jsonl line: {"query", "pos" (one passage), "neg" (0-2 hand-written
     near misses, optional)}; refuse duplicate queries and passages outside 25-70 words;
  2. give each item between 4 and 7 negatives (the count drawn with a seeded RNG): its hand-written near
     misses first, then the passages of OTHER items of the same domain, ranked by a BM25 score against the
     query plus a smaller weight of BM25 against the item's own positive (so negatives are topically
     close); ties are broken by a seeded random key;
  3. order the items by a seeded hash of their query and put the first EVAL_SIZE (at most a quarter) in
     eval.jsonl, the rest in train.jsonl; a hash keeps an item's side stable when new items are added.
Stdlib only; no network; same input gives byte-identical output.

Usage:  python3 assets/demo/build_sets.py        (prints the counts per file)
"""
import hashlib
import json
import math
import random
import re
import sys
from collections import Counter
from pathlib import Path

HERE = Path(__file__).resolve().parent
DOMAINS = ("cooking", "software", "general")
SEED = 6
EVAL_SIZE = 50
NEG_RANGE = (4, 7)  # inclusive bounds on negatives per query
WORDS_RANGE = (25, 70)  # inclusive bounds on words per positive passage
POSITIVE_WEIGHT = 0.3  # how much the item's own positive counts next to its query when ranking negatives
BM25_K1, BM25_B = 1.2, 0.75
STOPWORDS = set("""a an the and or but if of to in on at by for with from as is are was were be been being it its
this that these those what which who whom how why when where do does did can could should would will shall
may might must i you he she we they me my your our their them his her not no so than then there here into
about over under up down out off too very just also only any some all each more most other such own same
s t don get got have has had use used using""".split())


def tokens(text):
    """Lower-case word tokens without stopwords; `c++`, `utf-8` and `sha-256` stay one token."""
    return [w for w in re.findall(r"[a-z0-9][a-z0-9+#.\-]*[a-z0-9+#]|[a-z0-9]", text.lower()) if w not in STOPWORDS]


class BM25:
    """Okapi BM25 over a fixed list of passages (Robertson et al.); `scores(terms)` returns one score per passage."""

    def __init__(self, passages):
        self.docs = [Counter(tokens(p)) for p in passages]
        self.lengths = [sum(d.values()) for d in self.docs]
        self.avg_length = sum(self.lengths) / max(len(self.docs), 1)
        df = Counter(term for d in self.docs for term in d)
        n = len(self.docs)
        self.idf = {t: math.log(1 + (n - f + 0.5) / (f + 0.5)) for t, f in df.items()}

    def scores(self, terms):
        out = []
        for doc, length in zip(self.docs, self.lengths):
            norm = BM25_K1 * (1 - BM25_B + BM25_B * length / self.avg_length)
            out.append(sum(self.idf.get(t, 0.0) * doc[t] * (BM25_K1 + 1) / (doc[t] + norm) for t in set(terms) if t in doc))
        return out


def read_items(domain):
    """All source items of one domain, in file order; raise ValueError naming the file and line on bad input."""
    items, seen = [], set()
    files = sorted((HERE / "source").glob(f"{domain}_*.jsonl"))
    if not files:
        raise ValueError(f"no source files source/{domain}_*.jsonl in {HERE}")
    for path in files:
        for number, line in enumerate(path.read_text(encoding="utf-8").splitlines(), 1):
            if not line.strip():
                continue
            where = f"{path.name}:{number}"
            item = json.loads(line)
            query, pos, neg = item["query"].strip(), item["pos"].strip(), [n.strip() for n in item.get("neg", [])]
            if query.lower() in seen:
                raise ValueError(f"{where}: duplicate query {query!r}")
            n_words = len(pos.split())
            if not WORDS_RANGE[0] <= n_words <= WORDS_RANGE[1]:
                raise ValueError(f"{where}: positive has {n_words} words, want {WORDS_RANGE[0]}-{WORDS_RANGE[1]}")
            if pos in neg or len(neg) > NEG_RANGE[0]:
                raise ValueError(f"{where}: hand-written negatives must differ from the positive and number at most {NEG_RANGE[0]}")
            seen.add(query.lower())
            items.append({"query": query, "pos": pos, "neg": neg})
    return items


def add_negatives(items, rng):
    """Fill each item's negatives to a seeded count in NEG_RANGE with the closest passages of other items."""
    pool = list(dict.fromkeys([it["pos"] for it in items] + [n for it in items for n in it["neg"]]))
    index = BM25(pool)
    out = []
    for item in items:
        want = rng.randint(*NEG_RANGE)
        by_query = index.scores(tokens(item["query"]))
        by_positive = index.scores(tokens(item["pos"]))
        tie_break = [rng.random() for _ in pool]
        ranked = sorted(range(len(pool)), key=lambda i: (-(by_query[i] + POSITIVE_WEIGHT * by_positive[i]), tie_break[i]))
        negatives = list(item["neg"])
        for i in ranked:
            if len(negatives) >= want:
                break
            if pool[i] != item["pos"] and pool[i] not in negatives:
                negatives.append(pool[i])
        out.append({"query": item["query"], "pos": [item["pos"]], "neg": negatives})
    return out


def build(domain):
    """Write <domain>/train.jsonl and <domain>/eval.jsonl; return (n_train, n_eval)."""
    rng = random.Random(f"{SEED}-{domain}")
    rows = add_negatives(read_items(domain), rng)
    rows.sort(key=lambda row: hashlib.sha256(f"{SEED}:{row['query']}".encode()).hexdigest())
    n_eval = min(EVAL_SIZE, len(rows) // 4)
    splits = {"eval": rows[:n_eval], "train": rows[n_eval:]}
    (HERE / domain).mkdir(exist_ok=True)
    for name, part in splits.items():
        text = "".join(json.dumps(row, ensure_ascii=False) + "\n" for row in part)
        (HERE / domain / f"{name}.jsonl").write_text(text, encoding="utf-8")
    return len(splits["train"]), len(splits["eval"])


def main():
    for domain in DOMAINS:
        n_train, n_eval = build(domain)
        print(f"{domain:9s} train {n_train:4d}  eval {n_eval:3d}  total {n_train + n_eval:4d}")


if __name__ == "__main__":
    try:
        main()
    except ValueError as error:
        sys.exit(f"build_sets: {error}")
