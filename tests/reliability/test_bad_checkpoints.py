"""Promise 4: a bad checkpoint gives one clear error, never a crash or a huge allocation; NaN/Inf
in the inputs is found and reported, or refused on request.

The safetensors header reader is fuzzed with hypothesis (random bytes; random headers with wrong
lengths, dtypes, shapes and offsets; real headers with bytes flipped), and every case the issue
names is tried by hand, with tracemalloc proving a hostile length is never allocated.
"""
import json
import shutil
import struct
import tracemalloc
from collections import Counter
from pathlib import Path

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from safetensors.torch import load_file, save_file

from core.__main__ import main
from core.errors import CheckpointError
from core.io.checkpoint import Checkpoint
from core.io.header import DTYPE_CODES, MAX_HEADER_BYTES, encode_header, read_header
from core.merge.engine import merge
from core.merge.recipe import recipe_from_dict
from tests.reliability.merge_helpers import build_models, figures, linear_recipe, one_line, write_recipe

FUZZ = settings(max_examples=300, deadline=None, database=None, derandomize=True)


def outcome(file: Path) -> str:
    """Read `file`'s header: "accepted" (and then every promise about it holds) or "rejected" cleanly."""
    try:
        tensors, _ = read_header(file)
    except CheckpointError as error:
        assert one_line(str(error)), str(error)
        return "rejected"
    size, spans = file.stat().st_size, []
    for info in tensors.values():
        assert info.nbytes == info.numel * torch.empty((), dtype=info.dtype).element_size()
        assert 8 <= info.offset and info.offset + info.nbytes <= size
        spans.append((info.offset, info.offset + info.nbytes))
    spans.sort()
    assert all(end <= begin for (_, end), (begin, _) in zip(spans, spans[1:]))
    return "accepted"


def safetensors_bytes(header: object, *, data: int = 0, length: int | None = None, cut: int | None = None) -> bytes:
    raw = header if isinstance(header, bytes) else json.dumps(header).encode()
    raw = raw[:cut] if cut is not None else raw
    return struct.pack("<Q", len(raw) if length is None else length) + raw + bytes(data)


def run_fuzz(tmp_path: Path, strategy, name: str) -> Counter:
    file, counts = tmp_path / "model.safetensors", Counter()

    @FUZZ
    @given(strategy)
    def one(blob):
        file.write_bytes(blob)
        counts[outcome(file)] += 1

    one()
    figures(f"4 fuzzed safetensors headers ({name})", inputs_tried=sum(counts.values()),
            rejected_cleanly=counts["rejected"], accepted_and_consistent=counts["accepted"], crashes=0)
    return counts


@pytest.mark.slow
def test_fuzz_random_bytes(tmp_path):
    run_fuzz(tmp_path, st.binary(max_size=600), "random bytes")


big = st.integers(min_value=-2**70, max_value=2**70)
dtype = st.sampled_from(sorted(DTYPE_CODES)) | st.text(max_size=6)
entry = st.fixed_dictionaries({"dtype": dtype, "shape": st.lists(st.integers(-1, 9) | big, max_size=3),
                               "data_offsets": st.lists(st.integers(-4, 1200) | big, max_size=3)})
junk = st.recursive(st.none() | st.booleans() | big | st.floats() | st.text(max_size=5),
                    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=4), inner, max_size=3),
                    max_leaves=8)
headers = st.dictionaries(st.text(max_size=6), entry | junk, max_size=4)
files = st.builds(safetensors_bytes, headers, data=st.integers(0, 1200),
                  length=st.none() | st.integers(0, 2**64 - 1), cut=st.none() | st.integers(0, 300))


@pytest.mark.slow
def test_fuzz_random_headers(tmp_path):
    run_fuzz(tmp_path, files, "random headers, lengths, dtypes, shapes, offsets")


@st.composite
def flipped_real_files(draw):
    """A valid file of 1-4 tensors with 1-3 of its header bytes replaced."""
    shapes = draw(st.lists(st.lists(st.integers(0, 5), max_size=3), min_size=1, max_size=4))
    dtypes = draw(st.lists(st.sampled_from([torch.float32, torch.bfloat16, torch.int8]), min_size=len(shapes),
                           max_size=len(shapes)))
    entries = [(f"t{i}", tuple(s), d) for i, (s, d) in enumerate(zip(shapes, dtypes))]
    head = bytearray(encode_header(entries, {"format": "pt"}))
    for _ in range(draw(st.integers(1, 3))):
        head[draw(st.integers(0, len(head) - 1))] = draw(st.integers(0, 255))
    data = sum(torch.Size(s).numel() * torch.empty((), dtype=d).element_size() for _, s, d in entries)
    return bytes(head) + bytes(data)


@pytest.mark.slow
def test_fuzz_real_headers_with_flipped_bytes(tmp_path):
    counts = run_fuzz(tmp_path, flipped_real_files(), "real headers, 1-3 bytes flipped")
    assert counts["accepted"] and counts["rejected"]  # the mutations reach both sides


def tensor(shape=(2, 3), dtype="F32", offsets=(0, 24)) -> dict:
    return {"dtype": dtype, "shape": list(shape), "data_offsets": list(offsets)}


NAMED = {
    "header length larger than the file": (safetensors_bytes({"a": tensor()}, data=24, length=5000),
                                           "runs past the end of the file"),
    "header length 2**64 - 1": (safetensors_bytes({}, length=2**64 - 1), "limit 100 MB"),
    "truncated JSON": (safetensors_bytes({"a": tensor()}, data=24, cut=20), "not valid JSON"),
    "not UTF-8": (safetensors_bytes(b'{"\xff\xfe": 1}'), "not valid JSON"),
    "a JSON list, not an object": (safetensors_bytes([1, 2]), "must be a JSON object"),
    "JSON nested 100,000 deep": (safetensors_bytes(b"[" * 100_000 + b"]" * 100_000), "nests too deeply"),
    "offsets outside the file": (safetensors_bytes({"a": tensor(offsets=(0, 24))}, data=10), "lie outside"),
    "negative offset": (safetensors_bytes({"a": tensor(offsets=(-8, 16))}, data=24), "lie outside"),
    "offsets reversed": (safetensors_bytes({"a": tensor(offsets=(24, 0))}, data=24), "lie outside"),
    "overlapping tensors": (safetensors_bytes({"a": tensor(), "b": tensor(offsets=(16, 40))}, data=40), "overlap"),
    "unknown dtype": (safetensors_bytes({"a": tensor(dtype="F128")}, data=24), "unknown dtype 'F128'"),
    "shape / byte count mismatch": (safetensors_bytes({"a": tensor(shape=(3, 3))}, data=24), "needs 36 bytes"),
    "astronomic shape": (safetensors_bytes({"a": tensor(shape=(2**62, 2**62))}, data=24), "needs"),
    "negative dimension": (safetensors_bytes({"a": tensor(shape=(-2, -3))}, data=24), "non-negative integers"),
    "float offsets": (safetensors_bytes({"a": tensor(offsets=(0.0, 24.0))}, data=24), "lie outside"),
    "entry not an object": (safetensors_bytes({"a": [1, 2]}, data=24), "must be an object"),
    "empty file": (b"", "too short"),
    "7 bytes": (b"\x01" * 7, "too short"),
}


@pytest.mark.parametrize("case", list(NAMED))
def test_each_named_bad_header_gets_its_own_clear_error(case, tmp_path):
    blob, expected = NAMED[case]
    file = tmp_path / "model.safetensors"
    file.write_bytes(blob)
    with pytest.raises(CheckpointError, match=expected) as caught:
        read_header(file)
    assert one_line(str(caught.value)) and str(file) in str(caught.value)


def test_a_100_mb_header_is_refused_without_allocating_it(tmp_path):
    """Sparse files claiming a header of 100 MB + 1 byte and of 1 TB: refused, < 1 MB allocated."""
    file = tmp_path / "model.safetensors"
    peaks = []
    for claimed in (MAX_HEADER_BYTES + 1, 10**12):
        with open(file, "wb") as handle:
            handle.write(struct.pack("<Q", claimed))
            handle.truncate(8 + min(claimed, MAX_HEADER_BYTES + 16))  # the bytes are there (sparse)
        tracemalloc.start()
        with pytest.raises(CheckpointError, match="limit 100 MB"):
            read_header(file)
        peaks.append(tracemalloc.get_traced_memory()[1])
        tracemalloc.stop()
    assert max(peaks) < 1_000_000
    figures("4 100 MB header", claimed_header_bytes=f"{MAX_HEADER_BYTES + 1} and 10^12",
            rejected_cleanly=2, peak_python_allocation=f"{max(peaks)} bytes")


def test_a_bad_file_in_a_model_folder_is_one_line_through_checkpoint_and_cli(tmp_path, capsys):
    folder = tmp_path / "broken"
    folder.mkdir()
    (folder / "config.json").write_text("{}")
    (folder / "model.safetensors").write_bytes(NAMED["overlapping tensors"][0])
    with pytest.raises(CheckpointError, match="overlap"):
        Checkpoint.open(str(folder))
    assert main(["inspect", str(folder)]) == 1
    error = capsys.readouterr().err
    assert one_line(error) and error.startswith("error: ") and "overlap" in error


# ---- NaN / Inf in the inputs --------------------------------------------------------------

@pytest.fixture(scope="module")
def poisoned(tmp_path_factory):
    """Two clean models and a copy of the second with NaN/±Inf written into two of its tensors."""
    root = tmp_path_factory.mktemp("nonfinite")
    clean = build_models(root, count=2)
    bad = root / "poisoned"
    shutil.copytree(clean[1], bad)
    tensors = load_file(bad / "model.safetensors")
    tensors["model.layers.3.weight"][0, :3] = torch.tensor([float("nan"), float("inf"), -float("inf")])
    tensors["model.layers.7.weight"][5, 5:7] = float("nan")
    save_file(tensors, bad / "model.safetensors", metadata={"format": "pt"})
    counts = {name: int((~torch.isfinite(t)).sum()) for name, t in tensors.items() if not torch.isfinite(t).all()}
    return clean, bad, counts


def ties_recipe(base: Path, models: list[Path]) -> dict:
    """TIES reads each input block three times (two top-k passes, then the merge)."""
    return {"merge_method": "ties", "base_model": str(base),
            "models": [{"model": str(m), "parameters": {"weight": 1, "density": 0.5}} for m in models]}


def ta_recipe(base: Path, models: list[Path], weights: list[float]) -> dict:
    return {"merge_method": "task_arithmetic", "base_model": str(base),
            "models": [{"model": str(m), "parameters": {"weight": w}} for m, w in zip(models, weights)]}


@pytest.mark.parametrize("method", ["linear", "ties", "task_arithmetic weight 0"])
def test_nonfinite_inputs_are_reported_per_tensor(poisoned, tmp_path, method):
    """Also with the poisoned model at weight 0: its NaN/Inf must still be found (0·NaN is NaN)."""
    clean, bad, counts = poisoned
    recipe = {"linear": linear_recipe([clean[0], bad], [1, 1]), "ties": ties_recipe(clean[0], [clean[1], bad]),
              "task_arithmetic weight 0": ta_recipe(clean[0], [clean[1], bad], [1, 0])}[method]
    reported = {}
    merge(recipe_from_dict(recipe), tmp_path / "merged",
          on_progress=lambda event: reported.update({event.tensor: event.nonfinite} if event.nonfinite else {}))
    assert reported == {name: (f"{bad}: tensor {name!r} holds {count} NaN/Inf value(s)",)
                        for name, count in counts.items()}
    figures("4 NaN/Inf inputs", poisoned_tensors=len(counts), reported=len(reported),
            nonfinite_values=sum(counts.values()))


def test_nonfinite_inputs_are_refused_on_request(poisoned, tmp_path, capsys):
    clean, bad, counts = poisoned
    first = min(counts)  # layers.3 comes before layers.7 in the file
    with pytest.raises(CheckpointError, match=f"tensor {first!r} holds {counts[first]} NaN/Inf value\\(s\\): merge refused"):
        merge(recipe_from_dict(linear_recipe([clean[0], bad], [1, 1])), tmp_path / "merged", refuse_nonfinite=True)
    assert not any(tmp_path.iterdir())
    recipe_file = write_recipe(tmp_path / "recipe.yml", linear_recipe([clean[0], bad], [1, 1]))
    assert main(["merge", str(recipe_file), str(tmp_path / "refused"), "--quiet", "--refuse-nonfinite"]) == 1
    error = capsys.readouterr().err
    assert one_line(error) and "merge refused" in error and not (tmp_path / "refused").exists()
    assert main(["merge", str(recipe_file), str(tmp_path / "warned"), "--quiet"]) == 0
    warnings = [line for line in capsys.readouterr().err.splitlines() if line.startswith("warning: ")]
    assert len(warnings) == len(counts) and (tmp_path / "warned").is_dir()
    figures("4 NaN/Inf inputs refused", refused_by_the_library=1, refused_by_the_cli=1, warned_by_the_cli=len(warnings))
