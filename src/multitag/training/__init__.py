"""Training loops: heads on cached features and fine-tuning above a freeze point."""
