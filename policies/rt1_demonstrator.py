"""RT-1 demonstrator: a released RT-1 checkpoint acting by SimplerEnv's conventions.

The paper path collects new-task demonstrations in SimplerEnv with RT-1 (e.g. RT-1-X,
``rt_1_x_tf_trained_for_002272480_step``). This adapter loads the TF SavedModel with tf_agents, embeds the
instruction with the Universal Sentence Encoder (large/5), and converts RT-1's output the way SimplerEnv's
``simpler_env/policies/rt1/rt1_model.py`` does for ``policy_setup="google_robot"``:

- image: the env's native 512 x 640 frame (``obs["image_native"]``, from a simpler env built with
  ``native_image=True``) resized once with ``tf.image.resize_with_pad`` to RT-1's 256 x 320 input, exactly
  SimplerEnv's ``_resize_image``; without that key the policy frame ``obs["image"]`` is used instead (a
  deviation: it has already been resized once);
- ``world_vector`` (metres) * action_scale -> xyz delta;
- ``rotation_delta`` is already axis-angle: axis * angle * action_scale (a rotation under 1e-6 rad keeps
  its angle on the y axis, as SimplerEnv writes it);
- ``gripper_closedness_action`` in [-1, 1], > 0 closes, with |g| < 0.01 zeroed (SimplerEnv's small-action
  filter), passed through uninverted for the Google Robot;
- ``terminate_episode``: SimplerEnv's evaluator executes the action of the step on which RT-1 predicts it,
  then stops and judges success on that step. Here :attr:`RT1Demonstrator.done` turns True after that action
  (``terminate_on_predict``, on by default): the rollout must send the action, end the episode, and take the
  success flag of that step; further ``act`` calls return the no-op action (zeros: hold still, keep the
  gripper) so that a rollout that cannot stop early leaves the scene as it is.

The stored SFT labels are not these env actions: convert each episode with
``razor_robot.policies.adapters.env_actions_to_openvla_labels`` (OpenVLA's fractal convention).

Needs tensorflow, tensorflow_hub and tf_agents (the ``simpler`` extra) and a local checkpoint directory
(``gsutil -m cp -r gs://gdm-robotics-open-x-embodiment/open_x_embodiment_and_rt_x_oss/<name> .``). The
sentence encoder comes from TF Hub (cached under $TFHUB_CACHE_DIR) or from a local copy passed as
``lang_embed_model_path``.
"""

from __future__ import annotations

import importlib
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Dict, Mapping, Optional, Tuple

import numpy as np

RT1_IMAGE_HW: Tuple[int, int] = (256, 320)
USE_LARGE_URL = "https://tfhub.dev/google/universal-sentence-encoder-large/5"
POLICY_SETUPS: Tuple[str, ...] = ("google_robot",)
# SimplerEnv's default instruction per razor-robot task; drawer tasks name the drawer, known only per episode.
DEFAULT_INSTRUCTIONS: Dict[str, Optional[str]] = {
    "pick-can": "pick coke can",
    "open-drawer": None,
    "close-drawer": None,
}
GRIPPER_DEADBAND = 1e-2
ROTATION_EPS = 1e-6
INSTALL_HINT = (
    "install the RT-1 stack in the SimplerEnv Python env: "
    "pip install 'tensorflow>=2.15,<2.16' 'tf-agents>=0.19,<0.20' tensorflow-hub"
)


class MissingDependencyError(ImportError):
    """A package the RT-1 demonstrator needs is not installed; the message says how to install it."""

    def __init__(self, package: str, hint: str) -> None:
        super().__init__(f"{package} is not installed; {hint}")
        self.package = package
        self.hint = hint


# ---------------------------------------------------------------------------------------------------------
# Pure conversion logic (numpy only)
# ---------------------------------------------------------------------------------------------------------


def filter_small_gripper(gripper: np.ndarray) -> np.ndarray:
    """Zero gripper commands with |g| < 0.01 (SimplerEnv's Google-Robot small-action filter)."""
    g = np.asarray(gripper, dtype=np.float64)
    return np.where(np.abs(g) < GRIPPER_DEADBAND, 0.0, g)


def rotation_delta_to_axis_angle(rotation_delta: np.ndarray, action_scale: float = 1.0) -> np.ndarray:
    """RT-1's (3,) axis-angle rotation delta -> env rotation, scaled by action_scale.

    A near-zero rotation (norm <= 1e-6) is written as its norm about the y axis, exactly as SimplerEnv does.
    """
    r = np.asarray(rotation_delta, dtype=np.float64)
    angle = float(np.linalg.norm(r))
    axis = r / angle if angle > ROTATION_EPS else np.array([0.0, 1.0, 0.0])
    return axis * angle * action_scale


def rt1_env_action(raw_action: Mapping[str, Any], action_scale: float = 1.0) -> np.ndarray:
    """RT-1 output (world_vector (3,), rotation_delta (3,), gripper_closedness_action (1,)) -> env (7,)."""
    world = np.asarray(raw_action["world_vector"], dtype=np.float64).reshape(3) * action_scale
    rotation = rotation_delta_to_axis_angle(np.reshape(raw_action["rotation_delta"], 3), action_scale)
    gripper = filter_small_gripper(np.reshape(raw_action["gripper_closedness_action"], 1))
    return np.concatenate([world, rotation, gripper])  # (3 + 3 + 1,)


def rt1_terminate(raw_action: Mapping[str, Any]) -> bool:
    """Whether RT-1 asks to end the episode (first entry of its terminate_episode one-hot > 0)."""
    return bool(np.reshape(raw_action["terminate_episode"], -1)[0] > 0)


def check_checkpoint_dir(checkpoint_dir: Any) -> Path:
    """The RT-1 SavedModel directory as a Path, or a one-line FileNotFoundError."""
    path = Path(checkpoint_dir).expanduser()
    if not path.is_dir():
        raise FileNotFoundError(f"RT-1 checkpoint directory {str(path)!r} does not exist")
    if not (path / "saved_model.pb").is_file():
        raise FileNotFoundError(f"{str(path)!r} is not an RT-1 SavedModel directory (no saved_model.pb)")
    return path


# ---------------------------------------------------------------------------------------------------------
# TensorFlow's GPU settings: process-wide, fixed by TF's first op
# ---------------------------------------------------------------------------------------------------------

TF_DEVICES: Tuple[str, ...] = ("gpu", "cpu")
DEFAULT_TF_MEMORY_LIMIT_MB = 3072  # SimplerEnv's --tf-memory-limit default


@dataclass(frozen=True)
class TFRuntimeOptions:
    """Where TensorFlow (RT-1 and its sentence encoder) may run in this process, and how much GPU memory it may
    take. TF otherwise reserves nearly all of every visible GPU's memory at its first op, which in a training
    process leaves the policy's rank without memory (SimplerEnv's ``main_inference.py`` sets a limit first)."""

    memory_limit_mb: Optional[int] = DEFAULT_TF_MEMORY_LIMIT_MB
    """Hard cap on TF's memory on its GPU (a logical device of this size, as SimplerEnv); None: no cap, but
    memory growth (TF takes memory as it needs it instead of all at once)."""
    device: str = "gpu"
    """"gpu": the GPU of this process's LOCAL_RANK (accelerate/torchrun), so ranks never share GPU 0; "cpu":
    TF sees no GPU at all."""

    def __post_init__(self) -> None:
        if self.device not in TF_DEVICES:
            raise ValueError(f"tf_device must be one of {', '.join(TF_DEVICES)}, got {self.device!r}")
        limit = self.memory_limit_mb
        if limit is not None and (isinstance(limit, bool) or not isinstance(limit, int) or limit < 64):
            raise ValueError(f"tf_memory_limit_mb must be an integer >= 64 or null, got {limit!r}")


_TF_CONFIGURED: Dict[str, TFRuntimeOptions] = {}


def configure_tensorflow(tf: Any, options: TFRuntimeOptions) -> None:
    """Apply ``options`` to the imported ``tf`` module before any TF op, once per process.

    TF fixes its device list and memory settings at its first op and refuses changes afterwards, so this runs
    straight after ``import tensorflow`` and before tensorflow_hub or tf_agents (whose imports may run ops).
    """
    if "options" in _TF_CONFIGURED:
        if _TF_CONFIGURED["options"] != options:
            raise ValueError(f"TensorFlow is already configured in this process with {_TF_CONFIGURED['options']}; "
                             f"cannot switch to {options}")
        return
    gpus = tf.config.list_physical_devices("GPU")
    if options.device == "cpu" or not gpus:
        tf.config.set_visible_devices([], "GPU")
    else:
        gpu = gpus[int(os.environ.get("LOCAL_RANK", "0")) % len(gpus)]
        tf.config.set_visible_devices([gpu], "GPU")
        if options.memory_limit_mb is None:
            tf.config.experimental.set_memory_growth(gpu, True)
        else:  # a logical device excludes memory growth on the same GPU: the limit is the cap
            tf.config.set_logical_device_configuration(
                gpu, [tf.config.LogicalDeviceConfiguration(memory_limit=options.memory_limit_mb)])
    _TF_CONFIGURED["options"] = options


def import_rt1_stack(tf_options: Optional[TFRuntimeOptions] = None) -> Dict[str, Any]:
    """tensorflow (configured by ``tf_options`` before anything else touches it, see
    :func:`configure_tensorflow`), tensorflow_hub and the tf_agents pieces, or MissingDependencyError with an
    install hint."""
    try:
        tf = importlib.import_module("tensorflow")
    except ImportError as exc:
        raise MissingDependencyError("tensorflow", INSTALL_HINT) from exc
    configure_tensorflow(tf, tf_options or TFRuntimeOptions())
    names = {
        "tf": "tensorflow",
        "hub": "tensorflow_hub",
        "tf_agents": "tf_agents",
        "eager_policy": "tf_agents.policies.py_tf_eager_policy",
        "time_step": "tf_agents.trajectories.time_step",
    }
    modules = {}
    for key, name in names.items():
        try:
            modules[key] = importlib.import_module(name)
        except ImportError as exc:
            raise MissingDependencyError(name.split(".")[0], INSTALL_HINT) from exc
    return modules


# ---------------------------------------------------------------------------------------------------------
# TensorFlow runtime (shared between demonstrators: loading a checkpoint takes tens of seconds)
# ---------------------------------------------------------------------------------------------------------


class RT1Runtime:
    """A loaded RT-1 SavedModel policy and sentence encoder; stateless, so demonstrators can share one."""

    def __init__(self, checkpoint_dir: Path, lang_embed_model_path: str) -> None:
        self.m = import_rt1_stack(_TF_CONFIGURED.get("options"))  # configured by the demonstrator already
        self.policy = self.m["eager_policy"].SavedModelPyTFEagerPolicy(
            model_path=str(checkpoint_dir), load_specs_from_pbtxt=True, use_tf_function=True
        )
        self.encoder = self.m["hub"].load(lang_embed_model_path)

    def embed(self, instruction: str) -> Any:
        return self.encoder([instruction])[0]  # (512,)

    def initial_state(self) -> Tuple[Dict[str, Any], Any]:
        """(zero observation dict matching the policy's spec, initial recurrent policy state)."""
        specs = self.m["tf_agents"].specs
        observation = specs.zero_spec_nest(specs.from_spec(self.policy.time_step_spec.observation))
        return observation, self.policy.get_initial_state(batch_size=1)

    def step(self, observation: Dict[str, Any], image: np.ndarray, embedding: Any, state: Any):
        """One forward pass -> (raw action dict of numpy arrays, next policy state)."""
        tf = self.m["tf"]
        height, width = RT1_IMAGE_HW
        resized = tf.image.resize_with_pad(image, target_height=height, target_width=width)  # (256, 320, 3)
        resized = tf.cast(resized, tf.uint8)  # as SimplerEnv's RT1Inference._resize_image
        observation["image"] = resized
        observation["natural_language_embedding"] = embedding
        time_step = self.m["time_step"].transition(observation, reward=np.zeros((), dtype=np.float32))
        policy_step = self.policy.action(time_step, state)
        raw = {key: np.asarray(value) for key, value in policy_step.action.items()}
        return raw, policy_step.state


_RUNTIMES: Dict[Tuple[str, str], RT1Runtime] = {}


def load_runtime(checkpoint_dir: Path, lang_embed_model_path: str) -> RT1Runtime:
    """The process-wide RT1Runtime for a checkpoint, loaded on first use."""
    key = (str(checkpoint_dir.resolve()), lang_embed_model_path)
    if key not in _RUNTIMES:
        _RUNTIMES[key] = RT1Runtime(checkpoint_dir, lang_embed_model_path)
    return _RUNTIMES[key]


# ---------------------------------------------------------------------------------------------------------
# The demonstrator
# ---------------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class RT1DemonstratorConfig:
    """Arguments of :class:`RT1Demonstrator`, checked before any file or package is touched."""

    task: str
    """razor-robot task: "pick-can", "open-drawer" or "close-drawer"."""
    policy_setup: str = "google_robot"
    """SimplerEnv policy setup; only the Google Robot is used by razor-robot."""
    instruction: Optional[str] = None
    """Instruction to start with; None = SimplerEnv's for pick-can, for drawers the one given to reset/act."""
    action_scale: float = 1.0
    """Multiplies the translation and rotation deltas (SimplerEnv's --action-scale)."""
    terminate_on_predict: bool = True
    """End the episode after the step on which RT-1 predicts terminate_episode (SimplerEnv's evaluator)."""
    tf: TFRuntimeOptions = TFRuntimeOptions()
    """TensorFlow's device and GPU memory cap in this process (``tf_memory_limit_mb``, ``tf_device``)."""

    def __post_init__(self) -> None:
        if self.task not in DEFAULT_INSTRUCTIONS:
            raise ValueError(f"unknown task {self.task!r}; expected one of {', '.join(DEFAULT_INSTRUCTIONS)}")
        if self.policy_setup not in POLICY_SETUPS:
            raise ValueError(
                f"unsupported policy_setup {self.policy_setup!r}; expected one of {POLICY_SETUPS}"
            )
        if not (
            isinstance(self.action_scale, (int, float))
            and np.isfinite(self.action_scale)
            and self.action_scale > 0
        ):
            raise ValueError(f"action_scale must be a positive number, got {self.action_scale!r}")
        if not isinstance(self.terminate_on_predict, bool):
            raise ValueError(f"terminate_on_predict must be a bool, got {self.terminate_on_predict!r}")


class RT1Demonstrator:
    """RT-1 acting on razor-robot observations: ``act(obs) -> (7,)`` SimplerEnv Google-Robot action.

    ``reset(instruction)`` starts an episode (fresh recurrent state); ``act(obs, instruction)`` also resets
    when the instruction changes, so a batch wrapper can pass the env's per-episode instruction. ``done``
    turns True after the action on which RT-1 predicted terminate_episode (see the module docstring).
    """

    def __init__(
        self,
        task: str,
        checkpoint_dir: Any,
        policy_setup: str = "google_robot",
        *,
        instruction: Optional[str] = None,
        lang_embed_model_path: str = USE_LARGE_URL,
        action_scale: float = 1.0,
        terminate_on_predict: bool = True,
        tf_memory_limit_mb: Optional[int] = DEFAULT_TF_MEMORY_LIMIT_MB,
        tf_device: str = "gpu",
    ) -> None:
        self.config = RT1DemonstratorConfig(
            task, policy_setup, instruction, action_scale, terminate_on_predict,
            TFRuntimeOptions(tf_memory_limit_mb, tf_device),
        )
        checkpoint = check_checkpoint_dir(checkpoint_dir)
        import_rt1_stack(self.config.tf)
        self.runtime = load_runtime(checkpoint, lang_embed_model_path)
        self.instruction: Optional[str] = None
        self.terminate_predicted = False
        self.last_raw_action: Optional[Dict[str, np.ndarray]] = None
        start = instruction if instruction is not None else DEFAULT_INSTRUCTIONS[task]
        if start is not None:
            self.reset(start)

    def reset(self, instruction: Optional[str] = None) -> None:
        """Start an episode with ``instruction`` (default: the current one, else the task's default)."""
        instruction = instruction or self.instruction or DEFAULT_INSTRUCTIONS[self.config.task]
        if instruction is None:
            raise ValueError(
                f"{self.config.task} needs an instruction naming the drawer, e.g. 'open top drawer'"
            )
        self.instruction = instruction
        self._embedding = self.runtime.embed(instruction)
        self._observation, self._state = self.runtime.initial_state()
        self.terminate_predicted = False

    @property
    def done(self) -> bool:
        """Whether the episode has ended: RT-1 predicted terminate_episode and terminate_on_predict is on."""
        return self.config.terminate_on_predict and self.terminate_predicted

    def act(self, obs: Mapping[str, Any], instruction: Optional[str] = None) -> np.ndarray:
        """uint8 obs["image_native"] (else obs["image"]) (H, W, 3) -> float64 (7,) env action.

        The instruction comes from the argument or, as the rollout passes it, from ``obs["instruction"]``.
        Once ``done``, returns the no-op action without running RT-1.
        """
        instruction = instruction if instruction is not None else obs.get("instruction")
        if instruction is not None and instruction != self.instruction:
            self.reset(instruction)
        if self.instruction is None:
            raise ValueError(f"{self.config.task} needs reset(instruction) or act(obs, instruction) first")
        if self.done:
            return np.zeros(7, dtype=np.float64)
        key = "image_native" if "image_native" in obs else "image"
        image = np.asarray(obs[key])
        if image.dtype != np.uint8 or image.ndim != 3 or image.shape[-1] != 3:
            raise ValueError(f"obs[{key!r}] must be uint8 (H, W, 3), got {image.dtype} {image.shape}")
        raw, self._state = self.runtime.step(self._observation, image, self._embedding, self._state)
        self.last_raw_action = raw
        self.terminate_predicted = self.terminate_predicted or rt1_terminate(raw)
        return rt1_env_action(raw, self.config.action_scale)
