"""Strict JSON: non-finite numbers written as null with a reason and read back as measured; a torn results file
is a one-line error that names the file, the line and the way to recover."""

import json
import math
from pathlib import Path

import numpy as np
import pytest

from razor_robot.report.frontier import load_records
from razor_robot.io import NULL_REASONS, dumps_strict, loads_strict
from razor_robot.report.records import append_records, read_records

pytestmark = pytest.mark.core


def _refuse(constant):
    raise ValueError(f"bare {constant} in JSON")


def test_non_finite_numbers_become_null_with_their_reason_and_come_back():
    record = {"method": "rl", "kl/forward": float("nan"), "pred/rank": np.float32("inf"),
              "kl/forward/ci95": [np.float64(0.5), -math.inf], "nested": {"a/b": [1, float("nan")]},
              "count": np.int64(3)}
    text = dumps_strict(record)
    parsed = json.loads(text, parse_constant=_refuse)
    assert parsed["kl/forward"] is None and parsed["pred/rank"] is None
    assert parsed["kl/forward/ci95"] == [0.5, None] and parsed["count"] == 3
    assert parsed[NULL_REASONS] == {"/kl~1forward": "NaN", "/pred~1rank": "Infinity",
                                    "/kl~1forward~1ci95/1": "-Infinity", "/nested/a~1b/1": "NaN"}
    back = loads_strict(text)
    assert math.isnan(back["kl/forward"]) and back["pred/rank"] == math.inf
    assert back["kl/forward/ci95"] == [0.5, -math.inf] and math.isnan(back["nested"]["a/b"][1])
    assert NULL_REASONS not in back


def test_finite_records_are_written_unchanged():
    record = {"method": "sft", "new_task": 12.5, "episodes": {"pick-can": [1, 0]}}
    assert dumps_strict(record) == json.dumps(record)


def test_a_non_finite_number_outside_an_object_is_an_error():
    with pytest.raises(ValueError, match="outside a JSON object"):
        dumps_strict([1.0, float("nan")])


def test_results_file_with_a_failed_run_and_a_nan_metric_is_strict_json(tmp_path):
    path = tmp_path / "results.jsonl"
    append_records(path, [{"run_id": "sft-1", "status": "failed", "reason": "NonFiniteLossError: nan"}])
    append_records(path, [{"run_id": "rl-0", "method": "rl", "new_task": 10.0, "prior_task": 90.0,
                           "kl": float("nan")}])
    lines = path.read_text().splitlines()
    assert [json.loads(line, parse_constant=_refuse)["run_id"] for line in lines] == ["sft-1", "rl-0"]
    records = read_records(path)
    assert records[0]["status"] == "failed" and math.isnan(records[1]["kl"])


def test_a_torn_results_line_names_the_file_the_line_and_the_recovery(tmp_path):
    path = tmp_path / "results.jsonl"
    append_records(path, [{"run_id": "a", "method": "base", "new_task": 1.0, "prior_task": 2.0}])
    path.write_text(path.read_text() + '{"run_id": "b", "method": "sft", "new_t\n')
    with pytest.raises(ValueError) as error:
        read_records(path)
    message = str(error.value)
    assert "\n" not in message and message.startswith(f"{path}:2: not valid JSON (")
    assert "delete line 2" in message
    with pytest.raises(ValueError, match=f"{path}:2: not valid JSON"):
        load_records(path)  # the frontier command reads through the same parser


def test_old_results_with_bare_nan_still_read(tmp_path):
    path = tmp_path / "results.jsonl"
    path.write_text('{"run_id": "a", "kl": NaN}\n')
    assert math.isnan(read_records(path)[0]["kl"])


def test_a_null_reason_pointing_nowhere_is_a_one_line_error(tmp_path):
    path = tmp_path / "results.jsonl"
    path.write_text('{"run_id": "a", "kl": null, "null_reasons": {"/kl/0": "NaN"}}\n')
    with pytest.raises(ValueError, match=r"results.jsonl:1: a corrupt null_reasons .*delete line 1"):
        read_records(path)


def _checkpoint_table_script():
    import importlib.util

    path = Path(__file__).parents[1] / "scripts" / "checkpoint_table.py"
    spec = importlib.util.spec_from_file_location("checkpoint_table", path)
    script = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(script)
    return script


def test_checkpoint_table_gives_every_rate_its_interval_and_count(tmp_path):
    # Wilson 95% intervals (points): 1/4 [4.6, 69.9], 2/4 [15.0, 85.0], 0/4 [0.0, 49.0], 2/2 [34.2, 100.0],
    # 1/2 [9.5, 90.5]; the script prints what the records hold.
    wilson = {(1, 4): [4.559, 69.936], (2, 4): [15.004, 84.996], (0, 4): [0.0, 48.989], (2, 2): [34.238, 100.0],
              (1, 2): [9.453, 90.547]}

    def record(method, step, fraction, new, prior, lr=None):
        out = {"method": method, "step": step, "fraction": fraction, "hparams": {} if lr is None else
               {"optim.learning_rate": lr}}
        for field, (k, n) in (("new_task", new), ("prior_task", prior)):
            out.update({field: 100 * k / n, f"{field}/n": n, f"{field}/successes": k,
                        f"{field}/ci95": wilson[(k, n)]})
        return out

    for base, oracle_step in (("base-s0", 111), ("base-s3", 135)):
        (tmp_path / base).mkdir()
        lines = [record("base", 0, 0.0, (1, 4), (2, 2)), record("rl", 12, 1.0, (2, 4), (1, 2), lr=3e-4),
                 record("oracle-sft", oracle_step, 1.0, (0, 4), (2, 2))]
        (tmp_path / base / "results.jsonl").write_text("".join(json.dumps(r) + "\n" for r in lines))
    script = _checkpoint_table_script()
    table = script.markdown_table(script.load_bases(tmp_path))
    rows = table.splitlines()
    assert rows[0] == ("| checkpoint | base-s0 new task | base-s0 prior tasks | base-s3 new task | "
                       "base-s3 prior tasks |")
    assert rows[2] == ("| base | 25.0 [4.6, 69.9] n=4 | 100.0 [34.2, 100.0] n=2 | 25.0 [4.6, 69.9] n=4 | "
                       "100.0 [34.2, 100.0] n=2 |")
    assert rows[3].startswith("| RL lr 3e-4 @12 | 50.0 [15.0, 85.0] n=4 | 50.0 [9.5, 90.5] n=2 |")
    assert rows[4].startswith("| oracle-sft @100% | 0.0 [0.0, 49.0] n=4 |")  # steps 111 and 135: by fraction
