"""The Optuna edge: storage and one study per cell (study.py), a trial's objective (objective.py), each cell's best
configuration trained again (repeats.py), and every use of Optuna internals (_optuna.py)."""
