"""The stages of an RL's Razor sweep, one module each, in the order ``razor_robot.experiment.sweep.run_sweep``
runs them:

    demos      K successful episodes per training-grid point: the demonstrator's (SFT), the base policy's own
               (oracle-SFT: pi0 conditioned on success) or the best RL checkpoint's (distill-SFT)
    base       the base policy pi0 (a given checkpoint, or pretrained here), its evaluation and the fixed
               observation sets every checkpoint is measured on
    finetune   one fine-tuning run (SFT on a dataset, or REINFORCE), checkpoints saved, the live forgetting meter
    evaluate   one record per checkpoint: success with intervals, forgetting, action-token distances, predictors
    report     frontier, verdict, Table 1, plots, videos, summary.txt

What every stage shares (loading a policy as the config says, the per-backend action adapter) is
``razor_robot.experiment.loading``.
"""
