"""A hub model name as a local folder: from the Hugging Face cache, downloaded if allowed.

With `ENV { network: "offline" }` only the cache is looked at. Online, the
download uses the hub library's short timeouts and, if the network fails,
falls back to the cache, so a machine without network never hangs on a name
it already has. Only the files a causal LM needs are fetched (config,
tokenizer, and the weights transformers loads: the shards
model.safetensors.index.json names, else model.safetensors), not every format
the repository holds: a Mistral repository's consolidated.safetensors repeats
its shards, twice the bytes.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

from okto.errors import UsageError
from okto.language.paths import looked_in

PATTERNS = ["*.json", "*.model", "*.txt", "*.jinja", "*.tiktoken"]  # config, tokenizer, index
SAFETENSORS = "model.safetensors"
SAFETENSORS_INDEX = "model.safetensors.index.json"
LEGACY_WEIGHTS = ["pytorch_model*.bin"]
ETAG_TIMEOUT_S = 10


class HubUnavailable(UsageError):
    """A hub name that is neither in the local cache nor reachable."""


def missing_path(name: str, base_dir: Path | None) -> str | None:
    """Why MODEL.base `name`, found at no local path, is a missing file and not a hub name,
    naming where it was looked for; None when it can be a hub id ("gpt2", "org/model").
    A path cannot be one: two or more slashes, ./ ../ / or ~ first (the hub's own rules
    for an id), or an .okm file. `okto train` and `okto plan` both ask this."""
    from huggingface_hub.errors import HFValidationError
    from huggingface_hub.utils import validate_repo_id

    try:
        validate_repo_id(name)
        if not name.endswith(".okm"):
            return None
    except HFValidationError:
        pass
    return f"MODEL.base {name!r}: no such file or folder (looked in {looked_in(name, base_dir)})"


def go_offline() -> None:
    """Tell the hub libraries (for this process and anything it starts) not to use the network."""
    os.environ["HF_HUB_OFFLINE"] = "1"
    os.environ["TRANSFORMERS_OFFLINE"] = "1"


def _safetensors_weights(name: str) -> list[str]:
    """The safetensors files transformers loads from hub repository `name`: the shards its
    index names, else model.safetensors; none when it has neither (the legacy .bin case)."""
    from huggingface_hub import hf_hub_download, list_repo_files

    files = set(list_repo_files(name))
    if SAFETENSORS_INDEX in files:
        index = hf_hub_download(name, SAFETENSORS_INDEX, etag_timeout=ETAG_TIMEOUT_S)
        return sorted(set(json.loads(Path(index).read_text())["weight_map"].values()))
    return [SAFETENSORS] if SAFETENSORS in files else []


def hub_snapshot(name: str, offline: bool) -> tuple[Path, str]:
    """(local folder, where it came from) for a hub model name."""
    from huggingface_hub import snapshot_download
    from huggingface_hub.errors import GatedRepoError, RepositoryNotFoundError

    if not offline:
        try:
            wanted = PATTERNS + (_safetensors_weights(name) or LEGACY_WEIGHTS)
            folder = snapshot_download(name, allow_patterns=wanted, etag_timeout=ETAG_TIMEOUT_S)
            return Path(folder), "Hugging Face hub"
        except (RepositoryNotFoundError, GatedRepoError) as error:
            raise UsageError(
                f"MODEL.base {name!r}: not a local path, and the hub refuses it "
                f"({type(error).__name__}: no such model, or it needs a login)"
            ) from None
        except Exception:  # no network, a proxy, a timeout: try the cache
            pass
    try:
        return Path(snapshot_download(name, local_files_only=True)), "Hugging Face cache"
    except Exception:
        why = 'ENV network is "offline"' if offline else "the hub cannot be reached"
        raise HubUnavailable(
            f"MODEL.base {name!r} is not a local path, {why}, and it is not in the local "
            "Hugging Face cache. Fixes: download it once where there is network "
            f"(`hf download {name}`), point MODEL.base at a local checkpoint folder or "
            "an .okm file, or train from scratch with `pretrained: false` and an architecture."
        ) from None
