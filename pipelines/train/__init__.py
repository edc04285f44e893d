"""Training stage: distributed PyTorch training in one barrier-mode Spark stage.

``train.strategy`` picks how a step runs across ranks (``strategies/``: Horovod, DDP, FSDP,
pipeline). ``driver`` runs on the Spark driver (validates, plans the job, launches the ranks with
the strategy's rendezvous, retries); ``job`` is the typed contract it hands to every rank; ``rank``
is one rank's training loop (in the rank process, no Spark); ``loader`` streams the rank's
Petastorm shard into batches; ``checkpoint`` is the checkpoint format; ``warm`` the warm start.
"""
