"""``edgeloop models push FILE --model M --features DEF.json`` against a real coordinator: the definition is
checked (the field and value named) and goes into the signed manifest edges load."""
import json
import socket

from edgeloop.cli import main
from edgeloop.config import load_cloud_config
from edgeloop.coordinator import Coordinator
from edgeloop.features import FeatureDefinition
from edgeloop.serving.feature_models import build_feature_linear

DEFINITION = {"version": 1, "entity": "meter", "inputs": ["a", "b"],
              "features": [{"op": "mean", "col": "a", "k": 6}, {"op": "label_lag", "k": 1}]}


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class Out:
    def __init__(self, returncode: int, captured) -> None:
        self.returncode, self.stdout, self.stderr = returncode, captured.out, captured.err


def edgeloop(capsys, *args) -> Out:
    """The command's real entry point, in this process (a subprocess per call costs seconds here)."""
    code = main([str(a) for a in args])
    return Out(code, capsys.readouterr())


def test_push_with_features_puts_the_definition_in_the_manifest_and_refuses_a_bad_one(tmp_path, capsys):
    config_path = tmp_path / "cloud.toml"
    config_path.write_text(f'[node]\nhost = "127.0.0.1"\ngrpc_port = {free_port()}\nmetrics_port = {free_port()}\n'
                           '[storage]\ndatabase = "data/coord.sqlite"\n[training]\nenabled = false\n')
    cloud = Coordinator(load_cloud_config(config_path)).start()
    try:
        model = tmp_path / "m.onnx"
        model.write_bytes(build_feature_linear(4, seed=1).SerializeToString())
        good, wrong_width, bad_op = (tmp_path / f"{n}.json" for n in ("good", "wide", "op"))
        good.write_text(json.dumps(DEFINITION))
        wrong_width.write_text(json.dumps({**DEFINITION, "inputs": ["a", "b", "c"]}))
        bad_op.write_text(json.dumps({**DEFINITION, "features": [{"op": "median", "col": "a", "k": 3}]}))
        out = edgeloop(capsys, "models", "push", model, "--model", "fm", "--config", config_path, "--features", bad_op)
        assert out.returncode == 1 and "INVALID_ARGUMENT" in out.stderr and "features_json" in out.stderr \
            and "features[0].op" in out.stderr and "median" in out.stderr, out.stderr
        out = edgeloop(capsys, "models", "push", model, "--model", "fm", "--config", config_path,
                       "--features", wrong_width)
        assert out.returncode == 1 and "float input [batch, 5]" in out.stderr, out.stderr
        out = edgeloop(capsys, "models", "push", model, "--model", "fm", "--config", config_path, "--features",
                       tmp_path / "missing.json")
        assert out.returncode == 2 and "--features" in out.stderr and "cannot be read" in out.stderr, out.stderr
        assert [p for p in cloud.store.published_models() if p.model == "fm"] == []
        out = edgeloop(capsys, "models", "push", model, "--model", "fm", "--config", config_path, "--features", good)
        assert out.returncode == 0 and "with its feature definition" in out.stdout, out.stderr
        manifest = cloud.core.rollouts.manifest("fm", 1)
        assert manifest["features"] == FeatureDefinition.from_dict(DEFINITION).to_dict()
        # without --features the manifest declares none (the edge serves the graph's own input)
        out = edgeloop(capsys, "models", "push", model, "--model", "fm", "--config", config_path)
        assert out.returncode == 0 and "features" not in cloud.core.rollouts.manifest("fm", 2)
    finally:
        cloud.stop(1.0)
