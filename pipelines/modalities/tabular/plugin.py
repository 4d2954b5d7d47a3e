"""Tables (CSV, Parquet, JSONL, scikit-learn's bundled tables): the ``tabular`` modality.

collect types every column and infers the task (``infer.py``: rules in its docstring) and writes
``data.parquet`` (kept features in file order, then the target); split fits a scikit-learn
ColumnTransformer on the train rows (``prep.py``: median-imputed standardised numerics, category
indices with unknown/missing buckets), exports it to ``preprocess.onnx`` and checks it against
scikit-learn, and keeps the raw test rows (``test.parquet``) for the served parity checks. Deploy
composes ``preprocess.onnx`` with the network into one graph that takes one input per raw column,
so the service and training share the preprocessing. Baselines see the transformed matrix
(categories one-hot for linear/kernel/neighbour models, native in gradient boosting). The request
side (schema generated from the columns, record -> graph inputs) is ``serve.py``.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np

from pipelines.files import DataError
from pipelines.params import DataParams, Params
from pipelines.plugins import Exported, Fitted, Loaded, Modality, ParityCase, Task, get_task, register_modality
from pipelines.sources import load_source, source_modality

HGB_MAX_CATEGORIES = 255  # HistGradientBoosting's max_bins: its limit on one categorical column's codes

log = logging.getLogger(__name__)

# Deploy's parity check runs the served graph once per row at batch size 1 (~50 us a call): on a huge
# test split it checks a seeded sample of this many test rows (parity.json says how many).
PARITY_MAX_ROWS = 20_000


@register_modality
class Tables(Modality):
    name = "tabular"
    request_side = "pipelines.modalities.tabular.serve:RecordRequests"

    def claims(self, data: DataParams) -> bool:
        return not data.text and source_modality(data.source) == self.name

    def collect(self, params: Params, out: Path) -> dict[str, Any]:
        from pipelines.modalities.tabular.infer import prepare_table, table_profile

        table = load_source(params.data)
        prep = prepare_table(table, params.data)
        prof = table_profile(prep, params.data, get_task(prep.task, params))
        prep.frame.to_parquet(out / "data.parquet", engine="pyarrow", index=False)
        log.info("%s: %d features, dropped %s", table.origin, len(prep.kinds),
                 [d["name"] for d in prep.dropped] or "none")
        return prof

    def load(self, collect_dir: Path, profile: dict[str, Any]) -> Loaded:
        import pandas as pd

        path = collect_dir / "data.parquet"
        try:
            df = pd.read_parquet(path)
        except (OSError, ValueError) as exc:
            raise DataError(f"{path}: cannot read: {exc}") from None
        target = profile["target"]
        features = df.drop(columns=[target])
        keys = pd.util.hash_pandas_object(features, index=False).to_numpy()[:, None]
        return Loaded(data=df, targets=df[target].to_numpy(), keys=keys, where=f"{path}: column {target}")

    def fit(self, params: Params, loaded: Loaded, parts: dict[str, np.ndarray], profile: dict[str, Any],
            out: Path) -> Fitted:
        from pipelines.modalities.tabular import prep

        df, target = loaded.data, profile["target"]
        features = df.drop(columns=[target])
        ct, state = prep.fit(features.iloc[parts["train"]], profile)
        model = prep.to_onnx(ct, state)
        state["onnx_check_max_abs_diff"] = prep.check_onnx(model, ct, features.iloc[parts["val"]], state)
        (out / "preprocess.onnx").write_bytes(model.SerializeToString())
        df.iloc[parts["test"]].to_parquet(out / "test.parquet")  # raw rows: serving parity checks
        summary = {"target": target, "input_shape": [state["n_features"]], "feature_names": state["feature_names"]}
        return Fitted(state=state, X=prep.transform(ct, features, state), summary=summary)

    def data_args(self, state: dict[str, Any]) -> dict[str, Any]:
        return {"cardinalities": state["cardinalities"]}

    def baselines(self, task: Task, split_dir: Path, state: dict[str, Any]) -> dict[str, Callable[[], Any]]:
        n, cards = state["n_features"], state["cardinalities"]
        categorical = list(range(n - len(cards), n))
        # HistGradientBoosting takes at most max_bins (255) categories per column and refuses more; a
        # column with more (a postcode, a product name) goes to it as its index codes, an ordinal feature
        few = [i for i, card in zip(categorical, cards) if card <= HGB_MAX_CATEGORIES]

        def narrowed(factory: Callable[[], Any]) -> Callable[[], Any]:
            def make() -> Any:
                model = factory()
                if isinstance(getattr(model, "categorical_features", None), list):
                    model.set_params(categorical_features=[i for i in model.categorical_features if i in few] or None)
                return model
            return make

        return {name: narrowed(f) for name, f in task.baseline_factories(categorical).items()}

    def export(self, head: Any, split_dir: Path, state: dict[str, Any], split: dict[str, Any], out: Path,
               output_name: str) -> Exported:
        import onnx
        import pandas as pd
        import torch

        from pipelines.data import load_split
        from pipelines.export import compose_with_preprocessing, export_onnx
        from pipelines.modalities.tabular.prep import onnx_feeds

        info = export_onnx(head, split["input_shape"], out / "net.onnx", output_name=output_name)
        composed = compose_with_preprocessing(onnx.load(str(split_dir / "preprocess.onnx")), out / "net.onnx",
                                              out / "model.onnx")
        (out / "net.onnx").unlink()
        X_test, _ = load_split(split_dir, "test")
        raw = pd.read_parquet(split_dir / "test.parquet")
        if len(raw) > PARITY_MAX_ROWS:
            log.info("parity on a seeded sample of %d of the %d test rows", PARITY_MAX_ROWS, len(raw))
            rows = np.sort(np.random.default_rng(0).choice(len(raw), PARITY_MAX_ROWS, replace=False))
            X_test, raw = X_test[rows], raw.iloc[rows]
        with torch.no_grad():
            reference = head(torch.from_numpy(X_test)).numpy()
        columns = [{"name": c, "type": "numeric"} for c in state["numeric"]]
        columns += [{"name": c["name"], "type": "categorical", "categories": c["categories"]}
                    for c in state["categorical"]]
        return Exported(input_schema={"kind": "records", "columns": columns},
                        cases=[ParityCase(onnx_feeds(raw, state), reference)], info={**info, **composed},
                        example=raw.drop(columns=[split["target"]]).iloc[:2])
