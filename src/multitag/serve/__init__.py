"""The catalogue API (FastAPI) and the explorer page."""
