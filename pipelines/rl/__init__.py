"""Reinforcement learning: PPO with rollouts collected in parallel by Spark tasks.

``job.py`` is the driver (``dlpipe rl``), ``rollout.py`` the actor side (imports no pyspark),
``gae.py`` and ``ppo.py`` the learner's pure pieces, ``evaluate.py`` greedy evaluation and
``dlpipe rl-eval`` (a cloned classifier in the environment).
"""
