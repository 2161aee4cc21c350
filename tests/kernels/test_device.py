import pytest
import torch

from okto.kernels.device import get_device_info, peak_for


def test_peaks_by_device_name():
    assert peak_for("NVIDIA H200").bandwidth_tbps == 4.8
    assert peak_for("NVIDIA H100 80GB HBM3").bf16 == 989.4
    assert peak_for("NVIDIA H100 PCIe").bf16 == 756.0
    assert peak_for("NVIDIA A100-SXM4-80GB").bandwidth_tbps == 2.039
    assert peak_for("NVIDIA L4").tflops("bf16") == 121.0
    assert peak_for("NVIDIA GeForce RTX 4090").fp8 == 330.3
    assert peak_for("Tesla V100-SXM2-16GB").fp16 == 125.0
    assert peak_for("Some Future GPU") is None


@pytest.mark.parametrize(
    ("name", "bf16", "bandwidth"),
    [
        # The H200 NVL (and H100 NVL) run at 835.5 TFLOP/s, where the H200 row gave 989.4.
        ("NVIDIA H200 NVL", 835.5, 4.8),
        ("NVIDIA H100 NVL", 835.5, 3.9),
        ("NVIDIA GH200 480GB", 989.4, 4.0),
        ("NVIDIA H800", 989.4, 3.35),
        ("NVIDIA H800 PCIe", 756.0, 2.0),
        ("NVIDIA L40", 181.0, 0.864),
        # No bf16 tensor cores: MFU against a bf16 peak of 125 or 65 was made up.
        ("Tesla V100-SXM2-16GB", None, 0.9),
        ("Tesla T4", None, 0.32),
    ],
)
def test_the_datasheet_row_of_each_variant(name, bf16, bandwidth):
    peak = peak_for(name)
    assert (peak.tflops("bf16"), peak.bandwidth_tbps) == (bf16, bandwidth)


@pytest.mark.parametrize("name", ["NVIDIA RTX A1000", "NVIDIA A10G", "NVIDIA L4000"])
def test_a_name_containing_a_known_one_is_not_taken_for_it(name):
    """Whole-word matches only: these are other GPUs (no peak, so no made-up MFU)."""
    assert peak_for(name) is None


def test_device_info_on_this_machine():
    info = get_device_info()
    if torch.cuda.is_available():
        assert info.multiprocessors > 0 and info.memory_gib > 0
    else:
        assert info.name == "cpu" and info.peak is None


@pytest.mark.skipif(torch.cuda.is_available(), reason="what a CPU-only machine reports")
@pytest.mark.parametrize(
    ("mode", "interpret", "kernels"),
    [
        ("auto", "0", "native (PyTorch reference)"),
        ("native", "1", "native (PyTorch reference)"),
        ("triton", "1", "triton (interpreter, CPU tensors)"),
        ("triton", "0", "none: OKTO_KERNELS=triton on a CPU needs TRITON_INTERPRET=1"),
    ],
)
def test_info_says_what_would_run(mode, interpret, kernels, monkeypatch):
    from okto.kernels import info

    monkeypatch.setenv("OKTO_KERNELS", mode)
    monkeypatch.setenv("TRITON_INTERPRET", interpret)
    report = info()
    assert report["mode"] == mode and report["kernels"] == kernels
    assert report["device"]["name"] == "cpu" and report["torch"] == torch.__version__


def test_device_info_takes_the_cpu_and_refuses_a_missing_gpu(monkeypatch):
    """On a GPU machine "cpu" was handed to torch.cuda (a ValueError) and a missing index was
    torch's AssertionError; on a CPU machine any index, cuda:7 included, read as the CPU."""
    from types import SimpleNamespace

    from okto.kernels import KernelError

    h100 = SimpleNamespace(
        name="NVIDIA H100 80GB HBM3",
        major=9,
        minor=0,
        multi_processor_count=132,
        total_memory=80 * 2**30,
    )
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 1)
    monkeypatch.setattr(torch.cuda, "current_device", lambda: 0)
    monkeypatch.setattr(torch.cuda, "get_device_properties", lambda i: [h100][i])
    for device in (None, 0, "cuda", "cuda:0", torch.device("cuda", 0)):
        assert get_device_info(device).multiprocessors == 132
    for device in ("cpu", torch.device("cpu")):
        assert get_device_info(device).name == "cpu"
    with pytest.raises(KernelError, match="no device cuda:1; this machine has cuda:0 to cuda:0"):
        get_device_info(1)
    with pytest.raises(KernelError, match="'gpu0' is not a device"):
        get_device_info("gpu0")
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    assert get_device_info().name == "cpu"
    with pytest.raises(KernelError, match="no CUDA device, only the cpu"):
        get_device_info("cuda:7")
