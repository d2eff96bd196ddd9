"""What a run will be: its TrainConfig, the data and architecture rules, and how `auto` settings resolve.

Torch-free and import-light (pydantic, pyyaml): the planner, cost_models and train_core all read it, and it
imports none of them.
"""
