"""The dead-unit detection benchmark on a tiny MLP: table, then one JSON line with the ratio.

Timings of tiny models are noise; the structure and the arithmetic of the ratio are checked.
"""

from __future__ import annotations

import io
import json

import pytest

from experiments.bench import diagnose

# the slow tier: every test here runs the diagnosis benchmark
pytestmark = pytest.mark.slow


def test_table_then_json_line_with_the_ratio():
    buf = io.StringIO()
    result = diagnose.main(["--quick", "--batch", "250"], file=buf, widths=(64, 32, 16, 10))
    lines = buf.getvalue().strip().splitlines()
    assert json.loads(lines[-1]) == json.loads(json.dumps(result))
    assert lines[1].startswith("case") and set(lines[2]) == {"-"}
    assert lines[3].startswith("forward+backward") and lines[4].startswith("find_dead_units")
    fb, case = result["rows"]
    for line, row in ((lines[3], fb), (lines[4], case)):  # the printed figures are the row's
        seconds, ratio = line.split()[-2:]
        assert (seconds, ratio) == (f"{row['seconds']:.3f}", f"{row['ratio']:.2f}")
    assert len(fb["samples"]) == len(case["samples"]) == result["repeats"] == 2
    assert fb["seconds"] == min(fb["samples"]) and case["seconds"] == min(case["samples"])
    ratio = result["ratios"]["find_dead_units_over_fwd_bwd"]
    assert ratio == case["seconds"] / fb["seconds"] > 0
    assert result["target_met"] == (ratio <= 3.0)
    assert result["samples"] == 1000 and result["model"] == "mlp 64-32-16-10"
