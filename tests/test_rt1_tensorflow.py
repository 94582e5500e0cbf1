"""TensorFlow is configured (device, GPU memory cap) before its first op, so RT-1 in a training process cannot
take the memory of the policy's GPU. A fake ``tensorflow``/``tensorflow_hub``/``tf_agents`` stack records every
call in order, including what each module's import runs."""

import importlib.abc
import importlib.util
import sys
import types

import numpy as np
import pytest

from razor_robot.policies import rt1_demonstrator as rt1

FAKE_ROOTS = ("tensorflow", "tensorflow_hub", "tf_agents")


class FakeTFStack(importlib.abc.MetaPathFinder, importlib.abc.Loader):
    """Imports of the three packages resolve to recording fakes; ``calls`` is the ordered log."""

    def __init__(self, gpus=("GPU:0", "GPU:1")):
        self.calls: list[tuple] = []
        self.gpus = list(gpus)

    def find_spec(self, name, path, target=None):
        if name.split(".")[0] in FAKE_ROOTS:
            return importlib.util.spec_from_loader(name, self, is_package=True)
        return None

    def create_module(self, spec):
        return None

    def op(self, name):
        def run(*args, **kwargs):
            self.calls.append(("op", name))
            return args[0] if args else None
        return run

    def exec_module(self, module):
        name = module.__name__
        self.calls.append(("import", name))
        record = self.calls.append
        if name == "tensorflow":
            config = types.SimpleNamespace(
                list_physical_devices=lambda kind: record(("config", "list_physical_devices")) or list(self.gpus),
                set_visible_devices=lambda devices, kind: record(("config", "set_visible_devices", devices)),
                set_logical_device_configuration=lambda d, c: record(("config", "logical_device", d, c)),
                LogicalDeviceConfiguration=lambda memory_limit: ("limit", memory_limit),
                experimental=types.SimpleNamespace(
                    set_memory_growth=lambda d, on: record(("config", "memory_growth", d, on))))
            module.config = config
            module.image = types.SimpleNamespace(resize_with_pad=self.op("resize_with_pad"))
            module.cast = self.op("cast")
            module.uint8 = "uint8"
        elif name == "tensorflow_hub":
            module.load = lambda path: self.op("hub.load")() or (lambda texts: [np.zeros(512)])
        elif name == "tf_agents":
            self.op("tf_agents import-time constant")()  # the real package builds tensors when imported
            module.specs = types.SimpleNamespace(zero_spec_nest=lambda x: {}, from_spec=lambda x: x)
        elif name.endswith("py_tf_eager_policy"):
            outer = self

            class SavedModelPyTFEagerPolicy:
                def __init__(self, **kwargs):
                    outer.op("load saved model")()
                    self.time_step_spec = types.SimpleNamespace(observation={})

                def get_initial_state(self, batch_size):
                    return None

                def action(self, time_step, state):
                    outer.op("policy.action")()
                    zeros = {"world_vector": np.zeros(3), "rotation_delta": np.zeros(3),
                             "gripper_closedness_action": np.zeros(1), "terminate_episode": np.zeros(3)}
                    return types.SimpleNamespace(action=zeros, state=state)

            module.SavedModelPyTFEagerPolicy = SavedModelPyTFEagerPolicy
        elif name.endswith("time_step"):
            module.transition = lambda observation, reward: observation


@pytest.fixture
def fake_tf(monkeypatch, tmp_path):
    for name in [m for m in sys.modules if m.split(".")[0] in FAKE_ROOTS]:
        monkeypatch.delitem(sys.modules, name)
    stack = FakeTFStack()
    monkeypatch.setattr(sys, "meta_path", [stack, *sys.meta_path])
    monkeypatch.setattr(rt1, "_TF_CONFIGURED", {})
    monkeypatch.setattr(rt1, "_RUNTIMES", {})
    (tmp_path / "saved_model.pb").write_bytes(b"")
    yield stack, tmp_path
    for name in [m for m in sys.modules if m.split(".")[0] in FAKE_ROOTS]:
        del sys.modules[name]


def _first(calls, kind):
    return next(i for i, call in enumerate(calls) if call[0] == kind)


@pytest.mark.core
def test_tensorflow_gets_its_gpu_and_memory_cap_before_its_first_op(fake_tf, monkeypatch):
    stack, checkpoint = fake_tf
    monkeypatch.setenv("LOCAL_RANK", "1")
    demo = rt1.RT1Demonstrator("pick-can", checkpoint, tf_memory_limit_mb=2048)
    demo.act({"image": np.zeros((8, 8, 3), np.uint8)})
    configs = [c for c in stack.calls if c[0] == "config"]
    # This rank's GPU only (never GPU 0 for every rank), with SimplerEnv's kind of cap, set before any op and
    # before tensorflow_hub / tf_agents are imported.
    assert configs == [("config", "list_physical_devices"), ("config", "set_visible_devices", ["GPU:1"]),
                       ("config", "logical_device", "GPU:1", [("limit", 2048)])]
    last_config = max(i for i, c in enumerate(stack.calls) if c[0] == "config")
    assert last_config < _first(stack.calls, "op")
    assert last_config < stack.calls.index(("import", "tensorflow_hub"))
    assert last_config < stack.calls.index(("import", "tf_agents"))
    assert ("op", "policy.action") in stack.calls  # the fake stack really ran RT-1's ops afterwards


@pytest.mark.core
def test_tensorflow_memory_growth_cpu_and_conflicting_settings(fake_tf, monkeypatch):
    stack, checkpoint = fake_tf
    monkeypatch.delenv("LOCAL_RANK", raising=False)
    rt1.RT1Demonstrator("pick-can", checkpoint, tf_memory_limit_mb=None)
    assert ("config", "memory_growth", "GPU:0", True) in stack.calls
    assert not [c for c in stack.calls if c[1] == "logical_device"]
    # TF's settings are per process: a second demonstrator asking for others fails in one line.
    with pytest.raises(ValueError, match="already configured"):
        rt1.RT1Demonstrator("pick-can", checkpoint, tf_device="cpu")
    monkeypatch.setattr(rt1, "_TF_CONFIGURED", {})
    stack.calls.clear()
    rt1.import_rt1_stack(rt1.TFRuntimeOptions(device="cpu"))
    assert ("config", "set_visible_devices", []) in stack.calls


@pytest.mark.core
def test_tensorflow_options_are_checked_first(tmp_path):
    with pytest.raises(ValueError, match="tf_device must be one of gpu, cpu, got 'tpu'"):
        rt1.RT1Demonstrator("pick-can", tmp_path, tf_device="tpu")
    with pytest.raises(ValueError, match="tf_memory_limit_mb must be an integer >= 64"):
        rt1.RT1Demonstrator("pick-can", tmp_path, tf_memory_limit_mb=0.5)
