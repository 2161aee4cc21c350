"""Special tokens' text inside records stays text.

A record holding the text `<|endoftext|>` or `<|im_start|>` was encoded as those special
tokens: data could end a record early, open a turn or forge the markers the masks rely on.
Now the special tokens in a row are the ones okto and the chat template put there, and a
record's own text is tokenized as ordinary text (as `split_special_tokens=True` does in
transformers, `encode_special_tokens` in tokenizers).

A record whose text holds a special token's text is escaped before it is rendered: each
such text becomes a placeholder of the same length, so the rendering's character spans
(the masks) hold. That rendering is then encoded by a copy of the tokenizer that reads
special tokens' text as ordinary text and knows each special token by a sentinel of the
same length: the template's special tokens are swapped for their sentinels and the
placeholders back to the record's text. Tokenization is otherwise the tokenizer's own:
text is split at the same places, and other records take the plain path. Placeholders
and sentinels are characters of Unicode's private use plane 16; an escaped record that
holds some itself is dropped, as it could forge them.
"""

from __future__ import annotations

import re
from collections.abc import Iterator
from functools import cached_property

import numpy as np

from okto.data.fields import Unusable

_PRIVATE = 0x100000  # the first character of Unicode's supplementary private use area B
_RESERVED = re.compile("[\U00100000-\U0010ffff]")


def _alternatives(strings) -> re.Pattern:
    """A pattern matching any of `strings`, the longest first where one starts another."""
    return re.compile("|".join(map(re.escape, sorted(strings, key=len, reverse=True))))


class SpecialText:
    """Escapes a record's special-token text and encodes the rendering with it as text;
    picklable, with the `Encoder` that holds it."""

    def __init__(self, backend):
        self._tokens = sorted(
            (token_id, token)
            for token_id, token in backend.get_added_tokens_decoder().items()
            if token.special
        )
        texts = [token.content for _, token in self._tokens]
        placeholders = [chr(_PRIVATE + k) * len(text) for k, text in enumerate(texts)]
        self._sentinels = [
            chr(_PRIVATE + len(texts) + k) * len(text) for k, text in enumerate(texts)
        ]
        self._found = _alternatives(texts) if texts else None
        self._escapes = dict(zip(texts, placeholders, strict=True))
        self._swaps = {
            **dict(zip(texts, self._sentinels, strict=True)),
            **dict(zip(placeholders, texts, strict=True)),
        }
        self._swap = _alternatives(self._swaps) if texts else None
        self._backend = backend

    def escape(self, texts: list[str]) -> tuple[list[str], set[str]] | None:
        """The texts with each special token's text as its placeholder, and the special
        tokens found; None when there is none (the common case)."""
        if self._found is None or not any(self._found.search(text) for text in texts):
            return None
        if any(_RESERVED.search(text) for text in texts):
            raise Unusable(
                "it holds special tokens' text and characters of Unicode's private use plane "
                "16, which okto reserves to keep that text apart from the special tokens"
            )
        found = {match.group() for text in texts for match in self._found.finditer(text)}
        escaped = [self._found.sub(lambda m: self._escapes[m.group()], text) for text in texts]
        return escaped, found

    def encode_batch(self, rendered: list[str], add_special_tokens: bool) -> Iterator[tuple]:
        """(ids, offsets) per rendering of escaped records, as `Encoder` takes them: the
        records' special-token text as ordinary text, the template's special tokens as
        themselves."""
        swapped = [self._swap.sub(lambda m: self._swaps[m.group()], text) for text in rendered]
        encodings = self._guarded.encode_batch(swapped, add_special_tokens=add_special_tokens)
        return ((self._ids[encoding.ids], encoding.offsets) for encoding in encodings)

    @cached_property
    def _guarded(self):
        """The tokenizer reading special tokens' text as text, with the sentinels as added
        tokens (matched as the special token they stand for is)."""
        from tokenizers import AddedToken, Tokenizer

        guarded = Tokenizer.from_str(self._backend.to_str())
        guarded.encode_special_tokens = True
        guarded.add_tokens(
            [
                AddedToken(
                    sentinel,
                    single_word=token.single_word,
                    lstrip=token.lstrip,
                    rstrip=token.rstrip,
                    normalized=token.normalized,
                    special=False,  # encode_special_tokens would read it as text
                )
                for sentinel, (_, token) in zip(self._sentinels, self._tokens, strict=True)
            ]
        )
        return guarded

    @cached_property
    def _ids(self) -> np.ndarray:
        """The guarded tokenizer's ids to the tokenizer's: a sentinel to its special token."""
        sentinel_ids = [self._guarded.token_to_id(sentinel) for sentinel in self._sentinels]
        ids = np.arange(max([self._guarded.get_vocab_size(), *sentinel_ids]) + 1, dtype=np.int32)
        for sentinel_id, (token_id, _) in zip(sentinel_ids, self._tokens, strict=True):
            ids[sentinel_id] = token_id
        return ids
