import os
def pinned_train_rank(payload, ctx):
    os.sched_setaffinity(0, {ctx.rank % os.cpu_count()})
    from pipelines.bench.ranks import timed_train_rank
    return timed_train_rank(payload, ctx)
