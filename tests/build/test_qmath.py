import numpy as np

from trimtab.build import qmath


def test_asymmetric_keeps_zero_exact_and_relu_zero_point_zero():
    params = qmath.asymmetric_uint8(-1.3, 2.7)
    assert qmath.fake_quantize(np.zeros(1, np.float32), params)[0] == 0.0
    assert qmath.asymmetric_uint8(0.0, 6.0).zero_point == 0
    assert qmath.asymmetric_uint8(0.0, 0.0).scale > 0


def test_bias_scale_is_input_times_weight_scale():
    values, scales = qmath.quantize_bias(np.array([0.5, -0.25], np.float32), 0.02, np.array([0.1, 0.01], np.float32))
    np.testing.assert_allclose(scales, [0.002, 0.0002], rtol=1e-6)
    np.testing.assert_array_equal(values, [250, -1250])


def test_nearly_dead_channel_keeps_its_bias():
    """BN folding leaves channels with ~1e-11 weights and an ordinary bias: the weight scale is
    raised so the int32 bias does not saturate."""
    from trimtab.build.int8 import BIAS_INT32_LIMIT, _weight_scales

    weight = np.ones((2, 3, 1, 1), np.float32)
    weight[1] = 1e-11
    bias = np.array([0.5, 0.7], np.float32)
    scales = _weight_scales(weight, 0, bias, input_scale=0.02)
    values, bias_scales = qmath.quantize_bias(bias, 0.02, scales)
    assert np.abs(values).max() <= BIAS_INT32_LIMIT
    np.testing.assert_allclose(values * bias_scales, bias, rtol=1e-6)
    assert scales[0] == np.float32(1 / 127)  # ordinary channels untouched
