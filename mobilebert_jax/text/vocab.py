"""The WordPiece pipeline of HF v5 `BertTokenizer` (REFERENCE §6.4) and the tokenizer's files.

`load_vocab` reads `vocab.txt`; `build_backend` assembles the `tokenizers.Tokenizer` (normalizer,
pre-tokenizer, WordPiece, template, special tokens); `resolve_folder` finds a tokenizer directory
locally or on the Hugging Face Hub. `tokenizer.py` wraps this in HF's calling conventions.
"""

from __future__ import annotations

import os
import re

from tokenizers import AddedToken, Tokenizer, decoders, normalizers, pre_tokenizers, processors
from tokenizers.models import WordPiece

from mobilebert_jax import storage

MODEL_MAX_LENGTH = 512  # MobileBERT's max_position_embeddings
VOCAB_FILE = "vocab.txt"
TOKENIZER_FILE = "tokenizer.json"
CONFIG_FILE = "tokenizer_config.json"
SPECIAL_TOKENS_FILE = "special_tokens_map.json"
SPECIAL_TOKENS = {
    "unk_token": "[UNK]",
    "sep_token": "[SEP]",
    "pad_token": "[PAD]",
    "cls_token": "[CLS]",
    "mask_token": "[MASK]",
}
_ADDED_ORDER = ("pad_token", "unk_token", "cls_token", "sep_token", "mask_token")
_HUB_ID = re.compile(r"^[A-Za-z0-9][\w.-]*(/[\w.-]+)?$")


def load_vocab(path: str | os.PathLike) -> dict[str, int]:
    """Reads a WordPiece `vocab.txt` (one token a line; the line number is the id), as HF does."""
    vocab: dict[str, int] = {}
    with storage.open(path, encoding="utf-8") as f:
        for index, line in enumerate(f):
            token = line.rstrip("\n")
            if token in vocab:
                raise ValueError(
                    f"{path}: line {index + 1}: token {token!r} already appears on line {vocab[token] + 1}; "
                    "a WordPiece vocab needs one line per distinct token"
                )
            vocab[token] = index
    if not vocab:
        raise ValueError(f"{path}: the vocab file is empty")
    return vocab


def build_backend(
    vocab: dict[str, int],
    *,
    do_lower_case: bool = True,
    strip_accents: bool | None = None,
    tokenize_chinese_chars: bool = True,
    special_tokens: dict[str, str] | None = None,
) -> Tokenizer:
    """The `tokenizers.Tokenizer` of HF v5 `BertTokenizer(vocab=...)` (REFERENCE §6.4)."""
    special = {**SPECIAL_TOKENS, **(special_tokens or {})}
    for name in _ADDED_ORDER:
        if special[name] not in vocab:
            raise ValueError(
                f"special token {name}={special[name]!r} is not in the vocab ({len(vocab)} tokens)"
            )
    backend = Tokenizer(
        WordPiece(
            vocab,
            unk_token=special["unk_token"],
            continuing_subword_prefix="##",
            max_input_chars_per_word=100,
        )
    )
    backend.normalizer = normalizers.BertNormalizer(
        clean_text=True,
        handle_chinese_chars=tokenize_chinese_chars,
        strip_accents=strip_accents,
        lowercase=do_lower_case,
    )
    backend.pre_tokenizer = pre_tokenizers.BertPreTokenizer()
    backend.decoder = decoders.WordPiece(prefix="##", cleanup=True)
    backend.add_special_tokens([AddedToken(special[n], special=True, normalized=False) for n in _ADDED_ORDER])
    cls, sep = special["cls_token"], special["sep_token"]
    backend.post_processor = processors.TemplateProcessing(
        single=f"{cls}:0 $A:0 {sep}:0",
        pair=f"{cls}:0 $A:0 {sep}:0 $B:1 {sep}:1",
        special_tokens=[(cls, vocab[cls]), (sep, vocab[sep])],
    )
    return backend


def resolve_folder(name_or_path: str, revision: str | None, cache_dir: str | None) -> str:
    if storage.is_url(name_or_path):  # the tokenizers library reads local files: a copy of the folder
        if not storage.isdir(name_or_path):
            raise FileNotFoundError(f"{name_or_path}: no such folder")
        return storage.local_copy(name_or_path)
    if os.path.isdir(name_or_path):
        return name_or_path
    if os.path.exists(name_or_path):
        raise ValueError(
            f"{name_or_path} is a file; pass the directory that holds it, or use from_vocab_file/from_tokenizer_json"
        )
    if not _HUB_ID.match(name_or_path):
        raise FileNotFoundError(f"{name_or_path} is neither a directory nor a Hugging Face Hub id")
    try:
        from huggingface_hub import snapshot_download
    except ImportError:
        raise OSError(
            f"{name_or_path!r} is not a local directory, and huggingface_hub is not installed to fetch it from "
            "the Hub (pip install huggingface_hub, or pass a directory with vocab.txt or tokenizer.json)"
        ) from None
    try:
        return snapshot_download(
            name_or_path,
            revision=revision,
            cache_dir=cache_dir,
            allow_patterns=[VOCAB_FILE, TOKENIZER_FILE, CONFIG_FILE, SPECIAL_TOKENS_FILE],
        )
    except Exception as err:
        raise OSError(
            f"could not fetch the tokenizer files of {name_or_path!r} from the Hugging Face Hub "
            f"({type(err).__name__}: {err}); check the id and the network (or HF_HUB_OFFLINE), or pass a "
            "local directory"
        ) from err
