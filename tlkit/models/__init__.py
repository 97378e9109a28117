"""timm backbones: layer groups, building a trial's model, loading weights into it (backbones.py), and where starting
weights come from (weights.py)."""
