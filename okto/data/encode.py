"""Tokenizing rendered records into ids and labels, a batch of records at a time.

Labels are the ids themselves (unshifted, as Hugging Face causal LMs expect)
where a token starts inside a trained character span, and -100 elsewhere.
Every record ends with EOS, the separator packing relies on; an EOS okto adds
is trained when the token before it is. A batch comes out as packing takes it:
its records' ids and labels end to end, exactly sized, and their lengths.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterator
from typing import TYPE_CHECKING

import numpy as np

from okto.data.fields import Unusable
from okto.data.specials import SpecialText
from okto.data.templates import Renderer, Span

if TYPE_CHECKING:
    from okto.data.packing import Batch

IGNORE = -100
_EMPTY = np.zeros(0, np.int32)


class Encoder:
    """Records (columns as lists) to a packing `Batch`, the drop reasons and the special
    tokens whose text records held (tokenized as text: see `specials`); picklable, so
    worker processes can share the work."""

    def __init__(self, tokenizer):
        from tokenizers import Tokenizer

        # The Rust tokenizer itself, without any truncation or padding a
        # tokenizer.json may carry: cheaper than the Python wrapper per call.
        self.backend = Tokenizer.from_str(tokenizer.backend_tokenizer.to_str())
        self.backend.no_truncation()
        self.backend.no_padding()
        self.renderer = Renderer(tokenizer)
        self.specials = SpecialText(self.backend)
        self.eos_id = tokenizer.eos_token_id

    @property
    def imports(self) -> list[str]:
        """The modules unpickling this encoder imports: a worker process's start."""
        own_template = self.renderer.tokenizer
        return [__name__, *([type(own_template).__module__] if own_template is not None else [])]

    def __call__(self, batch: dict[str, list]) -> tuple[Batch, Counter[str], Counter[str]]:
        count = len(batch["roles"])
        rendered: list[tuple[str, list[Span]] | None] = [None] * count
        dropped = [""] * count
        special_text: Counter[str] = Counter()  # records holding each special token's text
        # Records encoded together: by whether they are templated, and escaped.
        groups: dict[tuple[bool, bool], list[int]] = {}
        for i in range(count):
            texts, templated = batch["texts"][i], batch["templated"][i]
            try:
                escaped = self.specials.escape(texts)
                rendered[i] = self.renderer.render(
                    batch["roles"][i],
                    escaped[0] if escaped else texts,
                    templated,
                    batch["train_all"][i],
                )
            except Unusable as error:
                dropped[i] = str(error)
                continue
            special_text.update(escaped[1] if escaped else ())
            groups.setdefault((templated, escaped is not None), []).append(i)
        ids: list = [_EMPTY] * count  # a dropped record has no tokens (length 0)
        labels: list = [_EMPTY] * count
        # The tokenizer's own template writes its BOS; raw text and okto's plain template
        # get what the tokenizer adds (a BOS for Llama's), as inference encodes a prompt.
        own_template = self.renderer.tokenizer is not None
        for (templated, guarded), rows in groups.items():
            encode = self.specials.encode_batch if guarded else self._encode_batch
            encodings = encode(
                [rendered[i][0] for i in rows], add_special_tokens=not (templated and own_template)
            )
            for (token_ids, offsets), i in zip(encodings, rows, strict=True):
                ids[i], labels[i] = self._label(token_ids, offsets, rendered[i][1])
        lengths = np.fromiter(map(len, ids), np.int64, count)
        encoded = (np.concatenate([_EMPTY, *ids]), np.concatenate([_EMPTY, *labels]), lengths)
        return encoded, Counter(reason for reason in dropped if reason), special_text

    def _encode_batch(self, texts: list[str], add_special_tokens: bool) -> Iterator[tuple]:
        """(ids, offsets) per text, taken from each encoding as it is labelled: a batch's
        offsets as Python tuples at once would take more memory than its rows."""
        encodings = self.backend.encode_batch(texts, add_special_tokens=add_special_tokens)
        return ((encoding.ids, encoding.offsets) for encoding in encodings)

    def _label(
        self, ids: list[int] | np.ndarray, offsets: list, spans: list[Span]
    ) -> tuple[np.ndarray, np.ndarray]:
        token_ids = np.asarray(ids, dtype=np.int32)
        labels = np.full(len(token_ids), IGNORE, dtype=np.int32)
        if spans and len(token_ids):
            starts = np.fromiter((start for start, _ in offsets), np.int64, len(offsets))
            span_starts, span_ends = np.asarray(spans, dtype=np.int64).T
            which = np.searchsorted(span_starts, starts, side="right") - 1
            inside = (which >= 0) & (starts < span_ends[np.maximum(which, 0)])
            labels[inside] = token_ids[inside]
        if not len(token_ids) or token_ids[-1] != self.eos_id:
            trained = bool(len(labels)) and labels[-1] != IGNORE
            token_ids = np.append(token_ids, np.int32(self.eos_id))
            labels = np.append(labels, np.int32(self.eos_id if trained else IGNORE))
        return token_ids, labels
