"""What a results folder holds, rebuilt from the storage: CSV tables, plots, TensorBoard runs, the live progress."""
