"""Experiment workloads, configs, the runner CLI and its result files.

Run `python -m gradkit.experiments --config=experiments/configs/digits_mlp.py`;
the training itself is `gradkit.experiments.train.train_and_evaluate`.
"""
