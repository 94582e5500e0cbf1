"""Rollouts: episodes in, trajectories out, the simulator kept busy.

    episodes      EpisodeRequest, Trajectory, BatchPolicy: the types every engine and policy shares
    pool          EnvPool, the main engine (env worker processes, policy and simulation overlapped); rollout()
    lockstep      the lockstep engine over any Gymnasium vector env (the Ray engine and the tests' reference)
    ray_envs      env workers as Ray actors
    demonstrator  per-episode demonstrators as one BatchPolicy
    actor         a VLA as a BatchPolicy (sample tokens, decode, adapt to the env); needs torch

The names below are the folder's public API (torch-free, so the backend-independent tests import them).
Modules inside the folder import each other by module, never through this file.
"""

from razor_robot.rollout.demonstrator import DemonstratorPolicy
from razor_robot.rollout.episodes import BatchPolicy, EpisodeRequest, Trajectory
from razor_robot.rollout.lockstep import default_env_factory, lockstep_rollout, make_vector_env
from razor_robot.rollout.pool import ROLLOUT_TOTALS, EnvPool, rollout, usable_cpus

__all__ = ["BatchPolicy", "DemonstratorPolicy", "EnvPool", "EpisodeRequest", "ROLLOUT_TOTALS", "Trajectory",
           "default_env_factory", "lockstep_rollout", "make_vector_env", "rollout", "usable_cpus"]
