"""Text corpora (a text column and a label column of a CSV, JSONL or Parquet file): the ``text``
modality, chosen whenever ``data.text`` names the text column.

collect validates and profiles the corpus (``corpus.py``) and writes ``data.parquet`` (``text``,
``label``); split fits a WordLevel tokenizer on the train texts (``tokenizer.json``, params section
``text``) and encodes every split with ``encode.encode`` — the function the service calls — into
int64 ids ``[N, max_len]`` (``lengths`` saved beside them), and keeps each split's raw texts
(``<split>.parquet``) for the TF-IDF baseline and error analysis. Deploy exports the network with
both axes (batch, sequence) dynamic and ships the tokenizer beside the graph; parity runs at the full
and at a trimmed width. The request side is ``serve.py``.
"""

from __future__ import annotations

import logging
import shutil
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np

from pipelines.files import DataError, sha256_file
from pipelines.params import DataParams, Params, ParamsError, section_dict
from pipelines.plugins import Exported, Fitted, Loaded, Modality, ParityCase, Task, get_task, register_modality
from pipelines.sources import TextTable, load_source

log = logging.getLogger(__name__)

TOKENIZER = "tokenizer.json"


@register_modality
class Texts(Modality):
    name = "text"
    request_side = "pipelines.modalities.text.serve:TextRequests"

    def claims(self, data: DataParams) -> bool:
        return bool(data.text)

    def collect(self, params: Params, out: Path) -> dict[str, Any]:
        from pipelines.modalities.text.corpus import prepare_texts, text_profile

        table = load_source(params.data)
        if not isinstance(table, TextTable):
            raise ParamsError(f"data.text: {params.data.source!r} is not a text source (text columns are read "
                              "from csv:, jsonl: and parquet: files); leave data.text unset")
        prep = prepare_texts(table, params.data)
        prof = text_profile(prep, params.data, get_task("classification", params))
        prep.frame.to_parquet(out / "data.parquet", engine="pyarrow", index=False)
        log.info("%s: %d classes (imbalance %.3g), script %s, %d rows dropped", table.origin, prof["num_classes"],
                 prof["imbalance_ratio"], prof["script"], prof["dropped_rows"]["total"])
        return prof

    def load(self, collect_dir: Path, profile: dict[str, Any]) -> Loaded:
        import pandas as pd

        from pipelines.modalities.text.corpus import text_keys

        path = collect_dir / "data.parquet"
        try:
            df = pd.read_parquet(path, columns=["text", "label"])
        except (OSError, ValueError, KeyError) as exc:
            raise DataError(f"{path}: cannot read columns text, label: {exc}") from None
        return Loaded(data=df, targets=df["label"].to_numpy(dtype=str), keys=text_keys(df["text"]),
                      where=f"{path}: column label")

    def fit(self, params: Params, loaded: Loaded, parts: dict[str, np.ndarray], profile: dict[str, Any],
            out: Path) -> Fitted:
        from pipelines.modalities.text.corpus import fit_tokenizer, resolve_level
        from pipelines.modalities.text.encode import PAD_ID, UNK_ID, encode

        tp, df = params.text, loaded.data
        level = resolve_level(tp.level, profile["script"])
        texts = df["text"].tolist()
        tokenizer = fit_tokenizer([texts[i] for i in parts["train"]], tp, level)
        ids, lengths, truncated = encode(tokenizer, texts, tp.max_len)
        tokenizer.save(str(out / TOKENIZER))
        for name, rows in parts.items():
            df.iloc[rows].reset_index(drop=True).to_parquet(out / f"{name}.parquet", engine="pyarrow", index=False)
        state = {
            "kind": "text", "tokenizer": TOKENIZER, "level": level, "level_param": tp.level,
            "script": profile["script"], "lowercase": tp.lowercase, "min_frequency": tp.min_frequency,
            "max_vocab": tp.max_vocab, "vocab_size": tokenizer.get_vocab_size(), "max_len": tp.max_len,
            "pad_id": PAD_ID, "unk_id": UNK_ID, "rows": int(len(parts["train"])),
            "truncated": {n: int(truncated[r].sum()) for n, r in parts.items()},
            "unk_rate": {n: round(float((ids[r] == UNK_ID).sum() / max(int(lengths[r].sum()), 1)), 6)
                         for n, r in parts.items()},
        }
        log.info("%s-level vocabulary of %d tokens from train; truncated at %d tokens: %s; unk rate %s", level,
                 state["vocab_size"], tp.max_len, state["truncated"], state["unk_rate"])
        summary = {"text_params": section_dict(tp), "text_column": profile["text_column"],
                   "target": profile["target"], "input_shape": [tp.max_len]}
        return Fitted(state=state, X=ids, summary=summary, extras={"lengths": lengths})

    def data_args(self, state: dict[str, Any]) -> dict[str, Any]:
        return {"vocab_size": state["vocab_size"]}

    def baselines(self, task: Task, split_dir: Path, state: dict[str, Any]) -> dict[str, Callable[[], Any]]:
        """TF-IDF (unigrams + bigrams of the fitted tokenizer's own pre-tokens: words, and single
        characters for CJK text) + the task's logistic regression, on the raw texts."""
        linear = task.baseline_factories([]).get("logreg")
        if linear is None:
            return {}
        from pipelines.modalities.text.encode import load_tokenizer

        tok = load_tokenizer(split_dir / state["tokenizer"])

        def analyze(text: str) -> list[str]:
            norm = tok.normalizer.normalize_str(text) if tok.normalizer else text
            words = [w for w, _ in tok.pre_tokenizer.pre_tokenize_str(norm)]
            return words + [f"{a} {b}" for a, b in zip(words, words[1:])]

        def tfidf_logreg() -> Any:
            from sklearn.feature_extraction.text import TfidfVectorizer
            from sklearn.pipeline import make_pipeline

            return make_pipeline(TfidfVectorizer(analyzer=analyze, sublinear_tf=True), linear())

        return {"tfidf_logreg": tfidf_logreg}

    def baseline_inputs(self, split_dir: Path, state: dict[str, Any]) -> dict[str, Any]:
        return {name: _texts(split_dir, name) for name in ("train", "val", "test")}

    def error_analysis(self, split_dir: Path, worst: list[dict[str, Any]]) -> dict[str, list[tuple]]:
        """The test texts the model got wrong with the most confidence: where to look first."""
        texts = _texts(split_dir, "test")
        return {"confidently_wrong.csv": [("text", "label", "predicted", "confidence"),
                                          *((texts[w["row"]], w["actual"], w["predicted"], w["score"]) for w in worst)]}

    def export(self, head: Any, split_dir: Path, state: dict[str, Any], split: dict[str, Any], out: Path,
               output_name: str) -> Exported:
        """Token ids in (batch and sequence axes dynamic), outputs out; the tokenizer ships beside it."""
        import torch

        from pipelines.data import load_split
        from pipelines.export import INPUT_NAME, export_onnx

        X_test, _ = load_split(split_dir, "test")
        longest = int((X_test != state["pad_id"]).sum(1).max())
        info = export_onnx(head, split["input_shape"], out / "model.onnx", example=torch.from_numpy(X_test[:4]),
                           dynamic_axes={0: "batch", 1: "seq"}, output_name=output_name)
        shutil.copy(split_dir / state["tokenizer"], out / TOKENIZER)
        cases = []
        # the full padded width and a trimmed one: the sequence axis must really be dynamic
        for width in sorted({X_test.shape[1], max(2, longest // 2)}):
            X = np.ascontiguousarray(X_test[:, :width])
            with torch.no_grad():
                reference = head(torch.from_numpy(X)).numpy()
            cases.append(ParityCase({INPUT_NAME: X}, reference, {"seq_len": width}))
        schema = {"kind": "texts", "name": INPUT_NAME, "dtype": "int64", "max_len": state["max_len"],
                  "tokenizer": TOKENIZER, "tokenizer_sha256": sha256_file(out / TOKENIZER)}
        if isinstance(split.get("text_column"), str):  # the corpus column it learned from: batch prediction's default
            schema["column"] = split["text_column"]
        return Exported(input_schema=schema, cases=cases, info=info, example=X_test[:2], files=[TOKENIZER])


def _texts(split_dir: Path, name: str) -> list[str]:
    import pandas as pd

    return pd.read_parquet(Path(split_dir) / f"{name}.parquet", columns=["text"])["text"].tolist()
