"""Fine-tuning strategies as plugins: ``@register_strategy`` on a small class, one file each.

Third-party packages add strategies through the ``tlkit.strategies`` entry-point group; an experiment file can
register its own with the same decorator.
"""
from tlkit.strategies.base import Strategy, check_plan
from tlkit.strategies._registry import (STRATEGIES, create_strategy, get_strategy, list_strategies,
                                        register_strategy)

# Built-ins, imported explicitly so `ls tlkit/strategies` is the list.
from tlkit.strategies import (bitfit, from_scratch, full_finetune, gradual, l2_sp, last_n,  # noqa: F401
                              layer_decay, linear_probe, lora, lp_ft, surgical)

__all__ = ["Strategy", "STRATEGIES", "register_strategy", "list_strategies", "get_strategy", "create_strategy",
           "check_plan"]
