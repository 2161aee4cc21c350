"""The sampler against Hugging Face's logits processors: the probability vectors themselves,
edge values included, and tiny temperatures (CPU, fp32)."""

import pytest
import torch

from okto.inference.sampling import Sampler
from tests.inference.models import PROMPTS


def hf_probabilities(logits, input_ids, temperature, top_k, top_p, penalty):
    """The distribution `generate(do_sample=True)` draws from, through its own processors."""
    from transformers.generation import logits_process as lp

    processors = lp.LogitsProcessorList()
    if penalty != 1.0:
        processors.append(lp.RepetitionPenaltyLogitsProcessor(penalty))
    processors.append(lp.TemperatureLogitsWarper(temperature))
    if top_k:
        processors.append(lp.TopKLogitsWarper(top_k))
    if top_p < 1.0:
        processors.append(lp.TopPLogitsWarper(top_p))
    return processors(input_ids, logits.clone()).softmax(dim=-1)


@pytest.mark.parametrize("temperature", [0.3, 1.0, 1.7])
@pytest.mark.parametrize(
    ("top_k", "top_p", "penalty"),
    [(0, 1.0, 1.0), (5, 1.0, 1.0), (300, 1.0, 1.0), (10_000, 1.0, 1.0), (0, 0.9, 1.0),
     (0, 1e-9, 1.0), (40, 0.8, 1.3), (0, 0.95, 0.7)],
)
def test_probabilities_are_hf_processors(temperature, top_k, top_p, penalty):
    """Same support and the same probabilities, the repetition penalty on every token of
    `input_ids` (the prompt's too, as Hugging Face applies it); top_k past the vocabulary
    is off, a tiny top_p keeps the likeliest token."""
    torch.manual_seed(0)
    logits = torch.randn(4, 300) * 4
    input_ids = torch.randint(0, 300, (4, 25))
    seen = torch.zeros_like(logits, dtype=torch.bool).scatter_(1, input_ids, True)
    ours = Sampler(temperature, top_k, top_p, penalty).probabilities(logits, seen)
    theirs = hf_probabilities(logits, input_ids, temperature, top_k, top_p, penalty)
    assert torch.equal(ours > 0, theirs > 0)
    torch.testing.assert_close(ours, theirs, atol=1e-6, rtol=1e-5)


@pytest.mark.parametrize("temperature", [1e-50, 1e-40, 1e-30])
def test_a_tiny_temperature_is_greedy(temperature):
    """`--temperature 1e-50` divided fp32 logits into infinities whose softmax is NaN, and the
    draw took token 0 every step; now it tends to the limit, the likeliest token."""
    logits = torch.tensor([[1.0, 3.0, -2.0, 2.9], [-5.0, -7.0, -4.5, -6.0]])
    seen = torch.zeros_like(logits, dtype=torch.bool)
    sampler = Sampler(temperature=temperature, top_p=0.95)
    probs = sampler.probabilities(logits, seen)
    assert torch.equal(probs, torch.tensor([[0.0, 1, 0, 0], [0, 0, 1, 0]]))
    keys = torch.tensor([1, 2])
    assert sampler(logits, seen, keys, torch.tensor(0)).tolist() == [1, 2]


def test_a_tiny_temperature_generates_the_greedy_text(loaded):
    model = loaded["llama"]
    greedy = model.generate(PROMPTS, max_tokens=8, temperature=0)
    tiny = model.generate(PROMPTS, max_tokens=8, temperature=1e-50, seed=3)
    assert [g.token_ids for g in tiny] == [g.token_ids for g in greedy]
