"""The experiment: a sweep config in, records and a report out.

    schema   the typed sweep config (SweepConfig and its sections; config.py loads YAML into it)
    plan     SweepPlan: the facts of a sweep computed once (evaluation counts and positions, inference policy)
    loading  loading a policy as the config says, the per-backend action adapter
    cost     `razor-robot plan`: runs, episodes, steps, disk, memory and GPU-hours of a config
    sweep    run_sweep: the stages in order, resumable
    stages/  demos, base, finetune, evaluate, report
"""
