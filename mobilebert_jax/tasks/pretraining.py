"""Pretraining data: masked-LM + next-sentence pairs from plain-text documents.

The input format and the algorithm are those of BERT's `create_pretraining_data.py`: one sentence
per line, a blank line between documents; documents are shuffled; each document is cut into chunks
of about `max_seq_length - 3` tokens (shorter with probability `short_seq_prob`); a chunk is split
into A and B, and B is replaced by text from a random other document half of the time (always when
the chunk has one sentence) — NSP label 1 ("random"), else 0 ("is next", HF's convention); pairs are
truncated from a random end of the longer side; then `round(len * masked_lm_prob)` tokens (at most
`max_predictions_per_seq`, at least 1) are masked, whole words together with `whole_word_mask`:
80% become [MASK], 10% stay, 10% become a uniformly random vocabulary id. All randomness comes from
one `random.Random(seed)` consumed in the reference order, so a seed gives the same instances.
"""

from __future__ import annotations

import dataclasses
import json
import os
import random
from collections.abc import Iterable, Mapping, Sequence
from typing import Any

import numpy as np

from mobilebert_jax import storage
from mobilebert_jax.tasks import metrics as M
from mobilebert_jax.tasks.base import (
    DataError,
    PathLike,
    Task,
    check_file,
    iter_lines,
    output,
    special_token_id,
    vocab_tokens,
)

# The manifest `prepare-pretraining-data` writes last (tasks/pretraining_data.py): its presence marks a
# prepared folder of ArrayRecord shards.
PREPARED_MANIFEST = "dataset.json"


def is_prepared(path: PathLike | None) -> bool:
    """True for a folder written by `prepare_pretraining_data` (or its dataset.json)."""
    if not path:
        return False
    path = os.fspath(path)
    return storage.isfile(storage.join(path, PREPARED_MANIFEST)) or (
        storage.basename(path) == PREPARED_MANIFEST and storage.isfile(path)
    )


def read_documents(path: PathLike) -> list[list[str]]:
    """Documents (lists of sentences) from a text file; blank lines separate documents."""
    check_file(path)
    docs = documents_from_lines(line for _, line in iter_lines(path))
    if not docs:
        raise DataError("no text in file", path)
    return docs


def documents_from_lines(lines: Iterable[str]) -> list[list[str]]:
    """Documents from lines (no line endings): a blank line ends a document; empty documents are dropped."""
    docs: list[list[str]] = [[]]
    for line in lines:
        line = line.strip()
        if not line:
            docs.append([])
        else:
            docs[-1].append(line)
    return [d for d in docs if d]


@dataclasses.dataclass
class Instance:
    """One pair: ids with [CLS] A [SEP] B [SEP], masked; the masked positions and their original ids."""

    input_ids: list[int]
    token_type_ids: list[int]
    is_random_next: bool
    masked_positions: list[int]
    masked_ids: list[int]


def _truncate_pair(a: list[int], b: list[int], max_num_tokens: int, rng: random.Random) -> None:
    while len(a) + len(b) > max_num_tokens:
        longer = a if len(a) > len(b) else b
        if rng.random() < 0.5:
            del longer[0]
        else:
            longer.pop()


def mask_tokens(
    ids: list[int],
    maskable: Sequence[bool],
    *,
    rng: random.Random,
    masked_lm_prob: float,
    max_predictions_per_seq: int,
    vocab_size: int,
    mask_id: int,
    is_subword: np.ndarray | None = None,
) -> tuple[list[int], list[int], list[int]]:
    """BERT's `create_masked_lm_predictions` on ids.

    Args:
        ids: token ids of the whole sequence (with specials).
        maskable: False at [CLS] / [SEP] positions.
        is_subword: [V] bool, True for "##" pieces; given → whole-word masking.

    Returns:
        (masked ids, masked positions ascending, original ids at those positions).
    """
    cand: list[list[int]] = []
    for i, tok in enumerate(ids):
        if not maskable[i]:
            continue
        if is_subword is not None and cand and is_subword[tok]:
            cand[-1].append(i)
        else:
            cand.append([i])
    rng.shuffle(cand)
    out = list(ids)
    num_to_predict = min(max_predictions_per_seq, max(1, int(round(len(ids) * masked_lm_prob))))
    masked: list[tuple[int, int]] = []
    covered: set[int] = set()
    for index_set in cand:
        if len(masked) >= num_to_predict:
            break
        if len(masked) + len(index_set) > num_to_predict or any(i in covered for i in index_set):
            continue
        for i in index_set:
            covered.add(i)
            if rng.random() < 0.8:
                new = mask_id
            elif rng.random() < 0.5:
                new = ids[i]
            else:
                new = rng.randint(0, vocab_size - 1)
            out[i] = new
            masked.append((i, ids[i]))
    masked.sort()
    return out, [p for p, _ in masked], [t for _, t in masked]


def create_instances(
    documents: list[list[list[int]]],
    *,
    rng: random.Random,
    max_seq_length: int,
    short_seq_prob: float,
    masked_lm_prob: float,
    max_predictions_per_seq: int,
    dupe_factor: int,
    vocab_size: int,
    cls_id: int,
    sep_id: int,
    mask_id: int,
    is_subword: np.ndarray | None = None,
) -> list[Instance]:
    """BERT's `create_training_instances` on tokenized documents (shuffled in place)."""
    if max_seq_length < 5:
        raise ValueError(f"max_seq_length must be >= 5 for a pair with specials, got {max_seq_length}")
    documents = [[s for s in d if s] for d in documents]
    documents = [d for d in documents if d]
    if not documents:
        raise ValueError("no tokens in any document")
    rng.shuffle(documents)
    instances: list[Instance] = []
    for _ in range(dupe_factor):
        for d in range(len(documents)):
            instances.extend(
                _from_document(
                    documents,
                    d,
                    rng,
                    max_seq_length,
                    short_seq_prob,
                    masked_lm_prob,
                    max_predictions_per_seq,
                    vocab_size,
                    cls_id,
                    sep_id,
                    mask_id,
                    is_subword,
                )
            )
    rng.shuffle(instances)
    return instances


def _from_document(
    docs,
    d,
    rng,
    max_seq_length,
    short_seq_prob,
    masked_lm_prob,
    max_pred,
    vocab_size,
    cls_id,
    sep_id,
    mask_id,
    is_subword,
) -> list[Instance]:
    document = docs[d]
    max_num_tokens = max_seq_length - 3
    target = max_num_tokens
    if rng.random() < short_seq_prob:
        target = rng.randint(2, max_num_tokens)
    out: list[Instance] = []
    chunk: list[list[int]] = []
    length = 0
    i = 0
    while i < len(document):
        chunk.append(document[i])
        length += len(document[i])
        if i == len(document) - 1 or length >= target:
            a_end = rng.randint(1, len(chunk) - 1) if len(chunk) >= 2 else 1
            a = [t for seg in chunk[:a_end] for t in seg]
            b: list[int] = []
            if len(chunk) == 1 or rng.random() < 0.5:
                is_random = True
                target_b = target - len(a)
                for _ in range(10):
                    r = rng.randint(0, len(docs) - 1)
                    if r != d:
                        break
                other = docs[r]
                for seg in other[rng.randint(0, len(other) - 1) :]:
                    b.extend(seg)
                    if len(b) >= target_b:
                        break
                i -= len(chunk) - a_end  # put the unused segments back
            else:
                is_random = False
                b = [t for seg in chunk[a_end:] for t in seg]
            _truncate_pair(a, b, max_num_tokens, rng)
            ids = [cls_id, *a, sep_id, *b, sep_id]
            types = [0] * (len(a) + 2) + [1] * (len(b) + 1)
            maskable = [True] * len(ids)
            for p in (0, len(a) + 1, len(ids) - 1):
                maskable[p] = False
            ids, pos, orig = mask_tokens(
                ids,
                maskable,
                rng=rng,
                masked_lm_prob=masked_lm_prob,
                max_predictions_per_seq=max_pred,
                vocab_size=vocab_size,
                mask_id=mask_id,
                is_subword=is_subword,
            )
            out.append(Instance(ids, types, is_random, pos, orig))
            chunk, length = [], 0
        i += 1
    return out


def tokenize_documents(
    documents: Sequence[Sequence[str]], tokenizer: Any, batch_size: int = 1024
) -> list[list[list[int]]]:
    """Token ids (no specials) of every sentence; sentences with no tokens are dropped later."""
    flat = [s for d in documents for s in d]
    ids: list[list[int]] = []
    for k in range(0, len(flat), batch_size):
        enc = tokenizer(
            flat[k : k + batch_size], add_special_tokens=False, padding="longest", truncation=False
        )
        input_ids = np.asarray(enc["input_ids"])
        keep = np.asarray(enc["attention_mask"]) == 1
        ids.extend(row[m].tolist() for row, m in zip(input_ids, keep))
    out, k = [], 0
    for d in documents:
        out.append(ids[k : k + len(d)])
        k += len(d)
    return out


def instances_to_arrays(
    insts: Sequence[Instance], max_len: int, max_predictions: int
) -> dict[str, np.ndarray]:
    """Padded arrays of instances, the model's inputs and labels.

    Returns:
        input_ids, token_type_ids, attention_mask, labels [N, max_len] (original id at masked
        positions, -100 elsewhere); next_sentence_label [N] (1 = random B); masked_lm_positions,
        masked_lm_ids [N, max_predictions] and masked_lm_weights (1.0 where real), as in BERT's TFRecords.
    """
    n, p = len(insts), max_predictions
    out = {
        "input_ids": np.zeros((n, max_len), np.int32),
        "token_type_ids": np.zeros((n, max_len), np.int32),
        "attention_mask": np.zeros((n, max_len), np.int32),
        "labels": np.full((n, max_len), -100, np.int32),
        "next_sentence_label": np.array([x.is_random_next for x in insts], np.int32).reshape(n),
        "masked_lm_positions": np.zeros((n, p), np.int32),
        "masked_lm_ids": np.zeros((n, p), np.int32),
        "masked_lm_weights": np.zeros((n, p), np.float32),
    }
    for k, x in enumerate(insts):
        t, m = len(x.input_ids), len(x.masked_positions)
        out["input_ids"][k, :t] = x.input_ids
        out["token_type_ids"][k, :t] = x.token_type_ids
        out["attention_mask"][k, :t] = 1
        out["labels"][k, x.masked_positions] = x.masked_ids
        out["masked_lm_positions"][k, :m] = x.masked_positions
        out["masked_lm_ids"][k, :m] = x.masked_ids
        out["masked_lm_weights"][k, :m] = 1.0
    return out


@dataclasses.dataclass(frozen=True)
class PretrainingTask(Task):
    """MLM + NSP (`MobileBertForPreTraining`); defaults as BERT's script except `dupe_factor` (10 there)."""

    name: str = "pretraining"
    model_class: str = "MobileBertForPreTraining"
    label_keys: tuple[str, ...] = ("labels", "next_sentence_label")
    output_keys: tuple[str, ...] = ("prediction_logits", "seq_relationship_logits")
    main_metric: str = "mlm_accuracy"
    seed: int = 12345
    dupe_factor: int = 1
    short_seq_prob: float = 0.1
    masked_lm_prob: float = 0.15
    max_predictions_per_seq: int = 20
    whole_word_mask: bool = False
    predictions_suffix = ".json"
    evaluate_by_loss = True

    def config_overrides(self) -> dict[str, Any]:
        return {}

    def is_prepared(self, path: PathLike | None) -> bool:
        """A `prepare-pretraining-data` folder (streamed through Grain) rather than a text file."""
        return is_prepared(path)

    def check_labelled(self, examples: Any, path: PathLike) -> None:
        """Nothing to check: the labels are made from the text."""

    def metric_names(self, examples: Any, features: Mapping[str, np.ndarray]) -> list[str] | None:
        return None  # its evaluation reports the losses and accuracies of `finalize_eval`

    def read(self, path: PathLike) -> list[list[str]]:
        return read_documents(path)

    def instances(
        self, examples: Sequence[Sequence[str]], tokenizer: Any, max_len: int = 128
    ) -> list[Instance]:
        """The shuffled instances of documents, from `random.Random(seed)` (BERT's algorithm, above)."""
        vocab = vocab_tokens(tokenizer)
        subword = np.array([t.startswith("##") for t in vocab]) if self.whole_word_mask else None
        return create_instances(
            tokenize_documents(examples, tokenizer),
            rng=random.Random(self.seed),
            max_seq_length=max_len,
            short_seq_prob=self.short_seq_prob,
            masked_lm_prob=self.masked_lm_prob,
            max_predictions_per_seq=self.max_predictions_per_seq,
            dupe_factor=self.dupe_factor,
            vocab_size=len(vocab),
            cls_id=special_token_id(tokenizer, "cls"),
            sep_id=special_token_id(tokenizer, "sep"),
            mask_id=special_token_id(tokenizer, "mask"),
            is_subword=subword,
        )

    def featurise(
        self, examples: Sequence[Sequence[str]], tokenizer: Any, max_len: int = 128
    ) -> dict[str, np.ndarray]:
        """Instances from documents (deterministic in `seed`) as arrays (`instances_to_arrays`)."""
        return instances_to_arrays(
            self.instances(examples, tokenizer, max_len), max_len, self.max_predictions_per_seq
        )

    def loss_terms(self, outputs: Any, batch: Mapping[str, Any]) -> dict[str, tuple[Any, Any]]:
        """MLM cross-entropy over labels != -100 and NSP cross-entropy; HF's loss is their sum of means."""
        from mobilebert_jax.model import losses

        return losses.pretraining_terms(
            output(outputs, "prediction_logits"),
            output(outputs, "seq_relationship_logits"),
            batch["labels"],
            batch["next_sentence_label"],
        )

    def postprocess(
        self, examples: Any, features: Mapping[str, np.ndarray], outputs: Mapping[str, np.ndarray]
    ) -> dict:
        """Flat predictions that concatenate across batches (call it per batch: MLM logits are big).

        Returns:
            {"mlm_predictions": argmax ids at the masked positions (row-major), "nsp_predictions": [N]}.
        """
        mask = np.asarray(features["labels"]) != -100
        mlm = np.asarray(outputs["prediction_logits"])[mask].argmax(-1)
        nsp = np.asarray(outputs["seq_relationship_logits"]).argmax(-1)
        return {"mlm_predictions": mlm.astype(np.int32), "nsp_predictions": nsp.astype(np.int32)}

    def references(self, examples: Any, features: Mapping[str, np.ndarray] | None = None) -> dict:
        if features is None:
            raise ValueError("pretraining references come from the features (labels, next_sentence_label)")
        labels = np.asarray(features["labels"])
        return {
            "mlm_labels": labels[labels != -100],
            "nsp_labels": np.asarray(features["next_sentence_label"]),
        }

    def metric(
        self, predictions: Mapping[str, np.ndarray], references: Mapping[str, np.ndarray]
    ) -> dict[str, float]:
        return {
            "mlm_accuracy": M.accuracy(predictions["mlm_predictions"], references["mlm_labels"]),
            "nsp_accuracy": M.accuracy(predictions["nsp_predictions"], references["nsp_labels"]),
        }

    def write_predictions(self, path: PathLike, examples: Any, predictions: Mapping[str, np.ndarray]) -> None:
        """JSON with the flat MLM and NSP predictions."""
        with storage.open(path, "w", encoding="utf-8") as f:
            json.dump({k: np.asarray(v).tolist() for k, v in predictions.items()}, f)
