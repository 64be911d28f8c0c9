"""StNet training, evaluation and export on MindRecord shards."""
