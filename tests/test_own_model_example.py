"""`examples/own_model.py` (sampling your own diffusion model) runs, at --quick sizes."""

import importlib.util
import math
import pathlib

EXAMPLE = pathlib.Path(__file__).resolve().parents[1] / "examples" / "own_model.py"


def test_own_model_example_runs_quick(capsys):
    spec = importlib.util.spec_from_file_location("own_model", EXAMPLE)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    result = module.main(["--quick", "--sampler", "sde2m", "--prediction", "v"])
    out = capsys.readouterr().out
    assert "ML-EM calibration: 3 levels" in out
    if result is not None:  # a sub-ladder was chosen and sampled
        assert "realised over" in out
        # Its realised cost is a mean of evaluations drawn with the predicted
        # probabilities: finite, positive and below every level at every step.
        assert 0 < result["cost"] < 8 * (4 + 16 + 64)
        assert math.isfinite(result["error"])
