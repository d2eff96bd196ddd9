"""What a sweep is before it runs: the spec and its trials, the planner, the early-stopping study, data checks."""
