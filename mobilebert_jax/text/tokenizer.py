"""MobileBERT's WordPiece tokenizer on the `tokenizers` library, equal to HF's `BertTokenizerFast`.

The pipeline is the one HF v5 `BertTokenizer.__init__` builds (REFERENCE §6.4): `BertNormalizer`
(clean text, split CJK, lowercase, strip accents), `BertPreTokenizer`, `WordPiece` (`##`, 100 chars a
word), template `[CLS] A [SEP] (B [SEP])` with type ids 0/1, and the five special tokens as added
tokens. The uncased vocab ships in `mobilebert_jax/data/vocab.txt`, so `MobileBertTokenizer.default()`
works offline.

Differences from HF, all on purpose:
- `truncation=True` and `max_length=model_max_length=512` by default: MobileBERT has 512 position
  embeddings and HF's hub tokenizers (model_max_length 1e30) let longer inputs crash the model
  (REFERENCE §4 #19). Pass `truncation=False` for HF's default.
- Results are numpy `int32` arrays `[batch, length]` (HF's `return_tensors="np"` gives int64); a single
  string is a batch of one. Rows of different lengths (no padding) come back as a list of 1-D arrays
  (HF gives an object array of the same rows). `return_tensors=None` gives Python lists as HF does.
- Bad input raises `TypeError`/`ValueError` naming the example, where HF raises a bare `Exception`,
  panics in Rust (a `stride` too large), silently skips truncation (`max_length` below the special
  tokens) or silently drops unknown ids in `decode`.
- Extra: `return_word_ids=True` returns HF's `BatchEncoding.word_ids()` as an array (-1 for None).
- A single `text_pair=""` is encoded as an (empty) second sequence, `[CLS] A [SEP] [SEP]`, as HF does
  for batches; HF's single-example path drops a falsy `text_pair`.
"""

from __future__ import annotations

import json
import os
import tempfile
import warnings
from collections.abc import Sequence
from importlib import resources
from typing import Any

import numpy as np
from tokenizers import Tokenizer

from mobilebert_jax import storage
from mobilebert_jax.text.batching import as_batch, check_int, clean_up_tokenization, pack, to_lists
from mobilebert_jax.text.vocab import (
    CONFIG_FILE,
    MODEL_MAX_LENGTH,
    SPECIAL_TOKENS,
    SPECIAL_TOKENS_FILE,
    TOKENIZER_FILE,
    VOCAB_FILE,
    build_backend,
    load_vocab,
    resolve_folder,
)

_PADDING = {
    False: None,
    "do_not_pad": None,
    True: "longest",
    "longest": "longest",
    "max_length": "max_length",
}
_TRUNCATION = {False: None, "do_not_truncate": None, True: "longest_first", "longest_first": "longest_first"}
_TRUNCATION.update(only_first="only_first", only_second="only_second")


def _batches(text: Any, text_pair: Any, is_split_into_words: bool) -> tuple[bool, list, list | None]:
    """(batched, texts, pairs or None) of `__call__`'s inputs; TypeError when text and pair differ in form."""
    batched, texts = as_batch(text, "text", is_split_into_words)
    pairs = None
    if text_pair is not None:
        pair_batched, pairs = as_batch(text_pair, "text_pair", is_split_into_words)
        if pair_batched != batched or len(pairs) != len(texts):
            raise TypeError(
                f"text and text_pair must both be single examples or batches of the same size; got "
                f"{len(texts) if batched else 'one'} text(s) and {len(pairs) if pair_batched else 'one'} pair(s)"
            )
    return batched, texts, pairs


def _overflow_rows(encodings: list) -> tuple[list, list[int]]:
    """Every encoding followed by its overflow windows, and the example index of each row."""
    rows, sample = [], []
    for i, enc in enumerate(encodings):
        rows.extend([enc, *enc.overflowing])
        sample.extend([i] * (1 + len(enc.overflowing)))
    return rows, sample


class MobileBertTokenizer:
    """MobileBERT's uncased WordPiece tokenizer, equal to HF `BertTokenizerFast` on the same vocab.

    Build it with `default()`, `from_vocab_file`, `from_tokenizer_json` or `from_pretrained`. Like HF's,
    a call sets truncation on the shared `tokenizers` backend, so use one instance per thread.

    Attributes:
        model_max_length: default `max_length` for truncation and `padding="max_length"` (512).
    """

    model_input_names = ("input_ids", "token_type_ids", "attention_mask")

    def __init__(
        self,
        backend: Tokenizer,
        *,
        model_max_length: int = MODEL_MAX_LENGTH,
        special_tokens: dict[str, str] | None = None,
    ):
        """Wraps a `tokenizers.Tokenizer` (copied; its own padding and truncation are switched off).

        Args:
            backend: a WordPiece `tokenizers.Tokenizer` with a BERT post-processor.
            model_max_length: default `max_length` (MobileBERT has 512 positions).
            special_tokens: `{"unk_token": "[UNK]", ...}` overrides of the five BERT special tokens.
        """
        self._backend = Tokenizer.from_str(backend.to_str())
        # tokenizer.json files of sentence-transformers pad and truncate to 128 (REFERENCE §6.5).
        self._backend.no_padding()
        self._backend.no_truncation()
        self.model_max_length = check_int(model_max_length, "model_max_length", 1)
        self._special = {**SPECIAL_TOKENS, **(special_tokens or {})}
        self._special_ids = {}
        for name, token in self._special.items():
            index = self._backend.token_to_id(token)
            if index is None:
                raise ValueError(f"special token {name}={token!r} is not in the tokenizer's vocabulary")
            self._special_ids[name] = index

    # ----------------------------------------------------------------------------------- constructors
    @classmethod
    def default(cls) -> MobileBertTokenizer:
        """The uncased MobileBERT/BERT tokenizer from the vocab packaged with this library (offline)."""
        with resources.as_file(resources.files("mobilebert_jax") / "data" / VOCAB_FILE) as path:
            return cls.from_vocab_file(path)

    @classmethod
    def from_vocab_file(
        cls,
        path: str | os.PathLike,
        *,
        do_lower_case: bool = True,
        strip_accents: bool | None = None,
        tokenize_chinese_chars: bool = True,
        model_max_length: int = MODEL_MAX_LENGTH,
        special_tokens: dict[str, str] | None = None,
    ) -> MobileBertTokenizer:
        """Builds the HF BERT pipeline around a WordPiece `vocab.txt`."""
        vocab = load_vocab(path)
        backend = build_backend(
            vocab,
            do_lower_case=do_lower_case,
            strip_accents=strip_accents,
            tokenize_chinese_chars=tokenize_chinese_chars,
            special_tokens=special_tokens,
        )
        return cls(backend, model_max_length=model_max_length, special_tokens=special_tokens)

    @classmethod
    def from_tokenizer_json(
        cls,
        path: str | os.PathLike,
        *,
        model_max_length: int = MODEL_MAX_LENGTH,
        special_tokens: dict[str, str] | None = None,
    ) -> MobileBertTokenizer:
        """Loads a `tokenizers` serialization; its padding and truncation settings are ignored."""
        try:
            backend = Tokenizer.from_file(os.fspath(path))
        except Exception as err:
            raise ValueError(f"{path}: not a readable tokenizers JSON file ({err})") from err
        model_type = json.loads(backend.to_str())["model"]["type"]
        if model_type != "WordPiece":
            raise ValueError(
                f"{path}: the tokenizer model is {model_type}, expected WordPiece (a BERT vocab)"
            )
        return cls(backend, model_max_length=model_max_length, special_tokens=special_tokens)

    @classmethod
    def from_pretrained(
        cls,
        name_or_path: str | os.PathLike,
        *,
        revision: str | None = None,
        cache_dir: str | None = None,
        model_max_length: int | None = None,
    ) -> MobileBertTokenizer:
        """Loads an HF model directory or hub id (`tokenizer.json`, else `vocab.txt` + configs).

        `model_max_length` comes from the argument, else `tokenizer_config.json` capped at 512 (hub
        configs often say 1e30, which lets too-long inputs reach the model), else 512.
        A hub id needs `huggingface_hub` and network (or its cache).
        """
        folder = resolve_folder(os.fspath(name_or_path), revision, cache_dir)
        config: dict[str, Any] = {}
        for name in (SPECIAL_TOKENS_FILE, CONFIG_FILE):
            file = os.path.join(folder, name)
            if os.path.isfile(file):
                with open(file, encoding="utf-8") as f:
                    try:
                        config.update(json.load(f))
                    except json.JSONDecodeError as err:
                        raise ValueError(f"{file}: invalid JSON ({err})") from err
        special = {}
        for name in SPECIAL_TOKENS:
            value = config.get(name)
            if isinstance(value, dict):  # transformers 4.x writes AddedToken dicts
                value = value.get("content")
            if isinstance(value, str):
                special[name] = value
        if model_max_length is None:
            configured = config.get("model_max_length")
            model_max_length = (
                MODEL_MAX_LENGTH if configured is None else min(int(configured), MODEL_MAX_LENGTH)
            )
        if os.path.isfile(os.path.join(folder, TOKENIZER_FILE)):
            return cls.from_tokenizer_json(
                os.path.join(folder, TOKENIZER_FILE),
                model_max_length=model_max_length,
                special_tokens=special,
            )
        if os.path.isfile(os.path.join(folder, VOCAB_FILE)):
            return cls.from_vocab_file(
                os.path.join(folder, VOCAB_FILE),
                do_lower_case=config.get("do_lower_case", True),
                strip_accents=config.get("strip_accents"),
                tokenize_chinese_chars=config.get("tokenize_chinese_chars", True),
                model_max_length=model_max_length,
                special_tokens=special,
            )
        raise FileNotFoundError(f"{folder} has neither {TOKENIZER_FILE} nor {VOCAB_FILE}")

    def save_pretrained(self, directory: str | os.PathLike) -> list[str]:
        """Writes `vocab.txt`, `tokenizer.json`, `tokenizer_config.json`, `special_tokens_map.json`.

        `transformers.AutoTokenizer.from_pretrained(directory)` loads it and gives the same ids.

        Returns:
            The paths written (a gs:// `directory`: written locally, then uploaded file by file).
        """
        directory = os.fspath(directory)
        if storage.is_url(directory):
            with tempfile.TemporaryDirectory(prefix="mobilebert-jax-tok-") as tmp:
                names = [os.path.basename(p) for p in self.save_pretrained(tmp)]
                storage.upload_dir(tmp, directory)
            return [storage.join(directory, n) for n in names]
        os.makedirs(directory, exist_ok=True)
        vocab = self._backend.get_vocab(with_added_tokens=False)
        tokens = sorted(vocab, key=vocab.__getitem__)
        if [vocab[t] for t in tokens] != list(range(len(tokens))):
            raise ValueError("the vocabulary ids are not 0..n-1 without gaps; cannot write vocab.txt")
        state = json.loads(self._backend.to_str())
        config: dict[str, Any] = {"tokenizer_class": "BertTokenizer"}
        norm = state.get("normalizer") or {}
        if norm.get("type") == "BertNormalizer":
            config["do_lower_case"] = norm["lowercase"]
            config["strip_accents"] = norm["strip_accents"]
            config["tokenize_chinese_chars"] = norm["handle_chinese_chars"]
        config.update(
            model_max_length=self.model_max_length, clean_up_tokenization_spaces=False, **self._special
        )
        paths = [
            os.path.join(directory, n) for n in (VOCAB_FILE, TOKENIZER_FILE, CONFIG_FILE, SPECIAL_TOKENS_FILE)
        ]
        with open(paths[0], "w", encoding="utf-8", newline="\n") as f:
            f.writelines(t + "\n" for t in tokens)
        self._backend.save(paths[1])
        for path, content in zip(paths[2:], (config, self._special)):
            with open(path, "w", encoding="utf-8") as f:
                json.dump(content, f, indent=2, ensure_ascii=False)
                f.write("\n")
        return paths

    # ------------------------------------------------------------------------------------ vocabulary
    @property
    def backend_tokenizer(self) -> Tokenizer:
        """The underlying `tokenizers.Tokenizer` (its padding/truncation are reset on every call)."""
        return self._backend

    @property
    def vocab_size(self) -> int:
        """Size of the WordPiece vocabulary without added tokens (30,522 for the uncased vocab)."""
        return self._backend.get_vocab_size(with_added_tokens=False)

    def __len__(self) -> int:
        return self._backend.get_vocab_size(with_added_tokens=True)

    def get_vocab(self) -> dict[str, int]:
        """token -> id, including added tokens."""
        return self._backend.get_vocab(with_added_tokens=True)

    pad_token = property(lambda self: self._special["pad_token"], doc="`[PAD]`")
    unk_token = property(lambda self: self._special["unk_token"], doc="`[UNK]`")
    cls_token = property(lambda self: self._special["cls_token"], doc="`[CLS]`")
    sep_token = property(lambda self: self._special["sep_token"], doc="`[SEP]`")
    mask_token = property(lambda self: self._special["mask_token"], doc="`[MASK]`")
    pad_token_id = property(lambda self: self._special_ids["pad_token"], doc="id of `[PAD]` (0)")
    unk_token_id = property(lambda self: self._special_ids["unk_token"], doc="id of `[UNK]` (100)")
    cls_token_id = property(lambda self: self._special_ids["cls_token"], doc="id of `[CLS]` (101)")
    sep_token_id = property(lambda self: self._special_ids["sep_token"], doc="id of `[SEP]` (102)")
    mask_token_id = property(lambda self: self._special_ids["mask_token"], doc="id of `[MASK]` (103)")

    @property
    def all_special_tokens(self) -> list[str]:
        """The five special tokens."""
        return list(self._special.values())

    @property
    def all_special_ids(self) -> list[int]:
        """Ids of the five special tokens."""
        return list(self._special_ids.values())

    def convert_tokens_to_ids(self, tokens: str | Sequence[str]) -> int | list[int]:
        """Token(s) to id(s); tokens outside the vocabulary give `unk_token_id`, as in HF."""
        if isinstance(tokens, str):
            index = self._backend.token_to_id(tokens)
            return self.unk_token_id if index is None else index
        for i, token in enumerate(tokens):
            if not isinstance(token, str):
                raise TypeError(f"tokens[{i}] is {type(token).__name__}, expected str")
        return [self.convert_tokens_to_ids(t) for t in tokens]

    def convert_ids_to_tokens(self, ids: Any, skip_special_tokens: bool = False) -> str | list[str]:
        """Id(s) to token(s); an id outside the vocabulary raises ValueError (HF returns None)."""
        checked = self._check_ids(ids, "ids")
        skip = set(self.all_special_ids) if skip_special_tokens else set()
        if np.ndim(ids) == 0:
            return self._backend.id_to_token(checked[0])
        return [self._backend.id_to_token(i) for i in checked if i not in skip]

    def tokenize(self, text: str, pair: str | None = None, add_special_tokens: bool = False) -> list[str]:
        """WordPiece tokens of `text` (and `pair`), without special tokens unless asked."""
        for name, value in (("text", text), ("pair", pair)):
            if not isinstance(value, str) and not (name == "pair" and value is None):
                raise TypeError(f"{name} must be a str, got {type(value).__name__}")
        self._backend.no_truncation()
        return self._backend.encode(text, pair, add_special_tokens=add_special_tokens).tokens

    def _check_ids(self, ids: Any, name: str) -> list[int]:
        arr = np.asarray(ids)
        if arr.ndim > 1:
            raise ValueError(f"{name} must be an int or a 1-D sequence of ids, got shape {arr.shape}")
        if arr.size == 0:
            return []
        if not np.issubdtype(arr.dtype, np.integer):
            raise TypeError(f"{name} must be integer token ids, got dtype {arr.dtype}")
        arr = arr.reshape(-1)
        bad = np.flatnonzero((arr < 0) | (arr >= len(self)))
        if bad.size:
            raise ValueError(
                f"{name}[{bad[0]}] = {arr[bad[0]]} is not a token id: the vocabulary has ids 0..{len(self) - 1}"
            )
        return arr.tolist()

    # -------------------------------------------------------------------------------------- decoding
    def decode(
        self, token_ids: Any, skip_special_tokens: bool = False, clean_up_tokenization_spaces: bool = False
    ) -> str:
        """Ids `[length]` to text: WordPiece pieces joined (`##` removed), lowercased as encoded.

        `clean_up_tokenization_spaces=True` also applies HF's clean-up (`" ' "` -> `"'"` etc.).
        """
        text = self._backend.decode(
            self._check_ids(token_ids, "token_ids"), skip_special_tokens=skip_special_tokens
        )
        return clean_up_tokenization(text) if clean_up_tokenization_spaces else text

    def batch_decode(
        self, sequences: Any, skip_special_tokens: bool = False, clean_up_tokenization_spaces: bool = False
    ) -> list[str]:
        """`decode` for every row of a `[batch, length]` array or list of id lists."""
        if isinstance(sequences, np.ndarray) and sequences.ndim != 2:
            raise ValueError(f"sequences must be [batch, length], got shape {sequences.shape}")
        rows = [self._check_ids(row, f"sequences[{i}]") for i, row in enumerate(sequences)]
        texts = self._backend.decode_batch(rows, skip_special_tokens=skip_special_tokens)
        return [clean_up_tokenization(t) for t in texts] if clean_up_tokenization_spaces else texts

    # -------------------------------------------------------------------------------------- encoding
    def __call__(
        self,
        text: str | Sequence[str] | Sequence[Sequence[str]],
        text_pair: str | Sequence[str] | Sequence[Sequence[str]] | None = None,
        *,
        add_special_tokens: bool = True,
        padding: bool | str = False,
        truncation: bool | str = True,
        max_length: int | None = None,
        stride: int = 0,
        is_split_into_words: bool = False,
        pad_to_multiple_of: int | None = None,
        return_tensors: str | None = "np",
        return_token_type_ids: bool = True,
        return_attention_mask: bool = True,
        return_offsets_mapping: bool = False,
        return_special_tokens_mask: bool = False,
        return_overflowing_tokens: bool = False,
        return_word_ids: bool = False,
    ) -> dict[str, Any]:
        """Encodes one text, a batch of texts, or (batches of) pairs, like HF's `tokenizer(...)`.

        Args:
            text: a string, a list of strings, or with `is_split_into_words` a list of words (or a list
                of such lists).
            text_pair: the second sequences, same form and batch size as `text`.
            add_special_tokens: add `[CLS]`/`[SEP]` and the pair type ids.
            padding: False/"do_not_pad"; True/"longest" (to the longest row); "max_length".
            truncation: True/"longest_first", "only_first", "only_second", False/"do_not_truncate".
            max_length: truncation and `padding="max_length"` length, special tokens included;
                defaults to `model_max_length` (512).
            stride: with `return_overflowing_tokens`, tokens shared by consecutive windows.
            pad_to_multiple_of: round the padded length up to a multiple of this.
            return_tensors: "np" (arrays) or None (Python lists, single examples unbatched, as HF).
            return_offsets_mapping: character `(start, end)` of every token in its own text.
            return_special_tokens_mask: 1 for `[CLS]`, `[SEP]` and padding.
            return_overflowing_tokens: every truncated window becomes its own row;
                `overflow_to_sample_mapping` gives each row's example.
            return_word_ids: index of the word (pre-tokenizer split) of each token, -1 for special
                tokens and padding (HF's `BatchEncoding.word_ids()`, None there).

        Returns:
            dict of int32 arrays `[rows, length]` (`offset_mapping` is `[rows, length, 2]`,
            `overflow_to_sample_mapping` `[rows]`); rows = batch size, or the number of windows with
            `return_overflowing_tokens`. Rows of different lengths give a list of 1-D arrays per key.
        """
        batched, texts, pairs = _batches(text, text_pair, is_split_into_words)
        pad_mode, strategy, max_length, stride, pad_to_multiple_of = self._check_options(
            return_tensors, padding, truncation, max_length, stride, pad_to_multiple_of
        )
        n_special = self._backend.num_special_tokens_to_add(pairs is not None) if add_special_tokens else 0
        # Without overflow rows the stride changes nothing, so it must not make tokenizers fail.
        stride = stride if return_overflowing_tokens else 0
        trunc_args = (strategy, max_length, n_special, stride, is_split_into_words)
        self._set_truncation(texts, pairs, trunc_args)
        # encode_batch_fast computes neither offsets nor word ids.
        full = return_offsets_mapping or return_word_ids
        encodings = self._encode(texts, pairs, trunc_args, add_special_tokens, full)
        rows, sample = _overflow_rows(encodings) if return_overflowing_tokens else (encodings, None)
        wanted = {
            "token_type_ids": return_token_type_ids,
            "attention_mask": return_attention_mask,
            "special_tokens_mask": return_special_tokens_mask,
            "offset_mapping": return_offsets_mapping,
            "word_ids": return_word_ids,
        }
        out, lengths = self._pack(rows, pad_mode, max_length, pad_to_multiple_of, wanted)
        if sample is not None:
            out["overflow_to_sample_mapping"] = np.asarray(sample, np.int32)
        self._warn_too_long(lengths)
        if return_tensors is None:
            out = {k: to_lists(v, unbatch=not batched and sample is None) for k, v in out.items()}
        return out

    def _check_options(
        self,
        return_tensors: str | None,
        padding: bool | str,
        truncation: bool | str,
        max_length: int | None,
        stride: int,
        pad_to_multiple_of: int | None,
    ) -> tuple[str | None, str | None, int, int, int | None]:
        """Checked `__call__` options: (pad mode, truncation strategy, max_length, stride, multiple)."""
        if return_tensors not in ("np", None):
            raise ValueError(f"return_tensors must be 'np' or None, got {return_tensors!r}")
        if not isinstance(padding, (bool, str)) or padding not in _PADDING:
            raise ValueError(f"padding must be one of {list(_PADDING)}, got {padding!r}")
        if not isinstance(truncation, (bool, str)) or truncation not in _TRUNCATION:
            raise ValueError(f"truncation must be one of {list(_TRUNCATION)}, got {truncation!r}")
        pad_mode, strategy = _PADDING[padding], _TRUNCATION[truncation]
        max_length = self.model_max_length if max_length is None else check_int(max_length, "max_length", 1)
        stride = check_int(stride, "stride", 0)
        if pad_to_multiple_of is not None:
            pad_to_multiple_of = check_int(pad_to_multiple_of, "pad_to_multiple_of", 1)
            if strategy and pad_mode and max_length % pad_to_multiple_of:
                raise ValueError(
                    f"Truncation and padding are both activated but truncation length ({max_length}) is not a "
                    f"multiple of pad_to_multiple_of ({pad_to_multiple_of})."
                )
        return pad_mode, strategy, max_length, stride, pad_to_multiple_of

    def _set_truncation(self, texts: list, pairs: list | None, trunc_args: tuple) -> None:
        """Sets the backend's truncation, first raising a ValueError for inputs it cannot truncate."""
        strategy, max_length, n_special, stride, is_split_into_words = trunc_args
        if not strategy:
            self._backend.no_truncation()
            return
        kind = "a pair ([CLS] A [SEP] B [SEP])" if pairs is not None else "a single text ([CLS] A [SEP])"
        if max_length < n_special:  # tokenizers would silently skip truncation (usize underflow)
            raise ValueError(
                f"max_length={max_length} is shorter than the {n_special} special tokens of {kind}"
            )
        if strategy == "only_second" and pairs is None:
            raise ValueError("truncation='only_second' needs text_pair")
        if pairs is None and stride >= max_length - n_special > 0:
            raise ValueError(
                f"stride={stride} must be smaller than the {max_length - n_special} text tokens of a window "
                f"(max_length={max_length} minus the {n_special} special tokens of {kind})"
            )
        # tokenizers panics when a window keeps <= stride tokens of a truncated pair: find those first.
        if pairs is not None and strategy == "longest_first" and stride >= (max_length - n_special) // 2:
            self._check_truncatable(texts, pairs, *trunc_args)  # (windows keep >= budget // 2 tokens)
        elif pairs is not None and stride:  # only from the pairs whose kept sequence is long
            kept = texts if strategy == "only_second" else pairs
            suspects = np.flatnonzero(
                self._lengths(kept, is_split_into_words) >= max_length - n_special - stride
            )
            if suspects.size:
                picked = [texts[i] for i in suspects], [pairs[i] for i in suspects]
                self._check_truncatable(*picked, *trunc_args, suspects)
        self._backend.enable_truncation(max_length, stride=stride, strategy=strategy)

    def _encode(
        self, texts: list, pairs: list | None, trunc_args: tuple, add_special_tokens: bool, full: bool
    ) -> list:
        """Backend encodings of the inputs; a truncation panic becomes the ValueError naming the pair."""
        inputs = texts if pairs is None else list(zip(texts, pairs))
        encode = self._backend.encode_batch if full else self._backend.encode_batch_fast
        try:
            return encode(inputs, is_pretokenized=trunc_args[-1], add_special_tokens=add_special_tokens)
        except BaseException as err:  # a stride panic in tokenizers is a pyo3 PanicException
            if isinstance(err, (KeyboardInterrupt, SystemExit)) or not trunc_args[0] or pairs is None:
                raise
            self._check_truncatable(texts, pairs, *trunc_args)
            raise

    def _pack(
        self, rows: list, pad_mode: str | None, max_length: int, multiple: int | None, wanted: dict[str, bool]
    ) -> tuple[dict[str, Any], np.ndarray]:
        """The padded (or ragged) arrays of `rows` for input_ids and each wanted field, and row lengths."""
        ids = [enc.ids for enc in rows]
        lengths = np.fromiter(map(len, ids), np.int64, len(ids))
        target = 0
        if pad_mode == "max_length":
            target = max_length
        elif pad_mode == "longest" and len(ids):
            target = int(lengths.max())
        if pad_mode and multiple:
            target = -(-target // multiple) * multiple
        out: dict[str, Any] = {"input_ids": pack(ids, lengths, target, self.pad_token_id)}
        fields = {
            "token_type_ids": (lambda e: e.type_ids, 0),
            "attention_mask": (lambda e: e.attention_mask, 0),
            "special_tokens_mask": (lambda e: e.special_tokens_mask, 1),
            "offset_mapping": (lambda e: e.offsets, 0),
            "word_ids": (lambda e: [-1 if w is None else w for w in e.word_ids], -1),
        }
        for key, (get, fill) in fields.items():
            if wanted[key]:
                tail = (2,) if key == "offset_mapping" else ()
                out[key] = pack([get(e) for e in rows], lengths, target, fill, tail)
        return out, lengths

    def _warn_too_long(self, lengths: np.ndarray) -> None:
        too_long = lengths > self.model_max_length
        if too_long.any():
            warnings.warn(
                f"{int(too_long.sum())} sequence(s) are longer than model_max_length={self.model_max_length} "
                f"(longest: {int(lengths.max())} tokens); MobileBERT has {self.model_max_length} positions and "
                "will fail on them. Use truncation=True with max_length <= model_max_length.",
                stacklevel=3,  # the caller of __call__
            )

    def _lengths(self, seqs: list, pretok: bool) -> np.ndarray:
        """Token counts `[n]` of single sequences, without special tokens or truncation."""
        self._backend.no_truncation()
        encodings = self._backend.encode_batch_fast(seqs, is_pretokenized=pretok, add_special_tokens=False)
        return np.fromiter(map(len, encodings), np.int64, len(encodings))

    def _check_truncatable(
        self,
        texts: list,
        pairs: list,
        strategy: str,
        max_length: int,
        n_special: int,
        stride: int,
        pretok: bool,
        index: Any = None,
    ) -> None:
        """Raises a ValueError naming the first pair that tokenizers cannot truncate (error or panic).

        Mirrors `tokenizers::utils::truncation::truncate_encodings`: a truncated sequence must keep
        more than `stride` tokens (more than 0 without overflow), else tokenizers fails.
        """
        budget = max_length - n_special
        len_a, len_b = self._lengths(texts, pretok), self._lengths(pairs, pretok)
        for i, (a, b) in enumerate(zip(len_a.tolist(), len_b.tolist())):
            if a + b <= budget:
                continue
            if strategy == "longest_first":
                n1, n2 = min(a, b), max(a, b)
                n2 = n1 if n1 > budget else max(n1, budget - n1)
                if n1 + n2 > budget:
                    n1, n2 = budget // 2, budget // 2 + budget % 2
                keeps = (n1, n2) if a <= b else (n2, n1)
                bad = [(n, k) for n, k in zip((a, b), keeps) if 0 < k < n and k <= stride]
                reason = f"a window keeps only {bad[0][1] if bad else '?'} tokens of a sequence, not more than stride"
            else:
                keep = budget - (b if strategy == "only_first" else a)
                bad = keep <= stride
                which = "first" if strategy == "only_first" else "second"
                reason = (
                    f"the other sequence and the special tokens leave {max(keep, 0)} tokens for the {which}"
                )
            if bad:
                raise ValueError(
                    f"example {i if index is None else int(index[i])} (first sequence {a} tokens, second {b}) "
                    f"cannot be truncated to max_length={max_length} ({n_special} special tokens) with "
                    f"truncation={strategy!r}, stride={stride}: {reason}, which must be more than {stride}. Use a "
                    "larger max_length, a smaller stride or another truncation strategy."
                )

    def __repr__(self) -> str:
        return f"MobileBertTokenizer(vocab_size={self.vocab_size}, model_max_length={self.model_max_length})"
