"""razor-robot: measure what fine-tuning costs a robot policy (RL's Razor on VLA policies in simulation).

The folders are the architecture (docs/ARCHITECTURE.md); imports run downward only:

    cli.py        the command line
    experiment/   the sweep: config schema, the plan every stage reads, the stages in order
    training/     SFT and REINFORCE, one file each, and what they share
    measure/      evaluation, action-token distances, Table 1's predictors, the forgetting meter
    report/       records, statistics, frontier, verdict, Table 1, summary, plots, videos
    rollout/      episodes, the env-pool engine, the lockstep engine, Ray env workers, actors
    io.py         the one atomic writer, strict JSON          config.py   YAML -> typed config
    envs/, policies/ (installed as razor_robot.envs, razor_robot.policies): simulators and models
"""

import os as _os

# torch's OpenMP threads spin while they wait for each other; beside another busy process on few cores the
# spinning steals the time the partner thread needs (10x slower SFT on 2 cores; docs/design-notes.md). 2,000
# spins keeps most of the speed alone. libgomp reads this when it loads, so it applies when razor_robot is
# imported before torch (the CLI, the scripts, the tests).
_os.environ.setdefault("GOMP_SPINCOUNT", "2000")
