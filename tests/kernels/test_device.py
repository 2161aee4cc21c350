import torch

from okto.kernels.device import get_device_info, peak_for


def test_peaks_by_device_name():
    assert peak_for("NVIDIA H200").bandwidth_tbps == 4.8
    assert peak_for("NVIDIA H100 80GB HBM3").bf16 == 989.4
    assert peak_for("NVIDIA H100 PCIe").bf16 == 756.0
    assert peak_for("NVIDIA A100-SXM4-80GB").bandwidth_tbps == 2.039
    assert peak_for("NVIDIA L4").tflops("bf16") == 121.0
    assert peak_for("Some Future GPU") is None


def test_device_info_on_this_machine():
    info = get_device_info()
    if torch.cuda.is_available():
        assert info.multiprocessors > 0 and info.memory_gib > 0
    else:
        assert info.name == "cpu" and info.peak is None
