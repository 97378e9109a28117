"""What a study compares: ``experiment`` (the schema and its checks), ``types`` (the field type checker),
``loading`` (experiment files and ``--set``), ``identity`` (what makes two runs the same study)."""
