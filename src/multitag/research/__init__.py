"""Research tools: the transfer-learning study and learning curves."""
