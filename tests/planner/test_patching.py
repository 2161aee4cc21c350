"""Patched models compute what the unpatched ones do, and patches leave no trace.

The interpreter tests run okto's Triton kernels (OKTO_KERNELS=triton; on a CPU
through Triton's interpreter, which conftest turns on). The others plan for a
fake H100 and run on CPU tensors, where each okto op takes its PyTorch
reference: fast, and enough to check the forwards' plumbing (casts, shapes,
dropout, the loss) and the bookkeeping.
"""

from __future__ import annotations

import copy

import pytest
import torch
from transformers import GPT2LMHeadModel, MistralConfig, MistralForCausalLM

import okto
from okto.errors import UsageError
from okto.kernels import hf_attention
from okto.planner import build_plan
from tests.planner.util import H100, LLAMA_SIZES, count_calls, gpt2, gpt2_config, llama

DEVICE = "cuda" if torch.cuda.is_available() else "cpu"
FUSED = okto.parse("ACCELERATE { fused_ops: true }", "t.okt")
UNFUSED = okto.parse("ACCELERATE { fused_ops: false }", "t.okt")
# GEMMs on cuBLAS: GPT-2's MLP runs as okto's gelu_mlp op (GELU in cuBLASLt's epilogues)
CUBLAS_GEMM = okto.parse("ACCELERATE { gemm: native fused_ops: true }", "t.okt")


def batch(vocab: int = 101, device: str = "cpu") -> torch.Tensor:
    return torch.randint(0, vocab, (2, 16), device=device)


def step(model, ids, forward=None, **kwargs):
    """(loss, logits, {name: grad}) of one forward and backward with labels = ids;
    `forward` (say the compiled model) runs in place of the model."""
    model.zero_grad(set_to_none=True)
    out = (model if forward is None else forward)(input_ids=ids, labels=ids, **kwargs)
    out.loss.backward()
    grads = {n: p.grad.detach().clone() for n, p in model.named_parameters() if p.grad is not None}
    return out.loss.detach(), out.logits, grads


def norm_calls(monkeypatch, name: str = "layer_norm") -> list[tuple[bool, bool]]:
    """Record each okto norm call's (residual given, sublayer bias given)."""
    calls = []
    original = getattr(okto.kernels, name)

    def record(*args, **kwargs):
        calls.append((kwargs.get("residual") is not None, kwargs.get("x_bias") is not None))
        return original(*args, **kwargs)

    monkeypatch.setattr(okto.kernels, name, record)
    return calls


def assert_same_step(expected, actual, tol=None):
    tol = tol or {}
    torch.testing.assert_close(actual[0], expected[0], **tol)
    assert actual[2].keys() == expected[2].keys()
    for name, grad in expected[2].items():
        torch.testing.assert_close(actual[2][name], grad, **tol, msg=name)


@pytest.mark.slow
@pytest.mark.parametrize(("family", "program"), [("gpt2", FUSED), ("llama", UNFUSED)])
def test_kernels_match_the_framework(monkeypatch, family, program):
    """Logits, loss and every gradient through okto's Triton kernels, fp32."""
    monkeypatch.setenv("OKTO_KERNELS", "triton")
    model = (gpt2() if family == "gpt2" else llama()).to(DEVICE)
    ids = batch(device=DEVICE)
    with torch.no_grad():
        logits = model(input_ids=ids).logits
    expected = step(model, ids)
    plan = build_plan(program, model=model)
    native = {"activation"} if family == "llama" else set()  # SwiGLU's SiLU
    assert {k for k, c in plan.layers.items() if c.impl == "native"} == native
    packed = []  # GPT-2's training step runs attention on c_attn's packed output
    original = okto.kernels.packed_attention
    monkeypatch.setattr(
        okto.kernels, "packed_attention", lambda *a, **k: packed.append(1) or original(*a, **k)
    )
    with plan.apply(model):
        actual = step(model, ids)
        assert len(packed) == (model.config.num_hidden_layers if family == "gpt2" else 0)
        if family == "gpt2":  # the fused loss never makes logits: ask for them alone
            assert actual[1] is None
            with torch.no_grad():
                actual = (actual[0], model(input_ids=ids).logits, actual[2])
    torch.testing.assert_close(actual[1], logits if family == "gpt2" else expected[1])
    assert_same_step(expected, actual)


@pytest.mark.parametrize(
    "program", [FUSED, UNFUSED, CUBLAS_GEMM], ids=["fused", "unfused", "cublas-gemm"]
)
@pytest.mark.parametrize("family", ["gpt2", "llama"])
def test_forwards_match_with_reference_ops(monkeypatch, family, program):
    monkeypatch.delenv("OKTO_KERNELS", raising=False)
    model = gpt2() if family == "gpt2" else llama()
    ids = batch()
    expected = step(model, ids)
    norms = norm_calls(monkeypatch, "layer_norm" if family == "gpt2" else "rms_norm")
    with build_plan(program, machine=H100, model=model).apply(model) as patches:
        assert len(patches) > 0
        actual = step(model, ids)
    assert_same_step(expected, actual)
    # GPT-2's attn.c_proj and mlp.c_proj leave their biases to the norm after them,
    # whichever forward runs them (okto's GEMM, gelu_mlp, the plain Conv1D).
    layers = model.config.num_hidden_layers
    assert norms == [(False, False)] + [(True, family == "gpt2")] * (2 * layers)


def test_dropout_is_applied_where_the_model_applies_it(monkeypatch):
    """Same seed, same masks: GPT-2 with every dropout at 0.1, in training mode."""
    monkeypatch.delenv("OKTO_KERNELS", raising=False)
    model = gpt2(dropout=0.1).train()
    ids = batch()
    torch.manual_seed(1)
    expected = step(model, ids)
    plan = build_plan(FUSED, machine=H100, model=model)
    assert plan.layers["attention"].impl == "native"
    norms = norm_calls(monkeypatch)
    with plan.apply(model):
        torch.manual_seed(1)
        actual = step(model, ids)
        torch.manual_seed(2)
        other = step(model, ids)
    assert_same_step(expected, actual)
    assert not torch.equal(actual[0], other[0])
    # Dropout follows each projection's bias: the biases stay in the projections.
    assert norms and not any(x_bias for _, x_bias in norms)


@pytest.mark.parametrize("program", [FUSED, CUBLAS_GEMM], ids=["fused", "cublas-gemm"])
def test_forward_hooks_on_fused_layers_still_run(monkeypatch, program):
    """A hook on mlp.c_fc or lm_head (how LoRA adapts a layer) is not bypassed by fusion."""
    monkeypatch.delenv("OKTO_KERNELS", raising=False)
    model = gpt2()
    for module in (model.transformer.h[1].mlp.c_fc, model.lm_head):
        module.register_forward_hook(lambda _module, _args, out: out * 1.5)
    ids = batch()
    expected = step(model, ids)
    with build_plan(program, machine=H100, model=model).apply(model):
        actual = step(model, ids)
    assert actual[1] is not None  # the hooked head made its logits
    assert_same_step(expected, actual)


@pytest.mark.parametrize("family", [gpt2, llama])
def test_autocast_operands_are_cast(monkeypatch, family):
    """Under bf16 autocast okto's ops get operands of one dtype, attention included:
    Llama's rotary embeddings leave query and key in fp32 beside a bf16 value, and the
    attention hook must cast them as autocast casts SDPA's rather than hand the call on."""
    monkeypatch.delenv("OKTO_KERNELS", raising=False)
    model = family()
    ids = batch()
    padded = torch.ones_like(ids)
    padded[1, 11:] = 0
    calls = count_calls(monkeypatch, hf_attention, "attention")
    with torch.autocast("cpu", dtype=torch.bfloat16):
        expected = model(input_ids=ids, labels=ids).loss
        with build_plan(FUSED, machine=H100, model=model).apply(model):
            actual = model(input_ids=ids, labels=ids).loss
            model(input_ids=ids, attention_mask=padded)  # through the hook, GPT-2 too
    assert actual.dtype == torch.float32
    # GPT-2's training call runs its packed kernel; Llama's reaches the hook as well.
    assert len(calls) == (1 if family is gpt2 else 2) * model.config.num_hidden_layers
    torch.testing.assert_close(actual, expected.float(), rtol=2e-2, atol=2e-2)


# LayerNorm and the loss on okto (the loss makes the base model's call a plain one).
NORMS_AND_LOSS = okto.parse(
    "ACCELERATE { layernorm: oktoblas cross_entropy: oktoblas gemm: native attention: native "
    "activation: native }",
    "t.okt",
)


@pytest.mark.parametrize("autocast", [None, torch.float16])
@pytest.mark.parametrize("family", ["gpt2", "llama"])
def test_residual_adds_run_inside_okto_norms(monkeypatch, family, autocast):
    """A training call with the norms on okto adds each residual inside the norm after it
    (GPT-2: ln_2, the next ln_1, ln_f; Llama: post_attention_layernorm, the next
    input_layernorm, norm), and GPT-2's projection biases too: through the interpreter,
    with autocast's fp32 stream beside fp16 sublayer outputs too, the loss and every
    gradient match the class's."""
    monkeypatch.setenv("OKTO_KERNELS", "triton")
    model = (gpt2() if family == "gpt2" else llama()).to(DEVICE)
    ids = batch(device=DEVICE)
    context = torch.autocast(DEVICE, dtype=autocast, enabled=autocast is not None)
    with context:
        expected = step(model, ids)
    norms = norm_calls(monkeypatch, "layer_norm" if family == "gpt2" else "rms_norm")
    with build_plan(CUBLAS_GEMM, model=model).apply(model), context:
        actual = step(model, ids)
    layers = model.config.num_hidden_layers
    # Only the first ln_1 has no add before it; GPT-2's c_proj layers (attention's Conv1D,
    # the gelu_mlp op's second GEMM) leave their biases to the norms too.
    assert norms == [(False, False)] + [(True, family == "gpt2")] * (2 * layers)
    tol = {} if autocast is None else {"rtol": 1e-2, "atol": 1e-3}
    assert_same_step(expected, actual, tol)


@pytest.mark.parametrize("why", ["checkpointing", "hook"])
def test_residual_norms_step_aside(monkeypatch, why):
    """Blocks that checkpoint their activations, or a norm with a hook, run through their
    own calls: each norm then runs alone (no residual handed to it), and the step matches."""
    monkeypatch.delenv("OKTO_KERNELS", raising=False)
    model = gpt2().train()
    if why == "checkpointing":
        model.gradient_checkpointing_enable()
    else:
        model.transformer.h[1].ln_2.register_forward_hook(lambda _m, _a, out: out * 0.5)
    ids = batch()
    expected = step(model, ids)
    norms = norm_calls(monkeypatch)
    with build_plan(NORMS_AND_LOSS, machine=H100, model=model).apply(model):
        actual = step(model, ids)
    assert norms and not any(residual or x_bias for residual, x_bias in norms)
    assert_same_step(expected, actual)


def test_loss_options_match_transformers(monkeypatch):
    """num_items_in_batch (sum / count), padding labels (-100) and return_dict=False."""
    monkeypatch.delenv("OKTO_KERNELS", raising=False)
    model = llama()
    ids = batch()
    labels = ids.clone()
    labels[:, :5] = -100
    items = torch.tensor(40)
    expected = model(input_ids=ids, labels=labels, num_items_in_batch=items).loss
    with build_plan(FUSED, machine=H100, model=model).apply(model):
        actual = model(input_ids=ids, labels=labels, num_items_in_batch=items).loss
        as_tuple = model(ids, labels=labels, return_dict=False)
    torch.testing.assert_close(actual, expected)
    torch.testing.assert_close(as_tuple[0], model(input_ids=ids, labels=labels).loss)


def _snapshot(model):
    """Identity of every module's own forward/config, children, parameters; classes' forwards."""
    modules = {
        name: (
            id(m.__dict__.get("forward")),
            id(m.__dict__.get("config")),
            [(k, id(v)) for k, v in m._modules.items()],
            [(k, id(v)) for k, v in m._parameters.items()],
        )
        for name, m in model.named_modules()
    }
    classes = {cls: cls.__dict__.get("forward") for m in model.modules() for cls in type(m).__mro__}
    return modules, classes


def _outputs(model, ids):
    with torch.no_grad():
        return model(input_ids=ids).logits


@pytest.mark.parametrize("family", ["gpt2", "llama"])
def test_undo_leaves_no_trace(monkeypatch, family):
    monkeypatch.delenv("OKTO_KERNELS", raising=False)
    model = (gpt2() if family == "gpt2" else llama()).eval()
    ids = batch()
    before, logits = _snapshot(model), _outputs(model, ids)
    state = model.state_dict()
    config = model.config
    patches = build_plan(FUSED, machine=H100, model=model).apply(model)
    assert model.config is not config and model.config._attn_implementation == "okto"
    assert config._attn_implementation != "okto"
    during = model.state_dict()
    assert list(during) == list(state)
    assert all(during[k].data_ptr() == v.data_ptr() for k, v in state.items())
    assert _snapshot(model)[1] == before[1]  # no class was touched
    fresh = type(model)(config)
    fresh.load_state_dict(during)  # loadable by the unpatched class, strict
    patches.undo()
    assert _snapshot(model) == before
    assert model.config is config
    assert torch.equal(_outputs(model, ids), logits)
    assert len(patches) == 0


def test_two_models_one_patched(monkeypatch):
    """Models built from one config object share it: patching one leaves the other alone."""
    monkeypatch.delenv("OKTO_KERNELS", raising=False)
    config = gpt2_config()
    patched, other = GPT2LMHeadModel(config).eval(), GPT2LMHeadModel(config).eval()
    ids = batch()
    before, logits = _snapshot(other), _outputs(other, ids)
    implementation = config._attn_implementation
    with build_plan(FUSED, machine=H100, model=patched).apply(patched) as patches:
        assert len(patches) > 0
        assert _snapshot(other) == before
        assert other.config is config and config._attn_implementation == implementation
        assert torch.equal(_outputs(other, ids), logits)
        assert not any("forward" in m.__dict__ for m in other.modules())


@pytest.mark.parametrize("family", [gpt2, llama])
def test_patching_twice_is_refused_and_undo_twice_is_harmless(monkeypatch, family):
    """A second apply recorded the first one's forwards as the originals: undoing the first
    patches before the second left the model patched for good, with nothing to undo it."""
    monkeypatch.delenv("OKTO_KERNELS", raising=False)
    model, other = family().eval(), family().eval()
    other.load_state_dict(model.state_dict())
    never = copy.deepcopy(model)
    ids = batch()
    expected = step(never, ids)
    first = build_plan(FUSED, machine=H100, model=model).apply(model)
    patched_other = build_plan(FUSED, machine=H100, model=other).apply(other)
    with pytest.raises(UsageError, match="already patched by okto"):
        build_plan(FUSED, machine=H100, model=model).apply(model)
    first.undo()
    first.undo()
    assert not any(m.__dict__.keys() & {"forward", "_okto_patched"} for m in model.modules())
    assert "forward" in other.base_model.__dict__  # undoing one model left the other patched
    again = build_plan(FUSED, machine=H100, model=model).apply(model)  # after undo: allowed
    first.undo()  # a stale undo leaves the new patches and their guard in place
    with pytest.raises(UsageError, match="already patched"):
        build_plan(FUSED, machine=H100, model=model).apply(model)
    again.undo()
    patched_other.undo()
    for undone in (model, other):
        actual = step(undone, ids)
        assert torch.equal(actual[0], expected[0]) and torch.equal(actual[1], expected[1])
        assert actual[2].keys() == expected[2].keys()
        assert all(torch.equal(actual[2][n], g) for n, g in expected[2].items())
        type(never)(never.config).load_state_dict(undone.state_dict())


@pytest.mark.parametrize("family", ["gpt2", "llama"])
def test_a_failed_apply_leaves_the_model_as_it_was(monkeypatch, family):
    """An apply that raised partway kept the patches made so far, with nothing to undo them,
    and the model refused every later apply as already patched."""
    monkeypatch.delenv("OKTO_KERNELS", raising=False)
    from okto.planner import forwards

    model = (gpt2() if family == "gpt2" else llama()).eval()
    before, config = _snapshot(model), model.config

    def fails(*args, **kwargs):
        raise RuntimeError("the loss could not be installed")

    monkeypatch.setattr(forwards, "install_loss", fails)
    with pytest.raises(RuntimeError, match="could not be installed"):
        build_plan(FUSED, machine=H100, model=model).apply(model)
    assert _snapshot(model) == before and model.config is config
    monkeypatch.undo()
    build_plan(FUSED, machine=H100, model=model).apply(model).undo()  # not "already patched"


def test_a_mask_met_at_other_lengths_is_analysed_again():
    """The mask analysis is cached per mask object; a layer seeing the same mask with other
    query/key lengths must not get the answer computed for the first lengths."""
    mask = torch.ones(2, 1, 4, 4, dtype=torch.bool).tril()
    assert hf_attention._analyse(mask, 4, 4) is not None  # plain causal
    assert hf_attention._analyse(mask, 2, 4) is None  # these lengths do not fit that mask


def test_a_deep_copy_runs_on_its_own_modules(monkeypatch):
    monkeypatch.delenv("OKTO_KERNELS", raising=False)
    model = gpt2()
    with build_plan(FUSED, machine=H100, model=model).apply(model):
        twin = copy.deepcopy(model)
    assert twin.lm_head.forward.__self__ is twin.lm_head
    assert twin.forward.__self__ is twin
    assert twin.transformer.h[0].attn.config is twin.config


def test_generate_while_patched(monkeypatch):
    monkeypatch.delenv("OKTO_KERNELS", raising=False)
    model = llama().eval()
    ids = batch()[:1, :4]
    expected = model.generate(ids, max_new_tokens=3, do_sample=False, pad_token_id=0)
    with build_plan(FUSED, machine=H100, model=model).apply(model):
        actual = model.generate(ids, max_new_tokens=3, do_sample=False, pad_token_id=0)
    assert torch.equal(actual, expected)


@pytest.mark.parametrize("family", [gpt2, llama])
def test_base_model_calls_match_the_class(monkeypatch, family):
    """The planner's base-model forward (no mask for a plain training call) and the
    calls it hands to the class's forward (a mask, a cache, a tuple, hidden states
    asked for by the config) give what the unpatched model gives."""
    monkeypatch.delenv("OKTO_KERNELS", raising=False)
    model = family().eval()
    base = model.base_model
    ids = batch()
    mask = torch.ones_like(ids)
    mask[1, 11:] = 0
    calls = [
        {"use_cache": False},
        {"use_cache": False, "return_dict": False},
        {"use_cache": False, "attention_mask": mask},
        {},
    ]
    with torch.no_grad():
        expected = [base(ids, **kwargs)[0] for kwargs in calls]
        with build_plan(FUSED, machine=H100, model=model).apply(model):
            assert "forward" in base.__dict__
            actual = [base(ids, **kwargs) for kwargs in calls]
            base.config.output_hidden_states = True
            with_states = base(ids, use_cache=False)
            base.config.output_hidden_states = False
    assert isinstance(actual[1], tuple) and actual[3].past_key_values is not None
    assert len(with_states.hidden_states) == base.config.num_hidden_layers + 1
    for got, want in zip(actual, expected, strict=True):
        torch.testing.assert_close(got[0], want)


@pytest.mark.parametrize("family", [gpt2, llama])
def test_a_config_asking_for_tuples_gets_tuples(monkeypatch, family):
    """With `return_dict=False` in the config, the planner's base-model forward returned a
    ModelOutput for a plain call, where the class returns a tuple."""
    monkeypatch.delenv("OKTO_KERNELS", raising=False)
    model = family(return_dict=False).eval()
    ids = batch()
    with torch.no_grad():
        expected = model.base_model(ids, use_cache=False)
        with build_plan(FUSED, machine=H100, model=model).apply(model):
            actual = model.base_model(ids, use_cache=False)
    assert type(actual) is type(expected) is tuple
    torch.testing.assert_close(actual[0], expected[0])


def test_other_architectures_train_natively(monkeypatch):
    monkeypatch.delenv("OKTO_KERNELS", raising=False)
    model = MistralForCausalLM(MistralConfig(**LLAMA_SIZES))
    plan = build_plan(FUSED, machine=H100, model=model)
    assert all(c.impl == "native" for c in plan.layers.values())
    assert "MistralForCausalLM (mistral)" in plan.layers["gemm"].reason
    with plan.apply(model) as patches:
        assert len(patches) == 0
        loss, _, grads = step(model, batch())
    assert torch.isfinite(loss) and grads
