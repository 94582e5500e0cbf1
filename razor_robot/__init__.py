"""razor-robot: measure what fine-tuning costs a robot policy (RL's Razor on VLA policies in simulation)."""

import os as _os

# OpenMP threads that wait by spinning (libgomp's default) stall whenever one of them is descheduled: with any
# other process busy on one of 2 cores, 2-thread SFT of the tiny policy fell from ~9 to ~0.4 optimiser steps/s.
# Sleeping waits cost nothing measurable here (scripts/bench_training.py --busy). libgomp reads this when it
# loads, so it takes effect when razor_robot is imported before torch (the CLI, the tests); set it yourself
# otherwise.
_os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")
