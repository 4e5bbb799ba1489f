"""`mlem_jax._env`: the one environment record of results and ladder manifests."""

import json
import platform

import jax

from mlem_jax._env import PACKAGES, environment, versions


def test_versions_name_every_package_and_python():
    out = versions()
    assert set(out) == {"python", *PACKAGES}
    assert out["python"] == platform.python_version()
    assert out["jax"] == jax.__version__
    assert out["mlem_jax"] is not None  # installed (editable or not) to run tests


def test_environment_is_json_ready_and_records_the_seed():
    record = environment(seed=7)
    assert record["seed"] == 7 and record["versions"] == versions()
    assert record["machine"]["backend"] == jax.default_backend()
    assert record["machine"]["devices"] == [str(d) for d in jax.devices()]
    assert json.loads(json.dumps(record)) == record
