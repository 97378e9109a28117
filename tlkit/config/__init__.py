"""What a study compares: the Experiment and its parts, loading an experiment file, ``--set`` overrides, identity."""
