"""question-answering: extractive QA over contexts of any length, decoded by the SQuAD task's own code.

Windows come from `tasks.squad.prepare_features` (doc stride, question cut to `max_question_len`
tokens) and answers from `tasks.squad.postprocess_qa` (n-best over every window of a context,
`max_answer_len`, the SQuAD v2 null answer), the functions the fine-tuning and evaluation jobs use,
so the pipeline answers what `mobilebert-jax evaluate` predicts. Output as HF's (4.x) pipeline:
`{"score", "start", "end", "answer"}`, `score` being the candidate's probability among the n-best.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import numpy as np

from mobilebert_jax.pipelines.base import Pipeline
from mobilebert_jax.tasks.squad import SquadExample, postprocess_qa, prepare_features


class QuestionAnsweringPipeline(Pipeline):
    """`pipe(question="Who?", context="...")` or `pipe({"question": ..., "context": ...})` or a list.

    Parameters (per call or as pipeline defaults): `top_k` (answers per question, default 1: a dict,
    else a list), `max_answer_len` (tokens, default 15 as HF; the SQuAD task uses 30), `max_seq_len`
    (384, at most the model's length), `doc_stride` (128), `max_question_len` (64), `n_best_size` (20),
    `handle_impossible_answer` (SQuAD v2: "" wins when its score beats the best span by more than
    `null_score_diff_threshold`, default 0).
    """

    task = "question-answering"
    call_parameters = (
        "top_k",
        "max_answer_len",
        "max_seq_len",
        "doc_stride",
        "max_question_len",
        "n_best_size",
        "handle_impossible_answer",
        "null_score_diff_threshold",
    )
    per_token = ("start_logits", "end_logits")

    def __call__(
        self, inputs: Any = None, *, question: Any = None, context: Any = None, **params: Any
    ) -> Any:
        if inputs is None:
            if question is None or context is None:
                raise TypeError(
                    "question-answering: pass question= and context=, or {'question', 'context'} inputs"
                )
            if isinstance(question, str) and isinstance(context, str):
                inputs = {"question": question, "context": context}
            elif isinstance(question, (list, tuple)) and isinstance(context, (list, tuple)):
                if len(question) != len(context):
                    raise ValueError(f"{len(question)} questions but {len(context)} contexts")
                inputs = [{"question": q, "context": c} for q, c in zip(question, context)]
            elif isinstance(question, (list, tuple)) and isinstance(context, str):
                inputs = [{"question": q, "context": context} for q in question]
            else:
                raise TypeError("question and context must both be str or lists of the same length")
        elif question is not None or context is not None:
            raise TypeError("pass either inputs or question=/context=, not both")
        return super().__call__(inputs, **params)

    caps_at_saved_length = False  # the window length is `max_seq_len`, from the same config.json

    @classmethod
    def config_defaults(cls, config: Any) -> dict[str, Any]:
        """A SQuAD fine-tune's settings from its config.json (`max_seq_length`, `task_options`), so the
        pipeline answers what `evaluate` answers on that model: the task's own defaults where unsaved."""
        from mobilebert_jax.tasks import get_task

        extra = getattr(config, "extra", None) or {}
        name = extra.get("finetuning_task")
        if name not in ("squad", "squad_v2"):
            return {}
        t = get_task(name, **(extra.get("task_options") or {}))
        out = dict(
            doc_stride=t.doc_stride,
            max_question_len=t.max_query_length,
            n_best_size=t.n_best_size,
            max_answer_len=t.max_answer_length,
            null_score_diff_threshold=t.null_score_diff_threshold,
            handle_impossible_answer=t.version_2_with_negative,
        )
        if config.saved_max_seq_length is not None:
            out["max_seq_len"] = config.saved_max_seq_length
        return out

    def _is_single(self, inputs: Any) -> bool:
        return isinstance(inputs, Mapping)

    def _validate(self, item: Any, index: int) -> SquadExample:
        if not isinstance(item, Mapping) or "question" not in item or "context" not in item:
            raise TypeError(f"question-answering: input {index} must be {{'question': ..., 'context': ...}}")
        q, c = item["question"], item["context"]
        if not isinstance(q, str) or not isinstance(c, str):
            raise TypeError(f"question-answering: input {index}: question and context must be str")
        if not q.strip() or not c.strip():
            raise ValueError(
                f"question-answering: input {index} has an empty {'question' if not q.strip() else 'context'}"
            )
        return SquadExample(str(item.get("id", index)), "", c, q, labelled=False)

    def _settings(self, params: dict[str, Any]) -> tuple[int, int, int]:
        seq = min(int(params.get("max_seq_len", 384)), self.max_length)
        # HF's 128 and 64 for 384 tokens, scaled down for models with fewer positions.
        stride = int(params.get("doc_stride", min(128, seq // 3)))
        return seq, stride, int(params.get("max_question_len", min(64, seq // 6)))

    def _features(self, items, params):
        seq, stride, max_q = self._settings(params)
        enc = prepare_features(items, self.tokenizer, seq, stride, max_q)
        lengths = enc["attention_mask"].sum(axis=1)
        out: list[list] = [[] for _ in items]
        for f, (i, n) in enumerate(zip(enc["example_index"], lengths)):
            out[int(i)].append(
                {
                    "input_ids": enc["input_ids"][f, :n],
                    "attention_mask": enc["attention_mask"][f, :n],
                    "token_type_ids": enc["token_type_ids"][f, :n],
                    "offset_mapping": enc["offset_mapping"][f],  # [max_seq_len, 2], -1 outside the context
                }
            )
        return out

    def _answer(self, item, features, outputs, params):
        t = features[0]["offset_mapping"].shape[0]
        start = np.full((len(features), t), -np.inf, np.float32)
        end = start.copy()
        for w, o in enumerate(outputs):
            n = len(o["start_logits"])
            start[w, :n], end[w, :n] = o["start_logits"], o["end_logits"]
        feats = {
            "offset_mapping": np.stack([f["offset_mapping"] for f in features]),
            "example_index": np.zeros(len(features), np.int32),
        }
        v2 = bool(params.get("handle_impossible_answer", False))
        res = postprocess_qa(
            [item],
            feats,
            start,
            end,
            version_2_with_negative=v2,
            n_best_size=int(params.get("n_best_size", 20)),
            max_answer_length=int(params.get("max_answer_len", 15)),
            null_score_diff_threshold=float(params.get("null_score_diff_threshold", 0.0)),
        )
        nbest = res["nbest"][item.id]
        predicted = res["predictions"][item.id]
        answers = [
            {"score": c["probability"], "start": c["start"], "end": c["end"], "answer": c["text"]}
            for c in nbest
            if c["text"] != "" or v2
        ]
        if v2 and predicted == "":  # the null answer first, as the decision says
            answers.sort(key=lambda a: a["answer"] != "")
        elif v2:
            answers = [a for a in answers if a["answer"] != ""] + [a for a in answers if a["answer"] == ""]
        top_k = int(params.get("top_k", 1))
        return answers[0] if top_k == 1 else answers[:top_k]
