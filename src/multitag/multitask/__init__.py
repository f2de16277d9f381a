"""Multi-task heads, losses and (later) sharing strategies on top of a backbone."""
