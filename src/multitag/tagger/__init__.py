"""The multi-task tagger: estimator, batch tagging, persistence, model ensembles, export."""
