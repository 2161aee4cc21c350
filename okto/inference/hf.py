"""The fallback for architectures okto's engine does not implement: Hugging Face `generate`.

It feeds the same per-step token handler as okto's engine (through a
streamer) and asks it which rows are finished (through a stopping
criterion), so stops, streaming and timings behave the same; only the speed
and the random numbers differ.
"""

from __future__ import annotations

import torch

from okto.errors import RunError
from okto.inference.sampling import Sampler


def build_model(config, state: dict, device, dtype):
    """A transformers causal LM for `config` holding the weights in `state` (keys as stored)."""
    from okto.package.transformers_model import causal_lm

    try:
        model, missing, _ = causal_lm(config, state, dtype)
    except ValueError as e:
        raise RunError(f"cannot generate with a {config.model_type!r} model: {e}") from None
    if missing:
        raise RunError(f"the weights lack {missing[0]} (and {len(missing) - 1} more)")
    return model.to(device).eval()


class HFEngine:
    """Generation through `model.generate`, reporting each step to the caller's handler."""

    def __init__(self, model, pad_id: int, note: str):
        self.model, self.pad_id = model, pad_id
        self.device = model.device
        self.notes = (note,)
        self.description = f"Hugging Face generate ({self.device.type})"
        self.weight_bytes = sum(p.numel() * p.element_size() for p in model.parameters())

    def kv_bytes_per_token(self) -> int:
        return 0  # unknown layout; no bandwidth figure is reported for this path

    @torch.inference_mode()
    def run(
        self,
        prompts: list[list[int]],
        max_new: int,
        sampler: Sampler,
        tracker,
    ) -> None:
        """Same contract as `Engine.run`; random numbers come from torch's generator seeded with
        `tracker.seed`, the caller's random state left as it was."""
        from transformers import StoppingCriteria, StoppingCriteriaList
        from transformers.generation.streamers import BaseStreamer

        longest = max(len(p) for p in prompts)
        ids = torch.tensor([[self.pad_id] * (longest - len(p)) + p for p in prompts])
        mask = torch.tensor([[0] * (longest - len(p)) + [1] * len(p) for p in prompts])

        class Streamer(BaseStreamer):
            prompt_seen = False

            def put(self, value):
                if not self.prompt_seen:  # generate hands the prompt over first
                    self.prompt_seen = True
                    return
                tracker.push(value.reshape(-1).tolist())

            def end(self):
                pass

        class Finished(StoppingCriteria):
            def __call__(self, input_ids, scores, **kwargs):
                return torch.tensor(tracker.done, device=input_ids.device)

        options = {"do_sample": False}
        # a temperature below fp32's smallest normal is greedy at that precision; HF's
        # sampler would divide the logits into infinities and fail on the NaNs
        if not sampler.greedy and sampler.temperature >= torch.finfo(torch.float32).tiny:
            options = {
                "do_sample": True,
                "temperature": sampler.temperature,
                "top_k": sampler.top_k,
                "top_p": sampler.top_p,
            }
        # generate draws from torch's global generators: seed them for this call only, and
        # give the caller's process its own random state back afterwards
        cuda = [self.device.index or 0] if self.device.type == "cuda" else []
        with torch.random.fork_rng(devices=cuda):
            torch.manual_seed(tracker.seed % (1 << 64))  # any int seed; torch takes 64 bits
            self.model.generate(
                input_ids=ids.to(self.device),
                attention_mask=mask.to(self.device),
                max_new_tokens=max_new,
                repetition_penalty=sampler.repetition_penalty,
                pad_token_id=self.pad_id,
                streamer=Streamer(),
                stopping_criteria=StoppingCriteriaList([Finished()]),
                **options,
            )
