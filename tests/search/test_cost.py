"""Fallback costs: ONNX Runtime's kernel names mapped back to the model, and costs per unit of work."""

from onnx import TensorProto, helper, numpy_helper
import numpy as np

from trimtab.search.cost import fallback_costs, model_node_times, node_work, rate_costs


def _graph():
    w1 = numpy_helper.from_array(np.zeros((8, 16), np.float32), "w1")
    w2 = numpy_helper.from_array(np.zeros((16, 4), np.float32), "w2")
    nodes = [helper.make_node("MatMul", ["x", "w1"], ["h"], name="fc1"),
             helper.make_node("Relu", ["h"], ["r"], name="relu"),
             helper.make_node("MatMul", ["r", "w2"], ["y"], name="fc2")]
    graph = helper.make_graph(nodes, "g", [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", 8])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["N", 4])], [w1, w2])
    graph.value_info.append(helper.make_tensor_value_info("h", TensorProto.FLOAT, ["N", 16]))
    return graph


def test_kernel_names_map_back_to_model_nodes():
    graph = _graph()
    times = model_node_times({"fc1_token_3": 2.0, "r_nchwc": 1.0, "fc2": 0.5, "input_QuantizeLinear": 9.0}, graph)
    assert times == {"fc1": 3.0, "fc2": 0.5}  # the fused Relu's time goes to its MatMul; Q/DQ dropped
    assert fallback_costs({"fc1": 3.0, "fc2": 0.5}, {"fc1": 1.0, "fc2": 0.9}) == {"fc1": 2.0, "fc2": 0.0}


def test_costs_follow_work_at_the_kinds_median_rate():
    graph = _graph()
    assert node_work(graph) == {"fc1": 128.0, "fc2": 64.0}
    # fc2's measured cost is noise-dominated; the kind's median rate (from fc1 alone here) decides
    costs = rate_costs({"fc1": 1.28, "fc2": 0.0, "relu": 0.3}, graph)
    assert costs["fc1"] == 1.28 and abs(costs["fc2"] - 0.64) < 1e-12 and costs["relu"] == 0.3
