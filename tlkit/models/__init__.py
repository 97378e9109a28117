"""timm backbones: layer groups, building a trial's model, loading weights into it (backbones.py), where starting
weights come from (weights.py), and every use of timm's private API (_timm.py)."""
