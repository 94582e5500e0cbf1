"""ActionTokenizer and action normalisation: exact OpenVLA values, property tests, statistics (numpy only)."""

import subprocess
import sys

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis.extra.numpy import arrays
from razor_robot.policies.action_tokenizer import (
    FRACTAL_NORM_STATS,
    ActionTokenizer,
    compute_norm_stats,
    normalize_actions,
    resolve_unnorm_key,
    unnormalize_actions,
)

pytestmark = pytest.mark.core

BIN = 2.0 / 255.0  # width of one of OpenVLA's 255 bin intervals


def openvla_encode(actions, vocab_size=32000, n_bins=256):
    """OpenVLA's ActionTokenizer.__call__ arithmetic, restated for the test."""
    bins = np.linspace(-1, 1, n_bins)
    return vocab_size - np.digitize(np.clip(actions, -1.0, 1.0), bins)


def openvla_decode(ids, vocab_size=32000, n_bins=256):
    """OpenVLA's decode_token_ids_to_actions / predict_action arithmetic, restated for the test."""
    bins = np.linspace(-1, 1, n_bins)
    centers = (bins[:-1] + bins[1:]) / 2.0
    return centers[np.clip(vocab_size - ids - 1, 0, centers.shape[0] - 1)]


def test_edge_values_match_openvla_by_hand():
    tok = ActionTokenizer(32000)
    assert tok.action_token_offset == 31744
    assert tok.encode(np.array([-1.0, 0.0, 1.0])).tolist() == [31999, 31872, 31744]
    assert tok.encode(np.array([-7.0, 3.0])).tolist() == [31999, 31744]  # clipped first
    # bin edges: -1 + k * 2/255; a value exactly on edge k lands in bin k + 1
    assert tok.encode(np.array([-1.0 + BIN, -1.0 + BIN - 1e-12])).tolist() == [31998, 31999]
    assert tok.decode(np.array([31999])).tolist() == pytest.approx([-1.0 + 1.0 / 255.0], abs=1e-15)
    assert tok.decode(np.array([31872])).tolist() == pytest.approx([0.0], abs=1e-15)
    # the 255-centre quirk: ids 31745 and 31744 both decode to the last centre
    assert tok.decode(np.array([31745, 31744])).tolist() == pytest.approx([1 - 1 / 255.0] * 2, abs=1e-15)
    # ids outside the action range clip like OpenVLA's decode
    assert tok.decode(np.array([100, 40000])).tolist() == pytest.approx([1 - 1 / 255.0, -1 + 1 / 255.0])
    assert tok.encode(np.zeros((2, 3, 7))).shape == (2, 3, 7)
    assert tok.encode(np.zeros(3)).dtype == np.int64


@settings(max_examples=200, deadline=None)
@given(
    arrays(
        np.float64,
        st.tuples(st.integers(1, 5), st.integers(1, 8)),
        elements=st.floats(-1.5, 1.5, allow_nan=False),
    )
)
def test_encode_decode_equal_openvla_formulas(actions):
    tok = ActionTokenizer(32000)
    ids = tok.encode(actions)
    np.testing.assert_array_equal(ids, openvla_encode(actions))
    np.testing.assert_array_equal(tok.decode(ids), openvla_decode(ids))
    assert ids.min() >= 31744 and ids.max() <= 31999


@settings(max_examples=200, deadline=None)
@given(
    arrays(np.float64, st.integers(1, 16), elements=st.floats(-1.0, 1.0, allow_nan=False)),
    st.sampled_from([320, 32000, 151936]),
)
def test_round_trip_error_within_half_bin(actions, vocab_size):
    tok = ActionTokenizer(vocab_size)
    err = np.abs(tok.decode(tok.encode(actions)) - actions)
    assert err.max() <= 1.0 / 255.0 + 1e-12  # half a bin; the spec's bound 1/127.5 is a full bin


@given(st.integers(0, 255))
def test_every_bin_centre_round_trips_to_its_id(j):
    tok = ActionTokenizer(320)
    centre = tok.decode(np.array([tok.action_token_offset + j]))
    # centre 254 is shared by the two top ids (quirk); every other id is the unique code of its centre
    expected = tok.action_token_offset + (1 if j == 0 else j)
    assert tok.encode(centre).item() == expected


def test_constructor_and_input_errors():
    with pytest.raises(ValueError, match="must exceed"):
        ActionTokenizer(256)
    with pytest.raises(ValueError, match="n_bins"):
        ActionTokenizer(1000, n_bins=1)
    with pytest.raises(ValueError, match="NaN"):
        ActionTokenizer(1000).encode(np.array([np.nan]))


def test_fractal_normalisation_exact_values():
    stats = FRACTAL_NORM_STATS
    q01, q99 = np.array(stats["action"]["q01"]), np.array(stats["action"]["q99"])
    gripper = np.array([0.0, 0.25, 1.0])
    low = np.concatenate([q01[:6], gripper[:1]])
    high = np.concatenate([q99[:6], gripper[2:]])
    np.testing.assert_allclose(normalize_actions(low, stats), [-1, -1, -1, -1, -1, -1, 0.0], atol=1e-7)
    np.testing.assert_allclose(normalize_actions(high, stats), [1, 1, 1, 1, 1, 1, 1.0], atol=1e-7)
    # un-normalising: -1 -> q01, +1 -> q99, gripper (mask False) passes through
    np.testing.assert_allclose(unnormalize_actions(-np.ones(7), stats)[:6], q01[:6])
    np.testing.assert_allclose(unnormalize_actions(np.ones(7), stats)[:6], q99[:6])
    assert unnormalize_actions(np.full(7, 0.25), stats)[6] == 0.25
    mid = 0.5 * (q01 + q99)
    mid[6] = 0.5
    np.testing.assert_allclose(unnormalize_actions(normalize_actions(mid, stats), stats), mid, atol=1e-7)
    with pytest.raises(ValueError, match="action dim 4"):
        normalize_actions(np.zeros(4), stats)


def test_compute_norm_stats_exact_and_unused_dims():
    actions = np.stack([np.arange(101.0), np.full(101, 3.0)], axis=1)  # (101, 2)
    stats = compute_norm_stats(actions, mask=[True, True])
    assert stats["num_transitions"] == 101
    assert stats["action"]["q01"] == [1.0, 3.0] and stats["action"]["q99"] == [99.0, 3.0]
    assert stats["action"]["mean"] == [50.0, 3.0] and stats["action"]["mask"] == [True, True]
    # dim 1 never varies (min == max): OpenVLA maps it to 0
    np.testing.assert_allclose(normalize_actions(np.array([50.0, 3.0]), stats), [0.0, 0.0], atol=1e-9)
    assert compute_norm_stats(actions, mask=[True, False])["action"]["mask"] == [True, False]
    with pytest.raises(ValueError, match="mask has shape"):
        compute_norm_stats(actions, mask=[True])
    with pytest.raises(ValueError, match=r"\(N >= 2, D\)"):
        compute_norm_stats(np.zeros(5))


def test_resolve_unnorm_key():
    assert resolve_unnorm_key({"a": {}}, None) == "a"
    with pytest.raises(ValueError, match="several"):
        resolve_unnorm_key({"a": {}, "b": {}}, None)
    with pytest.raises(ValueError, match="unknown unnorm_key"):
        resolve_unnorm_key({"a": {}}, "c")


def test_package_import_does_not_load_torch():
    code = "import sys, razor_robot.policies as p; p.ActionTokenizer(300); print('torch' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "False"
