"""Hub dataset loaders, offline, on small Parquet fixtures written in each published schema and layout."""

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from calibration_lightning.data import hub
from calibration_lightning.errors import DataError


def _write(root, relpath, rows):
    path = root / relpath
    path.parent.mkdir(parents=True, exist_ok=True)
    pq.write_table(pa.Table.from_pylist(rows), path)


def test_mmlu_schema(tmp_path):
    rows = [
        {"question": "2+2?", "subject": "math", "choices": ["3", "4", "5", "6"], "answer": 1},
        {"question": "Capital of France?", "subject": "geo", "choices": ["Rome", "Paris", "Oslo", "Bern"], "answer": 1},
    ]
    _write(tmp_path, "all/test-00000-of-00001.parquet", rows)
    _write(tmp_path, "all/validation-00000-of-00001.parquet", rows[:1])
    records = hub.mmlu("test", data_dir=str(tmp_path))
    assert [(r.question, r.answer, r.subject) for r in records] == [
        ("2+2?", 1, "math"),
        ("Capital of France?", 1, "geo"),
    ]
    assert len(hub.mmlu("validation", data_dir=str(tmp_path))) == 1
    assert [r.subject for r in hub.mmlu("test", subjects=["geo"], data_dir=str(tmp_path))] == ["geo"]


def test_medmcqa_schema(tmp_path):
    row = {
        "id": "m1",
        "question": "Which vitamin?",
        "opa": "A1",
        "opb": "B12",
        "opc": "C",
        "opd": "D3",
        "cop": 2,
        "choice_type": "single",
        "exp": "",
        "subject_name": "Biochemistry",
        "topic_name": "Vitamins",
    }
    _write(tmp_path, "data/validation-00000-of-00001.parquet", [row])
    (record,) = hub.medmcqa("validation", data_dir=str(tmp_path))
    assert record.choices == ("A1", "B12", "C", "D3") and record.answer == 2 and record.id == "m1"
    with pytest.raises(DataError, match="no answers"):
        hub.medmcqa("test", data_dir=str(tmp_path))


def test_openbookqa_schema(tmp_path):
    row = {
        "id": "7-980",
        "question_stem": "The sun is responsible for",
        "answerKey": "D",
        "choices": {"text": ["puppies", "rain", "bones", "plants sprouting"], "label": ["A", "B", "C", "D"]},
    }
    _write(tmp_path, "main/test-00000-of-00001.parquet", [row])
    (record,) = hub.openbookqa("test", data_dir=str(tmp_path))
    assert record.question == "The sun is responsible for" and record.answer == 3


def test_arc_challenge_numeric_labels_and_other_sizes(tmp_path):
    rows = [
        {
            "id": "a",
            "question": "Q4",
            "answerKey": "B",
            "choices": {"text": ["w", "x", "y", "z"], "label": list("ABCD")},
        },
        {
            "id": "b",
            "question": "Q-num",
            "answerKey": "3",
            "choices": {"text": ["w", "x", "y", "z"], "label": list("1234")},
        },
        {"id": "c", "question": "Q3", "answerKey": "C", "choices": {"text": ["w", "x", "y"], "label": list("ABC")}},
        {"id": "d", "question": "Q5", "answerKey": "E", "choices": {"text": list("vwxyz"), "label": list("ABCDE")}},
    ]
    _write(tmp_path, "ARC-Challenge/test-00000-of-00001.parquet", rows)
    records = hub.arc_challenge("test", data_dir=str(tmp_path))
    assert [(len(r.choices), r.answer) for r in records] == [(4, 1), (4, 2), (3, 2), (5, 4)]


def test_arc_bad_answer_key_names_the_row(tmp_path):
    rows = [{"id": "a", "question": "Q", "answerKey": "F", "choices": {"text": ["w", "x"], "label": ["A", "B"]}}]
    _write(tmp_path, "ARC-Challenge/test-00000-of-00001.parquet", rows)
    with pytest.raises(DataError, match=r"test-00000-of-00001.parquet: row 0: field 'answer' is missing"):
        hub.arc_challenge("test", data_dir=str(tmp_path))


def test_paper_mix_schema_and_mixture(tmp_path):
    rows = [{"question": f"q{i}", "choices": ["a", "b", "c", "d"], "answer": i % 4} for i in range(6)]
    _write(tmp_path, "data/test_1-00000-of-00001.parquet", rows)
    _write(tmp_path, "data/calibration_train-00000-of-00001.parquet", rows[:4])
    assert len(hub.paper_mix("test_1", data_dir=str(tmp_path))) == 6
    train = hub.paper_mix("calibration_train", data_dir=str(tmp_path), limit=3)
    assert [r.answer for r in train] == [0, 1, 2]
    with pytest.raises(DataError, match="appears in two sources"):
        hub.mixture([train, train])


def test_missing_split_and_folder(tmp_path):
    with pytest.raises(DataError, match="no Parquet file matches"):
        hub.openbookqa("validation", data_dir=str(tmp_path))
    with pytest.raises(DataError, match="no such folder"):
        hub.openbookqa("test", data_dir=str(tmp_path / "nope"))


@pytest.mark.slow
def test_hub_dataset_config_runs_offline_with_eval_set(make_cfg, tmp_path):
    """dataset=paper_mix with data_dir, ARC-Challenge as an extra evaluation set, on the tiny model."""
    from calibration_lightning.recipe import run

    data = tmp_path / "mix"
    rows = [
        {"question": f"Question number {i}?", "choices": ["alpha", "beta", "gamma", "delta"], "answer": i % 4}
        for i in range(40)
    ]
    _write(data, "data/calibration_train-00000-of-00001.parquet", rows[:30])
    _write(data, "data/test_1-00000-of-00001.parquet", rows[30:])
    arc = tmp_path / "arc"
    _write(
        arc,
        "ARC-Challenge/test-00000-of-00001.parquet",
        [
            {
                "id": f"arc{i}",
                "question": f"Arc {i}?",
                "answerKey": "B",
                "choices": {"text": ["p", "q", "r"], "label": ["A", "B", "C"]},
            }
            for i in range(8)
        ],
    )
    cfg = make_cfg(
        "model=tiny",
        "dataset=paper_mix",
        f"dataset.source.data_dir={data}",
        "dataset.split.train=20",
        "dataset.split.val=10",
        "+eval_sets.arc_challenge._target_=calibration_lightning.data.hub.arc_challenge",
        f"+eval_sets.arc_challenge.data_dir={arc}",
    )
    result = run(cfg)
    assert result["before"]["n"] == 10
    import json

    metrics = json.loads((tmp_path / "run" / "metrics.json").read_text())
    assert metrics["eval_sets"]["arc_challenge"]["after"]["n"] == 8
    assert (tmp_path / "run" / "predictions_arc_challenge_after.jsonl").exists()
