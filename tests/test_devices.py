"""Device strings: parsed the same way everywhere; GPUs simulated where this machine has none."""
import pytest
import torch

from core.devices import devices_for, list_devices, parse_device
from core.errors import DeviceError


@pytest.fixture
def two_gpus(monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 2)
    monkeypatch.setattr(torch.cuda, "get_device_name", lambda i: f"Fake GPU {i}")
    monkeypatch.setattr(torch.cuda, "mem_get_info", lambda i: (30 * 10**9, 80 * 10**9))


def test_cpu_and_auto_without_gpu(monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    assert parse_device("cpu") == torch.device("cpu")
    assert parse_device(" CPU ") == torch.device("cpu")
    if not torch.backends.mps.is_available():
        assert parse_device("auto") == torch.device("cpu")
    with pytest.raises(DeviceError, match=r"device 'cuda:7' does not exist: this machine has 0 CUDA device\(s\)"):
        parse_device("cuda:7")
    with pytest.raises(DeviceError, match="device 'cuda' does not exist"):
        parse_device("cuda")


@pytest.mark.parametrize("spec", ["gpu", "cuda:", "cuda:-1", "cuda:x", "", "tpu:0"])
def test_malformed_devices(spec):
    with pytest.raises(DeviceError, match="unknown device"):
        parse_device(spec)


def test_gpus_are_parsed_listed_and_spread(two_gpus):
    assert parse_device("cuda") == torch.device("cuda", 0)
    assert parse_device("cuda:1") == torch.device("cuda", 1)
    with pytest.raises(DeviceError, match="has 2 CUDA device"):
        parse_device("cuda:2")
    assert devices_for("auto") == [torch.device("cuda", 0), torch.device("cuda", 1)]
    assert devices_for("cuda:1") == [torch.device("cuda", 1)]
    labels = {d.spec: d.label for d in list_devices()}
    assert list(labels)[:2] == ["cpu", "auto"]
    assert labels["cuda:1"] == "cuda:1 · Fake GPU 1 · 30.0 GB / 80.0 GB free"
