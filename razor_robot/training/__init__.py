"""Fine-tuning: one file per algorithm, and what they share.

    sft            supervised fine-tuning on demonstration action tokens (train_sft)
    reinforce      REINFORCE and its variants, cut at the paper's steps (train_reinforce)
    optim          the optimiser recipe and set-up, the checkpoint schedule, action-token targets, augmentation
    distributed    accelerate (DDP/FSDP) helpers: main-process work, micro-batches, the rollout copy
    dataset        DemoDataset, the in-memory steps SFT trains on
    data           collecting demonstrations (through razor_robot.rollout), saving and loading datasets
    lerobot_format LeRobotDataset v3.0 directories, read and written with pyarrow
"""
