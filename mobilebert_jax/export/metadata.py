"""TFLite Metadata for the device clients (`metadata_buffer`, `associated_files`): MediaPipe Tasks'
`TextClassifier` and the TFLite Task Library's `BertNLClassifier` / `BertQuestionAnswerer` tokenize on
the device with the vocab the `.tflite` carries and find its tensors by metadata name.

What they read (the layout TFLite and MediaPipe Model Maker write):
- `Model.metadata["TFLITE_METADATA"]` → a buffer holding a `ModelMetadata` flatbuffer (file identifier
  `M001`, schema `metadata_schema.fbs`): name, description, version, license, `min_parser_version`, and
  one `SubGraphMetadata` with a `TensorMetadata` per subgraph input and output, in the subgraph's order;
- the inputs named `ids`, `mask`, `segment_ids`; a `BertTokenizerOptions` input process unit whose
  `vocab_file` is an associated file of type `VOCABULARY`;
- classifier outputs with the label names as a `TENSOR_AXIS_LABELS` file (one label a line, by id);
  QA outputs named `start_logits` / `end_logits`;
- the associated files themselves as an uncompressed zip appended to the flatbuffer (`flatbuffer.compact`
  writes it, as the metadata populators do).

The metadata is written here with `flatbuffers.Builder` and the schema's field slots (no metadata
package installs beside our pins: tflite-support pins old numpy/protobuf, MediaPipe's writers do not
import); tests read it back with the schema's generated classes and load it in the real clients.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

METADATA_NAME = "TFLITE_METADATA"
FILE_IDENTIFIER = b"M001"
# BertTokenizerOptions was added in metadata schema 1.1.0; nothing newer is used here.
MIN_PARSER_VERSION = "1.1.0"
VOCAB_FILE = "vocab.txt"
LABELS_FILE = "labels.txt"
# our signature input names -> the metadata names the clients look the tensors up by
INPUT_METADATA_NAMES = {"input_ids": "ids", "attention_mask": "mask", "token_type_ids": "segment_ids"}
_INPUT_DESCRIPTIONS = {
    "ids": "Tokenized ids of the input text.",
    "mask": "Mask with 1 for real tokens and 0 for padding tokens.",
    "segment_ids": "0 for the first sequence, 1 for the second sequence if exists.",
}
_OUTPUT_DESCRIPTIONS = {
    "probability": "Class probabilities [1, num_labels].",
    "logits": "Unnormalized scores.",
    "start_logits": "Answer start scores [1, length].",
    "end_logits": "Answer end scores [1, length].",
}
# schema enums (metadata_schema.fbs)
_VOCABULARY, _TENSOR_AXIS_LABELS = 5, 2  # AssociatedFileType
_BERT_TOKENIZER = 4  # ProcessUnitOptions
_FEATURE_PROPERTIES = 1  # ContentProperties


def _table(
    b: Any, slots: int, offsets: Mapping[int, int | None], bytes_: Mapping[int, int] | None = None
) -> int:
    """A table with uoffset fields `{slot: offset}` and one-byte enum fields `{slot: value}`."""
    b.StartObject(slots)
    for slot, off in offsets.items():
        if off is not None:
            b.PrependUOffsetTRelativeSlot(slot, off, 0)
    for slot, value in (bytes_ or {}).items():
        b.PrependUint8Slot(slot, value, 0)
    return b.EndObject()


def _vector(b: Any, offsets: Sequence[int]) -> int:
    b.StartVector(4, len(offsets), 4)
    for off in reversed(offsets):
        b.PrependUOffsetTRelative(off)
    return b.EndVector()


def _floats(b: Any, values: Sequence[float]) -> int:
    import numpy as np

    return b.CreateNumpyVector(np.asarray(values, np.float32))


def _associated_file(b: Any, name: str, description: str, kind: int) -> int:
    n, d = b.CreateString(name), b.CreateString(description)
    return _table(b, 5, {0: n, 1: d}, {2: kind})


def _tensor(b: Any, name: str, *, labels: bool = False, unit_range: bool = False) -> int:
    """TensorMetadata: name, description, FeatureProperties content, optional [0, 1] stats and labels."""
    files = None
    if labels:
        files = _vector(b, [_associated_file(b, LABELS_FILE, "Labels by class id.", _TENSOR_AXIS_LABELS)])
    stats = _table(b, 2, {0: _floats(b, [1.0]), 1: _floats(b, [0.0])}) if unit_range else None
    content = _table(b, 3, {1: _table(b, 0, {})}, {0: _FEATURE_PROPERTIES})
    n = b.CreateString(name)
    d = b.CreateString(_INPUT_DESCRIPTIONS.get(name) or _OUTPUT_DESCRIPTIONS.get(name, name))
    return _table(b, 7, {0: n, 1: d, 3: content, 5: stats, 6: files})


def metadata_buffer(
    *,
    input_names: Sequence[str],
    output_names: Sequence[str],
    name: str,
    description: str,
    version: str,
    license: str,
    author: str = "mobilebert-jax",
    labelled_outputs: Sequence[str] = (),
    probability_outputs: Sequence[str] = (),
) -> bytes:
    """The `ModelMetadata` flatbuffer (with its `M001` identifier) for one subgraph.

    Args:
        input_names: the subgraph's inputs in its order, by our names (`input_ids`, ...).
        output_names: the subgraph's outputs in its order, as the metadata names them.
        labelled_outputs: outputs whose last axis is the class axis (they get `labels.txt`).
        probability_outputs: outputs holding probabilities (stats min 0, max 1).
    """
    import flatbuffers

    unknown = [n for n in input_names if n not in INPUT_METADATA_NAMES]
    if unknown:
        raise ValueError(f"inputs {unknown} have no metadata name; expected {sorted(INPUT_METADATA_NAMES)}")
    b = flatbuffers.Builder(1024)
    inputs = [_tensor(b, INPUT_METADATA_NAMES[n]) for n in input_names]
    outputs = [
        _tensor(b, n, labels=n in labelled_outputs, unit_range=n in probability_outputs) for n in output_names
    ]
    vocab = _associated_file(b, VOCAB_FILE, "WordPiece vocabulary, one token a line, by id.", _VOCABULARY)
    tokenizer = _table(b, 1, {0: _vector(b, [vocab])})
    unit = _table(b, 2, {1: tokenizer}, {0: _BERT_TOKENIZER})
    subgraph = _table(
        b,
        10,
        {
            0: b.CreateString(name),
            2: _vector(b, inputs),
            3: _vector(b, outputs),
            5: _vector(b, [unit]),
        },
    )
    fields = [b.CreateString(s) for s in (name, description, version, author, license, MIN_PARSER_VERSION)]
    root = _table(
        b,
        8,
        {
            0: fields[0],
            1: fields[1],
            2: fields[2],
            3: _vector(b, [subgraph]),
            4: fields[3],
            5: fields[4],
            7: fields[5],
        },
    )
    b.Finish(root, file_identifier=FILE_IDENTIFIER)
    return bytes(b.Output())


def associated_files(vocab: Sequence[str], id2label: Mapping[int, str] | None) -> dict[str, bytes]:
    """`{file name: content}` packed into the model: the vocab (one token a line, by id) and, for
    classifiers, the labels (one a line, by class id)."""
    files = {VOCAB_FILE: "".join(t + "\n" for t in vocab).encode("utf-8")}
    if id2label:
        files[LABELS_FILE] = "".join(id2label[i] + "\n" for i in range(len(id2label))).encode("utf-8")
    return files
