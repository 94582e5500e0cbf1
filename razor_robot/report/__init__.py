"""From records to conclusions: nothing here rolls out or trains (no torch; plots need matplotlib).

    records   results.jsonl: strict JSON records, read and appended atomically
    stats     Wilson intervals, bootstraps (paired, hierarchical), drawdown probabilities
    frontier  Pareto frontiers, exponential fits, the forgetting-vs-distance fit
    verdict   success with intervals, the paired bootstrap, the verdict at matched new-task success
    table1    R² with CIs of every predictor (Table 1)
    bases     several bases: per-base verdicts and their pooled mean
    summary   summary.txt and `razor-robot frontier`
    plots     frontier.png and kl_forgetting.png
    video     MP4s of rollouts and side-by-side comparisons
"""
