"""Reading checkpoints: lazy listing, slices, .bin safety, and corrupt files refused clearly."""
import json
import struct

import pytest
import torch
from safetensors.torch import save_file

from core.errors import CheckpointError
from core.io.checkpoint import Checkpoint
from core.io.header import encode_header, read_header


@pytest.fixture
def folder(tmp_path):
    tensors = {"a.weight": torch.arange(12, dtype=torch.float32).reshape(4, 3),
               "b.bias": torch.tensor([1.5, -2.0], dtype=torch.bfloat16),
               "ids": torch.arange(5)}
    save_file(tensors, tmp_path / "model.safetensors", metadata={"format": "pt"})
    (tmp_path / "config.json").write_text(json.dumps({"num_hidden_layers": 7}))
    return tmp_path


def test_lists_from_headers_and_reads_tensors_and_rows(folder):
    ckpt = Checkpoint.open(str(folder))
    assert set(ckpt.tensors) == {"a.weight", "b.bias", "ids"}
    assert ckpt.tensors["a.weight"].shape == (4, 3) and ckpt.num_layers() == 7
    assert torch.equal(ckpt.read("a.weight"), torch.arange(12, dtype=torch.float32).reshape(4, 3))
    assert torch.equal(ckpt.read("a.weight", rows=slice(1, 3)), torch.arange(3, 9, dtype=torch.float32).reshape(2, 3))
    assert ckpt.read("b.bias", dtype=torch.float32).tolist() == [1.5, -2.0]
    assert ckpt.read("ids").dtype == torch.int64
    with pytest.raises(CheckpointError, match="has no tensor 'nope'"):
        ckpt.read("nope")
    ckpt.close()


def test_encode_header_is_what_safetensors_reads(tmp_path):
    entries = [("x", (2, 3), torch.bfloat16), ("y", (4,), torch.float32)]
    header = encode_header(entries, {"format": "pt"})
    assert len(header) % 8 == 0
    data = torch.ones(2, 3, dtype=torch.bfloat16).view(torch.uint8).numpy().tobytes() + \
        torch.arange(4, dtype=torch.float32).numpy().tobytes()
    (tmp_path / "m.safetensors").write_bytes(header + data)
    from safetensors.torch import load_file
    loaded = load_file(tmp_path / "m.safetensors")
    assert torch.equal(loaded["y"], torch.arange(4, dtype=torch.float32))
    assert loaded["x"].dtype == torch.bfloat16


def corrupt(tmp_path, header: bytes | dict, data: bytes = b"\0" * 16, length: int | None = None):
    raw = header if isinstance(header, bytes) else json.dumps(header).encode()
    path = tmp_path / "bad.safetensors"
    path.write_bytes(struct.pack("<Q", len(raw) if length is None else length) + raw + data)
    return path


@pytest.mark.parametrize("header,data,length,message", [
    (b"", b"", None, "safetensors header is not valid JSON"),
    ({"x": {"dtype": "F32", "shape": [2], "data_offsets": [0, 8]}}, b"", 10**6, "runs past the end of the file"),
    ({"x": {"dtype": "F32", "shape": [2], "data_offsets": [0, 8]}}, b"", 200 * 1024 * 1024, "limit 100 MB"),
    (b'{"x": {"dtype": "F32", ', b"", None, "not valid JSON"),
    ({"x": {"dtype": "F32", "shape": [2], "data_offsets": [0, 800]}}, b"\0" * 8, None, "lie outside the file"),
    ({"x": {"dtype": "Q4", "shape": [2], "data_offsets": [0, 8]}}, b"\0" * 8, None, "unknown dtype 'Q4'"),
    ({"x": {"dtype": "F32", "shape": [3], "data_offsets": [0, 8]}}, b"\0" * 8, None, "needs 12 bytes, header gives 8"),
    ({"x": {"dtype": "F32", "shape": [-1], "data_offsets": [0, 8]}}, b"\0" * 8, None, "non-negative integers"),
    ({"x": {"dtype": "F32", "shape": [2], "data_offsets": [0, 8]},
      "y": {"dtype": "F32", "shape": [2], "data_offsets": [4, 12]}}, b"\0" * 12, None, "overlap"),
    ([1, 2], b"", None, "must be a JSON object"),
])
def test_corrupt_headers_are_refused_clearly(tmp_path, header, data, length, message):
    path = corrupt(tmp_path, header, data, length)
    with pytest.raises(CheckpointError, match=message):
        read_header(path)


def test_truncated_file_and_missing_shard(tmp_path, folder):
    raw = (folder / "model.safetensors").read_bytes()
    (folder / "model.safetensors").write_bytes(raw[:20])
    with pytest.raises(CheckpointError, match="truncated|lie outside"):
        Checkpoint.open(str(folder))
    (tmp_path / "idx").mkdir()
    (tmp_path / "idx" / "model.safetensors.index.json").write_text(json.dumps({"weight_map": {"x": "m-1.safetensors"}}))
    with pytest.raises(CheckpointError, match="index lists m-1.safetensors, which is missing"):
        Checkpoint.open(str(tmp_path / "idx"))


def test_bin_is_loaded_with_weights_only_and_code_is_refused(tmp_path):
    good = tmp_path / "good"
    good.mkdir()
    torch.save({"w": torch.ones(3, 2)}, good / "pytorch_model.bin")
    ckpt = Checkpoint.open(str(good))
    assert torch.equal(ckpt.read("w", rows=slice(0, 2)), torch.ones(2, 2))

    class Evil:
        def __reduce__(self):
            return (exec, ("open('%s', 'w').write('pwned')" % (tmp_path / "pwned"),))

    evil = tmp_path / "evil"
    evil.mkdir()
    torch.save({"w": Evil()}, evil / "pytorch_model.bin")
    with pytest.raises(CheckpointError, match="not a plain tensor state dict"):
        Checkpoint.open(str(evil))
    assert not (tmp_path / "pwned").exists()


def test_references_that_are_not_models(tmp_path):
    with pytest.raises(CheckpointError, match="not found: no such folder, and it is not a Hub id"):
        Checkpoint.open(str(tmp_path / "missing" / "deeper"))
    (tmp_path / "file.txt").write_text("x")
    with pytest.raises(CheckpointError, match="is a file: give the folder"):
        Checkpoint.open(str(tmp_path / "file.txt"))
    with pytest.raises(CheckpointError, match="no weights found"):
        Checkpoint.open(str(tmp_path))


def test_hub_ids_fail_offline_with_one_clear_line(monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    import huggingface_hub.constants as constants
    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", True)
    with pytest.raises(CheckpointError, match=r"cannot get 'mergedesk-test/no-such-model' from the Hugging Face Hub"):
        Checkpoint.open("mergedesk-test/no-such-model")
