"""Measuring a checkpoint: what the records hold.

    evaluation  success on the new task and the prior tasks, paired episodes, intervals (through rollouts)
    distances   action-token distances between two policies: forward/reverse KL, TV, L2
    predictors  Table 1's alternative forgetting predictors (weight change, Fisher, CKA, ...)
    meter       the live forgetting meter: forward KL during training, forecasts from finished runs
"""
