"""Scale-out on JAX's distributed runtime, each check in a subprocess:
4 forced CPU devices (sharded data, sharded parameters, Explicit and Auto
meshes, an uneven sample count), and two processes on 127.0.0.1 with gloo
collectives, each holding half of the data."""

import _background
import numpy as np
import pytest


@pytest.fixture(scope="module")
def sharded():
    return _background.result("sharded")[0]  # started when the tests were collected


@pytest.mark.slow
@pytest.mark.parametrize("config", ["data-auto", "data-explicit", "params-auto", "params-explicit"])
def test_sharded_runs_give_the_single_device_answers(sharded, config):
    run = sharded[config]
    ref, got = sharded["reference"], run["result"]
    for name in ("top", "both", "trace", "density", "slice", "hvp", "dense"):
        np.testing.assert_allclose(got[name], ref[name], rtol=1e-10, atol=1e-12, err_msg=name)


@pytest.mark.slow
def test_data_parallel_shards_samples_and_all_reduces(sharded):
    for mode in ("auto", "explicit"):
        info = sharded[f"data-{mode}"]["info"]
        assert info["local_shapes"] == [[16, 8]] * 4  # 64 samples over 4 devices
        assert info["all_reduce"]  # one reduction of the partial sums in the HVP
        # 66 samples: 64 sharded and 2 replicated, weighted 64/66 and 2/66
        assert info["uneven"]["shapes"] == [[[64, 8], [64, 4]], [[2, 8], [2, 4]]]
        assert info["uneven"]["error"] < 1e-12


@pytest.mark.slow
def test_sharded_parameters_keep_their_sharding_in_the_basis(sharded):
    expected = {
        "auto": {"w1": "P(None, None, 'd')", "w2": "P(None, 'd')"},
        "explicit": {"w1": "P(None, None, 'd')", "w2": "P(None, 'd', None)"},
    }
    for mode in ("auto", "explicit"):
        info = sharded[f"params-{mode}"]["info"]
        # w1 (8, 16) sharded over its columns, w2 (16, 4) over its rows: every
        # stack keeps P(None, *spec); Auto mode prints trailing Nones short
        assert info["vector_specs"] == expected[mode]
        assert info["basis_specs"] == expected[mode]
        assert info["basis_local_fraction"] == pytest.approx(0.25)
        # the solve's loops move no more data between devices than its HVP
        for op, count in info["loop_moves"].items():
            assert count <= info["hvp_moves"][op], (op, info)
        # the dense Hessian (n = 192) stays on the mesh, its rows sharded
        assert info["dense_spec"] in ("P('d', None)", "P(('d',), None)", "P('d',)"), info


@pytest.mark.slow
def test_two_processes_each_with_half_the_data():
    pair = _background.result("multiprocess-pair")[0]  # both processes, a free port
    assert pair["lead"] == 0 and pair["worker"] == 0, pair["stderr"]
    got = pair["result"]
    ref = _background.result("multiprocess-reference")[0]  # one process, all data
    for name in ("top", "trace", "slice"):
        np.testing.assert_allclose(got[name], ref[name], rtol=1e-10, err_msg=name)
