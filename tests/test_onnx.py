"""ONNX networks: the import equals onnxruntime, exports round-trip, bad files are one line."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

onnx = pytest.importorskip("onnx")
ort = pytest.importorskip("onnxruntime")
from onnx import TensorProto, helper, numpy_helper  # noqa: E402

import models  # noqa: E402
from models.onnx_import import OnnxImportError, export_onnx, import_onnx  # noqa: E402
from tests.conftest import invoke, random_mlp  # noqa: E402


def _save(path: Path, nodes, inits, input_shape, output_dim) -> Path:
    graph = helper.make_graph(
        nodes, "test",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", *input_shape])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["N", output_dim])],
        [numpy_helper.from_array(np.asarray(v, dtype=np.float32) if v.dtype.kind == "f"
                                 else v, name) for name, v in inits.items()])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)])
    onnx.checker.check_model(model)
    onnx.save(model, str(path))
    return path


def _compare(path: Path, input_shape, count: int = 64, seed: int = 0) -> float:
    net, facts = import_onnx(path)
    rng = np.random.default_rng(seed)
    x = rng.random((count, *input_shape), dtype=np.float32)
    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    expected = session.run(None, {session.get_inputs()[0].name: x})[0]
    with torch.no_grad():
        got = net(torch.from_numpy(x).reshape(count, -1)).numpy()
    assert facts["input_shape"] == list(input_shape)
    return float(np.abs(got - expected).max() / max(1.0, np.abs(expected).max()))


def fully_connected(path: Path, seed: int = 0) -> Path:
    """Normalisation (Sub, Div), Flatten, Gemm (transB), Relu, MatMul + Add, Relu, Gemm;
    initializers named so that sorting them by name would misorder the layers."""
    rng = np.random.default_rng(seed)
    inits = {"mean": np.full((1, 1, 1), 0.1307), "std": np.full((1, 1, 1), 0.3081),
             "layers.10.weight": rng.standard_normal((20, 64)) * 0.2,
             "layers.10.bias": rng.standard_normal(20) * 0.1,
             "layers.2.weight": rng.standard_normal((20, 16)) * 0.2,
             "layers.2.bias": rng.standard_normal(16) * 0.1,
             "layers.1.weight": rng.standard_normal((5, 16)) * 0.2,
             "layers.1.bias": rng.standard_normal(5) * 0.1}
    nodes = [helper.make_node("Sub", ["x", "mean"], ["centred"]),
             helper.make_node("Div", ["centred", "std"], ["scaled"]),
             helper.make_node("Flatten", ["scaled"], ["flat"], axis=1),
             helper.make_node("Gemm", ["flat", "layers.10.weight", "layers.10.bias"], ["h1"],
                              transB=1),
             helper.make_node("Relu", ["h1"], ["r1"]),
             helper.make_node("MatMul", ["r1", "layers.2.weight"], ["m2"]),
             helper.make_node("Add", ["m2", "layers.2.bias"], ["h2"]),
             helper.make_node("Relu", ["h2"], ["r2"]),
             helper.make_node("Gemm", ["r2", "layers.1.weight", "layers.1.bias"], ["y"],
                              transB=1, alpha=0.5, beta=2.0)]
    return _save(path, nodes, inits, (1, 8, 8), 5)


def convolutional(path: Path, seed: int = 1) -> Path:
    """Conv (stride 2, pad 1), BatchNormalization, Relu, Conv, Relu, a Reshape whose target
    is computed in the graph (Shape, Gather, Unsqueeze, Concat), Transpose-free, Gemm."""
    rng = np.random.default_rng(seed)
    inits = {"k1": rng.standard_normal((4, 1, 3, 3)) * 0.4, "b1": rng.standard_normal(4) * 0.1,
             "gamma": rng.random(4) + 0.5, "beta": rng.standard_normal(4) * 0.1,
             "mu": rng.standard_normal(4) * 0.1, "var": rng.random(4) + 0.5,
             "k2": rng.standard_normal((3, 4, 3, 3)) * 0.3, "b2": rng.standard_normal(3) * 0.1,
             "w": rng.standard_normal((3 * 4 * 4, 6)) * 0.2, "b": rng.standard_normal(6) * 0.1,
             "zero": np.array([0], dtype=np.int64), "minus_one": np.array([-1], dtype=np.int64)}
    nodes = [helper.make_node("Conv", ["x", "k1", "b1"], ["c1"], strides=[2, 2],
                              pads=[1, 1, 1, 1], kernel_shape=[3, 3]),
             helper.make_node("BatchNormalization", ["c1", "gamma", "beta", "mu", "var"],
                              ["n1"], epsilon=1e-3),
             helper.make_node("Relu", ["n1"], ["r1"]),
             helper.make_node("Conv", ["r1", "k2", "b2"], ["c2"], pads=[1, 1, 1, 1],
                              kernel_shape=[3, 3]),
             helper.make_node("Relu", ["c2"], ["r2"]),
             helper.make_node("Shape", ["r2"], ["shape"]),
             helper.make_node("Gather", ["shape", "zero"], ["batch"], axis=0),
             helper.make_node("Concat", ["batch", "minus_one"], ["target"], axis=0),
             helper.make_node("Reshape", ["r2", "target"], ["flat"]),
             helper.make_node("MatMul", ["flat", "w"], ["m"]),
             helper.make_node("Add", ["m", "b"], ["y"])]
    return _save(path, nodes, inits, (1, 8, 8), 6)


def test_fully_connected_import_equals_onnxruntime(tmp_path):
    assert _compare(fully_connected(tmp_path / "fc.onnx"), (1, 8, 8)) <= 1e-5
    net, _ = import_onnx(tmp_path / "fc.onnx")
    assert net.widths == [64, 20, 16, 5]          # the graph's order, not the names'


def test_convolutional_import_equals_onnxruntime(tmp_path):
    assert _compare(convolutional(tmp_path / "conv.onnx"), (1, 8, 8)) <= 1e-5
    net, facts = import_onnx(tmp_path / "conv.onnx")
    assert net.widths == [64, 4 * 4 * 4, 3 * 4 * 4, 6]
    assert {"Conv", "BatchNormalization", "Reshape"} <= set(facts["operators"])


def test_verifiers_are_sound_on_an_imported_convolutional_network(tmp_path):
    from bench.contract import margins
    from tests.conftest import assert_sound
    from verifiers.linear.crown import Crown
    net, _ = import_onnx(convolutional(tmp_path / "conv.onnx"))
    g = torch.Generator().manual_seed(0)
    x = torch.rand(12, 64, generator=g)
    with torch.no_grad():
        y = net(x).argmax(dim=1)
    upper = Crown().bound(net, x.double(), y, 0.05)
    assert_sound(upper, net, x, y, 0.05)
    assert (upper >= margins(net.float64_copy()(x.double()), y) - 1e-9).all()


@pytest.mark.parametrize("case, message", [
    ("sigmoid", "(Sigmoid): unsupported operator"),
    ("residual", "(Add): combines two variable tensors"),
    ("garbage", "not a readable ONNX model"),
])
def test_unsupported_or_broken_files_are_one_line_naming_the_node(case, message, tmp_path):
    path = tmp_path / f"{case}.onnx"
    w = {"w": np.eye(4)}
    if case == "sigmoid":
        _save(path, [helper.make_node("MatMul", ["x", "w"], ["h"], name="dense"),
                     helper.make_node("Sigmoid", ["h"], ["y"], name="squash")], w, (4,), 4)
    elif case == "residual":
        _save(path, [helper.make_node("MatMul", ["x", "w"], ["h"]),
                     helper.make_node("Relu", ["h"], ["r"]),
                     helper.make_node("Add", ["r", "x"], ["y"], name="skip")], w, (4,), 4)
    else:
        path.write_bytes(b"\x08\x07not a protobuf at all")
    with pytest.raises(OnnxImportError, match=message.replace("(", r"\(").replace(")", r"\)")):
        import_onnx(path)
    code, _, err = invoke(["run", "--models", str(path), "--n", "2", "--verifiers", "ibp",
                           "--attacks", "fgsm", "--out", str(tmp_path / "out"), "--quiet"])
    assert code == 1 and err.count("\n") == 1 and "Traceback" not in err, err
    assert not (tmp_path / "out").exists()


def test_export_round_trips_and_matches_onnxruntime(tmp_path):
    net = random_mlp([784, 30, 20, 10], seed=4)
    path = export_onnx(net, tmp_path / "net.onnx", input_shape=(1, 28, 28))
    assert _compare(path, (1, 28, 28)) <= 1e-6
    again, card = models.load(str(path))
    assert again.widths == net.widths and card.objective == "onnx"
    for mine, theirs in zip(again.parameters(), net.parameters()):
        assert torch.equal(mine, theirs)


def _round_trip(tmp_path: Path, names: list[str], n: int,
                verifiers: str = "ibp,lp,crown,sdp-dual,spectral") -> None:
    """Export ``names``, run the same grid on the shipped files and on the ONNX files, and
    compare the leaderboards (timings aside)."""
    import pandas as pd
    paths = []
    for name in names:
        code, _, err = invoke(["export", name, "--onnx", str(tmp_path / f"{name}.onnx")])
        assert code == 0, err
        paths.append(str(tmp_path / f"{name}.onnx"))
    common = ["--n", str(n), "--verifiers", verifiers, "--attacks",
              "fgsm,pgd", "--set", "pgd.steps=10", "--set", "pgd.restarts=1", "--quiet"]
    shipped, _, _ = invoke(["run", "--models", ",".join(names), "--out", str(tmp_path / "a"),
                            *common])
    onnx_run, _, err = invoke(["run", "--models", ",".join(paths), "--out", str(tmp_path / "b"),
                               *common])
    assert shipped == 0 and onnx_run == 0, err
    columns = ["eps", "method", "n", "error", "mean_bound", "status"]
    a = pd.read_csv(tmp_path / "a" / "leaderboard.csv")
    b = pd.read_csv(tmp_path / "b" / "leaderboard.csv")
    b["model"] = b["model"].map(lambda p: Path(p).stem)
    a, b = (t.sort_values(["model", "method"]).reset_index(drop=True) for t in (a, b))
    assert a["model"].tolist() == b["model"].tolist()
    pd.testing.assert_frame_equal(a[columns], b[columns], rtol=1e-9)


def test_sdp_nn_exported_and_imported_gives_the_same_leaderboard_and_certificates(tmp_path):
    """SDP-NN on 20 images with the cheap methods, and its trained SDP dual vectors travel
    in the ONNX file; the six networks on 100 images, sdp-dual included, are the slow
    test below."""
    _round_trip(tmp_path, ["sdp-nn"], 20, verifiers="ibp,lp,crown,spectral")
    net, _ = models.load("sdp-nn")
    again, _ = models.load(str(tmp_path / "sdp-nn.onnx"))
    assert set(again.certificates) == set(net.certificates) and len(net.certificates) == 45
    assert all(torch.equal(again.certificates[k], net.certificates[k]) for k in net.certificates)


@pytest.mark.slow
def test_every_shipped_network_exported_and_imported_gives_the_same_leaderboard(tmp_path):
    """The issue's round trip: every shipped network, 100 images (about 2 minutes)."""
    _round_trip(tmp_path, models.shipped_names(), 100)


def test_shipped_and_imported_networks_satisfy_the_network_protocol(tmp_path):
    from bench.contract import Network
    net, _ = models.load("lp-nn")
    path = tmp_path / "lp.onnx"
    export_onnx(net, path, input_shape=(1, 28, 28))
    again, _ = models.load(str(path))
    for candidate in (net, again, net.float64_copy()):
        assert isinstance(candidate, Network)
        assert candidate.widths == [784, 500, 10] and candidate.hidden_layers == 1
