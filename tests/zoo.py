"""The registry as the tests walk it."""
from __future__ import annotations

from resnetlab import ConfigError, ResNetConfig
from resnetlab.models import HRNetConfig, model_config

# Above 300M parameters: checked by parameter count and key shapes on the meta device only
# (tests/test_reference_equivalence.py asserts this set is exactly those), since running one takes
# gigabytes and tens of seconds.
LARGEST = {"resnext101_32x32d", "resnetv2_101x3_bit", "resnetv2_152x4_bit"}  # 469M, 388M, 937M
LARGEST_PARAMS = 300_000_000


def narrow(name: str, factor: int = 4) -> dict:
    """Options that build ``name`` with its widths divided by ``factor`` (or by less, where a quarter of a
    width would not split into its groups): the same depth, blocks, stem, shortcuts and attention, for the
    registry-wide tests that check what the structure computes. Sizes are checked at full width, on the
    meta device (test_registry, test_reference_equivalence)."""
    config = model_config(name)
    if isinstance(config, HRNetConfig):  # its branches and stage 1; the head's widths are fixed
        return dict(widths=tuple(max(4, width // factor) for width in config.widths),
                    stage1_channels=max(4, config.stage1_channels // factor),
                    stem_width=max(4, config.stem_width // factor))
    if config.mid_channels is not None:
        return {}  # widths set block by block (a pruned net) are its own
    options = dict(channels=tuple(max(4, width // factor) for width in config.channels),
                   stem_channels=max(4, config.stem_channels // factor), stem_width=max(4, config.stem_width // factor))
    try:
        model_config(name, **options)
    except ConfigError:
        return narrow(name, factor // 2) if factor > 1 else {}
    return options


def shallow_narrow(name: str) -> dict:
    """``narrow`` with at most two blocks a stage (where widths are not set per block): what a test of a
    transformation needs (a first block with its shortcut, a repeated one), not the depth of a 400-layer net."""
    options = narrow(name)
    config = model_config(name)
    if isinstance(config, ResNetConfig) and config.mid_channels is None:
        options["layers"] = tuple(min(2, n) for n in config.layers)
    return options
