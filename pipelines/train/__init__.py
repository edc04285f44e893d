"""Training stage: Horovod data-parallel training in one barrier-mode Spark stage.

``driver`` runs on the Spark driver (plans the job, launches the ranks, retries); ``job`` is the
typed contract it hands to every rank; ``rank`` is one rank's training loop (in the rank process,
no Spark); ``loader`` streams the rank's Petastorm shard into batches; ``checkpoint`` saves and
finds resumable state.
"""
