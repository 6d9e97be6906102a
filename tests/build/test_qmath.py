import numpy as np

from trimtab.build import qmath


def test_weight_per_channel_round_trip_within_half_a_step():
    rng = np.random.default_rng(0)
    weight = rng.standard_normal((6, 4, 3, 3)).astype(np.float32) * np.arange(1, 7).reshape(6, 1, 1, 1)
    values, scales = qmath.quantize_weight_per_channel(weight, 0)
    assert values.dtype == np.int8 and values.min() >= -127 and scales.shape == (6,)
    np.testing.assert_allclose(scales, np.abs(weight).reshape(6, -1).max(1) / 127, rtol=1e-6)
    error = np.abs(values * scales.reshape(6, 1, 1, 1) - weight)
    assert np.all(error <= scales.reshape(6, 1, 1, 1) / 2 + 1e-7)


def test_weight_axis_one_for_conv_transpose():
    weight = np.random.default_rng(1).standard_normal((4, 5, 3, 3)).astype(np.float32)
    _, scales = qmath.quantize_weight_per_channel(weight, 1)
    np.testing.assert_allclose(scales, np.abs(weight).max(axis=(0, 2, 3)) / 127, rtol=1e-6)


def test_asymmetric_keeps_zero_exact_and_relu_zero_point_zero():
    params = qmath.asymmetric_uint8(-1.3, 2.7)
    assert qmath.fake_quantize(np.zeros(1, np.float32), params)[0] == 0.0
    assert qmath.asymmetric_uint8(0.0, 6.0).zero_point == 0
    assert qmath.asymmetric_uint8(0.0, 0.0).scale > 0


def test_bias_scale_is_input_times_weight_scale():
    values, scales = qmath.quantize_bias(np.array([0.5, -0.25], np.float32), 0.02, np.array([0.1, 0.01], np.float32))
    np.testing.assert_allclose(scales, [0.002, 0.0002], rtol=1e-6)
    np.testing.assert_array_equal(values, [250, -1250])


def test_sqnr():
    x = np.ones(100, np.float32)
    assert qmath.sqnr_db(x, x) == float("inf")
    assert abs(qmath.sqnr_db(x, x * 1.1) - 20.0) < 1e-4
