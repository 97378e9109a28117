"""The Optuna edge: the storage (storage.py), one study per cell (study.py), a cell's queue of runs (queue.py), the
liveness of the workers holding trials (workers.py), a trial's objective (objective.py), each cell's best
configuration trained again (repeats.py) and exported (export.py), and every use of Optuna internals (_optuna.py)."""
