"""razor-robot: measure what fine-tuning costs a robot policy (RL's Razor on VLA policies in simulation)."""

import os as _os

# torch's OpenMP threads spin while they wait for each other (libgomp: 300,000 spins, then sleep). When another
# process holds one of the cores, the spinning thread steals the time its partner needs: on 2 cores, 2-thread SFT
# of the tiny policy fell from 17.7 to 1.7 optimiser steps/s beside one busy-loop process. With 2,000 spins it
# runs 13.2 steps/s alone and 6.8 beside the busy process (1.9x); OMP_WAIT_POLICY=PASSIVE (no spinning) costs
# half the speed alone (9.2). Measured with scripts/bench_training.py --skip-env --busy. libgomp reads this when
# it loads, so it applies when razor_robot is imported before torch (the CLI, the scripts, the tests).
_os.environ.setdefault("GOMP_SPINCOUNT", "2000")
