"""Reliability figures: panels, hand-computed bars, low-count marking, titles equal to the metrics; the report's
before-and-after figure; the public ``reliability_diagram`` and ``CalibrationMetric``."""

import json
import math
import re

import pytest
import torch

from calibration_lightning import CalibrationMetric, conf_ece, evaluation, reliability_diagram
from calibration_lightning.calibration.metrics import all_metrics
from calibration_lightning.data.records import MCRecord
from calibration_lightning.outputs import diagrams
from calibration_lightning.outputs.run_outputs import write_phase
from calibration_lightning.report import RunResult, write_figures

Z = 1.959964

# 5 bins of width 0.2. Confidence: 12 rows at 0.9 (9 right), 4 at 0.7 (1 right), 2 at 0.55 (both right).
PROBS = torch.tensor([[0.9, 0.1]] * 12 + [[0.3, 0.7]] * 4 + [[0.55, 0.45]] * 2)
LABELS = torch.tensor([0] * 9 + [1] * 3 + [1] + [0] * 3 + [0, 0])


def _bars(ax, label):
    """(centre, bottom, height, hatch) of each bar of the container labelled ``label``, left to right."""
    (container,) = [c for c in ax.containers if c.get_label() == label]
    return [
        (round(p.get_x() + p.get_width() / 2, 6), p.get_y(), p.get_height(), p.get_hatch()) for p in container.patches
    ]


def _figure(columns):
    return diagrams.reliability_figure(columns)


def _panels(fig, column=0):
    axes = fig.subfigs[column].axes
    assert len(axes) == 4  # confidence, its histogram, classwise, its histogram
    return axes


def test_confidence_panel_bars_whiskers_and_low_count_marking():
    conf, hist, cw, cw_hist = _panels(
        _figure([diagrams.Column("test", PROBS, LABELS, 5, all_metrics(PROBS, LABELS, 5))])
    )
    assert (conf.get_ylabel(), hist.get_xlabel(), hist.get_ylabel()) == ("accuracy", "confidence", "count")
    assert hist.get_shared_x_axes().joined(conf, hist)
    # bin 4 (0.8-1.0): 9/12 right, a plain bar; bins 2 and 3 have 2 and 4 samples: pale, dotted
    assert _bars(conf, "observed") == [(0.9, 0.0, pytest.approx(0.75), None)]
    assert _bars(conf, f"observed, n < {diagrams.FEW}") == [
        (0.5, 0.0, pytest.approx(1.0), "..."),
        (0.7, 0.0, pytest.approx(0.25), "..."),
    ]
    for ax in (conf, hist):  # and their whole column is greyed, visible even when the bar has height 0
        spans = [p for p in ax.patches if p.get_gid() == "few"]
        assert [(round(p.get_x(), 6), round(p.get_x() + p.get_width(), 6)) for p in spans] == [(0.4, 0.6), (0.6, 0.8)]
    # the gap runs from the observed accuracy to the bin's mean confidence
    gaps = _bars(conf, "gap to mean prediction")
    assert [(c, pytest.approx(b), pytest.approx(h)) for c, b, h, _ in gaps] == [
        (0.5, 1.0, 0.55 - 1.0),
        (0.7, 0.25, 0.7 - 0.25),
        (0.9, 0.75, 0.9 - 0.75),
    ]
    # the gap box is wider than the bar and drawn under it, so the bar always shows
    (gap_box, bar) = (conf.containers[0].patches[0], conf.containers[1].patches[0])
    assert gap_box.get_width() > bar.get_width() and gap_box.get_zorder() < bar.get_zorder()
    # Wilson 95% whiskers: 2/2 right -> [n / (n + z^2), 1]; 9/12 right by the closed form
    (whiskers,) = [c for c in conf.containers if c.get_label() == "95% interval"]
    segments = whiskers.lines[2][0].get_segments()
    lows, highs = [s[0][1] for s in segments], [s[1][1] for s in segments]
    assert lows[0] == pytest.approx(2 / (2 + Z**2)) and highs[0] == pytest.approx(1.0)
    p, n = 0.75, 12
    centre, half = (
        (p + Z**2 / (2 * n)) / (1 + Z**2 / n),
        Z / (1 + Z**2 / n) * math.sqrt(p * (1 - p) / n + Z**2 / 4 / n**2),
    )
    assert (lows[2], highs[2]) == (pytest.approx(centre - half), pytest.approx(centre + half))
    # the histogram counts each bin; low-count bins are dotted there too
    assert [h for _, _, h, _ in _bars(hist, "count")] == [12]
    assert [(c, h, hatch) for c, _, h, hatch in _bars(hist, f"count < {diagrams.FEW}")] == [
        (0.5, 2, "..."),
        (0.7, 4, "..."),
    ]


def test_classwise_panel_is_class_frequency_of_all_classes_pooled():
    _, _, cw, cw_hist = _panels(_figure([diagrams.Column("test", PROBS, LABELS, 5, all_metrics(PROBS, LABELS, 5))]))
    assert (cw.get_ylabel(), cw_hist.get_xlabel()) == ("class frequency", "predicted probability")
    # p_j = 0.1 (12x, gold 3x), 0.3 (4x, gold 3x), 0.45/0.55 (2x each, gold twice), 0.7 (4x, gold 1x), 0.9 (12x, 9x)
    assert [(c, pytest.approx(h)) for c, _, h, _ in _bars(cw, "observed")] == [(0.1, 0.25), (0.9, 0.75)]
    sparse = _bars(cw, f"observed, n < {diagrams.FEW}")
    assert [(c, pytest.approx(h)) for c, _, h, _ in sparse] == [(0.3, 0.75), (0.5, 0.5), (0.7, 0.25)]
    assert [h for _, _, h, _ in _bars(cw_hist, "count")] == [12, 12]


def _number(pattern, text):
    match = re.search(pattern, text)
    assert match, f"{pattern!r} not in {text!r}"
    return float(match.group(1))


def _check_titles(fig, column, probs, labels, n_bins, heading):
    conf, _, cw, _ = _panels(fig, column)
    assert fig.subfigs[column]._suptitle.get_text() == heading
    expected = all_metrics(probs, labels, n_bins)
    assert _number(r"conf-ECE (\d\.\d{4})", conf.get_title()) == pytest.approx(expected["conf_ece"], abs=5e-5)
    assert _number(r"accuracy (\d\.\d{3})", conf.get_title()) == pytest.approx(expected["accuracy"], abs=5e-4)
    assert _number(r"cw-ECE (\d\.\d{4})", cw.get_title()) == pytest.approx(expected["cw_ece"], abs=5e-5)


def _scored(probs, labels):
    return evaluation.with_metrics(
        {
            "letter_logits": probs.log(),
            "labels": labels,
            "n_choices": torch.full((len(labels),), probs.shape[1]),
            "index": torch.arange(len(labels)),
        },
        5,
    )


def _png_width(path):
    return int.from_bytes(path.read_bytes()[16:20], "big")


def test_write_phase_one_figure_per_set_before_then_both_columns(tmp_path, monkeypatch):
    drawn = []
    real_save = diagrams.save_figure
    monkeypatch.setattr(
        diagrams, "save_figure", lambda fig, path: drawn.append((path.name, fig)) or real_save(fig, path)
    )
    records = [MCRecord(f"q{i}", "?", ("a", "b"), int(y)) for i, y in enumerate(LABELS)]
    after_probs = torch.tensor([[0.8, 0.2]] * 12 + [[0.4, 0.6]] * 4 + [[0.6, 0.4]] * 2)
    before = {"val": _scored(PROBS, LABELS), "test": _scored(PROBS, LABELS), "arc": _scored(PROBS[:6], LABELS[:6])}
    after = {name: _scored(after_probs[: len(s["labels"])], s["labels"]) for name, s in before.items()}
    records = {"val": records, "test": records, "arc": records[:6]}

    write_phase(tmp_path, "before", before, records, 5)
    assert sorted(p.name for p in tmp_path.glob("reliability_*.png")) == ["reliability_arc.png", "reliability_test.png"]
    one_column = _png_width(tmp_path / "reliability_test.png")
    assert [len(fig.subfigs) for _, fig in drawn] == [1, 1]  # test and arc; nothing for val

    drawn.clear()
    write_phase(tmp_path, "after", after, records, 5, before=before)
    assert sorted(p.name for p in tmp_path.glob("reliability_*.png")) == ["reliability_arc.png", "reliability_test.png"]
    assert _png_width(tmp_path / "reliability_test.png") > 1.8 * one_column
    (name, fig), _ = drawn
    assert name == "reliability_test.png" and len(fig.subfigs) == 2
    probs_before, probs_after = PROBS.log().softmax(1), after_probs.log().softmax(1)
    _check_titles(fig, 0, probs_before, LABELS, 5, "test, before training (N = 18)")
    _check_titles(fig, 1, probs_after, LABELS, 5, "test, after training (N = 18)")
    # the titles show the numbers evaluation measured (what metrics.json holds), not a computation of their own
    after["test"]["metrics"]["conf_ece"] = 0.4321
    write_phase(tmp_path, "after", after, records, 5, before=before)
    fig = next(fig for name, fig in drawn[2:] if name == "reliability_test.png")
    assert "conf-ECE 0.4321," in fig.subfigs[1].axes[0].get_title()


def _prediction_file(path, probs, labels):
    rows = [{"gold": "ABC"[int(y)], "probabilities": dict(zip("ABC", p.tolist()))} for p, y in zip(probs, labels)]
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))


def _report_run(tmp_path, method, after_probs, reported_after):
    """A run folder as the report reads it: the aligned model's predictions (PROBS) and the method's."""
    folder = tmp_path / method
    folder.mkdir()
    _prediction_file(folder / "predictions_before.jsonl", PROBS, LABELS)
    _prediction_file(folder / "predictions_after.jsonl", after_probs, LABELS)
    sets = {"test": {"before": all_metrics(PROBS.double(), LABELS, 5), "after": reported_after}}
    return RunResult(folder, "smollm2_135m", method, "mmlu", sets, posthoc=method == "ts", n_bins=5)


def test_report_figure_shows_the_aligned_model_once_then_each_method_after(tmp_path, monkeypatch):
    three = torch.tensor([[0.6, 0.3, 0.1]] * 18)
    fake = {"conf_ece": 0.4321, "accuracy": 0.125, "cw_ece": 0.2}  # what metrics.json says, not recomputed
    runs = [
        _report_run(tmp_path, "none", PROBS, all_metrics(PROBS.double(), LABELS, 5)),
        _report_run(tmp_path, "ts", three, fake),
        _report_run(tmp_path, "cft", PROBS.flip(1), all_metrics(PROBS.flip(1).double(), LABELS, 5)),
    ]
    drawn = []
    monkeypatch.setattr(diagrams, "save_figure", lambda fig, path: drawn.append(fig) or path)  # rendering: below
    written = write_figures(runs, tmp_path / "out")
    assert [p.name for p in written] == ["reliability.pdf", "reliability.svg", "reliability.png"]
    fig = drawn[0]
    assert drawn == [fig] * 3
    headings = [sub._suptitle.get_text() for sub in fig.subfigs if sub._suptitle]
    # the aligned model once (method=none's "after" is the same model), then each method after it
    assert headings == [
        "SmolLM2-135M-Instruct\naligned model (before) (N = 18)",
        "SmolLM2-135M-Instruct\nafter temperature scaling (post-hoc) (N = 18)",
        "SmolLM2-135M-Instruct\nafter CFT (N = 18)",
    ]
    assert all(len(sub.axes) == 2 for sub in fig.subfigs)  # confidence panel and its histogram
    before = all_metrics(PROBS.double(), LABELS, 5)
    assert fig.subfigs[0].axes[0].get_title() == f"confidence: conf-ECE {before['conf_ece']:.4f}, accuracy 0.667"
    assert fig.subfigs[1].axes[0].get_title() == "confidence: conf-ECE 0.4321, accuracy 0.125"
    assert _bars(fig.subfigs[0].axes[0], "observed") == [(0.9, 0.0, pytest.approx(0.75), None)]


def test_reliability_diagram_from_numpy_torch_or_binary_arrays(tmp_path):
    import numpy as np

    fig = reliability_diagram(PROBS.numpy()[::-1].copy()[::-1], LABELS.numpy(), n_bins=5, title="mine")
    assert fig.subfigs[0]._suptitle.get_text() == "mine" and len(fig.subfigs[0].axes) == 4
    _check_titles(fig, 0, PROBS.double(), LABELS, 5, "mine")  # the metrics computed from the arrays
    assert _bars(fig.subfigs[0].axes[0], "observed") == [(0.9, 0.0, pytest.approx(0.75), None)]
    # [N] probabilities of class 1 of a binary problem: the same figure as their [N, 2]
    binary = reliability_diagram(PROBS[:, 1].numpy()[::-1], np.ascontiguousarray(LABELS.numpy()[::-1]), n_bins=5)
    assert _bars(binary.subfigs[0].axes[0], "observed") == _bars(fig.subfigs[0].axes[0], "observed")
    titled = reliability_diagram(PROBS, LABELS, n_bins=5, metrics={"conf_ece": 0.5, "accuracy": 0.25, "cw_ece": 0.1})
    assert titled.subfigs[0].axes[0].get_title() == "confidence: conf-ECE 0.5000, accuracy 0.250"
    for suffix, magic in ((".pdf", b"%PDF-"), (".svg", b"<?xml"), (".png", b"\x89PNG")):
        reliability_diagram(PROBS, LABELS, path=tmp_path / f"r{suffix}", classwise=False, dpi=20)
        assert (tmp_path / f"r{suffix}").read_bytes().startswith(magic)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["r.pdf", "r.png", "r.svg"]  # no temporary file left


@pytest.mark.parametrize(
    "probs,labels,message",
    [
        (PROBS.log(), LABELS, "must be probabilities"),
        (PROBS, LABELS[:-1], r"labels must be \[N\] = \[18\]"),
        (PROBS, LABELS + 1, r"labels must be in \[0, 2\)"),
        (PROBS[None], LABELS, "must be \\[N, K\\]"),
    ],
)
def test_reliability_diagram_refuses_what_is_not_probabilities_and_labels(probs, labels, message):
    with pytest.raises(ValueError, match=message):
        reliability_diagram(probs, labels)


def test_reliability_diagram_refuses_an_unknown_format(tmp_path):
    with pytest.raises(ValueError, match=r"r\.jpg: a figure is written as \.png, \.pdf, \.svg"):
        reliability_diagram(PROBS, LABELS, path=tmp_path / "r.jpg")
    assert not list(tmp_path.iterdir())


def test_calibration_metric_is_exported_and_accumulates_batches():
    metric = CalibrationMetric("conf_ece", n_bins=5)
    metric.update(PROBS[:7], LABELS[:7])
    metric.update(PROBS[7:], LABELS[7:])
    assert float(metric.compute()) == pytest.approx(float(conf_ece(PROBS, LABELS, 5)))


def test_wilson_interval_holds_the_observed_frequency_for_every_count():
    """At frequency 0 or 1 a Wilson bound equals the frequency up to rounding; it must never cross it
    (matplotlib refuses a negative error bar, which once crashed a run's diagram)."""
    from calibration_lightning.outputs.diagrams import wilson_interval

    count = torch.arange(1, 400, dtype=torch.float64).repeat_interleave(3)
    for dtype in (torch.float64, torch.float32):
        hits = torch.stack([torch.zeros(399), torch.arange(1, 400) // 2, torch.arange(1, 400)], 1).flatten()
        freq = (hits.double() / count).to(dtype)
        low, high = wilson_interval(freq, count.to(dtype))
        assert bool((low <= freq).all()) and bool((freq <= high).all())
        assert bool((low >= 0).all()) and bool((high <= 1).all())
