"""A run's QA metrics and a step's gate over them (pure functions, no DB)."""

from __future__ import annotations

import json

import pytest
from pydantic import ValidationError

from ccat_wm.quality.gate import QaOperator, QaRule, evaluate_gate
from ccat_wm.quality.metrics import QaMetricsError, run_metrics


def test_metrics_are_the_top_level_numbers_of_the_qa_files() -> None:
    files = {
        "qa/scan.calibration.json": json.dumps(
            {"tsys_k": 312.5, "tau": 0.41, "flagged_fraction": 0, "ok": True, "module": "LFA",
             "per_channel": [1, 2], "nested": {"x": 1}}
        ),
        "qa/scan.baseline.json": b'{"rms_k": 0.12, "rms_p95_k": 0.2}',
    }  # fmt: skip
    assert run_metrics(files) == {
        "tsys_k": 312.5, "tau": 0.41, "flagged_fraction": 0.0, "rms_k": 0.12, "rms_p95_k": 0.2,
    }  # fmt: skip


def test_a_metric_in_two_files_names_both_files() -> None:
    with pytest.raises(QaMetricsError, match=r"'rms_k' is reported by both qa/a.json and qa/b"):
        run_metrics({"qa/b.json": '{"rms_k": 1}', "qa/a.json": '{"rms_k": 2}'})


@pytest.mark.parametrize(
    ("text", "problem"),
    [
        ("[1, 2]", "qa/x.json: a JSON list, expected an object of named metrics"),
        ('{"rms_k": NaN}', "qa/x.json: not JSON (NaN is not a JSON number)"),
        ("{rms", "qa/x.json: not JSON"),
    ],
)
def test_a_qa_file_that_is_no_json_object_is_named(text: str, problem: str) -> None:
    with pytest.raises(QaMetricsError) as caught:
        run_metrics({"qa/x.json": text})
    assert str(caught.value).startswith(problem)


def test_a_gate_rejects_naming_each_failing_rule_and_the_value_seen() -> None:
    gate = [
        QaRule(metric="tsys_k", operator="lt", value=400),
        QaRule(metric="rms_k", operator="le", value=0.5),
        QaRule(metric="flagged_fraction", operator="lte", value=0.2),
    ]
    decision = evaluate_gate(gate, {"tsys_k": 2000.0, "rms_k": 0.5, "flagged_fraction": 0.1})
    assert not decision.accepted
    assert [o.rule.metric for o in decision.failing] == ["tsys_k"]
    assert decision.message() == "rejected: tsys_k = 2000 (needs tsys_k < 400)"
    assert evaluate_gate(gate, {"tsys_k": 399.9, "rms_k": 0.5, "flagged_fraction": 0.2}).accepted


def test_a_metric_the_run_did_not_report_fails_its_rule() -> None:
    decision = evaluate_gate([QaRule(metric="rms_k", operator="lt", value=1)], {"tsys_k": 300.0})
    assert decision.message() == "rejected: rms_k missing (needs rms_k < 1)"


@pytest.mark.parametrize(
    ("operator", "value", "metric", "passed"),
    [
        ("eq", 3, 3.0, True), ("neq", 3, 3.0, False), ("ne", 3, 4.0, True),
        ("gt", 3, 3.0, False), ("gte", 3, 3.0, True), ("ge", 3, 2.0, False),
        ("lt", 3, 2.0, True), ("in", [1, 2], 2.0, True), ("not_in", [1, 2], 2.0, False),
        ("not_in", [1, 2], 5.0, True),
    ],
)  # fmt: skip
def test_every_operator_of_filter_rules_compares_as_written(
    operator: str, value: float | list[float], metric: float, passed: bool
) -> None:
    rule = QaRule.model_validate({"metric": "m", "operator": operator, "value": value})
    assert evaluate_gate([rule], {"m": metric}).accepted is passed


def test_spellings_map_to_the_filter_rules_operators() -> None:
    assert QaRule(metric="m", operator="le", value=1).operator is QaOperator.LTE
    assert QaRule(metric="m", operator="ne", value=1).describe() == "m != 1"
    assert QaRule(metric="m", operator="in", value=[1, 2.5]).describe() == "m in [1, 2.5]"


@pytest.mark.parametrize(
    ("rule", "problem"),
    [
        ({"metric": "m", "operator": "about", "value": 1}, "operator"),
        ({"metric": "m", "operator": "in", "value": 1}, "'in' takes a list of numbers"),
        ({"metric": "m", "operator": "lt", "value": [1]}, "'lt' takes one number, not a list"),
        ({"metric": "m", "operator": "lt", "value": "high"}, "value"),
        ({"metric": "m", "operator": "lt", "value": 1, "unit": "K"}, "unit"),
    ],
)
def test_a_malformed_rule_is_refused_naming_what_is_wrong(
    rule: dict[str, object], problem: str
) -> None:
    with pytest.raises(ValidationError, match=problem):
        QaRule.model_validate(rule)
