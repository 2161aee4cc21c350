"""The benchmark runner's bookkeeping, on CPU: ratios, GPU-time ratios and the CLI's output."""

import json

import pytest
import torch

from okto.cli import bench as bench_cli
from okto.kernels.bench import Case, Result, Timing


def _result(okto_gpu, baseline_gpu):
    case = Case("gemm", "2048x2048x2048", okto=lambda: None, baselines={}, flops=2 * 2048**3)
    okto = Timing("okto", ms=0.05, host_us=60.0, gpu_us=okto_gpu)
    cublas = Timing("cuBLAS", ms=0.03, host_us=20.0, gpu_us=baseline_gpu)
    return Result(case, okto, [cublas])


def test_gpu_ratio_compares_graph_replays_only_where_both_sides_have_one():
    both = _result(okto_gpu=27.5, baseline_gpu=28.0)
    assert both.ratio(both.baselines[0]) == pytest.approx(0.6)
    assert both.gpu_ratio(both.baselines[0]) == pytest.approx(28.0 / 27.5)
    assert _result(okto_gpu=27.5, baseline_gpu=None).gpu_ratio(Timing("x", 1.0)) is None
    assert _result(okto_gpu=None, baseline_gpu=28.0).gpu_ratio(Timing("x", 1.0, gpu_us=2)) is None


def test_record_and_cli_output_carry_both_ratios():
    result = _result(okto_gpu=27.5, baseline_gpu=28.0)
    baseline = result.as_record()["baselines"][0]
    assert baseline["ratio"] == pytest.approx(0.6)
    assert baseline["gpu_ratio"] == pytest.approx(28.0 / 27.5)
    assert baseline["gpu_us"] == 28.0 and baseline["host_us"] == 20.0
    assert "cuBLAS x0.60 (GPU x1.02)" in bench_cli._line(result)
    row = next(iter(bench_cli._table([result]).columns[-1].cells))
    assert row == "1.02x"
    assert "GPU" not in bench_cli._line(_result(okto_gpu=27.5, baseline_gpu=None))


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks a machine without a GPU")
def test_no_gpu_is_exit_4_in_words_or_json(capsys):
    from okto.cli import main

    assert main(["bench", "norm"]) == 4
    assert "no CUDA device" in capsys.readouterr().err
    assert main(["bench", "norm", "--json"]) == 4
    record = json.loads(capsys.readouterr().out)
    assert record["exit_code"] == 4 and "no CUDA device" in record["error"]


@pytest.mark.parametrize("as_json", [False, True])
def test_a_bad_okto_variable_is_exit_2_before_anything_runs(as_json, monkeypatch, capsys):
    """It went unchecked: on a GPU every case's okto side failed with it, and the run still
    ended with exit 0 (on a CPU the missing GPU was reported instead, exit 4)."""
    from okto.cli import main

    monkeypatch.setenv("OKTO_GEMM", "fast")
    assert main(["bench", "gemm", *(["--json"] if as_json else [])]) == 2
    captured = capsys.readouterr()
    if as_json:
        record = json.loads(captured.out)
        assert record["exit_code"] == 2 and "OKTO_GEMM='fast' is not one of" in record["error"]
    else:
        assert "OKTO_GEMM='fast' is not one of" in captured.err


@pytest.mark.parametrize("as_json", [False, True])
def test_a_failing_okto_kernel_makes_the_run_exit_1(as_json, monkeypatch, capsys):
    """The runner reports a failing closure and goes on (a missing baseline is no reason to
    stop), but a run whose okto side failed ended with exit 0."""
    from okto.cli import main
    from okto.kernels import bench

    case = Case("norm", "rms_norm 16384x768 fwd", okto=lambda: None, baselines={}, bytes=1.0)
    failed = Result(case, Timing("okto", float("nan")), [Timing("eager", 0.02)])
    fine = _result(okto_gpu=None, baseline_gpu=None)

    def fake_run(suites, dtype, on_result):
        for r in (fine, failed):
            on_result(r)
        return [fine, failed]

    monkeypatch.setattr(bench, "run", fake_run)
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.delenv("TRITON_INTERPRET", raising=False)  # the tests' CPU setting
    monkeypatch.setattr(torch.cuda, "get_device_name", lambda: "a GPU")
    assert main(["bench", "norm", *(["--json"] if as_json else [])]) == 1
    assert "okto's kernel failed in 1 case(s): rms_norm 16384x768 fwd" in capsys.readouterr().err
    monkeypatch.setattr(bench, "run", lambda suites, dtype, on_result: [fine])
    assert main(["bench", "norm", *(["--json"] if as_json else [])]) == 0


@pytest.mark.parametrize("gpu", [True, False])
@pytest.mark.parametrize("as_json", [False, True])
def test_okto_kernels_native_is_exit_2_not_a_bench_of_the_reference(
    as_json, gpu, monkeypatch, capsys
):
    """On a GPU with OKTO_KERNELS=native every okto side ran PyTorch's reference, and the run
    printed its ratios (about 1) as okto's kernels against the framework."""
    from okto.cli import main
    from okto.kernels import bench

    monkeypatch.setattr(bench, "run", lambda *args: pytest.fail("the suites ran"))
    monkeypatch.setenv("OKTO_KERNELS", "native")
    # Also without a GPU, as for a bad OKTO_* value (there the missing GPU was reported, exit 4).
    monkeypatch.setattr(torch.cuda, "is_available", lambda: gpu)
    assert main(["bench", "norm", *(["--json"] if as_json else [])]) == 2
    captured = capsys.readouterr()
    message = json.loads(captured.out)["error"] if as_json else captured.err
    assert "OKTO_KERNELS=native runs PyTorch's reference" in message


@pytest.mark.parametrize("as_json", [False, True])
def test_bf16_on_a_gpu_without_it_is_exit_4(as_json, monkeypatch, capsys):
    """On a T4 every okto side failed to compile its bf16 kernel and the run ended with exit 1
    and a failure per case; okto plan calls the same request a machine error (exit 4)."""
    from okto.cli import main
    from okto.kernels import bench

    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.delenv("TRITON_INTERPRET", raising=False)
    monkeypatch.setattr(torch.cuda, "get_device_capability", lambda *a: (7, 5))
    monkeypatch.setattr(torch.cuda, "get_device_name", lambda *a: "Tesla T4")
    monkeypatch.setattr(bench, "run", lambda *args: pytest.fail("the suites ran"))
    assert main(["bench", "gemm", "--dtype", "bf16", *(["--json"] if as_json else [])]) == 4
    captured = capsys.readouterr()
    message = json.loads(captured.out)["error"] if as_json else captured.err
    assert "Tesla T4 (sm_75) has no bf16; use --dtype fp16" in message


def test_triton_interpret_on_a_gpu_is_exit_2_not_a_bench_of_the_interpreter(
    monkeypatch, capsys
):
    """With TRITON_INTERPRET=1 left set (from running the tests), okto's side of every case
    ran in Triton's CPU interpreter: hours for the large cases, and meaningless ratios."""
    from okto.cli import main
    from okto.kernels import bench

    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setenv("TRITON_INTERPRET", "1")
    monkeypatch.setattr(bench, "run", lambda *args: pytest.fail("the suites ran"))
    assert main(["bench", "gemm"]) == 2
    assert "TRITON_INTERPRET=1 runs okto's kernels in Triton's interpreter" in (
        capsys.readouterr().err
    )
