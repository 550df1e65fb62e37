"""The registry as the tests walk it."""
from __future__ import annotations

from resnetlab.models import model_config

# Above 300M parameters: checked by parameter count and key shapes on the meta device only
# (tests/test_reference_equivalence.py asserts this set is exactly those), since running one takes
# gigabytes and tens of seconds.
LARGEST = {"resnext101_32x32d"}  # 469M
LARGEST_PARAMS = 300_000_000


def narrow(name: str, factor: int = 4) -> dict:
    """Options that build ``name`` with its widths divided by ``factor``: the same depth, blocks, stem,
    shortcuts and attention, for the registry-wide tests that check what the structure computes.
    Sizes are checked at full width, on the meta device (test_registry, test_reference_equivalence)."""
    config = model_config(name)
    return dict(channels=tuple(max(4, width // factor) for width in config.channels),
                stem_channels=max(4, config.stem_channels // factor), stem_width=max(4, config.stem_width // factor))
