"""One trial without Optuna: the fit loop (loop.py), frozen features and prefixes kept on disk, compute settings,
checkpoints, the trial folder's mirror (store.py), the runner that ties them together, source pretraining, threads
and the best model's export."""
