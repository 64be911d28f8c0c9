"""Speed and size measurements of the project against its baselines, as ratios in one run."""
